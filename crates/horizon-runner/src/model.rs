//! Model-family dispatch: a checkpoint directory's `config.json` names its `model_type`; everything
//! downstream (CLI, information sweeps, generation) talks to [`VlModel`] and never to a family directly.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use crate::intervention::Intervention;
use crate::models::llama::{DecoderOutput, KvCache};
use crate::models::llava::{LlavaConfig, LlavaForConditionalGeneration, LLAVA_KEY_RENAMES};
use crate::models::qwen2_5_vl::{
    Qwen2_5VlConfig, Qwen2_5VlForConditionalGeneration, QWEN2_5_VL_KEY_RENAMES,
};
use crate::weights::Weights;

/// Model families horizon runs, by HF `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llava", "qwen2_5_vl"];

/// Tokenized prompt and preprocessed image, on the model's device.
pub struct ModelInputs {
    /// `[1, S]` int64.
    pub input_ids: Tensor,
    /// `[1, 3, H, W]` float32 for LLaVA; cast to the vision tower's dtype inside.
    pub pixel_values: Option<Tensor>,
    /// Sequence indices holding visual tokens, ascending (the raster order of the image grid).
    pub visual_positions: Vec<usize>,
    /// Visual token grid (rows, cols); `visual_positions[r * cols + c]` is token (r, c). For
    /// Qwen2.5-VL it is the merged-token grid of the image, which varies with its resolution.
    pub visual_grid: (usize, usize),
    /// Qwen2.5-VL: patch grid `[t, h, w]` of each image (empty for LLaVA).
    pub image_grid_thw: Vec<[i64; 3]>,
    /// Qwen2.5-VL: the prompt's 3-D M-RoPE position ids `[3, 1, S]` (None for 1-D rotary models, whose
    /// position ids are the sequence indices).
    pub position_ids: Option<Tensor>,
}

impl ModelInputs {
    pub fn seq_len(&self) -> usize {
        self.input_ids.size()[1] as usize
    }

    pub fn input_ids_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(self.input_ids.reshape([-1]).to_device(Device::Cpu))
            .expect("int64 input ids")
    }
}

/// A loaded vision-language model of any supported family.
pub enum VlModel {
    Llava(Box<LlavaForConditionalGeneration>),
    Qwen2_5Vl(Box<Qwen2_5VlForConditionalGeneration>),
}

