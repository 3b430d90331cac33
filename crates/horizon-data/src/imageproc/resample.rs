//! Bit-exact port of Pillow's uint8 BICUBIC resize (`Image.resize(size, Image.BICUBIC)` with
//! `reducing_gap=None`, no `box`), written from `src/libImaging/Resample.c` of Pillow 12.3.0 and 13.0.0.
//!
//! The arithmetic is the same in every Pillow since 4.x; what changed is the order of the two
//! separable passes, and because the intermediate image is rounded to uint8, the order changes bits:
//!
//! * Pillow < 12.2: always horizontal pass first, then vertical.
//! * Pillow 12.2 / 12.3 (PR #9524, in `Image.py`): vertical first when the source is more than 100×
//!   taller than wide and the height shrinks; otherwise horizontal first.
//! * Pillow >= 13.0 (PR #9549, in `Resample.c`): vertical first when the height loses more than twice
//!   as many pixels as the width (`dh > 0 && dh > 2·dw`, integer pixel counts); otherwise horizontal
//!   first. The Python-level rule of 12.2 is gone.

use anyhow::{bail, Result};
use image::RgbImage;

/// Bits after the binary point of the fixed-point coefficients (`PRECISION_BITS` = 32 − 8 − 2).
const PRECISION_BITS: u32 = 22;

/// Pillow's BICUBIC support radius (Keys kernel, a = −0.5).
const BICUBIC_SUPPORT: f64 = 2.0;

/// Which Pillow release's pass-order rule to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResampleOrder {
    /// Pillow < 12.2: horizontal pass always first.
    PillowLegacy,
    /// Pillow 12.2.x–12.x: horizontal first, except sources more than 100× taller than wide whose
    /// height shrinks, which go vertical first.
    Pillow12,
    /// Pillow >= 13.0: vertical first when `in_h − out_h > 0` and `in_h − out_h > 2·(in_w − out_w)`.
    Pillow13,
}

/// The order of the two separable passes for one resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassOrder {
    HorizontalFirst,
    VerticalFirst,
}

impl ResampleOrder {
    /// The rule of the Pillow release named by `version` (`PIL.__version__`, e.g. "12.3.0",
    /// "13.0.0.dev0").
    pub fn from_pillow_version(version: &str) -> Result<Self> {
        let mut parts = version.trim().split('.');
        let mut number = |what: &str| -> Result<u32> {
            let part = parts.next().unwrap_or("0");
            let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
            if digits.is_empty() {
                bail!("Pillow version {version:?}: cannot read the {what} number");
            }
            Ok(digits.parse()?)
        };
        let major = number("major")?;
        let minor = number("minor")?;
        Ok(match (major, minor) {
            (m, _) if m >= 13 => Self::Pillow13,
            (12, n) if n >= 2 => Self::Pillow12,
            _ => Self::PillowLegacy,
        })
    }

    /// The pass order this Pillow release uses for `in_w×in_h → out_w×out_h`.
    pub fn pass_order(self, in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> PassOrder {
        let vertical_first = match self {
            Self::PillowLegacy => false,
            Self::Pillow12 => u64::from(in_h) > u64::from(in_w) * 100 && out_h < in_h,
            Self::Pillow13 => {
                // C `int` arithmetic on the pixel counts lost along each axis (negative when growing).
                let lost_h = i64::from(in_h) - i64::from(out_h);
                let lost_w = i64::from(in_w) - i64::from(out_w);
                lost_h > 0 && lost_h > lost_w * 2
            }
        };
        if vertical_first {
            PassOrder::VerticalFirst
        } else {
            PassOrder::HorizontalFirst
        }
    }
}

/// Keys cubic convolution kernel with a = −0.5, evaluated in Pillow's exact operation order.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-pixel source window and fixed-point weights along one axis.
struct AxisCoeffs {
    /// Coefficient slots per output pixel (`ceil(support)·2 + 1`).
    ksize: usize,
    /// `(first source index, number of source pixels)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel, scaled by 2^22 and rounded away from zero.
    weights: Vec<i32>,
}

impl AxisCoeffs {
    /// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole source range `[0, in_size)`.
    fn new(in_size: usize, out_size: usize) -> Self {
        // Pillow takes the box edges as C floats; `in_size` is exact in f32 below 2^24.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = 0.0 + (xx as f64 + 0.5) * scale;
            // `(int)` casts truncate toward zero, which is what `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, slot) in k.iter_mut().enumerate().take(count) {
                let w = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                *slot = w;
                ww += w;
            }
            if ww != 0.0 {
                for slot in k.iter_mut().take(count) {
                    *slot /= ww;
                }
            }
            let fixed = &mut weights[xx * ksize..(xx + 1) * ksize];
            for (dst, &w) in fixed.iter_mut().zip(k.iter()).take(count) {
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *dst = if w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, count));
        }
        Self {
            ksize,
            bounds,
            weights,
        }
    }

    fn window(&self, out_index: usize) -> (usize, &[i32]) {
        let (start, count) = self.bounds[out_index];
        let base = out_index * self.ksize;
        (start, &self.weights[base..base + count])
    }
}

