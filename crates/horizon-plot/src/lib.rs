//! # horizon-plot
//!
//! Figures of a [`horizon_analysis::Analysis`] and of pruning sweeps, as PNG or SVG (picked by the
//! output path's extension):
//! * [`plot_window_heatmaps`]: a grid of spatial window maps Ī[K,·] for chosen layers, one shared
//!   colour scale and colour bar;
//! * [`plot_information_vs_layer`]: m_K against K, one curve per (model, task), bootstrap
//!   confidence bands, horizons marked;
//! * [`plot_layer_window_heatmap`]: Ī[K,w] as a layer × window image, the horizon marked;
//! * [`plot_prune_sweep`]: relative score of pruning methods against the pruning layer K, the
//!   random baseline's spread over seeds shaded, the horizon marked.
//!
//! The colour scale is diverging (blue < 0 < red, symmetric about 0) when the values have both
//! signs, sequential (viridis) otherwise. Missing cells are grey. Text uses the bundled DejaVu Sans
//! (`assets/DejaVuSans.ttf`, Bitstream Vera licence in `assets/DejaVuSans-LICENSE.txt`), registered
//! with plotters on first use.

use anyhow::{anyhow, bail, Context, Result};
use horizon_analysis::{Analysis, CurvePoint, GroupResult, InfoMode, Metric, SweepCurve};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the bundled font for every family and style plotters may ask for. Called by every
/// plotting function; call it yourself before drawing your own plotters figures with text.
pub fn register_fonts() {
    REGISTER.call_once(|| {
        for family in ["sans-serif", "serif", "monospace", "DejaVu Sans"] {
            for style in [
                FontStyle::Normal,
                FontStyle::Bold,
                FontStyle::Italic,
                FontStyle::Oblique,
            ] {
                // The font is bundled and valid; a failure would only lose text.
                let _ = register_font(family, style, FONT);
            }
        }
    });
}

fn derr<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Output format, from the path's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Format> {
        match path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => bail!(
                "{}: unsupported figure format (use .png or .svg)",
                path.display()
            ),
        }
    }
}

trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Renders `fig` to a temporary file next to `path`, then renames it into place.
fn render<F: Figure>(fig: &F, path: &Path) -> Result<()> {
    register_fonts();
    let format = Format::from_path(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = if format == Format::Png { "png" } else { "svg" };
    let tmp: PathBuf = dir.join(format!(".{name}.tmp{}.{ext}", std::process::id()));
    let result = (|| -> Result<()> {
        match format {
            Format::Png => {
                // plotters draws into an RGB buffer; the `image` crate encodes it.
                let (w, h) = fig.size();
                let mut buf = vec![255u8; w as usize * h as usize * 3];
                {
                    let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                    root.fill(&WHITE).map_err(derr)?;
                    fig.draw(&root)?;
                    root.present().map_err(derr)?;
                }
                let img = image::RgbImage::from_raw(w, h, buf)
                    .ok_or_else(|| anyhow!("image buffer size mismatch"))?;
                img.save_with_format(&tmp, image::ImageFormat::Png)
                    .with_context(|| format!("{}: cannot write PNG", tmp.display()))?;
            }
            Format::Svg => {
                let root = SVGBackend::new(&tmp, fig.size()).into_drawing_area();
                root.fill(&WHITE).map_err(derr)?;
                fig.draw(&root)?;
                root.present().map_err(derr)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("{}: cannot render figure", path.display())));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Axis / colour-bar label of the information for the analysis' metric and mode.
pub fn information_label(metric: Metric, mode: InfoMode) -> String {
    let q = match (metric, mode) {
        (Metric::P, InfoMode::KeepOnly) => "p_w − p_text (probability)",
        (Metric::P, InfoMode::LeaveOut) => "p_full − p_−w (probability)",
        (Metric::Logp, InfoMode::KeepOnly) => "log p_w − log p_text (nats)",
        (Metric::Logp, InfoMode::LeaveOut) => "log p_full − log p_−w (nats)",
        (Metric::Kl, InfoMode::KeepOnly) => "KL_text − KL_w (nats)",
        (Metric::Kl, InfoMode::LeaveOut) => "KL_−w (nats)",
    };
    format!("information {q}")
}

fn subtitle(a: &Analysis) -> String {
    format!(
        "metric {}, {} windows, target {}",
        a.params.metric, a.params.mode, a.params.target
    )
}

// ---------------------------------------------------------------------------------------------
// Colour scales

/// A colour scale over [lo, hi].
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    diverging: bool,
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
    fn from_values(values: impl Iterator<Item = f64>) -> Scale {
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

    fn color(&self, v: f64) -> RGBColor {
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

fn fmt_value(v: f64) -> String {
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
fn draw_colorbar<DB: DrawingBackend>(
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

// ---------------------------------------------------------------------------------------------
// 1. Spatial window heatmaps

struct WindowHeatmaps<'a> {
    a: &'a Analysis,
    g: &'a GroupResult,
    layers: Vec<(i32, usize)>,
    cols: usize,
    rows: usize,
    panel: u32,
}

const TITLE_H: u32 = 80;
const BAR_W: u32 = 180;

impl Figure for WindowHeatmaps<'_> {
    fn size(&self) -> (u32, u32) {
        (
            self.cols as u32 * self.panel + BAR_W,
            self.rows as u32 * self.panel + TITLE_H,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (a, g) = (self.a, self.g);
        let grid = &a.grid;
        let (title, body) = root.split_vertically(TITLE_H);
        draw_title(
            &title,
            &format!(
                "Mean information per window — {} / {} (n = {} samples)",
                g.model, g.task, g.n_samples
            ),
            &format!(
                "{}; {}×{} window grid, row-major; shared colour scale",
                subtitle(a),
                grid.rows,
                grid.cols
            ),
        )?;
        let (maps, bar) = body.split_horizontally(self.cols as u32 * self.panel);
        let scale = Scale::from_values(
            self.layers
                .iter()
                .flat_map(|&(_, li)| g.window_means.row(li).to_vec()),
        );
        let panels = maps.split_evenly((self.rows, self.cols));
        let (gr, gc) = (grid.rows as f64, grid.cols as f64);
        for (&(layer, li), panel) in self.layers.iter().zip(panels.iter()) {
            let hz = match g.horizon.horizon {
                Some(h) if layer >= h => " (≥ horizon)",
                _ => "",
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("layer K = {layer}{hz}"), ("sans-serif", 16))
                .margin(6)
                .set_label_area_size(LabelAreaPosition::Left, 42)
                .set_label_area_size(LabelAreaPosition::Bottom, 36)
                // rows grow downwards, as in the image
                .build_cartesian_2d(-0.5..gc - 0.5, gr - 0.5..-0.5)
                .map_err(derr)?;
            let int = |v: &f64| format!("{}", v.round() as i64);
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(grid.cols.min(8))
                .y_labels(grid.rows.min(8))
                .x_label_formatter(&int)
                .y_label_formatter(&int)
                .x_desc("window column")
                .y_desc("window row")
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .draw()
                .map_err(derr)?;
            chart
                .draw_series((0..grid.n_windows).map(|w| {
                    let (r, c) = (grid.row_of[w] as f64, grid.col_of[w] as f64);
                    Rectangle::new(
                        [(c - 0.5, r - 0.5), (c + 0.5, r + 0.5)],
                        scale.color(g.window_means[[li, w]]).filled(),
                    )
                }))
                .map_err(derr)?;
        }
        draw_colorbar(
            &bar,
            &scale,
            &format!("Ī  {}", information_label(a.params.metric, a.params.mode)),
        )?;
        Ok(())
    }
}

fn draw_title<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    sub: &str,
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let center = |size: u32| {
        TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Top))
    };
    area.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2, 12),
        center(22),
    ))
    .map_err(derr)?;
    area.draw(&Text::new(
        sub.to_string(),
        (w as i32 / 2, 44),
        center(15).color(&RGBColor(70, 70, 70)),
    ))
    .map_err(derr)?;
    Ok(())
}

fn group<'a>(a: &'a Analysis, model: &str, task: &str) -> Result<&'a GroupResult> {
    a.group(model, task).ok_or_else(|| {
        anyhow!(
            "no results for model `{model}`, task `{task}` (groups: {})",
            a.groups
                .iter()
                .map(|g| format!("{}/{}", g.model, g.task))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// A grid of spatial heatmaps of Ī[K,·] of (`model`, `task`) for `layers` (all measured layers
/// when empty), sharing one colour scale and colour bar. Use `horizon_analysis::POOLED_TASK` for
/// the model's pooled group.
pub fn plot_window_heatmaps(
    a: &Analysis,
    model: &str,
    task: &str,
    layers: &[i32],
    path: &Path,
) -> Result<()> {
    let g = group(a, model, task)?;
    let chosen: Vec<(i32, usize)> = if layers.is_empty() {
        g.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.layer, i))
            .collect()
    } else {
        layers
            .iter()
            .map(|&k| {
                g.layer_index(k)
                    .map(|i| (k, i))
                    .ok_or_else(|| anyhow!("layer {k} was not measured for {model}/{task}"))
            })
            .collect::<Result<_>>()?
    };
    if chosen.is_empty() {
        bail!("no layers to plot for {model}/{task}");
    }
    let cols = (chosen.len() as f64).sqrt().ceil().max(1.0) as usize;
    let cols = cols.clamp(1, 6);
    let rows = chosen.len().div_ceil(cols);
    let fig = WindowHeatmaps {
        a,
        g,
        layers: chosen,
        cols,
        rows,
        panel: 260,
    };
    render(&fig, path)
}

// ---------------------------------------------------------------------------------------------
// 2. Information versus layer

/// Which groups [`plot_information_vs_layer`] draws.
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

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

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
        let xfmt = |v: &f64| format!("{}", v.round() as i64);
        let tiny = (hi - lo) * 1e-9;
        let yfmt = |v: &f64| fmt_value(if v.abs() < tiny { 0.0 } else { *v });
        chart
            .configure_mesh()
            .x_desc("cut layer K (0-based; layers ≥ K see the kept tokens)")
            .y_desc(format!(
                "m_K: {}",
                information_label(a.params.metric, a.params.mode)
            ))
            .x_labels(((kmax - kmin + 1) as usize).min(32))
            .x_label_formatter(&xfmt)
            .y_label_formatter(&yfmt)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(derr)?;
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
                let band: Vec<&horizon_analysis::LayerStats> = g
                    .layers
                    .iter()
                    .filter(|l| l.ci_low.is_finite() && l.ci_high.is_finite())
                    .collect();
                if band.len() >= 2 {
                    let poly: Vec<(f64, f64)> = band
                        .iter()
                        .map(|l| (l.layer as f64, l.ci_high))
                        .chain(band.iter().rev().map(|l| (l.layer as f64, l.ci_low)))
                        .collect();
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            poly,
                            color.mix(0.18).filled(),
                        )))
                        .map_err(derr)?;
                }
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
                // label near the bottom, staggered so that several horizons stay readable, on
                // the inner side of the line
                let y = lo + (hi - lo) * (0.02 + 0.045 * (i % 4) as f64);
                let right_half = x > (x0 + x1) / 2.0;
                let anchor = Pos::new(
                    if right_half { HPos::Right } else { HPos::Left },
                    VPos::Bottom,
                );
                chart
                    .draw_series(std::iter::once(Text::new(
                        if right_half {
                            format!("H = {h} ")
                        } else {
                            format!(" H = {h}")
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

// ---------------------------------------------------------------------------------------------
// 3. Layer x window heatmap

struct LayerWindow<'a> {
    a: &'a Analysis,
    g: &'a GroupResult,
}

impl Figure for LayerWindow<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 720)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (a, g) = (self.a, self.g);
        let nw = a.grid.n_windows;
        let (title, body) = root.split_vertically(TITLE_H);
        draw_title(
            &title,
            &format!(
                "Mean information per layer and window — {} / {} (n = {} samples)",
                g.model, g.task, g.n_samples
            ),
            &format!(
                "{}; windows row-major on the {}×{} grid; dashed: horizon; white rows: layer not measured",
                subtitle(a),
                a.grid.rows,
                a.grid.cols
            ),
        )?;
        let (main, bar) = body.split_horizontally(1200 - BAR_W);
        let scale = Scale::from_values(g.window_means.iter().copied());
        let kmin = g.layers.first().map(|l| l.layer).unwrap_or(0);
        let kmax = g.layers.last().map(|l| l.layer).unwrap_or(0);
        let mut chart = ChartBuilder::on(&main)
            .margin(15)
            .set_label_area_size(LabelAreaPosition::Left, 70)
            .set_label_area_size(LabelAreaPosition::Bottom, 55)
            .build_cartesian_2d(0f64..nw as f64, (kmax as f64 + 0.5)..(kmin as f64 - 0.5))
            .map_err(derr)?;
        let xfmt = |v: &f64| format!("{}", v.floor() as i64);
        let yfmt = |v: &f64| format!("{}", v.round() as i64);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("window index (row-major)")
            .y_desc("cut layer K")
            .x_labels(nw.min(16) + 1)
            .y_labels(((kmax - kmin + 1) as usize).min(32))
            .x_label_formatter(&xfmt)
            .y_label_formatter(&yfmt)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(derr)?;
        // Each measured layer spans [K-0.5, K+0.5]; unmeasured layers stay white.
        chart
            .draw_series(g.layers.iter().enumerate().flat_map(|(li, l)| {
                let k = l.layer as f64;
                (0..nw).map(move |w| {
                    Rectangle::new(
                        [(w as f64, k - 0.5), (w as f64 + 1.0, k + 0.5)],
                        scale.color(g.window_means[[li, w]]).filled(),
                    )
                })
            }))
            .map_err(derr)?;
        if let Some(h) = g.horizon.horizon {
            let y = h as f64 - 0.5;
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, y), (nw as f64, y)],
                    10,
                    6,
                    BLACK.stroke_width(3),
                ))
                .map_err(derr)?;
            let label = format!("horizon H = {h}");
            let style = TextStyle::from(("sans-serif", 16).into_font())
                .pos(Pos::new(HPos::Left, VPos::Center));
            let (tw, th) = main.estimate_text_size(&label, &style).map_err(derr)?;
            let (px, py) = chart.backend_coord(&(0.0, y));
            let (bx, by) = main.get_base_pixel();
            let at = (px - bx + 8, py - by + 14);
            main.draw(&Rectangle::new(
                [
                    (at.0 - 4, at.1 - th as i32 / 2 - 3),
                    (at.0 + tw as i32 + 4, at.1 + th as i32 / 2 + 3),
                ],
                ShapeStyle::from(&WHITE).filled(),
            ))
            .map_err(derr)?;
            main.draw(&Rectangle::new(
                [
                    (at.0 - 4, at.1 - th as i32 / 2 - 3),
                    (at.0 + tw as i32 + 4, at.1 + th as i32 / 2 + 3),
                ],
                BLACK.stroke_width(1),
            ))
            .map_err(derr)?;
            main.draw(&Text::new(label, at, style)).map_err(derr)?;
        }
        draw_colorbar(
            &bar,
            &scale,
            &format!("Ī  {}", information_label(a.params.metric, a.params.mode)),
        )?;
        Ok(())
    }
}

