//! Llama decoder (`modeling_llama.py`, transformers 5.17.0): `LlamaModel` and its layers, with the
//! intervention applied between layers. Module and weight names follow the HF module tree below a
//! prefix (for LLaVA: `model.language_model`).

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::intervention::{Intervention, PositionPolicy};
use crate::nn::{rotate_half, sdpa, Activation, Linear, RmsNorm};
use crate::weights::Weights;

/// `LlamaConfig` fields the forward needs, with HF's defaults for the ones a sparse config omits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    /// transformers 5.x nests rope settings here (`rope_theta`, `rope_type`).
    pub rope_parameters: Option<serde_json::Value>,
    /// transformers 4.x name for non-default rope settings.
    pub rope_scaling: Option<serde_json::Value>,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
        }
    }
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// `rope_theta`, wherever the config version put it.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// Only the default rotary embedding is implemented; a scaled one would silently change results.
    pub fn check_rope_type(&self) -> Result<()> {
        for (field, v) in [
            ("rope_parameters", &self.rope_parameters),
            ("rope_scaling", &self.rope_scaling),
        ] {
            if let Some(v) = v {
                let ty = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("default");
                if ty != "default" {
                    bail!(
                        "text_config.{field}: rope type '{ty}' is not supported (only 'default')"
                    );
                }
            }
        }
        Ok(())
    }
}

/// `LlamaRotaryEmbedding` with the default rope type.
pub struct RotaryEmbedding {
    inv_freq: Tensor,
}

impl RotaryEmbedding {
    pub fn new(head_dim: i64, theta: f64, device: tch::Device) -> Self {
        // Tensor ops, not scalar Rust: `1 / base ** (arange(0, d, 2) / d)` is then bit-equal to HF.
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponent).reciprocal();
        Self { inv_freq }
    }

    /// cos and sin `[B, S, head_dim]` in `kind` for position ids `[B, S]`, computed like HF: a K=1
    /// matmul `inv_freq[None, :, None] @ pos[:, None, :]` in f32, then `cat(freqs, freqs)`.
    pub fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let b = position_ids.size()[0];
        let inv = self
            .inv_freq
            .view([1, -1, 1])
            .expand([b, -1, 1], false)
            .to_kind(Kind::Float);
        let pos = position_ids.unsqueeze(1).to_kind(Kind::Float);
        let freqs = inv.matmul(&pos).transpose(1, 2);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

/// Per-layer key/value cache (HF `DynamicCache`): each layer holds exactly the tokens it processed.
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// M-RoPE models only: `max(prompt position id) + 1 - prompt length`, so that a decoding step at
    /// cache position p uses position `p + rope_deltas` (0 for 1-D rotary models).
    pub rope_deltas: i64,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            rope_deltas: 0,
        }
    }

    /// Number of tokens cached by `layer`.
    pub fn len_at(&self, layer: usize) -> i64 {
        self.layers[layer].as_ref().map_or(0, |(k, _)| k.size()[2])
    }
}

pub struct LlamaAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    scaling: f64,
}

impl LlamaAttention {
    fn load(w: &Weights, p: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::load(w, &format!("{p}.q_proj"), h, nh * hd, bias)?,
            k_proj: Linear::load(w, &format!("{p}.k_proj"), h, nkv * hd, bias)?,
            v_proj: Linear::load(w, &format!("{p}.v_proj"), h, nkv * hd, bias)?,
            o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * hd, h, bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            scaling: (hd as f64).powf(-0.5),
        })
    }

    /// `proj(x)` `[B, S, heads * head_dim]` split into heads: `[B, heads, S, head_dim]`.
    fn split_heads(&self, proj: &Linear, x: &Tensor, heads: i64) -> Tensor {
        let (b, s, _) = x.size3().expect("[B, S, D] hidden states");
        proj.forward(x)
            .view([b, s, heads, self.head_dim])
            .transpose(1, 2)
    }

    /// Queries and keys of `x` with the rotary embedding applied (`apply_rotary_pos_emb`).
    fn rotated_qk(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor) {
        let q = self.split_heads(&self.q_proj, x, self.num_heads);
        let k = self.split_heads(&self.k_proj, x, self.num_kv_heads);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = &q * &cos + rotate_half(&q) * &sin;
        let k = &k * &cos + rotate_half(&k) * &sin;
        (q, k)
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let s = x.size()[1];
        let (q, mut k) = self.rotated_qk(x, cos, sin);
        let mut v = self.split_heads(&self.v_proj, x, self.num_kv_heads);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        // transformers 5.17 `sdpa_attention_forward`: causal iff more than one query and no mask;
        // `enable_gqa` only when there are shared kv heads and head_dim <= 256.
        let groups = self.num_heads / self.num_kv_heads;
        let enable_gqa = groups > 1 && self.head_dim <= 256;
        let (k, v) = if groups > 1 && !enable_gqa {
            (
                k.repeat_interleave_self_int(groups, 1, None),
                v.repeat_interleave_self_int(groups, 1, None),
            )
        } else {
            (k, v)
        };
        self.project_out(&sdpa(&q, &k, &v, s > 1, self.scaling, enable_gqa))
    }
}