/// Rounds a fixed-point accumulator (which starts at 2^21, i.e. one half) back to uint8.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const CHANNELS: usize = 3;

/// Interleaved RGB8 buffer with its size, the working type of the passes.
struct Plane {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// Horizontal pass over source rows `[row0, row0 + rows)`.
fn horizontal_pass(src: &Plane, coeffs: &AxisCoeffs, row0: usize, rows: usize) -> Plane {
    let out_w = coeffs.bounds.len();
    let mut data = vec![0u8; out_w * rows * CHANNELS];
    let src_stride = src.width * CHANNELS;
    for yy in 0..rows {
        let line = &src.data[(row0 + yy) * src_stride..(row0 + yy + 1) * src_stride];
        let out = &mut data[yy * out_w * CHANNELS..(yy + 1) * out_w * CHANNELS];
        for xx in 0..out_w {
            let (start, k) = coeffs.window(xx);
            let mut acc = [1i32 << (PRECISION_BITS - 1); CHANNELS];
            for (x, &w) in k.iter().enumerate() {
                let px = &line[(start + x) * CHANNELS..(start + x + 1) * CHANNELS];
                for c in 0..CHANNELS {
                    acc[c] += i32::from(px[c]) * w;
                }
            }
            for c in 0..CHANNELS {
                out[xx * CHANNELS + c] = clip8(acc[c]);
            }
        }
    }
    Plane {
        width: out_w,
        height: rows,
        data,
    }
}

/// Vertical pass; `row_shift` is subtracted from the coefficient windows' first rows because the
/// source holds only rows from `row_shift` on (Pillow's shifted `bounds_vert`).
fn vertical_pass(src: &Plane, coeffs: &AxisCoeffs, row_shift: usize) -> Plane {
    let out_h = coeffs.bounds.len();
    let stride = src.width * CHANNELS;
    let mut data = vec![0u8; stride * out_h];
    for yy in 0..out_h {
        let (start, k) = coeffs.window(yy);
        let start = start - row_shift;
        let out = &mut data[yy * stride..(yy + 1) * stride];
        for (i, dst) in out.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                acc += i32::from(src.data[(start + y) * stride + i]) * w;
            }
            *dst = clip8(acc);
        }
    }
    Plane {
        width: src.width,
        height: out_h,
        data,
    }
}

/// Pillow `Image.resize((width, height), Image.BICUBIC, reducing_gap=None)` of an RGB image, with
/// the pass order of the Pillow release `order`.
pub fn resize_bicubic(
    img: &RgbImage,
    width: u32,
    height: u32,
    order: ResampleOrder,
) -> Result<RgbImage> {
    let pass_order = order.pass_order(img.width(), img.height(), width, height);
    resize_bicubic_with_pass_order(img, width, height, pass_order)
}

