//! HF `LlavaNextImageProcessor` with the PIL backend (transformers 5.17.0:
//! `image_processing_pil_llava_next.py`, `LlavaNextImageProcessorPil`) and the anyres geometry that
//! `LlavaNextProcessor` and `LlavaNextModel.pack_image_features` share, bit-exact given the same
//! Pillow pass order.
//!
//! Pipeline of one image (uint8 until the last step):
//! 1. `select_best_resolution`: the pinpoint `(height, width)` that keeps the most of the image's
//!    pixels once scaled to fit, the least wasted area breaking ties, the first one winning.
//! 2. Resize to fit that resolution with the aspect ratio kept (`get_patch_output_size`: the tighter
//!    side becomes the target, the other `ceil(side · scale)`), BICUBIC.
//! 3. Zero-pad to the resolution, centred (`divmod(target − side, 2)`: the odd pixel goes to the
//!    bottom / right).
//! 4. Cut into tiles of the crop size, row-major; the base image is the whole image resized (not
//!    aspect-kept) to the size's `(shortest_edge, shortest_edge)` (or `(height, width)`) and comes first.
//! 5. Each of `[base, tiles…]`: the CLIP steps (resize to the shortest edge, centre crop, rescale,
//!    normalise), which for tiles already of the crop size change nothing but the dtype.

use std::path::Path;

use anyhow::{bail, Result};
use image::RgbImage;

use super::clip::{clip_preprocess, ClipImageProcessorConfig};
use super::config::ConfigFile;
use super::resample::{resize_bicubic, ResampleOrder};

/// `LlavaNextImageProcessor`'s class default (llava-v1.6's pinpoints for 336-px tiles), `(height, width)`.
pub const LLAVA_NEXT_DEFAULT_PINPOINTS: [[u32; 2]; 5] =
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

/// The fields of a `preprocessor_config.json` that `LlavaNextImageProcessorPil` reads: the CLIP
/// ones and the grid pinpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaNextImageProcessorConfig {
    /// Resize, crop, rescale and normalise settings of each tile. Its `do_pad` is the batch padding
    /// of the tile count (nothing for one image), never LLaVA's pad-to-square.
    pub clip: ClipImageProcessorConfig,
    /// Candidate resolutions `(height, width)`.
    pub image_grid_pinpoints: Vec<[u32; 2]>,
}

impl LlavaNextImageProcessorConfig {
    /// The settings of the checkpoint directory `dir` (`preprocessor_config.json`, or the
    /// `image_processor` object of a transformers 5.x `processor_config.json`).
    pub fn from_checkpoint_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_config(&ConfigFile::image_processor_of(dir.as_ref())?)
    }

    /// As [`Self::from_checkpoint_dir`], from JSON text; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        Self::from_config(&ConfigFile::parse(text, origin.as_ref())?)
    }

    fn from_config(file: &ConfigFile) -> Result<Self> {
        let clip = ClipImageProcessorConfig::from_config(file)?;
        let image_grid_pinpoints = match file.get::<Vec<Vec<u32>>>("image_grid_pinpoints")? {
            None => LLAVA_NEXT_DEFAULT_PINPOINTS.to_vec(),
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, p) in list.iter().enumerate() {
                    match p[..] {
                        [h, w] if h > 0 && w > 0 => out.push([h, w]),
                        _ => {
                            return Err(file.field_error(
                                "image_grid_pinpoints",
                                format!("entry {i} is {p:?}, expected [height, width] > 0"),
                            ))
                        }
                    }
                }
                out
            }
        };
        let cfg = Self {
            clip,
            image_grid_pinpoints,
        };
        if cfg.image_grid_pinpoints.is_empty() {
            return Err(file.field_error("image_grid_pinpoints", "is empty"));
        }
        let tile = cfg.tile_size();
        if tile == 0 {
            return Err(file.field_error("crop_size", "the tile size must be > 0"));
        }
        Ok(cfg)
    }

    /// Side of one square tile: the crop height (else the size's height, else its shortest edge),
    /// as `_preprocess` picks its `patch_size`.
    pub fn tile_size(&self) -> u32 {
        let (crop, size) = (&self.clip.crop_size, &self.clip.size);
        crop.height
            .or(size.height)
            .or(size.shortest_edge)
            .unwrap_or(0)
    }

    /// `(height, width)` of the base image: the size's `(height, width)`, else its shortest edge twice.
    pub fn base_size(&self) -> (u32, u32) {
        let s = &self.clip.size;
        match (s.height, s.width, s.shortest_edge) {
            (Some(h), Some(w), _) => (h, w),
            (_, _, Some(e)) => (e, e),
            _ => (self.tile_size(), self.tile_size()),
        }
    }
}

