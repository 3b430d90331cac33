//! Qwen2.5-VL (`modeling_qwen2_5_vl.py`, transformers 5.17.0):
//! `Qwen2_5_VLForConditionalGeneration { model: Qwen2_5_VLModel { visual, language_model }, lm_head }`.
//!
//! The vision tower (`Qwen2_5_VisionTransformerPretrainedModel`) embeds 14x14x2 patches with a conv3d,
//! rotates q/k with a 2-D (row, column) rotary embedding in f32, attends inside 8x8-patch windows (full
//! attention in `fullatt_block_indexes`), and merges 2x2 patches into one language-model token. The
//! language model (`Qwen2_5_VLTextModel`) is a Qwen2 decoder (q/k/v bias, GQA) with M-RoPE: 3-D position
//! ids (temporal, height, width) from `get_rope_index`, each axis rotating its `mrope_section` of the
//! head dimensions. Interventions drop tokens between decoder layers exactly as in [`super::llama`]; a kept
//! token keeps its 3-D position ids.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use super::llama::DecoderOutput;
use crate::intervention::{Intervention, PositionPolicy};
use crate::nn::{rotate_half, sdpa, Activation, Linear, RmsNorm};
use crate::processor::{load_tokenizer, DEFAULT_RESAMPLE_ORDER};
use crate::weights::{KeyRename, Weights};
use horizon_data::imageproc::{self, Qwen2VlImageProcessorConfig, ResampleOrder};

/// Published Qwen2.5-VL checkpoints store pre-5.0 names; HF renames them on load the same way.
/// Checkpoints saved by transformers 5.x already use the module-tree names and match none of these.
pub const QWEN2_5_VL_KEY_RENAMES: &[KeyRename] = &[
    KeyRename {
        on_disk: "visual.",
        in_model: "model.visual.",
    },
    KeyRename {
        on_disk: "model.embed_tokens.",
        in_model: "model.language_model.embed_tokens.",
    },
    KeyRename {
        on_disk: "model.layers.",
        in_model: "model.language_model.layers.",
    },
    KeyRename {
        on_disk: "model.norm.",
        in_model: "model.language_model.norm.",
    },
];

// ---------------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------------

/// `Qwen2_5_VLVisionConfig` with HF's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Qwen2_5VlVisionConfig {
    pub depth: i64,
    pub hidden_size: i64,
    pub hidden_act: String,
    pub intermediate_size: i64,
    #[serde(alias = "num_attention_heads")]
    pub num_heads: i64,
    pub in_channels: i64,
    pub patch_size: i64,
    pub spatial_merge_size: i64,
    pub temporal_patch_size: i64,
    pub tokens_per_second: i64,
    pub window_size: i64,
    pub out_hidden_size: i64,
    pub fullatt_block_indexes: Vec<i64>,
    /// Axial rope settings (`rope_theta`, default 10000).
    pub rope_parameters: Option<serde_json::Value>,
}

impl Default for Qwen2_5VlVisionConfig {
    fn default() -> Self {
        Self {
            depth: 32,
            hidden_size: 3584,
            hidden_act: "silu".into(),
            intermediate_size: 3420,
            num_heads: 16,
            in_channels: 3,
            patch_size: 14,
            spatial_merge_size: 2,
            temporal_patch_size: 2,
            tokens_per_second: 4,
            window_size: 112,
            out_hidden_size: 3584,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            rope_parameters: None,
        }
    }
}

impl Qwen2_5VlVisionConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10000.0)
    }

    /// Merged units per window side: `window_size / spatial_merge_size / patch_size` (4 for 112/2/14).
    pub fn vit_merger_window_size(&self) -> i64 {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
}

/// `Qwen2_5_VLTextConfig` with HF's defaults. In a flat (pre-5.0) `config.json` these fields sit at the
/// top level.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Qwen2_5VlTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub use_sliding_window: Option<bool>,
    pub rope_theta: Option<f64>,
    /// transformers 5.x: `{rope_type, rope_theta, mrope_section}`.
    pub rope_parameters: Option<serde_json::Value>,
    /// transformers 4.x: `{type: "mrope", mrope_section}`.
    pub rope_scaling: Option<serde_json::Value>,
    pub tie_word_embeddings: bool,
}

impl Default for Qwen2_5VlTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 152064,
            hidden_size: 8192,
            intermediate_size: 29568,
            num_hidden_layers: 80,
            num_attention_heads: 64,
            num_key_value_heads: Some(8),
            hidden_act: "silu".into(),
            max_position_embeddings: 32768,
            rms_norm_eps: 1e-5,
            use_sliding_window: Some(false),
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            tie_word_embeddings: false,
        }
    }
}

impl Qwen2_5VlTextConfig {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// `hidden_size // num_attention_heads` (Qwen2.5-VL ignores any `head_dim` field).
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// HF `convert_rope_params_to_dict`: `rope_scaling` wins over `rope_parameters`.
    fn rope_dict(&self) -> Option<&serde_json::Value> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_dict()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(1_000_000.0)
    }

    /// `rope_parameters["mrope_section"]`, default `[16, 24, 24]`.
    pub fn mrope_section(&self) -> Result<Vec<i64>> {
        match self.rope_dict().and_then(|p| p.get("mrope_section")) {
            None => Ok(vec![16, 24, 24]),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| anyhow!("mrope_section: {e} (expected a list of integers)")),
        }
    }

    /// Rope type after HF's normalisation ("mrope" is "default"); only "default" is implemented.
    pub fn rope_type(&self) -> String {
        self.rope_dict()
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(|t| t.as_str())
            .map(|t| if t == "mrope" { "default" } else { t })
            .unwrap_or("default")
            .to_string()
    }
}