impl LlamaAttention {
    /// The attention probabilities `[B, heads, S, S]` (float32) of a causal pass over `x` with no
    /// cache: what HF returns with `output_attentions=True` (its eager path). The forward itself uses
    /// SDPA and never materializes them; the trainer recomputes them from a layer's input to supervise
    /// where the answer looks (`train::attend`), and a test checks `weights · V` against the forward.
    pub fn attention_weights(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let s = x.size()[1];
        let (q, k) = self.rotated_qk(x, cos, sin);
        let future = Tensor::ones([s, s], (Kind::Bool, x.device())).triu(1);
        self.probabilities(&q, &k, &future)
    }

    /// Softmax over the keys of `q · kᵀ · scaling` in float32, with `future` (broadcast to the scores)
    /// masked out; kv heads are repeated to the query heads.
    fn probabilities(&self, q: &Tensor, k: &Tensor, future: &Tensor) -> Tensor {
        let k = k.repeat_interleave_self_int(self.num_heads / self.num_kv_heads, 1, None);
        let scores = q
            .to_kind(Kind::Float)
            .matmul(&k.to_kind(Kind::Float).transpose(-1, -2))
            * self.scaling;
        scores
            .masked_fill(future, f64::NEG_INFINITY)
            .softmax(-1, Kind::Float)
    }

    /// Rows of [`Self::attention_weights`]: for each batch row b and slot r, the probabilities with
    /// which the query at position `rows[b, r]` attends to every key, `[B, heads, R, S]` (float32).
    /// The trainer supervises a few answer positions per sample, so it asks for those rows only: the
    /// scores cost `R × S` per head instead of `S × S`. Softmax rows are independent, so each row is
    /// the full matrix's row (a test compares them).
    pub fn attention_weights_at(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        rows: &Tensor,
    ) -> Tensor {
        let s = x.size()[1];
        let (b, r) = rows.size2().expect("[B, R] query positions");
        let (q, k) = self.rotated_qk(x, cos, sin);
        let at_rows = rows.view([b, 1, r, 1]);
        let q = q.gather(
            2,
            &at_rows.expand([b, self.num_heads, r, self.head_dim], false),
            false,
        );
        // Key j is in the future of the query at position p when j > p.
        let future = Tensor::arange(s, (Kind::Int64, x.device()))
            .view([1, 1, 1, s])
            .gt_tensor(&at_rows);
        self.probabilities(&q, &k, &future)
    }

    /// `v_proj` of `x`, heads repeated to the query heads: `[B, heads, S, head_dim]` (for the test
    /// that recombines [`Self::attention_weights`] into the layer's output).
    pub fn values(&self, x: &Tensor) -> Tensor {
        self.split_heads(&self.v_proj, x, self.num_kv_heads)
            .repeat_interleave_self_int(self.num_heads / self.num_kv_heads, 1, None)
    }

    /// `o_proj` over per-head outputs `[B, heads, S, head_dim]`.
    pub fn project_out(&self, heads: &Tensor) -> Tensor {
        let (b, _, s, _) = heads.size4().expect("[B, H, S, D] head outputs");
        self.o_proj
            .forward(&heads.transpose(1, 2).contiguous().reshape([b, s, -1]))
    }

    /// The attention output of a causal pass over `x` with no cache (the forward's SDPA path).
    pub fn forward_causal(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        self.forward(x, cos, sin, None)
    }
}

pub struct LlamaMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl LlamaMlp {
    fn load(w: &Weights, p: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(w, &format!("{p}.gate_proj"), h, i, bias)?,
            up_proj: Linear::load(w, &format!("{p}.up_proj"), h, i, bias)?,
            down_proj: Linear::load(w, &format!("{p}.down_proj"), i, h, bias)?,
            act: Activation::from_hf_name(&cfg.hidden_act)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let gated = self.act.forward(&self.gate_proj.forward(x)) * self.up_proj.forward(x);
        self.down_proj.forward(&gated)
    }
}