/// Ī[K,w] of (`model`, `task`) as a layer × window image with a colour bar and the horizon marked.
pub fn plot_layer_window_heatmap(a: &Analysis, model: &str, task: &str, path: &Path) -> Result<()> {
    let g = group(a, model, task)?;
    if g.layers.is_empty() {
        bail!("no measured layers for {model}/{task}");
    }
    render(&LayerWindow { a, g }, path)
}

// ---------------------------------------------------------------------------------------------
// 4. Pruning sweep: relative score against the pruning layer

/// What [`plot_prune_sweep`] draws besides the curves.
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
        let xfmt = |v: &f64| format!("{}", v.round() as i64);
        let yfmt = |v: &f64| format!("{v:.0}");
        chart
            .configure_mesh()
            .x_desc("pruning layer K")
            .y_desc("relative score (%)")
            .x_labels(((kmax - kmin) as usize + 1).min(32))
            .x_label_formatter(&xfmt)
            .y_label_formatter(&yfmt)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(derr)?;
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
                let band: Vec<&CurvePoint> = pts
                    .iter()
                    .copied()
                    .filter(|p| p.min_relative.is_finite() && p.max_relative.is_finite())
                    .collect();
                if band.len() >= 2 {
                    let poly: Vec<(f64, f64)> = band
                        .iter()
                        .map(|p| (p.layer as f64, p.max_relative))
                        .chain(band.iter().rev().map(|p| (p.layer as f64, p.min_relative)))
                        .collect();
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            poly,
                            color.mix(0.18).filled(),
                        )))
                        .map_err(derr)?;
                } else {
                    // A single layer has no area to shade: a min–max error bar instead.
                    let cap = 0.08 * (x1 - x0).min(2.0);
                    chart
                        .draw_series(band.iter().flat_map(|p| {
                            let (x, a, b) = (p.layer as f64, p.min_relative, p.max_relative);
                            [
                                vec![(x, a), (x, b)],
                                vec![(x - cap, a), (x + cap, a)],
                                vec![(x - cap, b), (x + cap, b)],
                            ]
                            .map(|seg| PathElement::new(seg, color.stroke_width(2)))
                        }))
                        .map_err(derr)?;
                }
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
