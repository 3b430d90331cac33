//! Reading HF `preprocessor_config.json` files field by field, so that every error names the file
//! and the field, and absent fields take the processor class's default.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// OpenAI CLIP normalisation constants (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `PILImageResampling.BICUBIC`, the only filter ported.
pub const PIL_BICUBIC: u32 = 3;

/// The parsed top-level object of one config file.
pub(crate) struct ConfigFile {
    pub path: PathBuf,
    map: Map<String, Value>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            _ => Err(anyhow!("{}: expected a JSON object", path.display())),
        }
    }

    /// The field's value, or `None` when absent or `null` (HF treats `null` as "use the default").
    /// The image-processor settings of a checkpoint directory: `preprocessor_config.json` as published
    /// checkpoints have it, else the `image_processor` object inside `processor_config.json`, which is
    /// where transformers 5.x `save_pretrained` writes them (and no `preprocessor_config.json`).
    pub fn image_processor_of(dir: &Path) -> Result<Self> {
        let standalone = dir.join("preprocessor_config.json");
        if standalone.exists() {
            return Self::read(&standalone);
        }
        let combined = dir.join("processor_config.json");
        if !combined.exists() {
            return Err(anyhow!(
                "{}: neither preprocessor_config.json nor processor_config.json found",
                dir.display()
            ));
        }
        let outer = Self::read(&combined)?;
        match outer.map.get("image_processor") {
            Some(Value::Object(map)) => Ok(Self {
                path: combined.join("image_processor"),
                map: map.clone(),
            }),
            _ => Err(anyhow!(
                "{}: field `image_processor`: missing or not an object (and no preprocessor_config.json beside it)",
                combined.display()
            )),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| self.field_error(name, e)),
        }
    }

    pub fn get_or<T: DeserializeOwned>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.get(name)?.unwrap_or(default))
    }

    pub fn field_error(&self, name: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: field `{name}`: {msg}", self.path.display())
    }
}

/// An HF size dict (`SizeDict`): any subset of its keys, or a bare integer in older files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ImageSize {
    pub shortest_edge: Option<u32>,
    pub longest_edge: Option<u32>,
    pub height: Option<u32>,
    pub width: Option<u32>,
    pub max_height: Option<u32>,
    pub max_width: Option<u32>,
}

/// A size field as written in files: a dict, or a bare integer whose meaning depends on the field.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum SizeField {
    Int(u32),
    Dict(ImageSize),
}

impl SizeField {
    /// HF `get_size_dict`: an integer is a shortest edge when `default_to_square` is false, otherwise
    /// a square.
    pub fn into_size(self, default_to_square: bool) -> ImageSize {
        match self {
            Self::Dict(size) => size,
            Self::Int(n) if default_to_square => ImageSize {
                height: Some(n),
                width: Some(n),
                ..ImageSize::default()
            },
            Self::Int(n) => ImageSize {
                shortest_edge: Some(n),
                ..ImageSize::default()
            },
        }
    }
}

/// Reads a 3-channel mean or std list (a bare number applies to every channel, as in HF).
pub(crate) fn read_channel_triple(
    file: &ConfigFile,
    name: &str,
    default: [f64; 3],
) -> Result<[f64; 3]> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Triple {
        One(f64),
        Many(Vec<f64>),
    }
    let values = match file.get::<Triple>(name)? {
        None => default,
        Some(Triple::One(v)) => [v; 3],
        Some(Triple::Many(v)) => <[f64; 3]>::try_from(v.as_slice())
            .map_err(|_| file.field_error(name, format!("expected 3 values, got {}", v.len())))?,
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(file.field_error(name, "values must be finite"));
    }
    // Normalization divides by the standard deviation.
    if name == "image_std" && values.iter().any(|v| *v <= 0.0) {
        return Err(file.field_error(name, "values must be > 0"));
    }
    Ok(values)
}

/// Rejects any `resample` other than BICUBIC, the only filter ported.
pub(crate) fn check_resample(file: &ConfigFile, resample: u32) -> Result<()> {
    if resample == PIL_BICUBIC {
        Ok(())
    } else {
        Err(file.field_error(
            "resample",
            format!("{resample} is not supported; only 3 (BICUBIC) is implemented"),
        ))
    }
}

/// uint8 CHW planes → f32, as HF's `rescale` (u8 → f64 · factor → f32) and `normalize` (f32).
pub(crate) fn rescale_normalize(
    chw: &[u8],
    plane_len: usize,
    rescale: Option<f64>,
    normalize: Option<([f64; 3], [f64; 3])>,
) -> Vec<f32> {
    let mut out: Vec<f32> = match rescale {
        Some(factor) => chw
            .iter()
            .map(|&v| (f64::from(v) * factor) as f32)
            .collect(),
        None => chw.iter().map(|&v| f32::from(v)).collect(),
    };
    if let Some((mean, std)) = normalize {
        for (c, plane) in out.chunks_mut(plane_len).enumerate() {
            // numpy builds the mean/std arrays in the image's dtype (f32) before subtracting.
            let (m, s) = (mean[c] as f32, std[c] as f32);
            for v in plane {
                *v = (*v - m) / s;
            }
        }
    }
    out
}

/// Interleaved RGB → channel-first planes.
pub(crate) fn to_chw(img: &image::RgbImage) -> Vec<u8> {
    let plane_len = (img.width() * img.height()) as usize;
    let mut out = vec![0u8; 3 * plane_len];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane_len + i] = px[c];
        }
    }
    out
}