pub struct LlamaDecoderLayer {
    pub self_attn: LlamaAttention,
    mlp: LlamaMlp,
    pub input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl LlamaDecoderLayer {
    fn load(w: &Weights, p: &str, cfg: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            self_attn: LlamaAttention::load(w, &format!("{p}.self_attn"), cfg)?,
            mlp: LlamaMlp::load(w, &format!("{p}.mlp"), cfg)?,
            input_layernorm: RmsNorm::load(
                w,
                &format!("{p}.input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, cache);
        let x = x + h;
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        x + h
    }
}

/// Result of a prefill through the decoder.
pub struct DecoderOutput {
    /// Final-norm hidden states `[B, S', D]` of the tokens the last layer processed.
    pub hidden: Tensor,
    /// Original prompt indices of those `S'` tokens.
    pub kept: Vec<usize>,
}

pub struct LlamaModel {
    pub cfg: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: RmsNorm,
    pub rotary_emb: RotaryEmbedding,
}

impl LlamaModel {
    /// Loads `{prefix}.embed_tokens`, `{prefix}.layers.N.*`, `{prefix}.norm`.
    pub fn load(w: &Weights, prefix: &str, cfg: &LlamaConfig) -> Result<Self> {
        cfg.check_rope_type()?;
        if cfg.num_attention_heads % cfg.num_kv_heads() != 0 {
            bail!(
                "text_config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                cfg.num_attention_heads,
                cfg.num_kv_heads()
            );
        }
        let embed_tokens = w.get(
            &format!("{prefix}.embed_tokens.weight"),
            &[cfg.vocab_size, cfg.hidden_size],
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::load(w, &format!("{prefix}.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            w,
            &format!("{prefix}.norm"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
        )?;
        let rotary_emb = RotaryEmbedding::new(cfg.head_dim(), cfg.rope_theta(), w.device());
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            rotary_emb,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false)
    }

    /// Prefill of `embeds` `[1, S, D]` (positions `0..S`) under `intervention`. Tokens are dropped at
    /// each cut; `cache`, when given, records every layer's keys/values for decoding; `layer_inputs`,
    /// when given, receives the input hidden states of every layer (used to resume from layer K).
    pub fn prefill(
        &self,
        embeds: &Tensor,
        intervention: &Intervention,
        mut cache: Option<&mut KvCache>,
        mut layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let (_, s, _) = embeds.size3()?;
        intervention.validate(s as usize, self.num_layers())?;
        let device = embeds.device();
        let mut kept: Vec<usize> = (0..s as usize).collect();
        let mut position_ids = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
        let (mut cos, mut sin) = self.rotary_emb.cos_sin(&position_ids, embeds.kind());
        let mut h = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(cut) = intervention.cut_starting_at(i) {
                // Rows of the current sequence that hold the kept original indices (both ascending).
                let rows: Vec<i64> = cut
                    .keep
                    .iter()
                    .map(|p| kept.binary_search(p).map(|r| r as i64))
                    .collect::<Result<_, _>>()
                    .map_err(|_| anyhow::anyhow!("intervention: cut at layer {i} is not nested"))?;
                let rows = Tensor::from_slice(&rows).to_device(device);
                h = h.index_select(1, &rows);
                position_ids = match intervention.positions() {
                    PositionPolicy::Original => position_ids.index_select(1, &rows),
                    PositionPolicy::Renumbered => {
                        Tensor::arange(cut.keep.len() as i64, (Kind::Int64, device)).unsqueeze(0)
                    }
                };
                (cos, sin) = self.rotary_emb.cos_sin(&position_ids, embeds.kind());
                kept = cut.keep.clone();
            }
            if let Some(inputs) = layer_inputs.as_deref_mut() {
                inputs.push(h.shallow_clone());
            }
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(&h, &cos, &sin, slot);
        }
        Ok(DecoderOutput {
            hidden: self.norm.forward(&h),
            kept,
        })
    }

    /// Runs decoder layers `from..` on hidden states `[B, S, D]` with per-row position ids `[B, S]`
    /// (no cache, causal attention), then the final norm. This is how an information sweep resumes
    /// from a stored layer input without recomputing the layers below.
    pub fn forward_from_layer(
        &self,
        from: usize,
        hidden: &Tensor,
        position_ids: &Tensor,
    ) -> Tensor {
        let (cos, sin) = self.rotary_emb.cos_sin(position_ids, hidden.kind());
        let mut h = hidden.shallow_clone();
        for layer in &self.layers[from..] {
            h = layer.forward(&h, &cos, &sin, None);
        }
        self.norm.forward(&h)
    }

    /// One greedy-decoding step: `embeds` `[1, 1, D]` of the new token at original position `position`
    /// (the prompt length plus tokens generated so far). Each layer attends to what it cached.
    pub fn decode_step(
        &self,
        embeds: &Tensor,
        position: usize,
        prompt_len: usize,
        intervention: &Intervention,
        cache: &mut KvCache,
    ) -> Tensor {
        let device = embeds.device();
        let mut h = embeds.shallow_clone();
        let mut current: Option<(usize, Tensor, Tensor)> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let pos = position - intervention.decode_position_shift(i, prompt_len);
            if current.as_ref().map(|c| c.0) != Some(pos) {
                let ids = Tensor::from_slice(&[pos as i64])
                    .to_device(device)
                    .unsqueeze(0);
                let (cos, sin) = self.rotary_emb.cos_sin(&ids, embeds.kind());
                current = Some((pos, cos, sin));
            }
            let (_, cos, sin) = current.as_ref().expect("set above");
            h = layer.forward(&h, cos, sin, Some(&mut cache.layers[i]));
        }
        self.norm.forward(&h)
    }
}