/// `image_processing_utils.select_best_resolution`: of `pinpoints` `(height, width)`, the one
/// whose fitted copy of an `height×width` image keeps the most pixels (at most the original's),
/// then the one that wastes the least area; the first wins ties.
pub fn select_best_resolution(height: u32, width: u32, pinpoints: &[[u32; 2]]) -> (u32, u32) {
    let (oh, ow) = (f64::from(height), f64::from(width));
    let original = u64::from(height) * u64::from(width);
    let mut best = None;
    let mut max_effective = 0u64;
    let mut min_wasted = u64::MAX;
    for &[h, w] in pinpoints {
        let scale = (f64::from(w) / ow).min(f64::from(h) / oh);
        let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
        let effective = (dw * dh).min(original);
        let wasted = (u64::from(w) * u64::from(h)).saturating_sub(effective);
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = Some((h, w));
        }
    }
    best.unwrap_or((pinpoints[0][0], pinpoints[0][1]))
}

/// `image_processing_utils.get_patch_output_size`: `(height, width)` of the image resized to fit
/// `target` with its aspect ratio kept.
pub fn patch_output_size(height: u32, width: u32, target: (u32, u32)) -> (u32, u32) {
    let (th, tw) = target;
    let scale_w = f64::from(tw) / f64::from(width);
    let scale_h = f64::from(th) / f64::from(height);
    if scale_w < scale_h {
        let h = ((f64::from(height) * scale_w).ceil() as u32).min(th);
        (h, tw)
    } else {
        let w = ((f64::from(width) * scale_h).ceil() as u32).min(tw);
        (th, w)
    }
}

/// Python's `int(round(x, 7))` for the non-negative sizes it is applied to.
fn py_int_round7(x: f64) -> i64 {
    ((x * 1e7).round_ties_even() / 1e7).trunc() as i64
}

/// The part of a `cur_h × cur_w` feature grid (tiles of a padded image) that holds the original
/// `orig_h × orig_w` image: `(top, rows, left, cols)`, as HF `unpad_image` slices it (and
/// `LlavaNextProcessor._get_unpadded_features` counts it): the padded axis loses `padding` rows or
/// columns at each end, `padding = (cur − round(orig · scale, 7) as int) // 2`.
pub fn unpadded_region(orig_h: u32, orig_w: u32, cur_h: u32, cur_w: u32) -> (u32, u32, u32, u32) {
    let (oh, ow) = (f64::from(orig_h), f64::from(orig_w));
    let (ch, cw) = (f64::from(cur_h), f64::from(cur_w));
    if ow / oh > cw / ch {
        let new_h = py_int_round7(oh * (cw / ow));
        let padding = (i64::from(cur_h) - new_h).div_euclid(2).max(0) as u32;
        (padding, cur_h - 2 * padding, 0, cur_w)
    } else {
        let new_w = py_int_round7(ow * (ch / oh));
        let padding = (i64::from(cur_w) - new_w).div_euclid(2).max(0) as u32;
        (0, cur_h, padding, cur_w - 2 * padding)
    }
}

/// Where an image's visual tokens lie once `LlavaNextModel.pack_image_features` has packed them:
/// the base image's grid first (row-major), then the high-resolution grid after unpadding,
/// row-major with one `image_newline` token closing each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyresLayout {
    /// Image `(height, width)` before processing (`image_sizes`).
    pub image_size: (u32, u32),
    /// The chosen pinpoint `(height, width)`.
    pub best_resolution: (u32, u32),
    /// Tiles `(rows, cols)` of the high-resolution image.
    pub tile_grid: (u32, u32),
    /// Feature grid of the base image (and of each tile) `(rows, cols)`: tile size / patch size.
    pub base_grid: (u32, u32),
    /// The high-resolution feature grid after unpadding `(rows, cols)`, newlines not counted.
    pub highres_grid: (u32, u32),
    /// Where `highres_grid` starts on the padded `tile_grid × base_grid` feature grid `(row, col)`.
    pub highres_offset: (u32, u32),
    /// Tokens the vision tower adds beside the patches (CLS: 1) that the selection strategy keeps
    /// (`"full"`) in the base image; 0 for `"default"`.
    pub base_extra: u32,
}

