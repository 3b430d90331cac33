//! Information versus layer: m_K against K with confidence bands and horizons.

use crate::band::draw_band;
use crate::figure::{
    derr, draw_layer_mesh, draw_title, information_label, render, subtitle, Figure, PALETTE,
    TITLE_H,
};
use crate::scale::fmt_value;
use anyhow::{bail, Result};
use horizon_analysis::{Analysis, GroupResult};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct CurveOptions {
    /// Models to draw (all when empty).
    pub models: Vec<String>,
    /// One curve per task (default true).
    pub tasks: bool,
    /// One curve per model pooled over its tasks (default true; skipped for a model with a single
    /// task, where it equals the task curve).
    pub pooled: bool,
    /// Shade the bootstrap confidence band (default true).
    pub bands: bool,
}

impl Default for CurveOptions {
    fn default() -> Self {
        CurveOptions {
            models: Vec::new(),
            tasks: true,
            pooled: true,
            bands: true,
        }
    }
}

struct Curves<'a> {
    a: &'a Analysis,
    groups: Vec<&'a GroupResult>,
    bands: bool,
}

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let a = self.a;
        let (title, body) = root.split_vertically(TITLE_H);
        let thr = match a.params.threshold {
            horizon_analysis::Threshold::Relative(f) => format!("{:.0}% of max |m_K|", f * 100.0),
            horizon_analysis::Threshold::Absolute(v) => fmt_value(v),
        };
        draw_title(
            &title,
            "Information versus layer",
            &format!(
                "{}; shaded: {:.0}% bootstrap CI over samples; dashed: horizon (|m_K| ≤ {thr}{} from there on)",
                subtitle(a),
                a.params.confidence * 100.0,
                if a.params.require_ci_covers_zero { ", CI ∋ 0" } else { "" }
            ),
        )?;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut kmin, mut kmax) = (i32::MAX, i32::MIN);
        for g in &self.groups {
            for l in &g.layers {
                for v in [l.mean, l.ci_low, l.ci_high] {
                    if v.is_finite() && (self.bands || v == l.mean) {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
                kmin = kmin.min(l.layer);
                kmax = kmax.max(l.layer);
            }
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        lo = lo.min(0.0);
        hi = hi.max(0.0);
        let pad = ((hi - lo) * 0.08).max(1e-12);
        let (lo, hi) = (lo - pad * 2.5, hi + pad);
        if kmin > kmax {
            (kmin, kmax) = (0, 1);
        }
        let (x0, x1) = (kmin as f64 - 0.5, kmax as f64 + 0.5);
        let mut chart = ChartBuilder::on(&body)
            .margin(15)
            .margin_right(30)
            .set_label_area_size(LabelAreaPosition::Left, 80)
            .set_label_area_size(LabelAreaPosition::Bottom, 55)
            .build_cartesian_2d(x0..x1, lo..hi)
            .map_err(derr)?;
        let tiny = (hi - lo) * 1e-9;
        let yfmt = |v: &f64| fmt_value(if v.abs() < tiny { 0.0 } else { *v });
        draw_layer_mesh(
            &mut chart,
            "cut layer K (0-based; layers ≥ K see the kept tokens)",
            &format!("m_K: {}", information_label(a.params.metric, a.params.mode)),
            ((kmax - kmin + 1) as usize).min(32),
            &yfmt,
        )?;
        // zero line
        chart
            .draw_series(LineSeries::new(
                [(x0, 0.0), (x1, 0.0)],
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(derr)?;
        for (i, g) in self.groups.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = g
                .layers
                .iter()
                .filter(|l| l.mean.is_finite())
                .map(|l| (l.layer as f64, l.mean))
                .collect();
            if self.bands {
                let band: Vec<(f64, f64, f64)> = g
                    .layers
                    .iter()
                    .filter(|l| l.ci_low.is_finite() && l.ci_high.is_finite())
                    .map(|l| (l.layer as f64, l.ci_low, l.ci_high))
                    .collect();
                draw_band(&mut chart, &band, color, None)?;
            }
            let width = if g.pooled { 4 } else { 2 };
            let name = if g.pooled {
                format!("{} / all tasks (n={})", g.model, g.n_samples)
            } else {
                format!("{} / {} (n={})", g.model, g.task, g.n_samples)
            };
            let hz = match g.horizon.horizon {
                Some(h) => format!(", H = {h}"),
                None => ", no horizon".to_string(),
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
                .map_err(derr)?
                .label(format!("{name}{hz}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(width))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(derr)?;
            // label height near the bottom, staggered so that several horizons stay readable
            let y = lo + (hi - lo) * (0.02 + 0.045 * (i % 4) as f64);
            let interval = interval_bar(&mut chart, g, y, x1, (hi - lo) * 0.012, color)?;
            let mark = match (g.horizon.horizon, &interval) {
                (Some(h), Some(iv)) => Some((h as f64, format!("H = {h} ({iv})"))),
                (Some(h), None) => Some((h as f64, format!("H = {h}"))),
                (None, Some(iv)) => g
                    .horizon_bootstrap
                    .low
                    .map(|l| (l as f64, format!("no H ({iv})"))),
                (None, None) => None,
            };
            if let Some(h) = g.horizon.horizon {
                let x = h as f64;
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x, lo), (x, hi)],
                        8,
                        5,
                        color.stroke_width(2),
                    ))
                    .map_err(derr)?;
            }
            if let Some((x, text)) = mark {
                // on the inner side of the line
                let right_half = x > (x0 + x1) / 2.0;
                let anchor = Pos::new(
                    if right_half { HPos::Right } else { HPos::Left },
                    VPos::Bottom,
                );
                chart
                    .draw_series(std::iter::once(Text::new(
                        if right_half {
                            format!("{text} ")
                        } else {
                            format!(" {text}")
                        },
                        (x, y),
                        TextStyle::from(("sans-serif", 15).into_font())
                            .color(&color)
                            .pos(anchor),
                    )))
                    .map_err(derr)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.5))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(derr)?;
        Ok(())
    }
}

/// m_K against the layer K, one curve per (model, task) and per model pooled (see
/// [`CurveOptions`]), with confidence bands and each curve's horizon marked by a dashed vertical
/// line and an "H = K" label.
pub fn plot_information_vs_layer(a: &Analysis, opts: &CurveOptions, path: &Path) -> Result<()> {
    let tasks_of = |m: &str| {
        a.groups
            .iter()
            .filter(|g| g.model == m && !g.pooled)
            .count()
    };
    let groups: Vec<&GroupResult> = a
        .groups
        .iter()
        .filter(|g| opts.models.is_empty() || opts.models.contains(&g.model))
        .filter(|g| {
            if g.pooled {
                opts.pooled && (tasks_of(&g.model) > 1 || !opts.tasks)
            } else {
                opts.tasks
            }
        })
        .collect();
    if groups.is_empty() {
        bail!("no curves to plot (check CurveOptions and the model names)");
    }
    render(
        &Curves {
            a,
            groups,
            bands: opts.bands,
        },
        path,
    )
}

/// The bootstrap interval of `g`'s horizon as a horizontal bar at height `y` with end caps (an
/// open end at `x_end` when the interval reaches "no horizon"); returns its text, e.g. "95%: 4–6",
/// or `None` when the group has no bootstrap distribution or no resample had a horizon.
fn interval_bar<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    g: &GroupResult,
    y: f64,
    x_end: f64,
    cap: f64,
    color: RGBColor,
) -> Result<Option<String>> {
    let b = &g.horizon_bootstrap;
    let Some(low) = b.low.filter(|_| b.resamples > 0) else {
        return Ok(None);
    };
    let xa = low as f64;
    let xb = b.high.map(|h| h as f64).unwrap_or(x_end);
    let mut segments = vec![vec![(xa, y), (xb, y)], vec![(xa, y - cap), (xa, y + cap)]];
    if b.high.is_some() {
        segments.push(vec![(xb, y - cap), (xb, y + cap)]);
    }
    chart
        .draw_series(
            segments
                .into_iter()
                .map(|seg| PathElement::new(seg, color.stroke_width(2))),
        )
        .map_err(derr)?;
    let range = match b.high {
        Some(h) if h == low => format!("{h}"),
        Some(h) => format!("{low}–{h}"),
        None => format!("{low}–none"),
    };
    Ok(Some(format!("{:.0}%: {range}", b.confidence * 100.0)))
}
