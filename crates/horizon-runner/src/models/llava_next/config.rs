//! `LlavaNextConfig`: `LlavaConfig`'s fields plus `image_grid_pinpoints`; the language model is
//! Llama (vicuna, Yi-34B) or Mistral, both the shared decoder with 1-D rotary.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::path::Path;

use crate::models::llava::LlavaConfig;
use horizon_data::imageproc::anyres::LLAVA_NEXT_DEFAULT_PINPOINTS;

/// HF `MistralConfig` defaults for the fields a sparse `text_config` may leave out, where they
/// differ from Llama's.
const MISTRAL_DEFAULTS: &[(&str, f64)] = &[
    ("intermediate_size", 14336.0),
    ("num_key_value_heads", 8.0),
    ("max_position_embeddings", 131072.0),
    ("rms_norm_eps", 1e-6),
];

#[derive(Debug, Clone)]
pub struct LlavaNextConfig {
    /// Everything LLaVA-1.5 has: CLIP vision config, text config, projector, feature layer.
    pub llava: LlavaConfig,
    /// Candidate resolutions `(height, width)` of the high-resolution image.
    pub image_grid_pinpoints: Vec<[u32; 2]>,
    /// `text_config.model_type`: `llama` or `mistral`.
    pub text_model_type: String,
    /// Mistral's `sliding_window`, when set: the decoder attends over the whole prompt, so a prompt
    /// longer than the window is refused rather than computed differently from HF.
    pub sliding_window: Option<i64>,
}

impl LlavaNextConfig {
    pub fn from_json(path: &Path, mut value: Value) -> Result<Self> {
        let field = |f: &str, msg: String| anyhow!("{}: field {f}: {msg}", path.display());
        let pinpoints = match value.get("image_grid_pinpoints") {
            None | Some(Value::Null) => LLAVA_NEXT_DEFAULT_PINPOINTS.to_vec(),
            Some(v) => {
                let list: Vec<Vec<u32>> = serde_json::from_value(v.clone())
                    .map_err(|e| field("image_grid_pinpoints", e.to_string()))?;
                let mut out = Vec::new();
                for (i, p) in list.iter().enumerate() {
                    match p[..] {
                        [h, w] if h > 0 && w > 0 => out.push([h, w]),
                        _ => {
                            return Err(field(
                                "image_grid_pinpoints",
                                format!("entry {i} is {p:?}, expected [height, width] > 0"),
                            ))
                        }
                    }
                }
                if out.is_empty() {
                    return Err(field("image_grid_pinpoints", "is empty".into()));
                }
                out
            }
        };
        let text = value.get_mut("text_config").and_then(|t| t.as_object_mut());
        let mut text_model_type = "llama".to_string();
        let mut sliding_window = None;
        if let Some(text) = text {
            if let Some(mt) = text.get("model_type").and_then(|m| m.as_str()) {
                text_model_type = mt.to_string();
            }
            match text_model_type.as_str() {
                "llama" => {}
                "mistral" => {
                    for (k, v) in MISTRAL_DEFAULTS {
                        if text.get(*k).is_none_or(Value::is_null) {
                            text.insert((*k).into(), serde_json::json!(v));
                        }
                    }
                    for k in ["intermediate_size", "num_key_value_heads", "max_position_embeddings"] {
                        if let Some(n) = text.get(k).and_then(Value::as_f64) {
                            text.insert(k.into(), serde_json::json!(n as i64));
                        }
                    }
                    sliding_window = match text.get("sliding_window") {
                        None => Some(4096),
                        Some(Value::Null) => None,
                        Some(v) => Some(v.as_i64().ok_or_else(|| {
                            field("text_config.sliding_window", format!("{v} is not an integer"))
                        })?),
                    };
                    // The rest of a Mistral config is a Llama one (no biases, 1-D rotary).
                    text.insert("model_type".into(), Value::from("llama"));
                }
                other => bail!(
                    "{}: field text_config.model_type: '{other}' is not supported for llava_next (llama or mistral)",
                    path.display()
                ),
            }
        }
        let llava = LlavaConfig::from_json(path, value)?;
        if llava.vision_feature_select_strategy != "default" {
            bail!(
                "{}: field vision_feature_select_strategy: '{}' is not supported for llava_next (only 'default': the tiles' CLS tokens do not fit the anyres grid)",
                path.display(),
                llava.vision_feature_select_strategy
            );
        }
        let tile = llava.vision_config.image_size;
        for p in &pinpoints {
            if i64::from(p[0]) % tile != 0 || i64::from(p[1]) % tile != 0 {
                bail!(
                    "{}: field image_grid_pinpoints: {}x{} is not a multiple of the vision tower's {tile}-pixel input",
                    path.display(),
                    p[0],
                    p[1]
                );
            }
        }
        Ok(Self {
            llava,
            image_grid_pinpoints: pinpoints,
            text_model_type,
            sliding_window,
        })
    }
}