/// `Qwen2_5_VLConfig`: nested (`text_config`, `vision_config`) as transformers 5.x saves it, or flat
/// (text fields at the top level) as the published checkpoints have it.
#[derive(Debug, Clone)]
pub struct Qwen2_5VlConfig {
    pub text_config: Qwen2_5VlTextConfig,
    pub vision_config: Qwen2_5VlVisionConfig,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct RawQwen2_5VlConfig {
    text_config: Option<serde_json::Value>,
    vision_config: Option<serde_json::Value>,
    image_token_id: Option<i64>,
    video_token_id: Option<i64>,
    vision_start_token_id: Option<i64>,
    vision_end_token_id: Option<i64>,
    tie_word_embeddings: Option<bool>,
}

impl Qwen2_5VlConfig {
    pub fn from_json(path: &Path, value: serde_json::Value) -> Result<Self> {
        let p = path.display();
        let field_err = |field: &str, e: serde_json::Error| anyhow!("{p}: field {field}: {e}");
        if !value.is_object() {
            bail!("{p}: expected a JSON object");
        }
        let raw: RawQwen2_5VlConfig =
            serde_json::from_value(value.clone()).map_err(|e| field_err("(top level)", e))?;
        let (text_config, text_field): (Qwen2_5VlTextConfig, &str) = match raw.text_config {
            Some(v) => (
                serde_json::from_value(v).map_err(|e| field_err("text_config", e))?,
                "text_config.",
            ),
            // Flat layout: the text fields are the top-level fields (HF pops them into a text config).
            None => (
                serde_json::from_value(value).map_err(|e| field_err("(text fields)", e))?,
                "",
            ),
        };
        let vision_config: Qwen2_5VlVisionConfig = match raw.vision_config {
            Some(v) => serde_json::from_value(v).map_err(|e| field_err("vision_config", e))?,
            None => Qwen2_5VlVisionConfig::default(),
        };
        let rope_field = if text_config.rope_scaling.is_some() {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        let ty = text_config.rope_type();
        if ty != "default" {
            bail!("{p}: field {text_field}{rope_field}: rope type '{ty}' is not supported (only 'default' / 'mrope')");
        }
        let section = text_config
            .mrope_section()
            .map_err(|e| anyhow!("{p}: field {text_field}{rope_field}.{e}"))?;
        if section.iter().sum::<i64>() * 2 != text_config.head_dim() || section.len() != 3 {
            bail!(
                "{p}: field {text_field}{rope_field}.mrope_section: {section:?} does not split head_dim {} into 3 halves",
                text_config.head_dim()
            );
        }
        if text_config.use_sliding_window == Some(true) {
            bail!("{p}: field {text_field}use_sliding_window: sliding-window attention is not supported");
        }
        let tc = &text_config;
        if tc.num_attention_heads <= 0
            || tc.hidden_size % tc.num_attention_heads != 0
            || tc.num_kv_heads() <= 0
            || tc.num_attention_heads % tc.num_kv_heads() != 0
        {
            bail!(
                "{p}: field {text_field}num_key_value_heads: {} heads, {} kv heads and hidden size {} do not divide",
                tc.num_attention_heads,
                tc.num_kv_heads(),
                tc.hidden_size
            );
        }
        let vc = &vision_config;
        if vc.num_heads <= 0 || vc.hidden_size % vc.num_heads != 0 || vc.head_dim() % 4 != 0 {
            bail!(
                "{p}: field vision_config.num_heads: {} heads do not divide hidden size {} into a head dim divisible by 4",
                vc.num_heads,
                vc.hidden_size
            );
        }
        if vc.vit_merger_window_size() <= 0 {
            bail!(
                "{p}: field vision_config.window_size: {} is smaller than one merged unit",
                vc.window_size
            );
        }
        let tie = raw.tie_word_embeddings.unwrap_or(false) || text_config.tie_word_embeddings;
        Ok(Self {
            text_config,
            vision_config,
            image_token_id: raw.image_token_id.unwrap_or(151655),
            video_token_id: raw.video_token_id.unwrap_or(151656),
            vision_start_token_id: raw.vision_start_token_id.unwrap_or(151652),
            vision_end_token_id: raw.vision_end_token_id.unwrap_or(151653),
            tie_word_embeddings: tie,
        })
    }

    /// Reads and parses `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, value) = crate::model::read_config(dir)?;
        Self::from_json(&path, value)
    }

    /// Language-model tokens one image of patch grid `[t, h, w]` becomes.
    pub fn num_image_tokens(&self, grid_thw: [i64; 3]) -> i64 {
        grid_thw.iter().product::<i64>() / self.vision_config.spatial_merge_size.pow(2)
    }
}

// ---------------------------------------------------------------------------------------------------
// Vision tower
// ---------------------------------------------------------------------------------------------------

/// `Qwen2_5_VLMLP`: SwiGLU, with biases in the vision tower.
struct Qwen2_5VlMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Qwen2_5VlMlp {
    fn load(w: &Weights, p: &str, h: i64, i: i64, act: &str, bias: bool) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(w, &format!("{p}.gate_proj"), h, i, bias)?,
            up_proj: Linear::load(w, &format!("{p}.up_proj"), h, i, bias)?,
            down_proj: Linear::load(w, &format!("{p}.down_proj"), i, h, bias)?,
            act: Activation::from_hf_name(act)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let gated = self.act.forward(&self.gate_proj.forward(x)) * self.up_proj.forward(x);
        self.down_proj.forward(&gated)
    }
}

/// `Qwen2_5_VisionPatchEmbed`: conv3d with stride = kernel, no bias.
struct Qwen2_5VisionPatchEmbed {
    proj: Tensor,
    in_channels: i64,
    temporal_patch_size: i64,
    patch_size: i64,
    embed_dim: i64,
}

impl Qwen2_5VisionPatchEmbed {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let (c, t, s, d) = (
            cfg.in_channels,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.hidden_size,
        );
        Ok(Self {
            proj: w.get(&format!("{p}.proj.weight"), &[d, c, t, s, s])?,
            in_channels: c,
            temporal_patch_size: t,
            patch_size: s,
            embed_dim: d,
        })
    }

    fn patch_dim(&self) -> i64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (t, s) = (self.temporal_patch_size, self.patch_size);
        x.view([-1, self.in_channels, t, s, s])
            .to_kind(self.proj.kind())
            .conv3d(
                &self.proj,
                None::<Tensor>,
                [t, s, s],
                [0, 0, 0],
                [1, 1, 1],
                1,
            )
            .view([-1, self.embed_dim])
    }
}

