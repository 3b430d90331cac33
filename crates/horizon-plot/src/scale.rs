//! Colour scales and the colour bar.

use crate::figure::derr;
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A colour scale over [lo, hi].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub(crate) lo: f64,
    pub(crate) hi: f64,
    pub(crate) diverging: bool,
}

const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];
const DIVERGING: [(u8, u8, u8); 7] = [
    (33, 102, 172),
    (103, 169, 207),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (239, 138, 98),
    (178, 24, 43),
];
const MISSING: RGBColor = RGBColor(190, 190, 190);

impl Scale {
    pub(crate) fn from_values(values: impl Iterator<Item = f64>) -> Scale {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            return Scale {
                lo: 0.0,
                hi: 1.0,
                diverging: false,
            };
        }
        let (lo, hi, diverging) = if lo < 0.0 && hi > 0.0 {
            let m = lo.abs().max(hi);
            (-m, m, true)
        } else if lo >= 0.0 {
            (0.0, hi, false)
        } else {
            (lo, 0.0, false)
        };
        let hi = if hi - lo < 1e-15 { lo + 1e-15 } else { hi };
        Scale { lo, hi, diverging }
    }

    pub(crate) fn color(&self, v: f64) -> RGBColor {
        if !v.is_finite() {
            return MISSING;
        }
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        let stops: &[(u8, u8, u8)] = if self.diverging { &DIVERGING } else { &VIRIDIS };
        let x = t * (stops.len() - 1) as f64;
        let i = (x.floor() as usize).min(stops.len() - 2);
        let f = x - i as f64;
        let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
        let (a, b) = (stops[i], stops[i + 1]);
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }
}

pub(crate) fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a < 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

/// A vertical colour bar with value labels and a description, drawn into `area`.
pub(crate) fn draw_colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    scale: &Scale,
    label: &str,
) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(60)
        .margin_left(10)
        .margin_right(34)
        .set_label_area_size(LabelAreaPosition::Right, 62)
        .build_cartesian_2d(0f64..1f64, scale.lo..scale.hi)
        .map_err(derr)?;
    let tiny = (scale.hi - scale.lo) * 1e-9;
    let fmt = |v: &f64| fmt_value(if v.abs() < tiny { 0.0 } else { *v });
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(7)
        .y_label_formatter(&fmt)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(derr)?;
    let steps = 200;
    chart
        .draw_series((0..steps).map(|i| {
            let a = scale.lo + (scale.hi - scale.lo) * i as f64 / steps as f64;
            let b = scale.lo + (scale.hi - scale.lo) * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], scale.color((a + b) / 2.0).filled())
        }))
        .map_err(derr)?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, scale.lo), (1.0, scale.hi)],
            BLACK.stroke_width(1),
        )))
        .map_err(derr)?;
    // The description, rotated, to the right of the tick labels.
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from(("sans-serif", 15).into_font())
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Center, VPos::Top));
    area.draw(&Text::new(
        label.to_string(),
        (w as i32 - 26, h as i32 / 2 - 10),
        style,
    ))
    .map_err(derr)?;
    Ok(())
}