impl AnyresLayout {
    /// The layout of an `height×width` image, `LlavaNextProcessor._get_number_of_features` and
    /// `pack_image_features` both: `tile` the tile side in pixels, `patch` the vision patch side.
    pub fn new(
        height: u32,
        width: u32,
        pinpoints: &[[u32; 2]],
        tile: u32,
        patch: u32,
        base_extra: u32,
    ) -> Result<Self> {
        if height == 0 || width == 0 {
            bail!("image of {width}x{height} pixels: height and width must be > 0");
        }
        if tile == 0 || patch == 0 || !tile.is_multiple_of(patch) {
            bail!("tile size {tile} is not a positive multiple of the patch size {patch}");
        }
        if pinpoints.is_empty() {
            bail!("image_grid_pinpoints is empty");
        }
        let best = select_best_resolution(height, width, pinpoints);
        let tile_grid = (best.0 / tile, best.1 / tile);
        if tile_grid.0 == 0 || tile_grid.1 == 0 {
            bail!(
                "image_grid_pinpoints entry {}x{} is smaller than one {tile}-pixel tile",
                best.0,
                best.1
            );
        }
        let side = tile / patch;
        let (top, rows, left, cols) =
            unpadded_region(height, width, tile_grid.0 * side, tile_grid.1 * side);
        Ok(Self {
            image_size: (height, width),
            best_resolution: best,
            tile_grid,
            base_grid: (side, side),
            highres_grid: (rows, cols),
            highres_offset: (top, left),
            base_extra,
        })
    }

    /// Visual tokens of the base image.
    pub fn base_tokens(&self) -> usize {
        (self.base_grid.0 * self.base_grid.1 + self.base_extra) as usize
    }

    /// Visual tokens of the high-resolution part, its newline tokens included.
    pub fn highres_tokens(&self) -> usize {
        (self.highres_grid.0 * (self.highres_grid.1 + 1)) as usize
    }

    /// All visual tokens of the image: what the processor expands `<image>` to.
    pub fn num_tokens(&self) -> usize {
        self.base_tokens() + self.highres_tokens()
    }

    /// Tiles the vision tower sees: the base image and the high-resolution tiles.
    pub fn num_tiles(&self) -> usize {
        1 + (self.tile_grid.0 * self.tile_grid.1) as usize
    }
}

/// Processed pixel values of one image: `tiles` images of `channels × height × width`, base first,
/// `data[((t·channels + c)·height + y)·width + x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyresPixelValues {
    pub tiles: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
    /// `(height, width)` of the input image (`image_sizes`).
    pub image_size: (u32, u32),
    pub best_resolution: (u32, u32),
    /// High-resolution tiles `(rows, cols)`.
    pub tile_grid: (u32, u32),
}

/// Zero-pads `img` to `height×width`, centred (odd pixels at the bottom / right), as `np.pad`
/// with `_get_padding_size`.
fn pad_centred(img: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (x0, y0) = ((width - w) / 2, (height - h) / 2);
    let mut out = RgbImage::new(width, height);
    image::imageops::replace(&mut out, img, i64::from(x0), i64::from(y0));
    out
}

