//! The one decoder of every family: `LlamaModel` (`modeling_llama.py`, LLaVA-1.5's language model) and
//! `Qwen2_5_VLTextModel` (`modeling_qwen2_5_vl.py`, a Qwen2 decoder), transformers 5.17.0.
//!
//! The two differ only where their configs say so, as HF's modular files show (`Qwen2Attention`
//! inherits from `LlamaAttention`): which projections carry a bias (Llama: `attention_bias` for all
//! four; Qwen2: q/k/v yes, o no) and the rotary embedding (1-D positions, or M-RoPE's 3-D positions
//! with `mrope_section`). Everything else — attention, layer, the loop that applies the cuts, the KV
//! cache and decoding — is this file, once.
//!
//! The loop asks a [`TokenSelector`] before each layer which prompt positions that layer and the ones
//! after it process. A static [`crate::Intervention`] is one selector; pruning methods that score
//! tokens from what the previous layer produced are others. When a selector asks for them, the
//! attention probabilities of chosen query rows are computed exactly for that one layer; every layer
//! keeps running SDPA, so asking for them changes no output.

use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

use crate::intervention::{CutContext, PositionPolicy, TokenSelector, VisualTokens};
use crate::nn::{rotate_half, sdpa, Activation, Linear, RmsNorm};
use crate::weights::Weights;

/// How rotary position ids are laid out and turned into angles.
#[derive(Debug, Clone, PartialEq)]
pub enum RotaryKind {
    /// `LlamaRotaryEmbedding` (default rope type): position ids `[B, S]`.
    Default { theta: f64 },
    /// `Qwen2_5_VLRotaryEmbedding`: 3-D position ids `[3, B, S]` (temporal, height, width); axis `i % 3`
    /// rotates `mrope_section[i]` of the frequency pairs.
    MRope { theta: f64, mrope_section: Vec<i64> },
}

/// What the decoder needs of a family's text config, resolved once at load.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub hidden_act: String,
    pub rms_norm_eps: f64,
    /// Bias on q_proj, k_proj and v_proj.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub rotary: RotaryKind,
}

impl DecoderConfig {
    /// Checks the counts a forward divides by; `field` prefixes field names in errors
    /// (e.g. `config.json: field text_config.`).
    pub fn validate(&self, field: &str) -> Result<()> {
        for (name, v) in [
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("head_dim", self.head_dim),
        ] {
            if v <= 0 {
                bail!("{field}{name}: {v} must be positive");
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            bail!(
                "{field}num_key_value_heads: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim % 2 != 0 {
            bail!(
                "{field}head_dim: {} is odd; rotary embeddings rotate pairs",
                self.head_dim
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!(
                "{field}rms_norm_eps: {} must be a positive number",
                self.rms_norm_eps
            );
        }
        if let RotaryKind::MRope { mrope_section, .. } = &self.rotary {
            if mrope_section.len() != 3 || mrope_section.iter().sum::<i64>() * 2 != self.head_dim {
                bail!(
                    "{field}rope_parameters.mrope_section: {mrope_section:?} does not split head_dim {} into 3 halves",
                    self.head_dim
                );
            }
        }
        Activation::from_hf_name(&self.hidden_act)
            .map_err(|e| anyhow!("{field}hidden_act: {e}"))?;
        Ok(())
    }
}

/// Rotary embedding of either kind; `inv_freq = 1 / theta^(arange(0, d, 2) / d)` computed with tensor
/// ops so that it is bit-equal to HF.
pub struct RotaryEmbedding {
    inv_freq: Tensor,
    kind: RotaryKind,
}

impl RotaryEmbedding {
    pub fn new(head_dim: i64, kind: RotaryKind, device: Device) -> Self {
        let theta = match &kind {
            RotaryKind::Default { theta } | RotaryKind::MRope { theta, .. } => *theta,
        };
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponent).reciprocal();
        Self { inv_freq, kind }
    }

    pub fn kind(&self) -> &RotaryKind {
        &self.kind
    }

    /// Number of leading axes of a position-id tensor before `[B, S]`: 0 for 1-D, 1 (the 3 axes) for
    /// M-RoPE.
    fn lead(&self) -> usize {
        match self.kind {
            RotaryKind::Default { .. } => 0,
            RotaryKind::MRope { .. } => 1,
        }
    }

    /// Position ids `[B, S]` (1-D) or `[3, B, S]` (M-RoPE) of one scalar position repeated.
    pub fn scalar_positions(&self, position: i64, device: Device) -> Tensor {
        let ids = Tensor::from_slice(&[position]).to_device(device);
        match self.kind {
            RotaryKind::Default { .. } => ids.view([1, 1]),
            RotaryKind::MRope { .. } => ids.view([1, 1, 1]).expand([3, 1, 1], false).contiguous(),
        }
    }

    /// Contiguous position ids `0..len` for one sequence (a renumbered prompt), on every axis.
    pub fn contiguous_positions(&self, len: i64, device: Device) -> Tensor {
        let ids = Tensor::arange(len, (Kind::Int64, device));
        match self.kind {
            RotaryKind::Default { .. } => ids.unsqueeze(0),
            RotaryKind::MRope { .. } => ids
                .view([1, 1, len])
                .expand([3, 1, len], false)
                .contiguous(),
        }
    }

    /// Position ids of a renumbered sequence `[1, n]` or `[3, 1, n]`, and the position after it (what
    /// decoding continues from). `tokens[i]` is `None` for a text token and a visual token's grid
    /// coordinates otherwise; 1-D rotary numbers `0..n`, M-RoPE as `get_rope_index` indexes the
    /// shortened sequence (`models::qwen2_5_vl::renumber_mrope`: text consecutive, the visual tokens
    /// as the image of their kept rows and columns).
    pub fn renumbered_positions(
        &self,
        tokens: &[Option<[i64; 3]>],
        device: Device,
    ) -> (Tensor, i64) {
        let n = tokens.len() as i64;
        match self.kind {
            RotaryKind::Default { .. } => (self.contiguous_positions(n, device), n),
            RotaryKind::MRope { .. } => {
                let (ids, next) = crate::models::qwen2_5_vl::renumber_mrope(tokens);
                let axes: Vec<i64> = (0..3).flat_map(|a| ids.iter().map(move |t| t[a])).collect();
                let positions = Tensor::from_slice(&axes).view([3, 1, n]).to_device(device);
                (positions, next)
            }
        }
    }

    /// The grid coordinates [`Self::renumbered_positions`] reads from one sequence's position ids
    /// `positions` (`[1, S]` or `[3, 1, S]`): `None` where `visual` is false, the token's ids otherwise.
    pub fn grid_coordinates(&self, positions: &Tensor, visual: &[bool]) -> Vec<Option<[i64; 3]>> {
        if let RotaryKind::Default { .. } = self.kind {
            // 1-D renumbering reads no coordinates.
            return visual.iter().map(|&v| v.then_some([0; 3])).collect();
        }
        let one = positions.select(-2, 0).to_device(Device::Cpu);
        let axes: Vec<Vec<i64>> = (0..3)
            .map(|a| Vec::<i64>::try_from(&one.get(a)).expect("i64 ids"))
            .collect();
        visual
            .iter()
            .enumerate()
            .map(|(i, &v)| v.then(|| [axes[0][i], axes[1][i], axes[2][i]]))
            .collect()
    }

    /// The position ids of rows `index` `[B, S']` (indices into the sequence axis of `positions`,
    /// which holds one sequence): `[B, S']` or `[3, B, S']`.
    pub fn gather_positions(&self, positions: &Tensor, index: &Tensor) -> Tensor {
        let (b, s) = index.size2().expect("[B, S] index");
        let one = positions.select(-2, 0);
        let picked = one.index_select(-1, &index.reshape([-1]));
        match self.kind {
            RotaryKind::Default { .. } => picked.reshape([b, s]),
            RotaryKind::MRope { .. } => picked.reshape([3, b, s]),
        }
    }

    /// cos and sin `[B, S, head_dim]` in `kind`, computed like HF: a K=1 matmul of `inv_freq` and the
    /// positions in f32, then (M-RoPE) the per-axis sections recomposed, then `cat(freqs, freqs)`.
    pub fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        match &self.kind {
            RotaryKind::Default { .. } => {
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
            RotaryKind::MRope { mrope_section, .. } => {
                let b = position_ids.size()[1];
                let inv = self
                    .inv_freq
                    .view([1, 1, -1, 1])
                    .to_kind(Kind::Float)
                    .expand([3, b, -1, 1], false);
                let pos = position_ids.unsqueeze(2).to_kind(Kind::Float);
                let freqs = inv.matmul(&pos).transpose(2, 3);
                let recompose = |f: Tensor| {
                    let parts: Vec<Tensor> = f
                        .split_with_sizes(mrope_section.as_slice(), -1)
                        .iter()
                        .enumerate()
                        .map(|(i, m)| m.select(0, (i % 3) as i64))
                        .collect();
                    let f = Tensor::cat(&parts, -1);
                    Tensor::cat(&[&f, &f], -1).to_kind(kind)
                };
                (recompose(freqs.cos()), recompose(freqs.sin()))
            }
        }
    }

    /// Checks that `positions` is `[1, S]` (1-D) or `[3, 1, S]` (M-RoPE).
    fn check_prompt_positions(&self, positions: &Tensor, s: i64) -> Result<()> {
        let want: Vec<i64> = match self.lead() {
            0 => vec![1, s],
            _ => vec![3, 1, s],
        };
        if positions.size() != want {
            bail!(
                "position ids have shape {:?}, expected {want:?}",
                positions.size()
            );
        }
        Ok(())
    }
}

/// Per-layer key/value cache (HF `DynamicCache`): each layer holds exactly the tokens it processed, so a
/// pruned prompt costs only its kept tokens' memory.
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer, what a decoding step adds to its cache position to get its rotary position: the
    /// prompt's `rope_deltas` (M-RoPE; 0 for 1-D rotary), or, below a cut with renumbered positions,
    /// the renumbered sequence's next position minus the prompt's length (1-D: minus the number of
    /// prompt tokens removed). Set by the prefill, which knows the keep-sets.
    pub(crate) position_offsets: Vec<i64>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            position_offsets: vec![0; num_layers],
        }
    }

    /// Number of tokens cached by `layer`.
    pub fn len_at(&self, layer: usize) -> i64 {
        self.layers[layer].as_ref().map_or(0, |(k, _)| k.size()[2])
    }

    /// Bytes held by the cached keys and values of every layer.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| {
                (k.numel() * k.kind().elt_size_in_bytes())
                    + (v.numel() * v.kind().elt_size_in_bytes())
            })
            .sum()
    }
}