/// `config.json` of a checkpoint directory, parsed as JSON, with its path for error messages.
pub fn read_config(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    if !dir.is_dir() {
        bail!("{}: model directory not found", dir.display());
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow!("{}: cannot read model config ({e})", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: invalid JSON ({e})", path.display()))?;
    Ok((path, value))
}

impl VlModel {
    /// Loads the checkpoint in `dir`, choosing the family from `config.json`'s `model_type`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        Self::from_config(&path, value, dir, None, device, kind)
    }

    /// A model of the configuration in `config` (a parsed `config.json`) with random weights (seeded):
    /// for timing configurations whose checkpoints are not at hand. `origin` names the config in errors.
    pub fn random(
        origin: &Path,
        config: serde_json::Value,
        device: Device,
        kind: Kind,
        seed: i64,
    ) -> Result<Self> {
        let weights = Weights::random(device, kind, seed);
        Self::from_config(origin, config, origin, Some(weights), device, kind)
    }

    fn from_config(
        path: &Path,
        value: serde_json::Value,
        dir: &Path,
        weights: Option<Weights>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let model_type = value
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| anyhow!("{}: field model_type is missing", path.display()))?
            .to_string();
        let _guard = tch::no_grad_guard();
        match model_type.as_str() {
            "llava" => {
                let config = LlavaConfig::from_json(path, value)?;
                let weights = match weights {
                    Some(w) => w,
                    None => Weights::open(dir, LLAVA_KEY_RENAMES, device, kind)
                        .with_context(|| format!("loading {}", dir.display()))?,
                };
                let model = LlavaForConditionalGeneration::from_weights(&weights, config)
                    .with_context(|| format!("loading {}", dir.display()))?;
                Ok(Self::Llava(Box::new(model)))
            }
            "qwen2_5_vl" => {
                let config = Qwen2_5VlConfig::from_json(path, value)?;
                let weights = match weights {
                    Some(w) => w,
                    None => Weights::open(dir, QWEN2_5_VL_KEY_RENAMES, device, kind)
                        .with_context(|| format!("loading {}", dir.display()))?,
                };
                let model = Qwen2_5VlForConditionalGeneration::from_weights(&weights, config)
                    .with_context(|| format!("loading {}", dir.display()))?;
                Ok(Self::Qwen2_5Vl(Box::new(model)))
            }
            other => bail!(
                "{}: field model_type: unknown model type '{other}' (supported: {})",
                path.display(),
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        }
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Llava(_) => "llava",
            Self::Qwen2_5Vl(_) => "qwen2_5_vl",
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Self::Llava(m) => m.language_model.num_layers(),
            Self::Qwen2_5Vl(m) => m.num_layers(),
        }
    }

    /// The token embedding matrix (its device and dtype are the model's).
    fn embed_tokens(&self) -> &Tensor {
        match self {
            Self::Llava(m) => &m.language_model.embed_tokens,
            Self::Qwen2_5Vl(m) => &m.language_model.embed_tokens,
        }
    }

    pub fn device(&self) -> Device {
        self.embed_tokens().device()
    }

    /// The compute dtype.
    pub fn kind(&self) -> Kind {
        self.embed_tokens().kind()
    }

    /// (hidden size, intermediate size, attention heads) of the decoder, for memory estimates.
    pub fn text_dims(&self) -> (i64, i64, i64) {
        match self {
            Self::Llava(m) => {
                let c = &m.language_model.cfg;
                (c.hidden_size, c.intermediate_size, c.num_attention_heads)
            }
            Self::Qwen2_5Vl(m) => {
                let c = &m.config.text_config;
                (c.hidden_size, c.intermediate_size, c.num_attention_heads)
            }
        }
    }

    /// Token id of the image placeholder in prompts.
    pub fn image_token_id(&self) -> i64 {
        match self {
            Self::Llava(m) => m.config.image_token_id,
            Self::Qwen2_5Vl(m) => m.config.image_token_id,
        }
    }

    /// Prefill under `intervention`: final-norm hidden states of the tokens the last layer kept.
    pub fn prefill(
        &self,
        inputs: &ModelInputs,
        intervention: &Intervention,
        cache: Option<&mut KvCache>,
        layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let _guard = tch::no_grad_guard();
        match self {
            Self::Llava(m) => m.prefill(
                &inputs.input_ids,
                inputs.pixel_values.as_ref(),
                intervention,
                cache,
                layer_inputs,
            ),
            Self::Qwen2_5Vl(m) => m.prefill(
                &inputs.input_ids,
                inputs.pixel_values.as_ref(),
                &inputs.image_grid_thw,
                intervention,
                cache,
                layer_inputs,
            ),
        }
    }

    /// Runs decoder layers `from..` (then the final norm) on hidden states `[B, S, D]` whose rows hold
    /// the prompt positions `keep` `[B, S]` (original sequence indices): each row gets the position ids
    /// of its kept tokens, 1-D or M-RoPE. How an information sweep resumes from a stored layer input.
    pub fn forward_from_layer(
        &self,
        from: usize,
        hidden: &Tensor,
        keep: &Tensor,
        inputs: &ModelInputs,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match self {
            Self::Llava(m) => Ok(m.language_model.forward_from_layer(from, hidden, keep)),
            Self::Qwen2_5Vl(m) => {
                let pos = inputs
                    .position_ids
                    .as_ref()
                    .ok_or_else(|| anyhow!("Qwen2.5-VL inputs without M-RoPE position ids"))?;
                let (b, s) = keep.size2()?;
                let pos = pos
                    .select(1, 0)
                    .index_select(1, &keep.reshape([-1]))
                    .reshape([3, b, s]);
                Ok(m.language_model.forward_from_layer(from, hidden, &pos))
            }
        }
    }

    /// Logits in the model dtype for hidden states `[B, S, D]`.
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        match self {
            Self::Llava(m) => m.lm_head.forward(hidden),
            Self::Qwen2_5Vl(m) => m.lm_head.forward(hidden),
        }
    }

    /// Logits `[1, V]` of the next token after decoding `token` at cache position `position` (the prompt
    /// length plus tokens generated so far).
    pub fn decode_step(
        &self,
        token: i64,
        position: usize,
        prompt_len: usize,
        intervention: &Intervention,
        cache: &mut KvCache,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        match self {
            Self::Llava(m) => {
                let lm = &m.language_model;
                let ids = Tensor::from_slice(&[token])
                    .to_device(self.device())
                    .unsqueeze(0);
                let embeds = lm.embed(&ids);
                let hidden = lm.decode_step(&embeds, position, prompt_len, intervention, cache);
                self.lm_head(&hidden).select(1, 0)
            }
            // Renumbered positions are refused at prefill, so the cache position is all it needs.
            Self::Qwen2_5Vl(m) => m.decode_step(token, position, cache),
        }
    }
}
