//! CLIP vision tower (`modeling_clip.py`, transformers 5.17.0: `CLIPVisionTransformer`, which LLaVA
//! holds as `model.vision_tower`).

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::Tensor;

use crate::nn::{sdpa, Activation, LayerNorm, Linear};
use crate::weights::Weights;

/// `CLIPVisionConfig` with HF's defaults for omitted fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// What `LlavaConfig` uses when `vision_config` is absent (CLIP ViT-L/14-336).
    pub fn llava_default() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            ..Self::default()
        }
    }

    /// Checks the counts the tower divides by; `field` prefixes field names in errors.
    pub fn validate(&self, field: &str) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ] {
            if v <= 0 {
                bail!("{field}{name}: {v} must be positive");
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "{field}num_attention_heads: {} heads do not divide hidden_size {}",
                self.num_attention_heads,
                self.hidden_size
            );
        }
        if self.image_size % self.patch_size != 0 {
            bail!(
                "{field}patch_size: {} does not divide image_size {}",
                self.patch_size,
                self.image_size
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!(
                "{field}layer_norm_eps: {} must be a positive number",
                self.layer_norm_eps
            );
        }
        Activation::from_hf_name(&self.hidden_act)
            .map_err(|e| anyhow::anyhow!("{field}hidden_act: {e}"))?;
        Ok(())
    }

    pub fn num_patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }
}

struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: i64,
    head_dim: i64,
    scale: f64,
}

impl ClipAttention {
    fn load(w: &Weights, p: &str, cfg: &ClipVisionConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_attention_heads;
        Ok(Self {
            q_proj: Linear::load(w, &format!("{p}.q_proj"), h, h, true)?,
            k_proj: Linear::load(w, &format!("{p}.k_proj"), h, h, true)?,
            v_proj: Linear::load(w, &format!("{p}.v_proj"), h, h, true)?,
            out_proj: Linear::load(w, &format!("{p}.out_proj"), h, h, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, s, _) = x.size3().expect("[B, S, D]");
        let shape = [b, s, self.num_heads, self.head_dim];
        let q = self.q_proj.forward(x).view(shape).transpose(1, 2);
        let k = self.k_proj.forward(x).view(shape).transpose(1, 2);
        let v = self.v_proj.forward(x).view(shape).transpose(1, 2);
        // The vision tower is bidirectional: CLIPAttention.is_causal = False, no mask.
        let out = sdpa(&q, &k, &v, false, self.scale, false);
        let out = out.transpose(1, 2).contiguous().reshape([b, s, -1]);
        self.out_proj.forward(&out)
    }

    /// What VisionZip reads of this attention over `x` (already `layer_norm1`-ed): the attention
    /// probabilities `[B, heads, S, S]` (f32, the eager softmax) and the key states averaged over heads
    /// `[B, S, head_dim]`.
    fn probabilities_and_key_mean(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (b, s, _) = x.size3().expect("[B, S, D]");
        let shape = [b, s, self.num_heads, self.head_dim];
        let q = self.q_proj.forward(x).view(shape).transpose(1, 2);
        let k = self.k_proj.forward(x).view(shape).transpose(1, 2);
        let probs = (q.matmul(&k.transpose(-1, -2)) * self.scale)
            .to_kind(tch::Kind::Float)
            .softmax(-1, tch::Kind::Float);
        (probs, k.mean_dim(1, false, None))
    }
}

struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    fn load(w: &Weights, p: &str, cfg: &ClipVisionConfig) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: ClipAttention::load(w, &format!("{p}.self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), h, eps)?,
            fc1: Linear::load(w, &format!("{p}.mlp.fc1"), h, i, true)?,
            fc2: Linear::load(w, &format!("{p}.mlp.fc2"), i, h, true)?,
            act: Activation::from_hf_name(&cfg.hidden_act)?,
            layer_norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), h, eps)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x));
        let h = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.layer_norm2.forward(&x))),
        );
        x + h
    }
}

/// `CLIPVisionTransformer` up to the encoder (the pooled `post_layernorm` output is never used by LLaVA).
pub struct ClipVisionModel {
    pub cfg: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipEncoderLayer>,
}

impl ClipVisionModel {
    /// Loads `{prefix}.embeddings.*`, `{prefix}.pre_layrnorm`, and the first `num_layers` encoder layers
    /// (layers past the selected feature layer are never run, so they are not read).
    pub fn load(
        w: &Weights,
        prefix: &str,
        cfg: &ClipVisionConfig,
        num_layers: usize,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let e = format!("{prefix}.embeddings");
        Ok(Self {
            class_embedding: w.get(&format!("{e}.class_embedding"), &[h])?,
            patch_embedding: w.get(
                &format!("{e}.patch_embedding.weight"),
                &[h, cfg.num_channels, cfg.patch_size, cfg.patch_size],
            )?,
            position_embedding: w.get(
                &format!("{e}.position_embedding.weight"),
                &[cfg.num_patches() + 1, h],
            )?,
            pre_layrnorm: LayerNorm::load(
                w,
                &format!("{prefix}.pre_layrnorm"),
                h,
                cfg.layer_norm_eps,
            )?,
            layers: (0..num_layers)
                .map(|i| ClipEncoderLayer::load(w, &format!("{prefix}.encoder.layers.{i}"), cfg))
                .collect::<Result<_>>()?,
            cfg: cfg.clone(),
        })
    }

    /// HF `hidden_states` of the vision tower: element 0 is the embeddings after `pre_layrnorm`,
    /// element i the output of encoder layer i, for i up to the number of loaded layers.
    pub fn hidden_states(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = self.embeddings(pixel_values)?;
        let mut states = vec![h.shallow_clone()];
        for layer in &self.layers {
            h = layer.forward(&h);
            states.push(h.shallow_clone());
        }
        Ok(states)
    }

    /// Encoder layer `layer` (0-based, a loaded one) as VisionZip and ToDRE read it: its output
    /// `[B, S, D]` (CLS first), its attention probabilities `[B, heads, S, S]` (f32) and its key states
    /// averaged over heads `[B, S, head_dim]`.
    pub fn layer_attention(
        &self,
        pixel_values: &Tensor,
        layer: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if layer >= self.layers.len() {
            bail!(
                "vision tower: layer {layer} is not loaded ({} layers run)",
                self.layers.len()
            );
        }
        let mut h = self.embeddings(pixel_values)?;
        for l in &self.layers[..layer] {
            h = l.forward(&h);
        }
        let at = &self.layers[layer];
        let (probs, key_mean) = at
            .self_attn
            .probabilities_and_key_mean(&at.layer_norm1.forward(&h));
        Ok((at.forward(&h), probs, key_mean))
    }

    /// Patch and class embeddings plus position embeddings, after `pre_layrnorm`: `hidden_states[0]`.
    fn embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let size = pixel_values.size();
        let side = self.cfg.image_size;
        if size.len() != 4 || size[1] != self.cfg.num_channels || size[2] != side || size[3] != side
        {
            bail!(
                "pixel values have shape {size:?}, the vision tower expects [N, {}, {side}, {side}]",
                self.cfg.num_channels
            );
        }
        let b = size[0];
        let patches = pixel_values
            .to_kind(self.patch_embedding.kind())
            .conv2d(
                &self.patch_embedding,
                None::<Tensor>,
                [self.cfg.patch_size, self.cfg.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let class = self.class_embedding.expand([b, 1, -1], false);
        let embeddings = Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0);
        Ok(self.pre_layrnorm.forward(&embeddings))
    }
}