/// HF `apply_rotary_pos_emb` on one of q, k: `t` `[B, heads, S, head_dim]` with `cos`/`sin`
/// `[B, S, head_dim]`.
fn apply_rotary(t: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
    t * &cos + rotate_half(t) * &sin
}

/// `LlamaAttention` / `Qwen2Attention`: GQA with rotary q/k and per-projection biases.
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    scaling: f64,
}

impl Attention {
    fn load(w: &Weights, p: &str, cfg: &DecoderConfig) -> Result<Self> {
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        Ok(Self {
            q_proj: Linear::load(w, &format!("{p}.q_proj"), h, nh * hd, cfg.qkv_bias)?,
            k_proj: Linear::load(w, &format!("{p}.k_proj"), h, nkv * hd, cfg.qkv_bias)?,
            v_proj: Linear::load(w, &format!("{p}.v_proj"), h, nkv * hd, cfg.qkv_bias)?,
            o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * hd, h, cfg.o_bias)?,
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

    /// Queries and keys of `x` with the rotary embedding applied (`apply_rotary_pos_emb`), in the
    /// model dtype.
    fn rotated_qk(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor) {
        let q = self.split_heads(&self.q_proj, x, self.num_heads);
        let k = self.split_heads(&self.k_proj, x, self.num_kv_heads);
        (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin))
    }

    /// The attention output; with `probs_rows` `[B, R]` (row indices into this call's queries, no
    /// cache), also the attention probabilities of those query rows `[B, heads, R, S]` in f32, as
    /// HF's eager path computes them (`q·kᵀ·scaling`, causal mask, softmax in f32). The output
    /// itself always comes from SDPA.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        probs_rows: Option<&Tensor>,
        want_keys: bool,
    ) -> (Tensor, Option<Tensor>, Option<Tensor>) {
        let s = x.size()[1];
        let (q, mut k) = self.rotated_qk(x, cos, sin);
        let mut v = self.split_heads(&self.v_proj, x, self.num_kv_heads);
        let probs = probs_rows.map(|rows| self.probabilities_at(&q, &k, rows));
        // [B, kv_heads, S, d] → [S, kv_heads · d] of the first sequence (heads concatenated per token).
        let keys = want_keys.then(|| k.select(0, 0).transpose(0, 1).reshape([s, -1]));
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        // transformers 5.17 `sdpa_attention_forward`: causal iff more than one query and no mask;
        // `enable_gqa` only when there are shared kv heads and head_dim <= 256, else `repeat_kv`.
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
        let out = self.project_out(&sdpa(&q, &k, &v, s > 1, self.scaling, enable_gqa));
        (out, probs, keys)
    }

