//! The layer × window map: Ī[K,w] as an image, the horizon marked.

use crate::figure::{
    derr, draw_title, group, information_label, render, subtitle, Figure, BAR_W, TITLE_H,
};
use crate::heatmaps::grids_label;
use crate::scale::{draw_colorbar, Scale};
use anyhow::{bail, Result};
use horizon_analysis::{Analysis, GroupResult};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

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
        let several = a.grid.num_grids() > 1;
        let (title, body) = root.split_vertically(TITLE_H);
        let layout = if several {
            format!("windows row-major on each grid ({})", grids_label(a))
        } else {
            format!(
                "windows row-major on the {}×{} grid",
                a.grid.rows, a.grid.cols
            )
        };
        draw_title(
            &title,
            &format!(
                "Mean information per layer and window — {} / {} (n = {} samples)",
                g.model, g.task, g.n_samples
            ),
            &format!(
                "{}; {layout}; dashed: horizon; white rows: layer not measured",
                subtitle(a),
            ),
        )?;
        let (main, bar) = body.split_horizontally(1200 - BAR_W);
        let scale = Scale::from_values(g.window_means.iter().copied());
        if several {
            // One panel per token grid, side by side, on the shared colour scale.
            let panels = main.split_evenly((1, a.grid.num_grids()));
            for (gi, panel) in panels.iter().enumerate() {
                let windows = a.grid.windows_of_grid(gi);
                self.draw_panel(panel, &windows, &scale, Some(format!("grid {gi}")))?;
            }
        } else {
            let windows: Vec<usize> = (0..a.grid.n_windows).collect();
            self.draw_panel(&main, &windows, &scale, None)?;
        }
        draw_colorbar(
            &bar,
            &scale,
            &format!("Ī  {}", information_label(a.params.metric, a.params.mode)),
        )?;
        Ok(())
    }
}

impl LayerWindow<'_> {
    /// The layer × window image of `windows` (x: their order), the horizon marked.
    fn draw_panel<DB: DrawingBackend>(
        &self,
        main: &DrawingArea<DB, Shift>,
        windows: &[usize],
        scale: &Scale,
        caption: Option<String>,
    ) -> Result<()> {
        let g = self.g;
        let nw = windows.len();
        let kmin = g.layers.first().map(|l| l.layer).unwrap_or(0);
        let kmax = g.layers.last().map(|l| l.layer).unwrap_or(0);
        let mut builder = ChartBuilder::on(main);
        if let Some(caption) = &caption {
            builder.caption(caption, ("sans-serif", 16));
        }
        let mut chart = builder
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
            .x_desc(if caption.is_some() {
                "window index on the grid (row-major)"
            } else {
                "window index (row-major)"
            })
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
                windows.iter().enumerate().map(move |(x, &w)| {
                    Rectangle::new(
                        [(x as f64, k - 0.5), (x as f64 + 1.0, k + 0.5)],
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
        Ok(())
    }
}

/// `Ī[K,w]` of (`model`, `task`) as a layer × window image with a colour bar and the horizon marked.
pub fn plot_layer_window_heatmap(a: &Analysis, model: &str, task: &str, path: &Path) -> Result<()> {
    let g = group(a, model, task)?;
    if g.layers.is_empty() {
        bail!("no measured layers for {model}/{task}");
    }
    render(&LayerWindow { a, g }, path)
}