/// HF `LlavaNextImageProcessorPil` of one RGB image → `pixel_values[0]` `(tiles, 3, H, W)` f32.
pub fn llava_next_preprocess(
    img: &RgbImage,
    cfg: &LlavaNextImageProcessorConfig,
    order: ResampleOrder,
) -> Result<AnyresPixelValues> {
    let (height, width) = (img.height(), img.width());
    if height == 0 || width == 0 {
        bail!("image of {width}x{height} pixels: height and width must be > 0");
    }
    let tile = cfg.tile_size();
    let best = select_best_resolution(height, width, &cfg.image_grid_pinpoints);
    let (rh, rw) = patch_output_size(height, width, best);
    let resized = resize_bicubic(img, rw, rh, order)?;
    let padded = pad_centred(&resized, best.0, best.1);
    let (base_h, base_w) = cfg.base_size();
    let mut parts = vec![resize_bicubic(img, base_w, base_h, order)?];
    // `divide_to_patches`: row-major, the last row / column cut short when the resolution is not
    // a multiple of the tile (pinpoints are multiples in every published config).
    for y in (0..best.0).step_by(tile as usize) {
        for x in (0..best.1).step_by(tile as usize) {
            let (th, tw) = (tile.min(best.0 - y), tile.min(best.1 - x));
            parts.push(image::imageops::crop_imm(&padded, x, y, tw, th).to_image());
        }
    }
    let tile_grid = (best.0.div_ceil(tile), best.1.div_ceil(tile));
    // The CLIP steps per part; `do_pad` there would mean pad-to-square.
    let per_tile = ClipImageProcessorConfig {
        do_pad: false,
        ..cfg.clip.clone()
    };
    let mut data = Vec::new();
    let mut shape = None;
    for part in &parts {
        let pv = clip_preprocess(part, &per_tile, order)?;
        let s = (pv.channels, pv.height, pv.width);
        if *shape.get_or_insert(s) != s {
            bail!(
                "the tiles of a {width}x{height} image come out in different sizes ({:?} and {s:?}); set crop_size",
                shape.expect("set")
            );
        }
        data.extend_from_slice(&pv.data);
    }
    let (channels, h, w) = shape.expect("at least the base image");
    Ok(AnyresPixelValues {
        tiles: parts.len(),
        channels,
        height: h,
        width: w,
        data,
        image_size: (height, width),
        best_resolution: best,
        tile_grid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINS: [[u32; 2]; 5] = LLAVA_NEXT_DEFAULT_PINPOINTS;

    #[test]
    fn best_resolution_by_effective_then_wasted_area() {
        // 640x480 (w x h): 672x672 keeps 672*504 pixels, more than any other.
        assert_eq!(select_best_resolution(480, 640, &PINS), (672, 672));
        // A small image keeps all its pixels everywhere: the least area wins, the first on ties.
        assert_eq!(select_best_resolution(20, 30, &PINS), (336, 672));
        // Very wide: 336x1008.
        assert_eq!(select_best_resolution(300, 1200, &PINS), (336, 1008));
    }

    #[test]
    fn patch_output_size_ceils_the_free_side() {
        // 120x50 into 42x126: height-bound, width ceil(120 * 0.84) = 101.
        assert_eq!(patch_output_size(50, 120, (42, 126)), (42, 101));
        assert_eq!(patch_output_size(120, 50, (126, 42)), (101, 42));
        assert_eq!(patch_output_size(64, 64, (84, 84)), (84, 84));
    }

    #[test]
    fn unpadding_follows_the_padded_axis() {
        // Wide image on a wider grid: columns unpadded, 120 * 6/50 = 14.4 -> 14, padding 2.
        assert_eq!(unpadded_region(50, 120, 6, 18), (0, 6, 2, 14));
        // Tall image on a taller grid: rows unpadded.
        assert_eq!(unpadded_region(120, 50, 18, 6), (2, 14, 0, 6));
        assert_eq!(unpadded_region(64, 64, 12, 12), (0, 12, 0, 12));
    }

    #[test]
    fn llava_v1_6_token_count_of_a_vga_image() {
        // 640x480 on 672x672 (2x2 tiles of 24x24): 48x48 grid, rows unpadded to 36
        // (480 * 48/640 = 36, padding 6): 576 base + 36 * (48 + 1).
        let l = AnyresLayout::new(480, 640, &PINS, 336, 14, 0).unwrap();
        assert_eq!(l.tile_grid, (2, 2));
        assert_eq!(l.highres_grid, (36, 48));
        assert_eq!(l.num_tokens(), 576 + 36 * 49);
        assert_eq!(l.num_tiles(), 5);
    }
}