    /// Softmax over the keys of `q · kᵀ · scaling` (f32 softmax, HF eager order), with `future`
    /// (broadcast to the scores) masked out; kv heads repeated to the query heads.
    fn probabilities(&self, q: &Tensor, k: &Tensor, future: &Tensor) -> Tensor {
        let k = k.repeat_interleave_self_int(self.num_heads / self.num_kv_heads, 1, None);
        let scores = q.matmul(&k.transpose(-1, -2)) * self.scaling;
        scores
            .to_kind(Kind::Float)
            .masked_fill(future, f64::NEG_INFINITY)
            .softmax(-1, Kind::Float)
    }

    /// Probabilities of query rows `rows` `[B, R]` against every key of a causal pass.
    fn probabilities_at(&self, q: &Tensor, k: &Tensor, rows: &Tensor) -> Tensor {
        let s = q.size()[2];
        let (b, r) = rows.size2().expect("[B, R] query rows");
        let at_rows = rows.view([b, 1, r, 1]);
        let q = q.gather(
            2,
            &at_rows.expand([b, self.num_heads, r, self.head_dim], false),
            false,
        );
        // Key j is in the future of the query at row p when j > p.
        let future = Tensor::arange(s, (Kind::Int64, q.device()))
            .view([1, 1, 1, s])
            .gt_tensor(&at_rows);
        self.probabilities(&q, k, &future)
    }

    /// The attention probabilities `[B, heads, S, S]` (float32) of a causal pass over `x` with no
    /// cache: what HF returns with `output_attentions=True` (its eager path).
    pub fn attention_weights(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let s = x.size()[1];
        let (q, k) = self.rotated_qk(x, cos, sin);
        let future = Tensor::ones([s, s], (Kind::Bool, x.device())).triu(1);
        self.probabilities(&q, &k, &future)
    }

    /// Rows of [`Self::attention_weights`]: for each batch row b and slot r, the probabilities with
    /// which the query at row `rows[b, r]` attends to every key, `[B, heads, R, S]` (float32). Softmax
    /// rows are independent, so each row is the full matrix's row (a test compares them); the scores
    /// cost `R × S` per head instead of `S × S`.
    pub fn attention_weights_at(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        rows: &Tensor,
    ) -> Tensor {
        let (q, k) = self.rotated_qk(x, cos, sin);
        self.probabilities_at(&q, &k, rows)
    }

    /// `v_proj` of `x`, heads repeated to the query heads: `[B, heads, S, head_dim]`.
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
        self.forward(x, cos, sin, None, None, false).0
    }
}

/// Keys and values a batch of variants shares: the post-rotary keys and the values of the first P
/// positions, `[1, kv_heads, P, head_dim]` each, taken from the unpruned run's cache.
pub struct SharedPrefix<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
}

/// The resumed layers of the information engine ([`crate::info`]) see their first P positions only as
/// keys and values: under causal attention a position before a variant's first changed position has
/// the hidden states of the unpruned run in every layer, so its keys and values are the unpruned run's.
impl Attention {
    /// The attention output of the suffix `x` `[B, S, D]` (rotated by `cos`/`sin` `[B, S, head_dim]`)
    /// after the shared `prefix`: query i sees every prefix key and the suffix keys `<= i`. With
    /// `last_only` only the last query is computed (`[B, 1, D]`): the next layer needs no other row.
    fn forward_after_prefix(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        prefix: Option<&SharedPrefix>,
        last_only: bool,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("[B, S, D] hidden states");
        let q = if last_only {
            // Contiguous: the strided view of the last position sent bf16's CPU projection to a path
            // that took 3.7 GiB more and 1.9x the time for a 130-variant batch of the 7B configuration
            // (BENCHMARKS.md, peak memory).
            let at = |t: &Tensor| t.narrow(1, s - 1, 1).contiguous();
            let q = self.split_heads(&self.q_proj, &at(x), self.num_heads);
            apply_rotary(&q, &at(cos), &at(sin))
        } else {
            apply_rotary(&self.split_heads(&self.q_proj, x, self.num_heads), cos, sin)
        };
        let mut k = apply_rotary(
            &self.split_heads(&self.k_proj, x, self.num_kv_heads),
            cos,
            sin,
        );
        let mut v = self.split_heads(&self.v_proj, x, self.num_kv_heads);
        let p = prefix.map_or(0, |pre| pre.keys.size()[2]);
        if let Some(pre) = prefix {
            k = Tensor::cat(&[&pre.keys.expand([b, -1, -1, -1], false), &k], 2);
            v = Tensor::cat(&[&pre.values.expand([b, -1, -1, -1], false), &v], 2);
        }
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
        let heads = if last_only || s == 1 {
            // The last query sees every key.
            sdpa(&q, &k, &v, false, self.scaling, enable_gqa)
        } else if p == 0 {
            sdpa(&q, &k, &v, true, self.scaling, enable_gqa)
        } else {
            // Boolean mask (true = attend) `[S, P + S]`: every prefix key, then causal over the suffix.
            let device = x.device();
            let mask = Tensor::cat(
                &[
                    Tensor::ones([s, p], (Kind::Bool, device)),
                    Tensor::ones([s, s], (Kind::Bool, device)).tril(0),
                ],
                1,
            );
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(mask),
                0.0,
                false,
                Some(self.scaling),
                enable_gqa,
            )
        };
        self.project_out(&heads)
    }
}

impl DecoderLayer {
    /// The layer over a variant suffix `x` `[B, S, D]` after a shared `prefix` (see
    /// `Attention::forward_after_prefix`); with `last_only`, the last position's output `[B, 1, D]`.
    pub fn forward_after_prefix(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        prefix: Option<&SharedPrefix>,
        last_only: bool,
    ) -> Tensor {
        let h = self.self_attn.forward_after_prefix(
            &self.input_layernorm.forward(x),
            cos,
            sin,
            prefix,
            last_only,
        );
        let x = if last_only {
            x.narrow(1, x.size()[1] - 1, 1) + h
        } else {
            x + h
        };
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        x + h
    }
}

