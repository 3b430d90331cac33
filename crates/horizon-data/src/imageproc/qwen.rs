//! HF `Qwen2VLImageProcessor` with the PIL backend (transformers 5.17.0 `Qwen2VLImageProcessorPil`,
//! also used by Qwen2.5-VL): `smart_resize` → BICUBIC resize → rescale → normalise → flattened
//! patches `(grid_t·grid_h·grid_w, C·T·patch·patch)` and `image_grid_thw = [1, grid_h, grid_w]`.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use image::RgbImage;

use super::config::{
    check_resample, read_channel_triple, rescale_normalize, to_chw, ConfigFile, ImageSize,
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PIL_BICUBIC,
};
use super::resample::{resize_bicubic, ResampleOrder};

/// The fields of a Qwen2-VL / Qwen2.5-VL `preprocessor_config.json` the PIL processor reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessorConfig {
    pub image_processor_type: Option<String>,
    pub do_resize: bool,
    /// Resolved lower pixel bound: `min_pixels` if given, else `size.shortest_edge`, else 56·56.
    pub min_pixels: u64,
    /// Resolved upper pixel bound: `max_pixels` if given, else `size.longest_edge`, else 28·28·1280.
    pub max_pixels: u64,
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    /// `PILImageResampling` value; only 3 (BICUBIC) is accepted.
    pub resample: u32,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_convert_rgb: bool,
}

impl Default for Qwen2VlImageProcessorConfig {
    /// `Qwen2VLImageProcessorPil`'s class defaults.
    fn default() -> Self {
        Self {
            image_processor_type: None,
            do_resize: true,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            resample: PIL_BICUBIC,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

impl Qwen2VlImageProcessorConfig {
    /// Qwen2.5-VL's published processor: min_pixels 3136, max_pixels 12845056.
    pub fn qwen2_5_vl() -> Self {
        Self {
            image_processor_type: Some("Qwen2VLImageProcessor".into()),
            min_pixels: 3136,
            max_pixels: 12_845_056,
            ..Self::default()
        }
    }

    /// Reads a HF `preprocessor_config.json`; absent fields take the HF defaults. Accepts both the
    /// older top-level `min_pixels`/`max_pixels` and the newer `size: {shortest_edge,
    /// longest_edge}`; like HF, the top-level keys win when both are present.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_config(&ConfigFile::read(path.as_ref())?)
    }

    /// The settings of the checkpoint directory `dir`: its `preprocessor_config.json`, or the
    /// `image_processor` object of its `processor_config.json` (transformers 5.x `save_pretrained`).
    pub fn from_checkpoint_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_config(&ConfigFile::image_processor_of(dir.as_ref())?)
    }

    /// As [`Self::from_file`], from JSON text; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        Self::from_config(&ConfigFile::parse(text, origin.as_ref())?)
    }

    fn from_config(file: &ConfigFile) -> Result<Self> {
        let d = Self::default();
        let size: Option<ImageSize> = file.get("size")?;
        let min_pixels = match (file.get::<u64>("min_pixels")?, size) {
            (Some(v), _) => v,
            (None, Some(s)) => match s.shortest_edge {
                Some(v) => u64::from(v),
                None => return Err(file.field_error("size", "missing `shortest_edge`")),
            },
            (None, None) => d.min_pixels,
        };
        let max_pixels = match (file.get::<u64>("max_pixels")?, size) {
            (Some(v), _) => v,
            (None, Some(s)) => match s.longest_edge {
                Some(v) => u64::from(v),
                None => return Err(file.field_error("size", "missing `longest_edge`")),
            },
            (None, None) => d.max_pixels,
        };
        let cfg = Self {
            image_processor_type: file.get("image_processor_type")?,
            do_resize: file.get_or("do_resize", d.do_resize)?,
            min_pixels,
            max_pixels,
            patch_size: file.get_or("patch_size", d.patch_size)?,
            temporal_patch_size: file.get_or("temporal_patch_size", d.temporal_patch_size)?,
            merge_size: file.get_or("merge_size", d.merge_size)?,
            resample: file.get_or("resample", d.resample)?,
            do_rescale: file.get_or("do_rescale", d.do_rescale)?,
            rescale_factor: file.get_or("rescale_factor", d.rescale_factor)?,
            do_normalize: file.get_or("do_normalize", d.do_normalize)?,
            image_mean: read_channel_triple(file, "image_mean", d.image_mean)?,
            image_std: read_channel_triple(file, "image_std", d.image_std)?,
            do_convert_rgb: file.get_or("do_convert_rgb", d.do_convert_rgb)?,
        };
        check_resample(file, cfg.resample)?;
        for (name, v) in [
            ("patch_size", cfg.patch_size),
            ("temporal_patch_size", cfg.temporal_patch_size),
            ("merge_size", cfg.merge_size),
        ] {
            if v == 0 {
                return Err(file.field_error(name, "must be > 0"));
            }
        }
        Ok(cfg)
    }

