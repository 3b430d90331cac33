//! Rendering shared by every figure: the bundled font, the output format, atomic writing, titles
//! and labels.

use anyhow::{anyhow, bail, Context, Result};
use horizon_analysis::{Analysis, GroupResult, InfoMode, Metric};
use plotters::coord::types::RangedCoordf64;
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

pub(crate) fn derr<E: std::fmt::Display>(e: E) -> anyhow::Error {
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

pub(crate) trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Renders `fig` to a temporary file next to `path`, then renames it into place.
pub(crate) fn render<F: Figure>(fig: &F, path: &Path) -> Result<()> {
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

pub(crate) fn subtitle(a: &Analysis) -> String {
    format!(
        "metric {}, {} windows, target {}",
        a.params.metric, a.params.mode, a.params.target
    )
}

pub(crate) const TITLE_H: u32 = 80;
pub(crate) const BAR_W: u32 = 180;

pub(crate) const PALETTE: [RGBColor; 10] = [
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

pub(crate) fn draw_title<DB: DrawingBackend>(
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

pub(crate) fn group<'a>(a: &'a Analysis, model: &str, task: &str) -> Result<&'a GroupResult> {
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

/// The grid, axis labels and layer ticks of a chart over decoder layers (x: layer K, labelled by
/// whole numbers; y: `y_format`), as every per-layer figure draws them.
pub(crate) fn draw_layer_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x_desc: &str,
    y_desc: &str,
    x_labels: usize,
    y_format: &dyn Fn(&f64) -> String,
) -> Result<()> {
    let x_format = |v: &f64| format!("{}", v.round() as i64);
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(x_labels)
        .x_label_formatter(&x_format)
        .y_label_formatter(y_format)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(derr)?;
    Ok(())
}