/// `Qwen2_5_VLVisionRotaryEmbedding`: axial rope, the same frequencies for rows and columns.
struct Qwen2_5VlVisionRotaryEmbedding {
    inv_freq: Tensor,
}

impl Qwen2_5VlVisionRotaryEmbedding {
    fn new(head_dim: i64, theta: f64, device: Device) -> Self {
        let spatial_dim = head_dim / 2;
        let exponent = Tensor::arange_start_step(0, spatial_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / spatial_dim as f64;
        Self {
            inv_freq: Tensor::pow_scalar(theta, &exponent).reciprocal(),
        }
    }

    /// cos and sin `[N, head_dim]` in f32 for (row, column) ids `[N, 2]`:
    /// `freqs = pos[..., None] * inv_freq` → `[N, 2, head_dim/4]`, then `cat(h, w)` twice.
    fn forward(&self, position_ids: &Tensor) -> (Tensor, Tensor) {
        let freqs = position_ids.unsqueeze(-1).to_kind(Kind::Float) * &self.inv_freq;
        let recompose = |f: Tensor| {
            let hw = Tensor::cat(&[f.select(1, 0), f.select(1, 1)], -1);
            Tensor::cat(&[&hw, &hw], -1)
        };
        (recompose(freqs.cos()), recompose(freqs.sin()))
    }
}

/// `Qwen2_5_VLVisionAttention` (SDPA path: one call per `cu_seqlens` chunk).
struct Qwen2_5VlVisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: i64,
    scaling: f64,
}

impl Qwen2_5VlVisionAttention {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            qkv: Linear::load(w, &format!("{p}.qkv"), d, 3 * d, true)?,
            proj: Linear::load(w, &format!("{p}.proj"), d, d, true)?,
            num_heads: cfg.num_heads,
            scaling: (cfg.head_dim() as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, chunk_lengths: &[i64], cos: &Tensor, sin: &Tensor) -> Tensor {
        let seq = x.size()[0];
        let qkv = self
            .qkv
            .forward(x)
            .reshape([seq, 3, self.num_heads, -1])
            .permute([1, 0, 2, 3]);
        let (q, k, v) = (qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2));
        // `apply_rotary_pos_emb_vision`: rotate in f32, cast back.
        let (q_kind, k_kind) = (q.kind(), k.kind());
        let (q, k) = (q.to_kind(Kind::Float), k.to_kind(Kind::Float));
        let (cos, sin) = (
            cos.unsqueeze(-2).to_kind(Kind::Float),
            sin.unsqueeze(-2).to_kind(Kind::Float),
        );
        let q = (&q * &cos + rotate_half(&q) * &sin).to_kind(q_kind);
        let k = (&k * &cos + rotate_half(&k) * &sin).to_kind(k_kind);
        let q = q.transpose(0, 1).unsqueeze(0);
        let k = k.transpose(0, 1).unsqueeze(0);
        let v = v.transpose(0, 1).unsqueeze(0);
        let qs = q.split_with_sizes(chunk_lengths, 2);
        let ks = k.split_with_sizes(chunk_lengths, 2);
        let vs = v.split_with_sizes(chunk_lengths, 2);
        let outs: Vec<Tensor> = qs
            .iter()
            .zip(&ks)
            .zip(&vs)
            .map(|((q, k), v)| {
                sdpa(q, k, v, false, self.scaling, false)
                    .transpose(1, 2)
                    .contiguous()
            })
            .collect();
        let out = Tensor::cat(&outs, 1).reshape([seq, -1]).contiguous();
        self.proj.forward(&out)
    }
}

/// `Qwen2_5_VLVisionBlock`.
struct Qwen2_5VlVisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: Qwen2_5VlVisionAttention,
    mlp: Qwen2_5VlMlp,
}

impl Qwen2_5VlVisionBlock {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            norm1: RmsNorm::load(w, &format!("{p}.norm1"), d, 1e-6)?,
            norm2: RmsNorm::load(w, &format!("{p}.norm2"), d, 1e-6)?,
            attn: Qwen2_5VlVisionAttention::load(w, &format!("{p}.attn"), cfg)?,
            mlp: Qwen2_5VlMlp::load(
                w,
                &format!("{p}.mlp"),
                d,
                cfg.intermediate_size,
                &cfg.hidden_act,
                true,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, chunk_lengths: &[i64], cos: &Tensor, sin: &Tensor) -> Tensor {
        let x = x + self
            .attn
            .forward(&self.norm1.forward(x), chunk_lengths, cos, sin);
        let h = self.mlp.forward(&self.norm2.forward(&x));
        x + h
    }
}

/// `Qwen2_5_VLPatchMerger`: RMSNorm, then 2x2 patches concatenated, Linear, GELU, Linear.
struct Qwen2_5VlPatchMerger {
    ln_q: RmsNorm,
    mlp_0: Linear,
    mlp_2: Linear,
    hidden_size: i64,
}

impl Qwen2_5VlPatchMerger {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let context = cfg.hidden_size;
        let hidden = context * cfg.spatial_merge_size.pow(2);
        Ok(Self {
            ln_q: RmsNorm::load(w, &format!("{p}.ln_q"), context, 1e-6)?,
            mlp_0: Linear::load(w, &format!("{p}.mlp.0"), hidden, hidden, true)?,
            mlp_2: Linear::load(w, &format!("{p}.mlp.2"), hidden, cfg.out_hidden_size, true)?,
            hidden_size: hidden,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.ln_q.forward(x).view([-1, self.hidden_size]);
        self.mlp_2.forward(&self.mlp_0.forward(&x).gelu("none"))
    }
}

/// `get_vision_position_ids`: (row, column) of every patch `[N, 2]`, laid out block-major over 2x2
/// merge blocks and repeated `t` times.
pub fn vision_position_ids(grids: &[[i64; 3]], merge: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        let mut frame = Vec::with_capacity((2 * h * w) as usize);
        for bh in 0..h / merge {
            for bw in 0..w / merge {
                for mh in 0..merge {
                    for mw in 0..merge {
                        frame.push(bh * merge + mh);
                        frame.push(bw * merge + mw);
                    }
                }
            }
        }
        for _ in 0..t {
            out.extend_from_slice(&frame);
        }
    }
    out
}