/// `LlamaMLP` / `Qwen2MLP` / `Qwen2_5_VLMLP`: SwiGLU, `down(act(gate(x)) · up(x))`.
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub fn load(
        w: &Weights,
        p: &str,
        hidden: i64,
        inter: i64,
        act: &str,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(w, &format!("{p}.gate_proj"), hidden, inter, bias)?,
            up_proj: Linear::load(w, &format!("{p}.up_proj"), hidden, inter, bias)?,
            down_proj: Linear::load(w, &format!("{p}.down_proj"), inter, hidden, bias)?,
            act: Activation::from_hf_name(act)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let gated = self.act.forward(&self.gate_proj.forward(x)) * self.up_proj.forward(x);
        self.down_proj.forward(&gated)
    }
}

/// `LlamaDecoderLayer` / `Qwen2_5_VLDecoderLayer`: pre-norm attention and MLP with residuals.
pub struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn load(w: &Weights, p: &str, cfg: &DecoderConfig) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            self_attn: Attention::load(w, &format!("{p}.self_attn"), cfg)?,
            mlp: Mlp::load(
                w,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                &cfg.hidden_act,
                cfg.mlp_bias,
            )?,
            input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm"), h, eps)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm"),
                h,
                eps,
            )?,
        })
    }

    /// The layer's output; with `probs_rows` the attention probabilities of those query rows, with
    /// `want_keys` its post-rotary keys `[S, kv_heads · head_dim]`.
    fn forward_with(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        probs_rows: Option<&Tensor>,
        want_keys: bool,
    ) -> (Tensor, Option<Tensor>, Option<Tensor>) {
        let (out, (probs, keys)) = self.around_attention(x, |normed| {
            let (h, probs, keys) = self
                .self_attn
                .forward(normed, cos, sin, cache, probs_rows, want_keys);
            (h, (probs, keys))
        });
        (out, probs, keys)
    }

    /// The layer around the attention the caller runs: `x + attention(input_layernorm(x))`, then
    /// the MLP block with its residual; `attention` also returns what it read on the way.
    fn around_attention<T>(
        &self,
        x: &Tensor,
        attention: impl FnOnce(&Tensor) -> (Tensor, T),
    ) -> (Tensor, T) {
        self.around_attention_from(x, &QueryRows::From(0), attention)
    }

    /// [`Self::around_attention`] where `attention` returns only the rows of `x` that `rows`
    /// selects (their queries; their keys are all of `x`'s): the layer's output of those rows.
    fn around_attention_from<T>(
        &self,
        x: &Tensor,
        rows: &QueryRows,
        attention: impl FnOnce(&Tensor) -> (Tensor, T),
    ) -> (Tensor, T) {
        let (h, read) = attention(&self.input_layernorm.forward(x));
        let x = match rows {
            QueryRows::From(0) => x + h,
            rows => rows.select(x) + h,
        };
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        (x + h, read)
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        self.forward_with(x, cos, sin, cache, None, false).0
    }

    /// The attention probabilities `[B, heads, S, S]` (float32) of this layer over its input `x`
    /// (the input norm applied; causal, no cache): HF's `output_attentions=True`.
    pub fn attention_probs(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        self.self_attn
            .attention_weights(&self.input_layernorm.forward(x), cos, sin)
    }

    /// Rows `rows` `[B, R]` of [`Self::attention_probs`]: `[B, heads, R, S]` (float32).
    pub fn attention_probs_at(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        rows: &Tensor,
    ) -> Tensor {
        self.self_attn
            .attention_weights_at(&self.input_layernorm.forward(x), cos, sin, rows)
    }

    /// The self-attention block (its probabilities, values and output projection are tested on
    /// their own).
    pub fn attention(&self) -> &Attention {
        &self.self_attn
    }
}

/// Result of a prefill through the decoder.
pub struct DecoderOutput {
    /// Final-norm hidden states `[1, S', D]` of the tokens the last layer processed.
    pub hidden: Tensor,
    /// Ids of those `S'` tokens: original prompt indices, and for tokens a cut built the prompt
    /// length plus their order of building ([`TokenSelector::built_tokens`]).
    pub kept: Vec<usize>,
    /// Number of prompt tokens each layer processed, and of those how many were visual.
    pub tokens_per_layer: Vec<usize>,
    pub visual_per_layer: Vec<usize>,
}

/// `LlamaModel` / `Qwen2_5_VLTextModel`: embeddings, decoder layers, final norm.
pub struct Decoder {
    pub cfg: DecoderConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub rotary_emb: RotaryEmbedding,
}

