//! LLaVA-1.5 as published by llava-hf (`modeling_llava.py`, transformers 5.17.0):
//! `LlavaForConditionalGeneration { model: LlavaModel { vision_tower, multi_modal_projector,
//! language_model }, lm_head }`.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use super::clip::{ClipVisionConfig, ClipVisionModel};
use super::llama::{DecoderOutput, KvCache, LlamaConfig, LlamaModel};
use crate::intervention::Intervention;
use crate::nn::{Activation, Linear};
use crate::weights::{KeyRename, Weights};

/// Published llava-hf checkpoints store pre-4.52 names; HF renames them on load the same way.
pub const LLAVA_KEY_RENAMES: &[KeyRename] = &[
    KeyRename {
        on_disk: "language_model.model.",
        in_model: "model.language_model.",
    },
    KeyRename {
        on_disk: "language_model.lm_head.",
        in_model: "lm_head.",
    },
    KeyRename {
        on_disk: "vision_tower.",
        in_model: "model.vision_tower.",
    },
    KeyRename {
        on_disk: "multi_modal_projector.",
        in_model: "model.multi_modal_projector.",
    },
];

/// `LlavaConfig`: sparse on disk, HF defaults filled in.
#[derive(Debug, Clone)]
pub struct LlavaConfig {
    pub text_config: LlamaConfig,
    pub vision_config: ClipVisionConfig,
    pub image_token_id: i64,
    pub projector_hidden_act: String,
    pub vision_feature_select_strategy: String,
    /// One layer or several (their features are concatenated), HF `hidden_states` indexing.
    pub vision_feature_layers: Vec<i64>,
    pub multimodal_projector_bias: bool,
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct RawLlavaConfig {
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
    #[serde(alias = "image_token_index")]
    image_token_id: Option<i64>,
    projector_hidden_act: Option<String>,
    vision_feature_select_strategy: Option<String>,
    vision_feature_layer: Option<serde_json::Value>,
    multimodal_projector_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
}

impl LlavaConfig {
    pub fn from_json(path: &Path, value: serde_json::Value) -> Result<Self> {
        let field_err =
            |field: &str, e: serde_json::Error| anyhow!("{}: field {field}: {e}", path.display());
        let raw: RawLlavaConfig =
            serde_json::from_value(value).map_err(|e| field_err("(top level)", e))?;
        let text_config: LlamaConfig = match raw.text_config {
            Some(v) => {
                if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()) {
                    if mt != "llama" {
                        bail!(
                            "{}: field text_config.model_type: '{mt}' is not supported for llava (only 'llama')",
                            path.display()
                        );
                    }
                }
                serde_json::from_value(v).map_err(|e| field_err("text_config", e))?
            }
            None => LlamaConfig::default(),
        };
        let vision_config: ClipVisionConfig = match raw.vision_config {
            Some(v) => {
                if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()) {
                    if mt != "clip_vision_model" {
                        bail!(
                            "{}: field vision_config.model_type: '{mt}' is not supported for llava (only 'clip_vision_model')",
                            path.display()
                        );
                    }
                }
                serde_json::from_value(v).map_err(|e| field_err("vision_config", e))?
            }
            None => ClipVisionConfig::llava_default(),
        };
        let vision_feature_layers = match raw.vision_feature_layer {
            None => vec![-2],
            Some(serde_json::Value::Number(n)) => vec![n.as_i64().ok_or_else(|| {
                anyhow!(
                    "{}: field vision_feature_layer: not an integer",
                    path.display()
                )
            })?],
            Some(v) => {
                serde_json::from_value(v).map_err(|e| field_err("vision_feature_layer", e))?
            }
        };
        let strategy = raw
            .vision_feature_select_strategy
            .unwrap_or_else(|| "default".into());
        if strategy != "default" && strategy != "full" {
            bail!(
                "{}: field vision_feature_select_strategy: '{strategy}' (expected 'default' or 'full')",
                path.display()
            );
        }
        let tie = raw
            .tie_word_embeddings
            .unwrap_or(text_config.tie_word_embeddings);
        Ok(Self {
            text_config,
            vision_config,
            image_token_id: raw.image_token_id.unwrap_or(32000),
            projector_hidden_act: raw.projector_hidden_act.unwrap_or_else(|| "gelu".into()),
            vision_feature_select_strategy: strategy,
            vision_feature_layers,
            multimodal_projector_bias: raw.multimodal_projector_bias.unwrap_or(true),
            tie_word_embeddings: tie,
        })
    }

    /// Positions in the vision tower's `hidden_states` (length layers + 1) of the selected layers.
    fn feature_indices(&self) -> Result<Vec<usize>> {
        let n = self.vision_config.num_hidden_layers + 1;
        self.vision_feature_layers
            .iter()
            .map(|&l| {
                let idx = if l < 0 { n + l } else { l };
                if idx < 0 || idx >= n {
                    bail!(
                        "vision_feature_layer {l} is out of range for {} CLIP layers",
                        n - 1
                    );
                }
                Ok(idx as usize)
            })
            .collect()
    }

    /// Visual tokens the image becomes in the language model.
    pub fn num_image_tokens(&self) -> i64 {
        let n = self.vision_config.num_patches();
        if self.vision_feature_select_strategy == "default" {
            n
        } else {
            n + 1
        }
    }
}

