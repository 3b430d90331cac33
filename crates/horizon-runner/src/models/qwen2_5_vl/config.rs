//! `Qwen2_5_VLConfig` and its text and vision configs, with HF's defaults for omitted fields.

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use std::path::Path;

use crate::decoder::{DecoderConfig, RotaryKind};

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
    /// 0 when `num_heads` is 0 (the config check then names the field).
    pub fn head_dim(&self) -> i64 {
        self.hidden_size.checked_div(self.num_heads).unwrap_or(0)
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
    /// (0 when `num_attention_heads` is 0: the config check then names the field.)
    pub fn head_dim(&self) -> i64 {
        self.hidden_size
            .checked_div(self.num_attention_heads)
            .unwrap_or(0)
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

    /// The shared decoder's view of this config: Qwen2 has q/k/v biases, no o_proj or MLP bias,
    /// and M-RoPE.
    pub fn decoder_config(&self) -> Result<DecoderConfig> {
        Ok(DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            hidden_act: self.hidden_act.clone(),
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            rotary: RotaryKind::MRope {
                theta: self.rope_theta(),
                mrope_section: self.mrope_section()?,
            },
        })
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
        text_config
            .mrope_section()
            .map_err(|e| anyhow!("{p}: field {text_field}{rope_field}.{e}"))?;
        text_config
            .decoder_config()?
            .validate(&format!("{p}: field {text_field}"))?;
        if text_config.use_sliding_window == Some(true) {
            bail!("{p}: field {text_field}use_sliding_window: sliding-window attention is not supported");
        }
        let vc = &vision_config;
        for (name, v) in [
            ("depth", vc.depth),
            ("hidden_size", vc.hidden_size),
            ("intermediate_size", vc.intermediate_size),
            ("in_channels", vc.in_channels),
            ("patch_size", vc.patch_size),
            ("spatial_merge_size", vc.spatial_merge_size),
            ("temporal_patch_size", vc.temporal_patch_size),
            ("out_hidden_size", vc.out_hidden_size),
        ] {
            if v <= 0 {
                bail!("{p}: field vision_config.{name}: {v} must be positive");
            }
        }
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
        let (path, value) = crate::checkpoint::read_config(dir)?;
        Self::from_json(&path, value)
    }

    /// Language-model tokens one image of patch grid `[t, h, w]` becomes.
    pub fn num_image_tokens(&self, grid_thw: [i64; 3]) -> i64 {
        grid_thw.iter().product::<i64>() / self.vision_config.spatial_merge_size.pow(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
