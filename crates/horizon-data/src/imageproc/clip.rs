//! HF `CLIPImageProcessor` / `LlavaImageProcessor` with the PIL backend (transformers 5.17.0:
//! `CLIPImageProcessorPil`, `LlavaImageProcessorPil`), bit-exact given the same Pillow pass order.
//!
//! Pipeline: optional pad-to-square (LLaVA `do_pad`) → BICUBIC resize → centre crop (zero-padded
//! when the image is smaller than the crop) → rescale (`u8 as f64 · factor`, then f32) → normalise
//! in f32 → CHW.

use std::path::Path;

use anyhow::{bail, Result};
use image::RgbImage;

pub use super::config::ImageSize;
use super::config::{
    check_resample, read_channel_triple, rescale_normalize, to_chw, ConfigFile, SizeField,
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PIL_BICUBIC,
};
use super::resample::{resize_bicubic, ResampleOrder};

/// Processed pixel values of one image, channel-first: `data[(c·height + y)·width + x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// The fields of a `preprocessor_config.json` that the CLIP / LLaVA PIL processors read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessorConfig {
    /// As written in the file (`"CLIPImageProcessor"`, `"LlavaImageProcessor"`, …), if present.
    pub image_processor_type: Option<String>,
    pub do_resize: bool,
    pub size: ImageSize,
    /// `PILImageResampling` value; only 3 (BICUBIC) is accepted.
    pub resample: u32,
    pub do_center_crop: bool,
    pub crop_size: ImageSize,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Always effectively true here: the input is already an RGB image.
    pub do_convert_rgb: bool,
    /// `LlavaImageProcessor`'s pad-to-square. For `CLIPImageProcessor` HF's `do_pad` pads a batch to
    /// its largest image, which does nothing to a single image, so it is ignored there.
    pub do_pad: bool,
}

impl Default for ClipImageProcessorConfig {
    /// `CLIPImageProcessorPil`'s class defaults.
    fn default() -> Self {
        Self {
            image_processor_type: None,
            do_resize: true,
            size: ImageSize {
                shortest_edge: Some(224),
                ..ImageSize::default()
            },
            resample: PIL_BICUBIC,
            do_center_crop: true,
            crop_size: ImageSize {
                height: Some(224),
                width: Some(224),
                ..ImageSize::default()
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
            do_pad: false,
        }
    }
}

impl ClipImageProcessorConfig {
    /// llava-hf/llava-1.5-7b-hf's processor: shortest edge 336, centre crop 336, no padding.
    pub fn llava_1_5() -> Self {
        Self {
            image_processor_type: Some("CLIPImageProcessor".into()),
            size: ImageSize {
                shortest_edge: Some(336),
                ..ImageSize::default()
            },
            crop_size: ImageSize {
                height: Some(336),
                width: Some(336),
                ..ImageSize::default()
            },
            ..Self::default()
        }
    }

    /// Reads a HF `preprocessor_config.json`; absent fields take the HF defaults. Errors are one
    /// line naming the file (and the field, where one is at fault).
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

    pub(crate) fn from_config(file: &ConfigFile) -> Result<Self> {
        let d = Self::default();
        let size = match file.get::<SizeField>("size")? {
            Some(s) => s.into_size(false),
            None => d.size,
        };
        let crop_size = match file.get::<SizeField>("crop_size")? {
            Some(s) => s.into_size(true),
            None => d.crop_size,
        };
        let cfg = Self {
            image_processor_type: file.get("image_processor_type")?,
            do_resize: file.get_or("do_resize", d.do_resize)?,
            size,
            resample: file.get_or("resample", d.resample)?,
            do_center_crop: file.get_or("do_center_crop", d.do_center_crop)?,
            crop_size,
            do_rescale: file.get_or("do_rescale", d.do_rescale)?,
            rescale_factor: file.get_or("rescale_factor", d.rescale_factor)?,
            do_normalize: file.get_or("do_normalize", d.do_normalize)?,
            image_mean: read_channel_triple(file, "image_mean", d.image_mean)?,
            image_std: read_channel_triple(file, "image_std", d.image_std)?,
            do_convert_rgb: file.get_or("do_convert_rgb", d.do_convert_rgb)?,
            do_pad: file.get_or("do_pad", d.do_pad)?,
        };
        check_resample(file, cfg.resample)?;
        if cfg.do_resize {
            let s = cfg.size;
            if s.shortest_edge.is_none() && (s.height.is_none() || s.width.is_none()) {
                return Err(
                    file.field_error("size", "needs `shortest_edge` or both `height` and `width`")
                );
            }
        }
        if cfg.do_center_crop && (cfg.crop_size.height.is_none() || cfg.crop_size.width.is_none()) {
            return Err(file.field_error("crop_size", "needs both `height` and `width`"));
        }
        Ok(cfg)
    }

    /// Whether `do_pad` means LLaVA's pad-to-square for this processor type.
    pub fn pads_to_square(&self) -> bool {
        let clip_type = self
            .image_processor_type
            .as_deref()
            .is_some_and(|t| t.starts_with("CLIPImageProcessor"));
        self.do_pad && !clip_type
    }

    /// The `(height, width)` the resize step produces for an `height×width` input.
    pub fn resize_target(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        resize_target(&self.size, height, width)
    }