/// `LlavaMultiModalProjector`: linear, activation, linear.
pub struct LlavaMultiModalProjector {
    linear_1: Linear,
    act: Activation,
    linear_2: Linear,
}

impl LlavaMultiModalProjector {
    fn load(w: &Weights, p: &str, cfg: &LlavaConfig) -> Result<Self> {
        let v = cfg.vision_config.hidden_size * cfg.vision_feature_layers.len() as i64;
        let t = cfg.text_config.hidden_size;
        let bias = cfg.multimodal_projector_bias;
        Ok(Self {
            linear_1: Linear::load(w, &format!("{p}.linear_1"), v, t, bias)?,
            act: Activation::from_hf_name(&cfg.projector_hidden_act)?,
            linear_2: Linear::load(w, &format!("{p}.linear_2"), t, t, bias)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2
            .forward(&self.act.forward(&self.linear_1.forward(x)))
    }
}

pub struct LlavaForConditionalGeneration {
    pub config: LlavaConfig,
    pub vision_tower: ClipVisionModel,
    pub multi_modal_projector: LlavaMultiModalProjector,
    pub language_model: LlamaModel,
    pub lm_head: Linear,
    feature_indices: Vec<usize>,
}

impl LlavaForConditionalGeneration {
    pub fn load(dir: &Path, config: LlavaConfig, device: Device, kind: Kind) -> Result<Self> {
        Self::from_weights(
            &Weights::open(dir, LLAVA_KEY_RENAMES, device, kind)?,
            config,
        )
    }

    /// Builds the model from `w` (a checkpoint, or random weights for benchmarks).
    pub fn from_weights(w: &Weights, config: LlavaConfig) -> Result<Self> {
        let feature_indices = config.feature_indices()?;
        let clip_layers = *feature_indices
            .iter()
            .max()
            .expect("at least one feature layer");
        let vision_tower = ClipVisionModel::load(
            w,
            "model.vision_tower.vision_model",
            &config.vision_config,
            clip_layers,
        )?;
        let multi_modal_projector =
            LlavaMultiModalProjector::load(w, "model.multi_modal_projector", &config)?;
        let language_model = LlamaModel::load(w, "model.language_model", &config.text_config)?;
        let tc = &config.text_config;
        let lm_head = if w.contains("lm_head.weight") || !config.tie_word_embeddings {
            Linear::load(w, "lm_head", tc.hidden_size, tc.vocab_size, false)?
        } else {
            Linear {
                weight: language_model.embed_tokens.shallow_clone(),
                bias: None,
            }
        };
        Ok(Self {
            config,
            vision_tower,
            multi_modal_projector,
            language_model,
            lm_head,
            feature_indices,
        })
    }

    /// `get_image_features`: selected CLIP hidden states (CLS dropped for "default"), projected.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let states = self.vision_tower.hidden_states(pixel_values)?;
        let selected: Vec<Tensor> = self
            .feature_indices
            .iter()
            .map(|&i| {
                let s = &states[i];
                if self.config.vision_feature_select_strategy == "default" {
                    s.narrow(1, 1, s.size()[1] - 1)
                } else {
                    s.shallow_clone()
                }
            })
            .collect();
        let features = if selected.len() == 1 {
            selected.into_iter().next().expect("one")
        } else {
            Tensor::cat(&selected, -1)
        };
        Ok(self.multi_modal_projector.forward(&features))
    }

    /// Token embeddings with the image features scattered into the `<image>` positions.
    pub fn input_embeds(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some(pixel_values) = pixel_values else {
            return Ok(self.language_model.embed(input_ids));
        };
        let features = self.image_features(pixel_values)?;
        self.input_embeds_with_features(input_ids, &features)
    }

    /// Token embeddings with already computed [`Self::image_features`] scattered into the `<image>`
    /// positions (the trainer also supervises the features directly).
    pub fn input_embeds_with_features(
        &self,
        input_ids: &Tensor,
        features: &Tensor,
    ) -> Result<Tensor> {
        let embeds = self.language_model.embed(input_ids);
        let features = features
            .to_kind(embeds.kind())
            .reshape([-1, self.config.text_config.hidden_size]);
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

    pub fn prefill(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        intervention: &Intervention,
        cache: Option<&mut KvCache>,
        layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let embeds = self
            .input_embeds(input_ids, pixel_values)
            .context("building input embeddings")?;
        self.language_model
            .prefill(&embeds, intervention, cache, layer_inputs)
    }
}