/// `get_vision_window_index`: the order of merged units that makes each window contiguous, and the
/// cumulative window lengths in patches (`unique_consecutive` drops empty windows).
pub fn vision_window_index(grids: &[[i64; 3]], merge: i64, window: i64) -> (Vec<i64>, Vec<i64>) {
    let mut window_index = Vec::new();
    let mut cu_window_seqlens = vec![0i64];
    let mut offset = 0;
    let unit = merge * merge;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        let (nh, nw) = (
            (lh + window - (lh % window)) / window,
            (lw + window - (lw % window)) / window,
        );
        for ti in 0..t {
            for wh in 0..nh {
                for ww in 0..nw {
                    let mut valid = 0;
                    for r in wh * window..(wh + 1) * window {
                        for c in ww * window..(ww + 1) * window {
                            if r < lh && c < lw {
                                window_index.push(offset + ti * lh * lw + r * lw + c);
                                valid += 1;
                            }
                        }
                    }
                    let last = *cu_window_seqlens.last().expect("starts with 0");
                    cu_window_seqlens.push(last + valid * unit);
                }
            }
        }
        offset += t * lh * lw;
    }
    cu_window_seqlens.dedup();
    (window_index, cu_window_seqlens)
}

fn chunk_lengths(cu: &[i64]) -> Vec<i64> {
    cu.windows(2).map(|w| w[1] - w[0]).collect()
}

/// `Qwen2_5_VisionTransformerPretrainedModel`.
pub struct Qwen2_5VisionTransformer {
    pub cfg: Qwen2_5VlVisionConfig,
    patch_embed: Qwen2_5VisionPatchEmbed,
    rotary_pos_emb: Qwen2_5VlVisionRotaryEmbedding,
    blocks: Vec<Qwen2_5VlVisionBlock>,
    merger: Qwen2_5VlPatchMerger,
}

impl Qwen2_5VisionTransformer {
    /// Loads `{prefix}.patch_embed`, `{prefix}.blocks.N.*`, `{prefix}.merger`.
    pub fn load(w: &Weights, prefix: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        Ok(Self {
            patch_embed: Qwen2_5VisionPatchEmbed::load(w, &format!("{prefix}.patch_embed"), cfg)?,
            rotary_pos_emb: Qwen2_5VlVisionRotaryEmbedding::new(
                cfg.head_dim(),
                cfg.rope_theta(),
                w.device(),
            ),
            blocks: (0..cfg.depth)
                .map(|i| Qwen2_5VlVisionBlock::load(w, &format!("{prefix}.blocks.{i}"), cfg))
                .collect::<Result<_>>()?,
            merger: Qwen2_5VlPatchMerger::load(w, &format!("{prefix}.merger"), cfg)?,
            cfg: cfg.clone(),
        })
    }

    pub fn dtype(&self) -> Kind {
        self.patch_embed.proj.kind()
    }

    /// `permute_input_for_window_attn`: rows grouped by merge unit, units reordered by `window_index`.
    fn permute(&self, x: &Tensor, window_index: &Tensor, seq: i64) -> Tensor {
        let unit = self.cfg.spatial_merge_size.pow(2);
        x.reshape([seq / unit, unit, -1])
            .index_select(0, window_index)
            .reshape([seq, -1])
    }

    /// Patches `[N, C·T·P·P]` of images with grids `[t, h, w]` to merged features
    /// `[N / merge², out_hidden_size]` in raster order of the merged grid (the `pooler_output`).
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[i64; 3]]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let merge = cfg.spatial_merge_size;
        let size = pixel_values.size();
        let expected: i64 = grids.iter().map(|g| g.iter().product::<i64>()).sum();
        if size.len() != 2 || size[0] != expected || size[1] != self.patch_embed.patch_dim() {
            bail!(
                "pixel values have shape {size:?}, the grids {grids:?} need [{expected}, {}]",
                self.patch_embed.patch_dim()
            );
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g[1] % merge != 0 || g[2] % merge != 0)
        {
            bail!("image grid {g:?} is not a multiple of spatial_merge_size {merge}");
        }
        let device = pixel_values.device();
        let pos = vision_position_ids(grids, merge);
        let position_ids = Tensor::from_slice(&pos).view([-1, 2]).to_device(device);
        let cu_seqlens: Vec<i64> = std::iter::once(0)
            .chain(
                grids
                    .iter()
                    .flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t as usize))
                    .scan(0, |acc, n| {
                        *acc += n;
                        Some(*acc)
                    }),
            )
            .collect();
        let (window_index, cu_window_seqlens) =
            vision_window_index(grids, merge, cfg.vit_merger_window_size());
        let full_lengths = chunk_lengths(&cu_seqlens);
        let window_lengths = chunk_lengths(&cu_window_seqlens);
        let window_index = Tensor::from_slice(&window_index).to_device(device);

        let h = self.patch_embed.forward(pixel_values);
        let seq = h.size()[0];
        let mut h = self.permute(&h, &window_index, seq);
        let (cos, sin) = self.rotary_pos_emb.forward(&position_ids);
        let cos = self.permute(&cos, &window_index, seq);
        let sin = self.permute(&sin, &window_index, seq);
        for (i, block) in self.blocks.iter().enumerate() {
            let lengths = if cfg.fullatt_block_indexes.contains(&(i as i64)) {
                &full_lengths
            } else {
                &window_lengths
            };
            h = block.forward(&h, lengths, &cos, &sin);
        }
        let reverse_indices = window_index.argsort(0, false);
        Ok(self.merger.forward(&h).index_select(0, &reverse_indices))
    }
}