    /// The LLaVA pad colour: `int(mean·255)` per channel.
    pub fn pad_color(&self) -> [u8; 3] {
        self.image_mean
            .map(|m| (m * 255.0).trunc().clamp(0.0, 255.0) as u8)
    }
}

/// HF PIL-backend `resize` target size for a size dict (`shortest_edge`, `shortest_edge` +
/// `longest_edge`, or `height` + `width`).
fn resize_target(size: &ImageSize, height: u32, width: u32) -> Result<(u32, u32)> {
    match (
        size.shortest_edge,
        size.longest_edge,
        size.height,
        size.width,
    ) {
        (Some(short), Some(long), _, _) => {
            Ok(size_with_aspect_ratio(height, width, short, Some(long)))
        }
        (Some(short), None, _, _) => Ok(shortest_edge_target(height, width, short)),
        (None, _, Some(h), Some(w)) => Ok((h, w)),
        _ => bail!("size {size:?}: needs `shortest_edge` or both `height` and `width`"),
    }
}

/// `get_resize_output_image_size(default_to_square=False)`: the short side becomes `short`, the long
/// side `int(short·long/short_in)` in float64.
fn shortest_edge_target(height: u32, width: u32, short: u32) -> (u32, u32) {
    let (in_short, in_long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((u64::from(short) * u64::from(in_long)) as f64 / f64::from(in_short)) as u32;
    if width <= height {
        (new_long, short)
    } else {
        (short, new_long)
    }
}

/// `image_transforms.get_size_with_aspect_ratio`.
fn size_with_aspect_ratio(height: u32, width: u32, size: u32, max_size: Option<u32>) -> (u32, u32) {
    let mut size = size;
    let mut raw_size = None;
    if let Some(max_size) = max_size {
        let min_orig = f64::from(height.min(width));
        let max_orig = f64::from(height.max(width));
        if max_orig / min_orig * f64::from(size) > f64::from(max_size) {
            let raw = f64::from(max_size) * min_orig / max_orig;
            raw_size = Some(raw);
            size = raw.round_ties_even() as u32;
        }
    }
    let scaled = |numer: u32, denom: u32| -> u32 {
        match raw_size {
            Some(raw) => (raw * f64::from(numer) / f64::from(denom)) as u32,
            None => ((u64::from(size) * u64::from(numer)) as f64 / f64::from(denom)) as u32,
        }
    };
    if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else if width < height {
        (scaled(height, width), size)
    } else {
        (size, scaled(width, height))
    }
}

/// LLaVA `pad_to_square`: the image pasted centred (offset `(max − side) // 2`) on a square of side
/// `max(height, width)` filled with `background`.
pub fn pad_to_square(img: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, image::Rgb(background));
    let (dx, dy) = if w > h {
        (0, (side - h) / 2)
    } else {
        ((side - w) / 2, 0)
    };
    image::imageops::replace(&mut out, img, i64::from(dx), i64::from(dy));
    out
}

/// HF `center_crop`: a centred window, with the image zero-padded first (by `ceil` halves) when it
/// is smaller than the crop along an axis.
fn center_crop(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (ch, cw) = (i64::from(crop_h), i64::from(crop_w));
    // Python floor division; negative when the crop is larger than the image. HF then zero-pads
    // by `ceil((crop − side) / 2)` before cropping, which puts output row y on source row `top + y`
    // in every case.
    let top = (h - ch).div_euclid(2);
    let left = (w - cw).div_euclid(2);
    RgbImage::from_fn(crop_w, crop_h, |x, y| {
        let sy = top + i64::from(y);
        let sx = left + i64::from(x);
        if (0..h).contains(&sy) && (0..w).contains(&sx) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// HF CLIP / LLaVA PIL-backend preprocessing of one RGB image → `pixel_values[0]` (3×H×W, f32).
/// `order` selects the Pillow release whose resize pass order to reproduce.
pub fn clip_preprocess(
    img: &RgbImage,
    cfg: &ClipImageProcessorConfig,
    order: ResampleOrder,
) -> Result<PixelValues> {
    let mut cur = if cfg.pads_to_square() {
        pad_to_square(img, cfg.pad_color())
    } else {
        img.clone()
    };
    if cfg.do_resize {
        let (h, w) = cfg.resize_target(cur.height(), cur.width())?;
        cur = resize_bicubic(&cur, w, h, order)?;
    }
    if cfg.do_center_crop {
        let (Some(ch), Some(cw)) = (cfg.crop_size.height, cfg.crop_size.width) else {
            bail!(
                "crop_size {:?} needs both `height` and `width`",
                cfg.crop_size
            );
        };
        cur = center_crop(&cur, ch, cw);
    }
    let img = &cur;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = rescale_normalize(
        &to_chw(img),
        width * height,
        cfg.do_rescale.then_some(cfg.rescale_factor),
        cfg.do_normalize.then_some((cfg.image_mean, cfg.image_std)),
    );
    Ok(PixelValues {
        channels: 3,
        height,
        width,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_the_long_side() {
        // 640x480 -> short 336, long int(336*640/480) = 448.
        assert_eq!(shortest_edge_target(480, 640, 336), (336, 448));
        assert_eq!(shortest_edge_target(1000, 750, 336), (448, 336));
        assert_eq!(shortest_edge_target(61, 97, 42), (42, 66));
    }

    #[test]
    fn center_crop_pads_with_zeros_when_too_small() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]));
        let out = center_crop(&img, 4, 5);
        assert_eq!(out.dimensions(), (5, 4));
        // Padding: top ceil(2/2)=1, left ceil(2/2)=1.
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 1).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(3, 2).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(4, 2).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 3).0, [0, 0, 0]);
    }

    #[test]
    fn llava_pad_colour_truncates() {
        assert_eq!(
            ClipImageProcessorConfig::default().pad_color(),
            [122, 116, 104]
        );
    }
}
