//! Image preprocessing identical to HF transformers PIL-backend processors.
//!
//! * [`resample`]: Pillow's uint8 BICUBIC resize, bit-exact, with the pass order of a chosen Pillow
//!   release ([`ResampleOrder`]).
//! * [`clip`]: `CLIPImageProcessor` / `LlavaImageProcessor` (PIL backend) pixel values.
//! * [`anyres`]: `LlavaNextImageProcessor` (PIL backend): best-fit resolution, resize and pad, tiles
//!   plus the base image; the anyres token layout its processor and model share.
//! * [`qwen`]: `Qwen2VLImageProcessor` (PIL backend) `smart_resize`, flattened patches and grid.
//!
//! The fixtures under `tests/fixtures/imageproc/` (made by `fixtures/make_resize_refs.py`) hold the
//! Pillow / transformers references these are compared against bit for bit.

pub mod anyres;
pub mod clip;
mod config;
pub mod qwen;
pub mod resample;

use std::path::Path;

use anyhow::{anyhow, Result};
use image::{DynamicImage, RgbImage};

pub use anyres::{
    llava_next_preprocess, select_best_resolution, AnyresLayout, AnyresPixelValues,
    LlavaNextImageProcessorConfig,
};
pub use clip::{clip_preprocess, pad_to_square, ClipImageProcessorConfig, ImageSize, PixelValues};
pub use config::{OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
pub use qwen::{qwen2vl_preprocess, smart_resize, Qwen2VlImageProcessorConfig, QwenPatches};
pub use resample::{resize_bicubic, resize_bicubic_with_pass_order, PassOrder, ResampleOrder};

/// Decodes a PNG or JPEG file to RGB the way PIL's `convert("RGB")` does: alpha is dropped without
/// compositing onto any background, grey is replicated into the three channels.
///
/// JPEG decodes with zune-jpeg, which is not bit-equal to PIL's libjpeg-turbo (max 4 levels apart,
/// see the numerics notes); PNG is exact for 8-bit files.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let reader = image::ImageReader::open(path)
        .map_err(|e| anyhow!("cannot open image {}: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| anyhow!("cannot read image {}: {e}", path.display()))?;
    let decoded = reader
        .decode()
        .map_err(|e| anyhow!("cannot decode image {}: {e}", path.display()))?;
    Ok(to_rgb_like_pil(decoded))
}

/// PIL `convert("RGB")` of a decoded image.
pub fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // PIL opens 16-bit grey PNGs as mode "I;16", whose RGB conversion clamps at 255 rather than
        // keeping the high byte (checked on Pillow 12.3.0 with an in-memory I;16 image).
        DynamicImage::ImageLuma16(grey) => {
            let (w, h) = grey.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let v = grey.get_pixel(x, y).0[0].min(255) as u8;
                image::Rgb([v, v, v])
            })
        }
        // PIL reads the other 16-bit PNG layouts with "…;16B" raw modes, which keep the high byte.
        // Unverified against a 16-bit PNG file.
        DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageLumaA16(_) => {
            let rgba = img.to_rgba16();
            let (w, h) = rgba.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let p = rgba.get_pixel(x, y).0;
                image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            })
        }
        // 8-bit layouts: the `image` crate's conversion drops alpha and replicates grey, as PIL does.
        other => other.to_rgb8(),
    }
}