/// Pillow's BICUBIC resize with an explicit pass order (the building block of [`resize_bicubic`]).
pub fn resize_bicubic_with_pass_order(
    img: &RgbImage,
    width: u32,
    height: u32,
    pass_order: PassOrder,
) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        bail!("resize to {width}x{height}: height and width must be > 0");
    }
    if img.width() == 0 || img.height() == 0 {
        bail!("resize of an empty {}x{} image", img.width(), img.height());
    }
    // Same size: Pillow returns a copy without resampling.
    if (img.width(), img.height()) == (width, height) {
        return Ok(img.clone());
    }
    let src = Plane {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw().clone(),
    };
    let (out_w, out_h) = (width as usize, height as usize);
    // A pass runs only along an axis whose size changes.
    let need_horizontal = out_w != src.width;
    let need_vertical = out_h != src.height;

    let out = match pass_order {
        PassOrder::HorizontalFirst => {
            let vert = need_vertical.then(|| AxisCoeffs::new(src.height, out_h));
            // Only the source rows the vertical pass reads are resampled horizontally (Pillow's
            // `ybox_first..ybox_last`); the vertical windows are then shifted by `row0`.
            let (row0, rows) = match &vert {
                Some(v) => {
                    let first = v.bounds[0].0;
                    let (last_start, last_count) = v.bounds[out_h - 1];
                    (first, last_start + last_count - first)
                }
                None => (0, src.height),
            };
            let (mid, shift) = if need_horizontal {
                let horiz = AxisCoeffs::new(src.width, out_w);
                (horizontal_pass(&src, &horiz, row0, rows), row0)
            } else {
                (src, 0)
            };
            match vert {
                Some(v) => vertical_pass(&mid, &v, shift),
                None => mid,
            }
        }
        PassOrder::VerticalFirst => {
            let mid = if need_vertical {
                vertical_pass(&src, &AxisCoeffs::new(src.height, out_h), 0)
            } else {
                src
            };
            if need_horizontal {
                let horiz = AxisCoeffs::new(mid.width, out_w);
                let rows = mid.height;
                horizontal_pass(&mid, &horiz, 0, rows)
            } else {
                mid
            }
        }
    };
    Ok(to_image(out))
}

fn to_image(plane: Plane) -> RgbImage {
    RgbImage::from_raw(plane.width as u32, plane.height as u32, plane.data)
        .expect("plane buffer length matches its size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings_pick_the_release_rule() {
        let order = |v: &str| ResampleOrder::from_pillow_version(v).unwrap();
        assert_eq!(order("12.3.0"), ResampleOrder::Pillow12);
        assert_eq!(order("12.2.0"), ResampleOrder::Pillow12);
        assert_eq!(order("12.1.1"), ResampleOrder::PillowLegacy);
        assert_eq!(order("11.3.0"), ResampleOrder::PillowLegacy);
        assert_eq!(order("13.0.0"), ResampleOrder::Pillow13);
        assert_eq!(order("13.0.0.dev0"), ResampleOrder::Pillow13);
        assert_eq!(order("14.1"), ResampleOrder::Pillow13);
        assert!(ResampleOrder::from_pillow_version("pillow").is_err());
    }

    #[test]
    fn pass_order_rules() {
        use PassOrder::*;
        // Qwen smart_resize(480, 640): 640x480 -> 644x476, the case the notes measured on 13.x.
        assert_eq!(
            ResampleOrder::Pillow12.pass_order(640, 480, 644, 476),
            HorizontalFirst
        );
        assert_eq!(
            ResampleOrder::Pillow13.pass_order(640, 480, 644, 476),
            VerticalFirst
        );
        // Width shrinks by 10, height by 20: not more than twice.
        assert_eq!(
            ResampleOrder::Pillow13.pass_order(100, 100, 90, 80),
            HorizontalFirst
        );
        assert_eq!(
            ResampleOrder::Pillow13.pass_order(100, 100, 90, 79),
            VerticalFirst
        );
        // Tall-image rule of 12.2+.
        assert_eq!(
            ResampleOrder::Pillow12.pass_order(3, 400, 2, 50),
            VerticalFirst
        );
        assert_eq!(
            ResampleOrder::Pillow12.pass_order(4, 400, 2, 50),
            HorizontalFirst
        );
        assert_eq!(
            ResampleOrder::PillowLegacy.pass_order(3, 400, 2, 50),
            HorizontalFirst
        );
    }

    #[test]
    fn kernel_weights_sum_to_one_in_fixed_point() {
        let coeffs = AxisCoeffs::new(97, 40);
        for xx in 0..40 {
            let (_, k) = coeffs.window(xx);
            let sum: i64 = k.iter().map(|&w| i64::from(w)).sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                "{sum}"
            );
        }
    }

    #[test]
    fn zero_size_is_an_error() {
        let img = RgbImage::new(4, 4);
        assert!(resize_bicubic(&img, 0, 3, ResampleOrder::Pillow12).is_err());
    }
}