    /// `patch_size · merge_size`, the multiple both resized sides snap to.
    pub fn factor(&self) -> u32 {
        self.patch_size * self.merge_size
    }
}

/// Qwen2-VL `smart_resize`: `(height, width)` → the nearest multiples of `factor` (Python
/// round-half-even), rescaled into `[min_pixels, max_pixels]` keeping the aspect ratio.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    ensure!(
        height > 0 && width > 0 && factor > 0,
        "smart_resize({height}, {width}, factor {factor}): sizes must be > 0"
    );
    let (h, w, f) = (f64::from(height), f64::from(width), u64::from(factor));
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        bail!("absolute aspect ratio must be smaller than 200, got {ratio}");
    }
    let ff = f as f64;
    let mut h_bar = (h / ff).round_ties_even() as u64 * f;
    let mut w_bar = (w / ff).round_ties_even() as u64 * f;
    let area = (u64::from(height) * u64::from(width)) as f64;
    if h_bar * w_bar > max_pixels {
        let beta = (area / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / ff).floor() as u64 * f);
        w_bar = f.max((w / beta / ff).floor() as u64 * f);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / ff).ceil() as u64 * f;
        w_bar = (w * beta / ff).ceil() as u64 * f;
    }
    let to_u32 =
        |v: u64| u32::try_from(v).map_err(|_| anyhow::anyhow!("resized side {v} overflows"));
    Ok((to_u32(h_bar)?, to_u32(w_bar)?))
}

/// `pixel_values` and `image_grid_thw` of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenPatches {
    /// Row-major `(num_patches, patch_dim)`.
    pub data: Vec<f32>,
    /// `grid_t · grid_h · grid_w`.
    pub num_patches: usize,
    /// `C · temporal_patch_size · patch_size²` (1176 for Qwen2-VL).
    pub patch_dim: usize,
    /// `[1, grid_h, grid_w]`.
    pub grid_thw: [u32; 3],
}

/// HF Qwen2-VL PIL-backend preprocessing of one RGB image. `order` selects the Pillow release whose
/// resize pass order to reproduce.
pub fn qwen2vl_preprocess(
    img: &RgbImage,
    cfg: &Qwen2VlImageProcessorConfig,
    order: ResampleOrder,
) -> Result<QwenPatches> {
    let resized;
    let img = if cfg.do_resize {
        let (h, w) = smart_resize(
            img.height(),
            img.width(),
            cfg.factor(),
            cfg.min_pixels,
            cfg.max_pixels,
        )?;
        resized = resize_bicubic(img, w, h, order)?;
        &resized
    } else {
        img
    };
    let (width, height) = (img.width() as usize, img.height() as usize);
    let chw = rescale_normalize(
        &to_chw(img),
        width * height,
        cfg.do_rescale.then_some(cfg.rescale_factor),
        cfg.do_normalize.then_some((cfg.image_mean, cfg.image_std)),
    );
    patchify(&chw, 3, height, width, cfg)
}

/// The 5.17 `patchify`: `(C, H, W)` → `(gh/m, gw/m, m, m, C, T, p, p)` flattened to rows of
/// `C·T·p·p`, the temporal copies identical. Rows run over 2×2 merge blocks first.
fn patchify(
    chw: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    cfg: &Qwen2VlImageProcessorConfig,
) -> Result<QwenPatches> {
    let p = cfg.patch_size as usize;
    let m = cfg.merge_size as usize;
    let t = cfg.temporal_patch_size as usize;
    let (gh, gw) = (height / p, width / p);
    // numpy's reshape fails unless the image tiles exactly into merge blocks of patches.
    ensure!(
        gh * p == height && gw * p == width && gh % m == 0 && gw % m == 0,
        "a {height}x{width} image does not tile into {m}x{m} blocks of {p}x{p} patches"
    );
    let patch_dim = channels * t * p * p;
    let num_patches = gh * gw;
    let mut data = Vec::with_capacity(num_patches * patch_dim);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let y0 = (bh * m + mh) * p;
                    let x0 = (bw * m + mw) * p;
                    for c in 0..channels {
                        let plane = &chw[c * height * width..(c + 1) * height * width];
                        for _ in 0..t {
                            for py in 0..p {
                                let row = (y0 + py) * width + x0;
                                data.extend_from_slice(&plane[row..row + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(QwenPatches {
        data,
        num_patches,
        patch_dim,
        grid_thw: [1, gh as u32, gw as u32],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_examples_from_the_notes() {
        let sr = |h, w| smart_resize(h, w, 28, 3136, 12_845_056).unwrap();
        assert_eq!(sr(70, 700), (56, 700));
        assert_eq!(sr(480, 640), (476, 644));
        assert_eq!(sr(1080, 1920), (1092, 1932));
    }

    #[test]
    fn smart_resize_rejects_extreme_aspect() {
        assert!(smart_resize(1, 201, 28, 3136, 12_845_056).is_err());
        assert!(smart_resize(0, 20, 28, 3136, 12_845_056).is_err());
    }
}