impl Decoder {
    /// Loads `{prefix}.embed_tokens`, `{prefix}.layers.N.*`, `{prefix}.norm`.
    pub fn load(w: &Weights, prefix: &str, cfg: &DecoderConfig) -> Result<Self> {
        let embed_tokens = w.get(
            &format!("{prefix}.embed_tokens.weight"),
            &[cfg.vocab_size, cfg.hidden_size],
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(w, &format!("{prefix}.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            w,
            &format!("{prefix}.norm"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
        )?;
        let rotary_emb = RotaryEmbedding::new(cfg.head_dim, cfg.rotary.clone(), w.device());
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

    /// Prefill of `embeds` `[1, S, D]` at `positions` (`[1, S]`, or `[3, 1, S]` for M-RoPE) with
    /// `rope_deltas` (M-RoPE; 0 otherwise). Before each layer `selector` decides which prompt positions
    /// that layer and the later ones process; dropped tokens are gathered out of the sequence (not
    /// masked), kept ones keep their position ids or are renumbered (`0..len`; M-RoPE: as
    /// [`RotaryEmbedding::renumbered_positions`] says) as the selector's
    /// [`PositionPolicy`] says. `cache`, when given, records every layer's keys/values and the decode
    /// positions that follow the policy; `layer_inputs`, when given, receives each layer's input.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        rope_deltas: i64,
        visual: &VisualTokens,
        selector: &mut dyn TokenSelector,
        mut cache: Option<&mut KvCache>,
        mut layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let (_, s, _) = embeds.size3()?;
        self.rotary_emb.check_prompt_positions(positions, s)?;
        let num_layers = self.num_layers();
        let device = embeds.device();
        let mut kept: Vec<usize> = (0..s as usize).collect();
        let mut is_visual = visual.mask(s as usize);
        // The id of the next token a cut builds (they follow the prompt's ids).
        let mut next_built = s as usize;
        let mut positions = positions.shallow_clone();
        let (mut cos, mut sin) = self.rotary_emb.cos_sin(&positions, embeds.kind());
        let mut h = embeds.shallow_clone();
        let mut attention: Option<Tensor> = None;
        let mut keys: Option<Tensor> = None;
        let mut tokens_per_layer = Vec::with_capacity(num_layers);
        let mut visual_per_layer = Vec::with_capacity(num_layers);
        // What a decoding step adds to its cache position: `rope_deltas` while positions are the
        // prompt's own; after a renumbering cut, the renumbered sequence's next position minus the
        // prompt's length.
        let mut decode_offset = rope_deltas;
        for (i, layer) in self.layers.iter().enumerate() {
            let ctx = CutContext {
                layer: i,
                num_layers,
                hidden: &h,
                kept: &kept,
                visual,
                attention: attention.as_ref(),
                keys: keys.as_ref(),
                final_norm: &self.norm,
            };
            if let Some(keep) = selector.select(&ctx)? {
                if keep.last() != Some(&(s as usize - 1)) {
                    // The last prompt position's output is the next-token distribution.
                    bail!(
                        "token selection before layer {i}: the last prompt position {} must be kept",
                        s - 1
                    );
                }
                let built = selector.built_tokens();
                let m = built.as_ref().map_or(0, |b| b.size()[1] as usize);
                let rows = rows_of(&keep, &kept, next_built..next_built + m, i)?;
                if let Some(b) = &built {
                    // Built tokens are rows after the current ones; the cut keeps the first ids.
                    let rows_t = Tensor::from_slice(&rows).to_device(device);
                    h = Tensor::cat(&[&h, &b.to_kind(h.kind()).to_device(device)], 1)
                        .index_select(1, &rows_t);
                    decode_offset -= kept.len() as i64 - keep.len() as i64;
                    positions = positions.narrow(-1, 0, keep.len() as i64);
                    (cos, sin) = self.rotary_emb.cos_sin(&positions, embeds.kind());
                    is_visual.resize(next_built + m, true);
                    next_built += m;
                    kept = keep;
                } else if rows.len() != kept.len() {
                    let rows_t = Tensor::from_slice(&rows).to_device(device);
                    h = h.index_select(1, &rows_t);
                    positions = match selector.positions_at(i) {
                        PositionPolicy::Original => self
                            .rotary_emb
                            .gather_positions(&positions, &rows_t.unsqueeze(0)),
                        PositionPolicy::Renumbered => {
                            let kept_ids = self
                                .rotary_emb
                                .gather_positions(&positions, &rows_t.unsqueeze(0));
                            let flags: Vec<bool> = keep.iter().map(|&p| is_visual[p]).collect();
                            let tokens = self.rotary_emb.grid_coordinates(&kept_ids, &flags);
                            let (renumbered, next) =
                                self.rotary_emb.renumbered_positions(&tokens, device);
                            decode_offset = next - s;
                            renumbered
                        }
                    };
                    (cos, sin) = self.rotary_emb.cos_sin(&positions, embeds.kind());
                    kept = keep;
                }
            }
            tokens_per_layer.push(kept.len());
            visual_per_layer.push(kept.iter().filter(|&&p| is_visual[p]).count());
            if let Some(inputs) = layer_inputs.as_deref_mut() {
                inputs.push(h.shallow_clone());
            }
            let probs_rows = match selector.attention_rows(i, &kept) {
                Some(query) if i + 1 < num_layers => {
                    let rows = rows_of(&query, &kept, 0..0, i)?;
                    Some(Tensor::from_slice(&rows).to_device(device).unsqueeze(0))
                }
                _ => None,
            };
            let slot = match cache.as_deref_mut() {
                Some(c) => {
                    c.position_offsets[i] = decode_offset;
                    Some(&mut c.layers[i])
                }
                None => None,
            };
            let want_keys = i + 1 < num_layers && selector.keys_at(i);
            let (out, probs, layer_keys) =
                layer.forward_with(&h, &cos, &sin, slot, probs_rows.as_ref(), want_keys);
            h = out;
            // [1, heads, R, S'] → [heads, R, S'] for the selector at the next layer.
            attention = probs.map(|p| p.squeeze_dim(0));
            keys = layer_keys;
        }
        Ok(DecoderOutput {
            hidden: self.norm.forward(&h),
            kept,
            tokens_per_layer,
            visual_per_layer,
        })
    }

    /// Runs decoder layers `from..` on hidden states `[B, S, D]` with per-row position ids (`[B, S]` or
    /// `[3, B, S]`; no cache, causal attention), then the final norm. This is how an information sweep
    /// resumes from a stored layer input without recomputing the layers below.
    pub fn forward_from_layer(
        &self,
        from: usize,
        hidden: &Tensor,
        position_ids: &Tensor,
    ) -> Tensor {
        self.layers_from(from, hidden, position_ids, None, false).0
    }

    /// Layers `from..` (no cache, causal) and the final norm; with `key_weights` (`[L − from, S]`)
    /// layer `from + i` weighs its keys by row i (the soft mask of [`Self::forward_key_weighted`]),
    /// and with `probe` also each layer's [`AttentionProbe`].
    fn layers_from(
        &self,
        from: usize,
        hidden: &Tensor,
        position_ids: &Tensor,
        key_weights: Option<(&Tensor, Option<&FixedQueries>)>,
        probe: bool,
    ) -> (Tensor, Vec<AttentionProbe>) {
        let (cos, sin) = self.rotary_emb.cos_sin(position_ids, hidden.kind());
        let mut h = hidden.shallow_clone();
        let mut probes = Vec::new();
        for (i, layer) in self.layers[from..].iter().enumerate() {
            h = match key_weights {
                None => layer.forward(&h, &cos, &sin, None),
                Some((m, fixed)) => {
                    let w = FixedQueries::layer_weights(fixed, &m.get(i as i64));
                    let (next, (_, p)) =
                        layer.forward_key_weighted(&h, &cos, &sin, &w, None, probe);
                    probes.extend(p);
                    next
                }
            };
        }
        (self.norm.forward(&h), probes)
    }

    /// One decoding step: `embeds` `[1, 1, D]` of the token at cache position `cache_position` (the
    /// prompt length plus tokens generated before it). Each layer rotates it at
    /// `cache_position + offset` (its offset set by the prefill) and attends to what it cached.
    pub fn decode_step(
        &self,
        embeds: &Tensor,
        cache_position: usize,
        cache: &mut KvCache,
    ) -> Tensor {
        let device = embeds.device();
        let mut h = embeds.shallow_clone();
        let mut current: Option<(i64, Tensor, Tensor)> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let pos = cache_position as i64 + cache.position_offsets[i];
            if current.as_ref().map(|c| c.0) != Some(pos) {
                let ids = self.rotary_emb.scalar_positions(pos, device);
                let (cos, sin) = self.rotary_emb.cos_sin(&ids, embeds.kind());
                current = Some((pos, cos, sin));
            }
            let (_, cos, sin) = current.as_ref().expect("set above");
            h = layer.forward(&h, cos, sin, Some(&mut cache.layers[i]));
        }
        self.norm.forward(&h)
    }
}

/// Rows of the current sequence (`kept`, ids in sequence order) that hold `wanted` (ids of `kept`
/// in its order, and the ids `built` of the tokens a cut builds, which take the rows after `kept`'s);
/// an error names the layer when `wanted` is not such a list.
fn rows_of(
    wanted: &[usize],
    kept: &[usize],
    built: std::ops::Range<usize>,
    layer: usize,
) -> Result<Vec<i64>> {
    if wanted.is_empty() {
        bail!("token selection at layer {layer}: no position selected");
    }
    let row: std::collections::HashMap<usize, usize> =
        kept.iter().enumerate().map(|(r, &p)| (p, r)).collect();
    let mut last: Option<usize> = None;
    let mut seen_built = vec![false; built.len()];
    let mut rows = Vec::with_capacity(wanted.len());
    for &p in wanted {
        if built.contains(&p) {
            if std::mem::replace(&mut seen_built[p - built.start], true) {
                bail!("token selection at layer {layer}: built token {p} placed twice");
            }
            rows.push((kept.len() + p - built.start) as i64);
            continue;
        }
        let r = *row.get(&p).ok_or_else(|| {
            anyhow!("token selection at layer {layer}: names a position already dropped")
        })?;
        if last.is_some_and(|l| r <= l) {
            bail!("token selection at layer {layer}: positions are not ascending and unique");
        }
        last = Some(r);
        rows.push(r as i64);
    }
    if seen_built.iter().any(|&s| !s) {
        bail!("token selection at layer {layer}: a built token is not placed");
    }
    Ok(rows)
}

/// Keys and values `[1, heads, C, head_dim]` each (kv heads repeated) of C positions that come
/// before a call's own queries: a context computed earlier, seen by every query.
pub type KeyValues = (Tensor, Tensor);

/// A forward with a soft mask on the keys (attribution patching, the `--estimate gradient` path):
/// each layer weighs every key's attention by `m ∈ [0, 1]` and renormalises,
/// `a_ij = m_j·exp(s_ij) / Σ_k m_k·exp(s_ik)`. `m_j = 1` is the plain model and `m_j = 0` removes key
/// j from that layer exactly as a cut drops it (queries of other tokens never see it; its own row no
/// longer reaches them), so the gradient with respect to `m` linearises a cut. Written with explicit
/// softmax and matmuls (not SDPA) so that autograd reaches `m`.
impl Attention {
    /// Post-rotary keys and the values of `x`, kv heads repeated to the query heads.
    fn key_values(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> KeyValues {
        let groups = self.num_heads / self.num_kv_heads;
        let k = apply_rotary(
            &self.split_heads(&self.k_proj, x, self.num_kv_heads),
            cos,
            sin,
        );
        (
            k.repeat_interleave_self_int(groups, 1, None),
            self.values(x),
        )
    }

    /// The key-weighted attention of the queries of `x` `[1, S, D]`, which follow `context`'s C
    /// positions: query i sees every context key and its own keys `<= i`, key j weighed by `m[j]`
    /// (`m` `[C + S]`), or by `m[i][j]` (`m` `[S, C + S]`, one row per query). Also returns `x`'s
    /// own keys and values, for a later call's context, and with `probe` the attention's
    /// [`AttentionProbe`].
    fn forward_key_weighted(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        m: &Tensor,
        context: Option<&KeyValues>,
        probe: bool,
    ) -> (Tensor, KeyValues, Option<AttentionProbe>) {
        let s = x.size()[1];
        let q = apply_rotary(&self.split_heads(&self.q_proj, x, self.num_heads), cos, sin);
        let own = self.key_values(x, cos, sin);
        let (k, v, c) = match context {
            Some((ck, cv)) => (
                Tensor::cat(&[ck, &own.0], 2),
                Tensor::cat(&[cv, &own.1], 2),
                ck.size()[2],
            ),
            None => (own.0.shallow_clone(), own.1.shallow_clone(), 0),
        };
        let t = c + s;
        // Query i sits at key index c + i: keys j > c + i are its future.
        let future = Tensor::ones([s, t], (Kind::Bool, x.device())).triu(c + 1);
        let scores =
            (q.matmul(&k.transpose(-1, -2)) * self.scaling).masked_fill(&future, f64::NEG_INFINITY);
        // Shift by the largest score among the keys still present (a constant per row, so no
        // gradient): every row's normaliser is then ≥ 1 (position 0, never visual, is present),
        // and the bound keeps removed keys of huge score from overflowing into 0 · ∞.
        let dead = m.le(0.0).view([1, 1, -1, t]);
        let top = scores
            .masked_fill(&dead, f64::NEG_INFINITY)
            .amax(-1, true)
            .detach();
        let unweighted = (scores - top).clamp_max(50.0).exp();
        let weighted = &unweighted * m.view([1, 1, -1, t]);
        let normaliser = weighted.sum_dim_intlist(-1, true, x.kind());
        let probs = &weighted / &normaliser;
        let probe = probe.then(|| AttentionProbe {
            probs: probs.shallow_clone(),
            ratios: (&unweighted / &normaliser).detach(),
        });
        (self.project_out(&probs.matmul(&v)), own, probe)
    }
}

/// Which query rows of a `[B, S, ·]` sequence batch a probed layer computes
/// ([`Decoder::forward_probed_padded`]).
enum QueryRows {
    /// Every position from this one on, in every row.
    From(i64),
    /// One position per row, `[B, 1, 1]` int64 (each row's last real position).
    Each(Tensor),
}

impl QueryRows {
    /// The selected rows of `t` `[B, S, E]` (or `[1, S, E]` shared by the rows in `From`).
    fn select(&self, t: &Tensor) -> Tensor {
        match self {
            Self::From(first) => t.narrow(1, *first, t.size()[1] - first),
            Self::Each(index) => {
                let e = t.size()[2];
                t.gather(1, &index.expand([-1, 1, e], false), false)
            }
        }
    }
}

impl Attention {
    /// Causal attention of `x` `[B, S, D]` (no cache) as an explicit softmax, for the queries
    /// `rows` selects (`hidden` marking each one's hidden keys, broadcast to
    /// `[B, heads, queries, S]`): the output `[B, queries, D]` and the attention probabilities
    /// `[B, heads, queries, S]` as tensors of the graph. It is the key-weighted attention at
    /// weight 1 on every key without the weights' own operations (their shift by the largest
    /// score present is softmax's, and their bound on the shifted scores cannot bind at weight 1),
    /// so a gradient with respect to these probabilities is the one that linearises a removal at
    /// the unpruned run ([`Decoder::forward_probed`]).
    fn forward_probed(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        rows: &QueryRows,
        hidden: &Tensor,
    ) -> (Tensor, Tensor) {
        let q = apply_rotary(
            &self.split_heads(&self.q_proj, &rows.select(x), self.num_heads),
            &rows.select(cos),
            &rows.select(sin),
        );
        let (k, v) = self.key_values(x, cos, sin);
        let scores =
            (q.matmul(&k.transpose(-1, -2)) * self.scaling).masked_fill(hidden, f64::NEG_INFINITY);
        let probs = scores.softmax(-1, x.kind());
        (self.project_out(&probs.matmul(&v)), probs)
    }
}

/// Queries whose attention a key-weighted forward fixes instead of weighing it by the key weights:
/// query i with `rows[i]` weighs key j by `weights[i][j]` in every layer (`rows` `[S]` bool,
/// `weights` `[S, S]`, both on the model's device and `weights` in its kind). Keep-only's
/// linearisation point fixes the visual queries to their own window, so that the visual tokens'
/// states do not depend on the key weights where no text token stands inside the image
/// (`gradient::own_window_queries`).
pub struct FixedQueries {
    pub rows: Tensor,
    pub weights: Tensor,
}

impl FixedQueries {
    /// One layer's key weights `[S, S]` (queries × keys): the fixed rows' own, every other row the
    /// layer's key weights `m` `[S]`; `m` itself without fixed queries. Differentiable in `m`.
    fn layer_weights(fixed: Option<&Self>, m: &Tensor) -> Tensor {
        match fixed {
            None => m.shallow_clone(),
            Some(f) => f.weights.where_self(&f.rows.unsqueeze(1), &m.unsqueeze(0)),
        }
    }
}

/// What a probed key-weighted attention exposes, `[1, heads, queries, keys]` each: `probs`, its
/// attention probabilities as a tensor of the graph (for gradients with respect to them), and
/// `ratios`, each key's unnormalised attention at weight 1 over the normaliser of the keys as
/// weighed (`exp(s_ij) / Σ_k m_k·exp(s_ik)`). Keys of weight 0 whose ratios sum to R over a query
/// would take the share `R / (1 + R)` of its attention at weight 1, the other keys keeping theirs
/// in proportion.
pub struct AttentionProbe {
    pub probs: Tensor,
    pub ratios: Tensor,
}

impl DecoderLayer {
    fn forward_key_weighted(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        m: &Tensor,
        context: Option<&KeyValues>,
        probe: bool,
    ) -> (Tensor, (KeyValues, Option<AttentionProbe>)) {
        self.around_attention(x, |normed| {
            let (out, own, probe) = self
                .self_attn
                .forward_key_weighted(normed, cos, sin, m, context, probe);
            (out, (own, probe))
        })
    }

    /// This layer's keys and values of its input `x` (input norm applied), heads repeated.
    fn key_values(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> KeyValues {
        self.self_attn
            .key_values(&self.input_layernorm.forward(x), cos, sin)
    }
}

impl Decoder {
    /// Decoder layers `from..` over one sequence `hidden` `[1, S, D]` at `position_ids` (`[1, S]` or
    /// `[3, 1, S]`), layer `from + i` weighing its keys by `key_weights` row i (`[L − from, S]`, see
    /// the soft mask above) for every query but the `fixed` ones, then the final norm.
    /// Differentiable in `key_weights`.
    pub fn forward_key_weighted(
        &self,
        from: usize,
        hidden: &Tensor,
        position_ids: &Tensor,
        key_weights: &Tensor,
        fixed: Option<&FixedQueries>,
    ) -> Tensor {
        self.layers_from(
            from,
            hidden,
            position_ids,
            Some((key_weights, fixed)),
            false,
        )
        .0
    }

    /// [`Self::forward_key_weighted`] that also returns each layer's [`AttentionProbe`] (every
    /// query's attention over every key).
    pub fn forward_key_weighted_probed(
        &self,
        from: usize,
        hidden: &Tensor,
        position_ids: &Tensor,
        key_weights: &Tensor,
    ) -> (Tensor, Vec<AttentionProbe>) {
        self.layers_from(from, hidden, position_ids, Some((key_weights, None)), true)
    }

    /// Every decoder layer over one sequence `hidden` `[1, S, D]` (the layer-0 input), causal and
    /// without cache, each layer's attention an explicit softmax (`Attention::forward_probed`), then
    /// the final norm of the last position (`[1, 1, D]`); also returns each layer's attention
    /// probabilities as tensors of the graph (`hidden` must require grad for them to be),
    /// `[1, heads, S, S]`, and for the last layer only the last query's `[1, heads, 1, S]`: no other
    /// row of the last layer reaches the next-token distribution. This is the key-weighted forward
    /// ([`Self::forward_key_weighted_probed`]) at weight 1 on every key, the point where leave-out's
    /// estimate is linearised, with fewer operations forward and backward.
    pub fn forward_probed(&self, hidden: &Tensor, position_ids: &Tensor) -> (Tensor, Vec<Tensor>) {
        let s = hidden.size()[1];
        self.forward_probed_padded(hidden, position_ids, &[s])
    }

    /// [`Self::forward_probed`] of several sequences at once: row b of `hidden` `[B, S, D]` holds
    /// a sequence of `lengths[b]` positions followed by padding, its position ids row b of
    /// `position_ids` (`[B, S]` or `[3, B, S]`, any value at the padding). Causal attention keeps
    /// right padding out of every real position (a query sees only the keys before it), so each
    /// row's real positions are those of its own call; the last layer computes each row's last
    /// real query, whose keys from there on are hidden. Returns the final norm of each row's last
    /// position `[B, 1, D]` and each layer's probabilities `[B, heads, S, S]` (the last layer's
    /// `[B, heads, 1, S]`); a row's gradients are its own, the rows never mix. Batching only makes
    /// the matrix products larger: on a CPU a small model's operators cost per call as much as per
    /// element.
    pub fn forward_probed_padded(
        &self,
        hidden: &Tensor,
        position_ids: &Tensor,
        lengths: &[i64],
    ) -> (Tensor, Vec<Tensor>) {
        let (cos, sin) = self.rotary_emb.cos_sin(position_ids, hidden.kind());
        let (b, s) = (hidden.size()[0], hidden.size()[1]);
        assert_eq!(lengths.len() as i64, b, "one length per row");
        let device = hidden.device();
        let future = Tensor::ones([s, s], (Kind::Bool, device)).triu(1);
        let (last_rows, last_hidden) = if lengths.iter().all(|&n| n == s) {
            (
                QueryRows::From(s - 1),
                Tensor::zeros([1, s], (Kind::Bool, device)),
            )
        } else {
            let last: Vec<i64> = lengths.iter().map(|&n| n - 1).collect();
            let last = Tensor::from_slice(&last).to_device(device);
            // Row b's keys after its last real position are padding.
            let hidden_keys = Tensor::arange(s, (Kind::Int64, device))
                .unsqueeze(0)
                .gt_tensor(&last.unsqueeze(1))
                .view([b, 1, 1, s]);
            (QueryRows::Each(last.view([b, 1, 1])), hidden_keys)
        };
        let last = self.layers.len() - 1;
        let every = QueryRows::From(0);
        let mut h = hidden.shallow_clone();
        let mut probs = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (rows, hidden_keys) = if i == last {
                (&last_rows, &last_hidden)
            } else {
                (&every, &future)
            };
            let (next, p) = layer.around_attention_from(&h, rows, |normed| {
                layer
                    .self_attn
                    .forward_probed(normed, &cos, &sin, rows, hidden_keys)
            });
            h = next;
            probs.push(p);
        }
        (self.norm.forward(&h), probs)
    }

    /// [`Self::forward_key_weighted`] with its first `context` positions run without autograd:
    /// their keys and values are computed once per layer (the last layer needs nothing more) and
    /// the other positions attend to them. Returns the final-norm hidden states of the last
    /// `S − context` positions. The gradient with respect to a key weight is the whole forward's
    /// when none of its paths to the output passes through a context position's hidden state. At
    /// keep-only's linearisation point that holds for every visual key: text before the image sees
    /// no visual key (causal attention), and a visual position's state does not depend on the key
    /// weights (its query is `fixed`) and reaches the output only through its own keys and values.
    /// Also returns each layer's [`AttentionProbe`] of the differentiated positions' queries.
    pub fn forward_key_weighted_after_context(
        &self,
        from: usize,
        hidden: &Tensor,
        position_ids: &Tensor,
        key_weights: &Tensor,
        fixed: Option<&FixedQueries>,
        context: i64,
    ) -> (Tensor, Vec<AttentionProbe>) {
        // A batch of one sequence.
        self.forward_key_weighted_after_context_stacked(
            &[(from, hidden)],
            position_ids,
            key_weights,
            fixed,
            context,
        )
    }

    /// [`Self::forward_key_weighted_after_context`] of several cut layers in one batch: row b
    /// starts at layer `starts[b].0` from its input `starts[b].1` `[1, S, D]` (`starts` sorted by
    /// layer), and each layer from the first start runs once, over the rows started by then, every
    /// row weighing layer l's keys by row `l − starts[0].0` of `key_weights` for every query but the
    /// `fixed` ones. The rows are independent sequences, so each row's value and gradients are
    /// those of its own call; only the number of passes through each layer falls. Returns the
    /// final-norm hidden states of the last `S − context` positions `[B, S − context, D]` and, per
    /// layer from the first start, the [`AttentionProbe`] of the rows started by then (the first
    /// rows of the batch).
    pub fn forward_key_weighted_after_context_stacked(
        &self,
        starts: &[(usize, &Tensor)],
        position_ids: &Tensor,
        key_weights: &Tensor,
        fixed: Option<&FixedQueries>,
        context: i64,
    ) -> (Tensor, Vec<AttentionProbe>) {
        assert!(
            !starts.is_empty() && starts.windows(2).all(|w| w[0].0 <= w[1].0),
            "stacked starts: at least one, sorted by layer"
        );
        let first = starts[0].0;
        let s = starts[0].1.size()[1];
        let (cos, sin) = self.rotary_emb.cos_sin(position_ids, starts[0].1.kind());
        let part = |t: &Tensor, start: i64, len: i64| t.narrow(1, start, len);
        let (context_cos, context_sin) = (part(&cos, 0, context), part(&sin, 0, context));
        let (cos, sin) = (
            part(&cos, context, s - context),
            part(&sin, context, s - context),
        );
        let last = self.layers.len() - 1;
        let mut joined = 0;
        let (mut context_h, mut h): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut probes = Vec::with_capacity(self.layers.len() - first);
        for (l, layer) in self.layers.iter().enumerate().skip(first) {
            let joining: Vec<&Tensor> = starts[joined..]
                .iter()
                .take_while(|(k, _)| *k == l)
                .map(|(_, x)| *x)
                .collect();
            if !joining.is_empty() {
                joined += joining.len();
                let join = |old: Option<Tensor>, start: i64, len: i64| {
                    let new: Vec<Tensor> = joining.iter().map(|x| part(x, start, len)).collect();
                    let new = Tensor::cat(&new, 0);
                    Some(match old {
                        Some(old) => Tensor::cat(&[old, new], 0),
                        None => new,
                    })
                };
                context_h = join(context_h.take(), 0, context);
                h = join(h.take(), context, s - context);
            }
            let i = (l - first) as i64;
            // The positions up to the image's end, without autograd: their keys and values are
            // the differentiated positions' context.
            let (context_kv, next_context) = tch::no_grad(|| {
                let x = context_h.as_ref().expect("a row has started");
                if l == last {
                    (layer.key_values(x, &context_cos, &context_sin), None)
                } else {
                    let w = FixedQueries::layer_weights(fixed, &key_weights.get(i).detach());
                    let w = if fixed.is_some() {
                        w.narrow(0, 0, context).narrow(1, 0, context)
                    } else {
                        w.narrow(0, 0, context)
                    };
                    let (next, (own, _)) =
                        layer.forward_key_weighted(x, &context_cos, &context_sin, &w, None, false);
                    (own, Some(next))
                }
            });
            context_h = next_context;
            let w = FixedQueries::layer_weights(fixed, &key_weights.get(i));
            let w = if fixed.is_some() {
                w.narrow(0, context, s - context)
            } else {
                w
            };
            let x = h.take().expect("a row has started");
            let (next, (_, probe)) =
                layer.forward_key_weighted(&x, &cos, &sin, &w, Some(&context_kv), true);
            probes.extend(probe);
            h = Some(next);
        }
        (self.norm.forward(&h.expect("a layer ran")), probes)
    }
}
