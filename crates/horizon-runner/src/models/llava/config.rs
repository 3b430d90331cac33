//! `LlavaConfig` (sparse on disk, HF defaults filled in) and its Llama `text_config`.

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use std::path::Path;

use crate::decoder::{DecoderConfig, RotaryKind};
use crate::models::clip::ClipVisionConfig;

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

    /// (0 when `num_attention_heads` is 0: the config check then names the field.)
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or_else(|| {
            self.hidden_size
                .checked_div(self.num_attention_heads)
                .unwrap_or(0)
        })
    }

    /// The shared decoder's view of this config: Llama biases follow `attention_bias` and
    /// `mlp_bias`, and the rotary embedding is 1-D.
    pub fn decoder_config(&self) -> DecoderConfig {
        DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            hidden_act: self.hidden_act.clone(),
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            rotary: RotaryKind::Default {
                theta: self.rope_theta(),
            },
        }
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
        vision_config.validate(&format!("{}: field vision_config.", path.display()))?;
        text_config
            .check_rope_type()
            .map_err(|e| anyhow!("{}: field {e}", path.display()))?;
        text_config
            .decoder_config()
            .validate(&format!("{}: field text_config.", path.display()))?;
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
    pub fn feature_indices(&self) -> Result<Vec<usize>> {
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