// ---------------------------------------------------------------------------------------------------
// Language model
// ---------------------------------------------------------------------------------------------------

/// `Qwen2_5_VLRotaryEmbedding` (default rope type) with M-RoPE recomposition.
pub struct Qwen2_5VlRotaryEmbedding {
    inv_freq: Tensor,
    mrope_section: Vec<i64>,
}

impl Qwen2_5VlRotaryEmbedding {
    pub fn new(head_dim: i64, theta: f64, mrope_section: Vec<i64>, device: Device) -> Self {
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        Self {
            inv_freq: Tensor::pow_scalar(theta, &exponent).reciprocal(),
            mrope_section,
        }
    }

    /// cos and sin `[B, S, head_dim]` in `kind` for 3-D position ids `[3, B, S]`: per axis the K=1
    /// matmul `inv_freq[:, None] @ pos[None, :]` in f32, then dims `mrope_section[i]` taken from axis
    /// `i % 3`, concatenated, and the result doubled.
    pub fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
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
                .split_with_sizes(self.mrope_section.as_slice(), -1)
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

// The KV cache is shared with the Llama decoder; Qwen uses its `rope_deltas` (HF keeps it on the
// model) so that decoding steps know their M-RoPE position.
pub use super::llama::KvCache;

/// `Qwen2_5_VLAttention`: q/k/v with bias, o without.
pub struct Qwen2_5VlAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    scaling: f64,
}

