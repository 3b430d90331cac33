//! Pixel drawing primitives (no anti-aliasing: every drawn pixel has exactly the drawing colour).

use image::{Rgb, RgbImage};

use super::font::{glyph_pixel, GLYPH_H, GLYPH_W};
use super::{Rect, ShapeKind};

fn put(img: &mut RgbImage, x: i64, y: i64, rgb: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(rgb));
    }
}

/// Whether the centre of pixel (`x`, `y`) lies inside the shape drawn in `bbox`.
///
/// Circle: disc inscribed in the bbox. Square: the whole bbox. Triangle: apex at the top centre, base along
/// the bottom edge.
pub fn shape_contains(kind: ShapeKind, bbox: Rect, x: u32, y: u32) -> bool {
    if x < bbox.x || y < bbox.y || x >= bbox.x + bbox.w || y >= bbox.y + bbox.h {
        return false;
    }
    let px = x as f64 + 0.5 - bbox.x as f64;
    let py = y as f64 + 0.5 - bbox.y as f64;
    let (w, h) = (bbox.w as f64, bbox.h as f64);
    match kind {
        ShapeKind::Square => true,
        ShapeKind::Circle => {
            let (dx, dy) = (px - w / 2.0, py - h / 2.0);
            let r = w.min(h) / 2.0;
            dx * dx + dy * dy <= r * r
        }
        ShapeKind::Triangle => {
            // Half-width at depth py grows linearly from 0 at the apex to w/2 at the base.
            let half = (w / 2.0) * (py / h);
            (px - w / 2.0).abs() <= half
        }
    }
}

pub fn draw_shape(img: &mut RgbImage, kind: ShapeKind, bbox: Rect, rgb: [u8; 3]) {
    for y in bbox.y..bbox.y + bbox.h {
        for x in bbox.x..bbox.x + bbox.w {
            if shape_contains(kind, bbox, x, y) {
                put(img, x as i64, y as i64, rgb);
            }
        }
    }
}

/// Draws `ch` with its top-left corner at (`x`, `y`), each font pixel a `scale`x`scale` block.
pub fn draw_glyph(img: &mut RgbImage, ch: char, x: u32, y: u32, scale: u32, rgb: [u8; 3]) {
    for row in 0..GLYPH_H {
        for col in 0..GLYPH_W {
            if glyph_pixel(ch, col, row) {
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(
                            img,
                            (x + col * scale + dx) as i64,
                            (y + row * scale + dy) as i64,
                            rgb,
                        );
                    }
                }
            }
        }
    }
}

/// One-pixel outline of `r`.
pub fn draw_rect_outline(img: &mut RgbImage, r: Rect, rgb: [u8; 3]) {
    if r.w == 0 || r.h == 0 {
        return;
    }
    let (x0, y0) = (r.x as i64, r.y as i64);
    let (x1, y1) = (x0 + r.w as i64 - 1, y0 + r.h as i64 - 1);
    for x in x0..=x1 {
        put(img, x, y0, rgb);
        put(img, x, y1, rgb);
    }
    for y in y0..=y1 {
        put(img, x0, y, rgb);
        put(img, x1, y, rgb);
    }
}
