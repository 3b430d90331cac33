//! Pruning sweep: relative score of pruning methods against the pruning layer K.

use crate::band::draw_band;
use crate::figure::{derr, draw_layer_mesh, draw_title, render, Figure, PALETTE, TITLE_H};
use anyhow::{bail, Result};
use horizon_analysis::{CurvePoint, SweepCurve};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct PruneSweepOptions {
    pub title: String,
    /// The baseline curve, drawn in grey with its min–max spread over seeds shaded (default
    /// `random`).
    pub random_method: String,
    /// A dashed vertical line labelled "horizon" at this layer.
    pub horizon_layer: Option<f64>,
    /// Decoder layers; when given the x axis spans all of them, not only the swept ones.
    pub num_layers: Option<usize>,
    /// The keep ratio of the sweep, e.g. "keep 50%", shown under the title.
    pub keep_label: String,
}

impl Default for PruneSweepOptions {
    fn default() -> Self {
        PruneSweepOptions {
            title: "Pruning at layer K".into(),
            random_method: "random".into(),
            horizon_layer: None,
            num_layers: None,
            keep_label: String::new(),
        }
    }
}

struct PruneSweep<'a> {
    curves: &'a [SweepCurve],
    opts: &'a PruneSweepOptions,
}

const RANDOM_COLOR: RGBColor = RGBColor(80, 80, 80);

/// "3" or "12.5": a layer that may be fractional (e.g. a horizon averaged over tasks).
fn fmt_layer(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

impl PruneSweep<'_> {
    fn is_random(&self, c: &SweepCurve) -> bool {
        c.method == self.opts.random_method
    }

    /// "N seeds" or "N–M seeds" of the random curve's points with more than one run; `None` when
    /// there is nothing to shade.
    fn random_seeds(&self) -> Option<String> {
        let runs: Vec<usize> = self
            .curves
            .iter()
            .filter(|c| self.is_random(c))
            .flat_map(|c| c.points.iter().map(|p| p.runs))
            .collect();
        let (lo, hi) = (*runs.iter().min()?, *runs.iter().max()?);
        match (lo, hi) {
            (_, 0 | 1) => None,
            (lo, hi) if lo == hi => Some(format!("{hi} seeds")),
            (lo, hi) => Some(format!("{lo}–{hi} seeds")),
        }
    }
}

impl Figure for PruneSweep<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let opts = self.opts;
        let seeds = self.random_seeds();
        let (title, body) = root.split_vertically(TITLE_H);
        let mut sub = vec![];
        if !opts.keep_label.is_empty() {
            sub.push(opts.keep_label.clone());
        }
        sub.push("score relative to the unpruned model (= 100%)".into());
        if let Some(s) = &seeds {
            sub.push(format!("shaded: {} min–max over {s}", opts.random_method));
        }
        draw_title(&title, &opts.title, &sub.join("; "))?;

        // Ranges: every finite value drawn, 100 %, the horizon and all decoder layers if known.
        let (mut lo, mut hi) = (100.0f64, 100.0f64);
        let (mut kmin, mut kmax) = (f64::INFINITY, f64::NEG_INFINITY);
        for c in self.curves {
            for p in &c.points {
                let band = self.is_random(c) && seeds.is_some();
                for v in [p.mean_relative, p.min_relative, p.max_relative] {
                    if v.is_finite() && (band || v == p.mean_relative) {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
                kmin = kmin.min(p.layer as f64);
                kmax = kmax.max(p.layer as f64);
            }
        }
        if let Some(n) = opts.num_layers.filter(|&n| n > 0) {
            kmin = kmin.min(0.0);
            kmax = kmax.max((n - 1) as f64);
        }
        if let Some(h) = opts.horizon_layer.filter(|h| h.is_finite()) {
            kmin = kmin.min(h);
            kmax = kmax.max(h);
        }
        let pad = ((hi - lo) * 0.08).max(1.0);
        let (y0, y1) = (lo - pad, hi + pad);
        let (x0, x1) = (kmin - 0.5, kmax + 0.5);

        let mut chart = ChartBuilder::on(&body)
            .margin(15)
            .margin_right(30)
            .set_label_area_size(LabelAreaPosition::Left, 70)
            .set_label_area_size(LabelAreaPosition::Bottom, 55)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(derr)?;
        let yfmt = |v: &f64| format!("{v:.0}");
        draw_layer_mesh(
            &mut chart,
            "pruning layer K",
            "relative score (%)",
            ((kmax - kmin) as usize + 1).min(32),
            &yfmt,
        )?;
        chart
            .draw_series(DashedLineSeries::new(
                [(x0, 100.0), (x1, 100.0)],
                8,
                5,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(derr)?
            .label("unpruned (100%)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.mix(0.6)));

        let mut next_color = 0;
        for c in self.curves {
            let random = self.is_random(c);
            let color = if random {
                RANDOM_COLOR
            } else {
                next_color += 1;
                PALETTE[(next_color - 1) % PALETTE.len()]
            };
            let pts: Vec<&CurvePoint> = c
                .points
                .iter()
                .filter(|p| p.mean_relative.is_finite())
                .collect();
            if random && seeds.is_some() {
                let band: Vec<(f64, f64, f64)> = pts
                    .iter()
                    .filter(|p| p.min_relative.is_finite() && p.max_relative.is_finite())
                    .map(|p| (p.layer as f64, p.min_relative, p.max_relative))
                    .collect();
                // A single layer has no area to shade: a min–max error bar instead.
                let cap = 0.08 * (x1 - x0).min(2.0);
                draw_band(&mut chart, &band, color, Some(cap))?;
            }
            let label = match (&seeds, random) {
                (Some(s), true) => format!("{} (mean, min–max over {s})", c.method),
                _ => c.method.clone(),
            };
            let line: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.layer as f64, p.mean_relative))
                .collect();
            let width = if random { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(width)))
                .map_err(derr)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(width))
                });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(derr)?;
        }

        if let Some(h) = opts.horizon_layer.filter(|h| h.is_finite()) {
            chart
                .draw_series(DashedLineSeries::new(
                    [(h, y0), (h, y1)],
                    8,
                    5,
                    BLACK.stroke_width(2),
                ))
                .map_err(derr)?;
            // in the top margin above the curves (the legend sits lower right), on the inner side
            // of the line
            let right_half = h > (x0 + x1) / 2.0;
            let text = format!("horizon K = {}", fmt_layer(h));
            chart
                .draw_series(std::iter::once(Text::new(
                    if right_half {
                        format!("{text} ")
                    } else {
                        format!(" {text}")
                    },
                    (h, y1 - (y1 - y0) * 0.01),
                    TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(
                        if right_half { HPos::Right } else { HPos::Left },
                        VPos::Top,
                    )),
                )))
                .map_err(derr)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.5))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(derr)?;
        Ok(())
    }
}

/// The layer-by-layer comparison of pruning methods: relative score against the pruning layer K,
/// one line with markers per method (layers a method lacks are bridged), the random baseline with
/// its min–max spread over seeds shaded, 100 % dashed, and the information horizon, when given, as
/// a dashed vertical line. Errors when no curve has a finite point.
pub fn plot_prune_sweep(
    curves: &[SweepCurve],
    opts: &PruneSweepOptions,
    path: &Path,
) -> Result<()> {
    if !curves
        .iter()
        .flat_map(|c| &c.points)
        .any(|p| p.mean_relative.is_finite())
    {
        bail!("{}: no pruning sweep points to plot", path.display());
    }
    render(&PruneSweep { curves, opts }, path)
}