impl Qwen2_5VlAttention {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlTextConfig) -> Result<Self> {
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
        );
        Ok(Self {
            q_proj: Linear::load(w, &format!("{p}.q_proj"), h, nh * hd, true)?,
            k_proj: Linear::load(w, &format!("{p}.k_proj"), h, nkv * hd, true)?,
            v_proj: Linear::load(w, &format!("{p}.v_proj"), h, nkv * hd, true)?,
            o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * hd, h, false)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            scaling: (hd as f64).powf(-0.5),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("[B, S, D] hidden states");
        let q = self
            .q_proj
            .forward(x)
            .view([b, s, -1, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k_proj
            .forward(x)
            .view([b, s, -1, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .view([b, s, -1, self.head_dim])
            .transpose(1, 2);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = &q * &cos + rotate_half(&q) * &sin;
        let mut k = &k * &cos + rotate_half(&k) * &sin;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        // transformers 5.17 `sdpa_attention_forward`: causal iff more than one query and no mask;
        // `enable_gqa` when kv heads are shared and head_dim <= 256, else `repeat_kv`.
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
        let out = sdpa(&q, &k, &v, s > 1, self.scaling, enable_gqa);
        let out = out.transpose(1, 2).contiguous().reshape([b, s, -1]);
        self.o_proj.forward(&out)
    }
}

/// `Qwen2_5_VLDecoderLayer`.
pub struct Qwen2_5VlDecoderLayer {
    self_attn: Qwen2_5VlAttention,
    mlp: Qwen2_5VlMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Qwen2_5VlDecoderLayer {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlTextConfig) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            self_attn: Qwen2_5VlAttention::load(w, &format!("{p}.self_attn"), cfg)?,
            mlp: Qwen2_5VlMlp::load(
                w,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                &cfg.hidden_act,
                false,
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

/// `Qwen2_5_VLTextModel`.
pub struct Qwen2_5VlTextModel {
    pub cfg: Qwen2_5VlTextConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Qwen2_5VlDecoderLayer>,
    pub norm: RmsNorm,
    pub rotary_emb: Qwen2_5VlRotaryEmbedding,
}

impl Qwen2_5VlTextModel {
    /// Loads `{prefix}.embed_tokens`, `{prefix}.layers.N.*`, `{prefix}.norm`.
    pub fn load(w: &Weights, prefix: &str, cfg: &Qwen2_5VlTextConfig) -> Result<Self> {
        let embed_tokens = w.get(
            &format!("{prefix}.embed_tokens.weight"),
            &[cfg.vocab_size, cfg.hidden_size],
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Qwen2_5VlDecoderLayer::load(w, &format!("{prefix}.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            w,
            &format!("{prefix}.norm"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
        )?;
        let rotary_emb = Qwen2_5VlRotaryEmbedding::new(
            cfg.head_dim(),
            cfg.rope_theta(),
            cfg.mrope_section()?,
            w.device(),
        );
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

    /// Prefill of `embeds` `[1, S, D]` at 3-D positions `position_ids` `[3, 1, S]` under `intervention`.
    /// At each cut the kept rows and their 3-D position ids are gathered along the sequence. `cache`,
    /// when given, records every layer's keys/values; `layer_inputs` receives each layer's input.
    pub fn prefill(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        intervention: &Intervention,
        mut cache: Option<&mut KvCache>,
        mut layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let (_, s, _) = embeds.size3()?;
        if position_ids.size() != [3, 1, s] {
            bail!(
                "position ids have shape {:?}, expected [3, 1, {s}]",
                position_ids.size()
            );
        }
        intervention.validate(s as usize, self.num_layers())?;
        if !intervention.is_none() && intervention.positions() == PositionPolicy::Renumbered {
            bail!("intervention: renumbered positions are not supported for Qwen2.5-VL yet");
        }
        let device = embeds.device();
        let mut kept: Vec<usize> = (0..s as usize).collect();
        let mut position_ids = position_ids.shallow_clone();
        let (mut cos, mut sin) = self.rotary_emb.cos_sin(&position_ids, embeds.kind());
        let mut h = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(cut) = intervention.cut_starting_at(i) {
                let rows: Vec<i64> = cut
                    .keep
                    .iter()
                    .map(|p| kept.binary_search(p).map(|r| r as i64))
                    .collect::<Result<_, _>>()
                    .map_err(|_| anyhow!("intervention: cut at layer {i} is not nested"))?;
                let rows = Tensor::from_slice(&rows).to_device(device);
                h = h.index_select(1, &rows);
                position_ids = position_ids.index_select(2, &rows);
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

    /// Runs decoder layers `from..` on hidden states `[B, S, D]` at 3-D position ids `[3, B, S]` (no
    /// cache, causal attention), then the final norm.
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

    /// One decoding step: `embeds` `[1, 1, D]` at M-RoPE position `position` on all three axes (HF:
    /// `cache_position + rope_deltas`). Each layer attends to what it cached.
    pub fn decode_step(&self, embeds: &Tensor, position: i64, cache: &mut KvCache) -> Tensor {
        let ids = Tensor::from_slice(&[position; 3])
            .to_device(embeds.device())
            .view([3, 1, 1]);
        let (cos, sin) = self.rotary_emb.cos_sin(&ids, embeds.kind());
        let mut h = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, &cos, &sin, Some(&mut cache.layers[i]));
        }
        self.norm.forward(&h)
    }
}

// ---------------------------------------------------------------------------------------------------
// Full model
// ---------------------------------------------------------------------------------------------------

/// `get_rope_index` for one sequence: 3-D position ids `[3, S]` (row-major) and `rope_deltas`.
///
/// Tokens are grouped into runs of text and of image tokens (HF's `mm_token_type_ids`); a text run gets
/// `arange(n) + current` on all axes, an image run with grid `[t, h, w]` gets the merged grid's
/// (t, row, col) plus `current`, after which `current` advances by `max(h, w) / merge`. Without images
/// the ids are `arange(S)` on all axes and `rope_deltas` is 0.
pub fn get_rope_index(
    input_ids: &[i64],
    grids: &[[i64; 3]],
    image_token_id: i64,
    spatial_merge_size: i64,
) -> Result<(Vec<[i64; 3]>, i64)> {
    let s = input_ids.len() as i64;
    if grids.is_empty() {
        return Ok(((0..s).map(|p| [p; 3]).collect(), 0));
    }
    let mut positions: Vec<[i64; 3]> = Vec::with_capacity(input_ids.len());
    let mut grid_iter = grids.iter();
    let mut current = 0i64;
    let mut i = 0;
    while i < input_ids.len() {
        let is_image = input_ids[i] == image_token_id;
        let end = (i..input_ids.len())
            .find(|&j| (input_ids[j] == image_token_id) != is_image)
            .unwrap_or(input_ids.len());
        let n = (end - i) as i64;
        if !is_image {
            positions.extend((0..n).map(|p| [p + current; 3]));
            current += n;
        } else {
            let &[t, h, w] = grid_iter.next().ok_or_else(|| {
                anyhow!(
                    "the prompt has more image-token runs than images ({})",
                    grids.len()
                )
            })?;
            let (lh, lw) = (h / spatial_merge_size, w / spatial_merge_size);
            if t * lh * lw != n {
                bail!("an image-token run of {n} tokens does not match image grid [{t}, {h}, {w}] ({} tokens)", t * lh * lw);
            }
            for ti in 0..t {
                for r in 0..lh {
                    for c in 0..lw {
                        positions.push([ti + current, r + current, c + current]);
                    }
                }
            }
            current += h.max(w) / spatial_merge_size;
        }
        i = end;
    }
    if grid_iter.next().is_some() {
        bail!(
            "the prompt has fewer image-token runs than images ({})",
            grids.len()
        );
    }
    let max = positions.iter().flatten().copied().max().unwrap_or(-1);
    Ok((positions, max + 1 - s))
}

/// `Qwen2_5_VLForConditionalGeneration`, with `model.visual` and `model.language_model` flattened.
pub struct Qwen2_5VlForConditionalGeneration {
    pub config: Qwen2_5VlConfig,
    pub visual: Qwen2_5VisionTransformer,
    pub language_model: Qwen2_5VlTextModel,
    pub lm_head: Linear,
}

impl Qwen2_5VlForConditionalGeneration {
    pub fn load(dir: &Path, config: Qwen2_5VlConfig, device: Device, kind: Kind) -> Result<Self> {
        let w = Weights::open(dir, QWEN2_5_VL_KEY_RENAMES, device, kind)
            .with_context(|| format!("loading {}", dir.display()))?;
        Self::from_weights(&w, config).with_context(|| format!("loading {}", dir.display()))
    }

    /// Builds the model from `w` (a checkpoint, or random weights for benchmarks).
    pub fn from_weights(w: &Weights, config: Qwen2_5VlConfig) -> Result<Self> {
        let visual = Qwen2_5VisionTransformer::load(w, "model.visual", &config.vision_config)?;
        let language_model =
            Qwen2_5VlTextModel::load(w, "model.language_model", &config.text_config)?;
        let tc = &config.text_config;
        if config.vision_config.out_hidden_size != tc.hidden_size {
            bail!(
                "config.json: field vision_config.out_hidden_size: {} differs from the text hidden_size {}",
                config.vision_config.out_hidden_size,
                tc.hidden_size
            );
        }
        // HF ties `lm_head.weight` to `model.language_model.embed_tokens.weight` when asked to.
        let lm_head = if config.tie_word_embeddings {
            Linear {
                weight: language_model.embed_tokens.shallow_clone(),
                bias: None,
            }
        } else {
            Linear::load(w, "lm_head", tc.hidden_size, tc.vocab_size, false)?
        };
        Ok(Self {
            config,
            visual,
            language_model,
            lm_head,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.language_model.num_layers()
    }

    pub fn device(&self) -> Device {
        self.language_model.embed_tokens.device()
    }

    /// `get_image_features`: patches `[N, patch_dim]` (any float kind; cast to the vision dtype) to
    /// merged image embeddings `[N / merge², hidden]`, images concatenated.
    pub fn image_features(&self, pixel_values: &Tensor, grid_thw: &[[i64; 3]]) -> Result<Tensor> {
        self.visual
            .forward(&pixel_values.to_kind(self.visual.dtype()), grid_thw)
    }

    /// Token embeddings `[1, S, D]` with the image embeddings scattered into the image-token positions.
    pub fn input_embeds(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        grid_thw: &[[i64; 3]],
    ) -> Result<Tensor> {
        let embeds = self.language_model.embed(input_ids);
        let Some(pixel_values) = pixel_values else {
            return Ok(embeds);
        };
        let features = self
            .image_features(pixel_values, grid_thw)?
            .to_kind(embeds.kind());
        let mask = input_ids.eq(self.config.image_token_id);
        let n_tokens = mask.sum(Kind::Int64).int64_value(&[]);
        let n_features = features.size()[0];
        if n_tokens != n_features {
            bail!(
                "the prompt has {n_tokens} image tokens (id {}) but the image gives {n_features} features",
                self.config.image_token_id
            );
        }
        let mask = mask.unsqueeze(-1).expand_as(&embeds);
        Ok(embeds.masked_scatter(&mask, &features))
    }

    /// 3-D position ids `[3, 1, S]` and `rope_deltas` of a prompt `[1, S]` (HF `get_rope_index`).
    pub fn rope_index(&self, input_ids: &Tensor, grid_thw: &[[i64; 3]]) -> Result<(Tensor, i64)> {
        let ids: Vec<i64> = Vec::try_from(input_ids.reshape([-1]).to_device(Device::Cpu))?;
        let (pos, delta) = get_rope_index(
            &ids,
            grid_thw,
            self.config.image_token_id,
            self.config.vision_config.spatial_merge_size,
        )?;
        let flat: Vec<i64> = (0..3)
            .flat_map(|axis| pos.iter().map(move |p| p[axis]))
            .collect();
        let t = Tensor::from_slice(&flat)
            .view([3, 1, ids.len() as i64])
            .to_device(input_ids.device());
        Ok((t, delta))
    }

    /// Prefill under `intervention`. With a `cache`, its `rope_deltas` is set for [`Self::decode_step`].
    pub fn prefill(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        grid_thw: &[[i64; 3]],
        intervention: &Intervention,
        cache: Option<&mut KvCache>,
        layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let embeds = self
            .input_embeds(input_ids, pixel_values, grid_thw)
            .context("building input embeddings")?;
        let grids = if pixel_values.is_some() {
            grid_thw
        } else {
            &[]
        };
        let (position_ids, rope_deltas) = self.rope_index(input_ids, grids)?;
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            c.rope_deltas = rope_deltas;
        }
        self.language_model
            .prefill(&embeds, &position_ids, intervention, cache, layer_inputs)
    }

    /// Logits `[1, V]` of the next token after decoding `token` at cache position `cache_position` (the
    /// prompt length plus tokens generated before it); its M-RoPE position is
    /// `cache_position + cache.rope_deltas` on all axes, as in HF generation.
    pub fn decode_step(&self, token: i64, cache_position: usize, cache: &mut KvCache) -> Tensor {
        let ids = Tensor::from_slice(&[token])
            .to_device(self.device())
            .unsqueeze(0);
        let embeds = self.language_model.embed(&ids);
        let position = cache_position as i64 + cache.rope_deltas;
        let hidden = self.language_model.decode_step(&embeds, position, cache);
        self.lm_head.forward(&hidden).select(1, 0)
    }
}

// ---------------------------------------------------------------------------------------------------
// Processor
// ---------------------------------------------------------------------------------------------------

/// The Qwen2.5-VL chat template's default system message.
pub const DEFAULT_SYSTEM_MESSAGE: &str = "You are a helpful assistant.";
const IMAGE_PAD: &str = "<|image_pad|>";

/// Tokenized prompt and preprocessed image on the model's device.
pub struct Qwen2_5VlInputs {
    /// `[1, S]` int64.
    pub input_ids: Tensor,
    /// `[num_patches, patch_dim]` float32 (cast to the vision dtype inside).
    pub pixel_values: Option<Tensor>,
    /// Patch grid `[t, h, w]` of each image.
    pub image_grid_thw: Vec<[i64; 3]>,
    /// Sequence indices of the visual tokens, ascending (raster order of the merged grid).
    pub visual_positions: Vec<usize>,
    /// Merged visual grid (rows, cols) = (grid_h / merge, grid_w / merge).
    pub visual_grid: (usize, usize),
}

/// `Qwen2_5_VLProcessor`: Qwen2-VL image processor + the checkpoint's tokenizer and chat template.
pub struct Qwen2_5VlProcessor {
    pub tokenizer: Tokenizer,
    pub image_config: Qwen2VlImageProcessorConfig,
    image_token_id: i64,
    merge_size: i64,
    eos_token_ids: Vec<i64>,
    /// Which Pillow release's bicubic resize to reproduce.
    pub resample_order: ResampleOrder,
}

impl Qwen2_5VlProcessor {
    pub fn load(dir: &Path, config: &Qwen2_5VlConfig) -> Result<Self> {
        let tokenizer = load_tokenizer(dir)?;
        let image_config =
            Qwen2VlImageProcessorConfig::from_file(dir.join("preprocessor_config.json"))?;
        match tokenizer.token_to_id(IMAGE_PAD) {
            Some(id) if id as i64 == config.image_token_id => {}
            other => bail!(
                "{}: token {IMAGE_PAD} has id {other:?}, config.json's image_token_id is {}",
                dir.join("tokenizer.json").display(),
                config.image_token_id
            ),
        }
        Ok(Self {
            tokenizer,
            image_config,
            image_token_id: config.image_token_id,
            merge_size: config.vision_config.spatial_merge_size,
            eos_token_ids: eos_token_ids(dir)?,
            resample_order: DEFAULT_RESAMPLE_ORDER,
        })
    }

    /// The chat-template prompt for one image and `question` (`add_generation_prompt=True`).
    pub fn prompt(question: &str, system: Option<&str>) -> String {
        let system = system.unwrap_or(DEFAULT_SYSTEM_MESSAGE);
        format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
        )
    }

    /// Token ids of `prompt` with its single `<|image_pad|>` expanded to `num_image_tokens` copies.
    pub fn tokenize(&self, prompt: &str, num_image_tokens: usize) -> Result<Vec<i64>> {
        if prompt.matches(IMAGE_PAD).count() != 1 {
            bail!("the prompt must contain {IMAGE_PAD} exactly once");
        }
        let expanded = prompt.replacen(IMAGE_PAD, &IMAGE_PAD.repeat(num_image_tokens), 1);
        let enc = self
            .tokenizer
            .encode(expanded, true)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Prompt string (with one `<|image_pad|>`) and RGB image to model inputs on `device`.
    pub fn prepare_prompt(
        &self,
        prompt: &str,
        image: &image::RgbImage,
        device: Device,
    ) -> Result<Qwen2_5VlInputs> {
        let patches =
            imageproc::qwen2vl_preprocess(image, &self.image_config, self.resample_order)?;
        let grid = patches.grid_thw.map(i64::from);
        let (gh, gw) = (grid[1] / self.merge_size, grid[2] / self.merge_size);
        let num_image_tokens = (grid[0] * gh * gw) as usize;
        let ids = self.tokenize(prompt, num_image_tokens)?;
        let visual_positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == self.image_token_id)
            .map(|(i, _)| i)
            .collect();
        if visual_positions.len() != num_image_tokens {
            bail!(
                "the tokenized prompt has {} image tokens, expected {num_image_tokens} (does the question contain the image token text?)",
                visual_positions.len()
            );
        }
        let pixel_values = Tensor::from_slice(&patches.data)
            .view([patches.num_patches as i64, patches.patch_dim as i64])
            .to_device(device);
        let n = ids.len() as i64;
        Ok(Qwen2_5VlInputs {
            input_ids: Tensor::from_slice(&ids).view([1, n]).to_device(device),
            pixel_values: Some(pixel_values),
            image_grid_thw: vec![grid],
            visual_positions,
            visual_grid: (gh as usize, gw as usize),
        })
    }

    /// Question + RGB image to model inputs, with the default chat template.
    pub fn prepare(
        &self,
        question: &str,
        image: &image::RgbImage,
        device: Device,
    ) -> Result<Qwen2_5VlInputs> {
        self.prepare_prompt(&Self::prompt(question, None), image, device)
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| anyhow!("decoding tokens: {e}"))
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_token_ids
    }
}

/// EOS ids for generation: `generation_config.json`, else `config.json` (top level or text_config).
fn eos_token_ids(dir: &Path) -> Result<Vec<i64>> {
    let mut sources = Vec::new();
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        let text = std::fs::read_to_string(&gen)
            .map_err(|e| anyhow!("{}: cannot read ({e})", gen.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: invalid JSON ({e})", gen.display()))?;
        sources.push(v.get("eos_token_id").cloned());
    }
    let (_, cfg) = crate::model::read_config(dir)?;
    sources.push(cfg.get("eos_token_id").cloned());
    sources.push(
        cfg.get("text_config")
            .and_then(|t| t.get("eos_token_id"))
            .cloned(),
    );
    for v in sources.into_iter().flatten() {
        match v {
            serde_json::Value::Number(n) => return Ok(n.as_i64().into_iter().collect()),
            serde_json::Value::Array(a) => {
                return Ok(a.iter().filter_map(|x| x.as_i64()).collect())
            }
            _ => {}
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_index_pads_and_drops_empty_windows() {
        // 6x10 merged units with 4x4 windows: 2x3 windows, valid counts 16,16,8 / 8,8,4.
        let (idx, cu) = vision_window_index(&[[1, 12, 20]], 2, 4);
        assert_eq!(idx.len(), 60);
        assert_eq!(&idx[..5], &[0, 1, 2, 3, 10]);
        assert_eq!(cu, vec![0, 64, 128, 160, 192, 224, 240]);
        // Divisible grid: the extra padded window is empty and dropped by unique_consecutive.
        let (_, cu) = vision_window_index(&[[1, 8, 8]], 2, 4);
        assert_eq!(cu, vec![0, 64]);
    }

    #[test]
    fn rope_index_of_one_image() {
        // text(2) image(2x3 merged) text(2)
        let img = 9;
        let ids = [1, 2, img, img, img, img, img, img, 3, 4];
        let (pos, delta) = get_rope_index(&ids, &[[1, 4, 6]], img, 2).unwrap();
        assert_eq!(pos[0], [0, 0, 0]);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[5], [2, 3, 2]);
        assert_eq!(pos[7], [2, 3, 4]);
        assert_eq!(pos[8], [5, 5, 5]);
        assert_eq!(delta, 7 - 10);
        let (pos, delta) = get_rope_index(&[5, 6, 7], &[], img, 2).unwrap();
        assert_eq!(pos, vec![[0; 3], [1; 3], [2; 3]]);
        assert_eq!(delta, 0);
    }

    #[test]
    fn flat_and_nested_configs() {
        let flat = serde_json::json!({
            "model_type": "qwen2_5_vl", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "tie_word_embeddings": true, "vision_config": {"hidden_size": 32, "num_heads": 2}
        });
        let c = Qwen2_5VlConfig::from_json(Path::new("config.json"), flat).unwrap();
        assert!(c.tie_word_embeddings);
        assert_eq!(c.text_config.mrope_section().unwrap(), vec![2, 3, 3]);
        assert_eq!(c.text_config.rope_theta(), 1e6);
        let nested = serde_json::json!({
            "model_type": "qwen2_5_vl",
            "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}},
            "vision_config": {"hidden_size": 32, "num_heads": 2}
        });
        let c = Qwen2_5VlConfig::from_json(Path::new("config.json"), nested).unwrap();
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.text_config.rope_theta(), 1e4);
        let bad = serde_json::json!({"text_config": {"hidden_size": "x"}});
        let e = Qwen2_5VlConfig::from_json(Path::new("config.json"), bad).unwrap_err();
        assert!(
            e.to_string().contains("config.json: field text_config"),
            "{e}"
        );
    }
}
