//! Spatial window heatmaps: Ī[K,·] on the window grid for chosen layers.

use crate::figure::{
    derr, draw_title, group, information_label, render, subtitle, Figure, BAR_W, TITLE_H,
};
use crate::scale::{draw_colorbar, Scale};
use anyhow::{anyhow, bail, Result};
use horizon_analysis::{Analysis, GroupResult};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

struct WindowHeatmaps<'a> {
    a: &'a Analysis,
    g: &'a GroupResult,
    /// One panel each: (layer K, its row of the window means, the token grid).
    layers: Vec<(i32, usize, usize)>,
    cols: usize,
    rows: usize,
    panel: u32,
}

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
                "{}; {}, row-major; shared colour scale",
                subtitle(a),
                grids_label(a)
            ),
        )?;
        let (maps, bar) = body.split_horizontally(self.cols as u32 * self.panel);
        let scale = Scale::from_values(
            self.layers
                .iter()
                .flat_map(|&(_, li, _)| g.window_means.row(li).to_vec()),
        );
        let panels = maps.split_evenly((self.rows, self.cols));
        let several = grid.num_grids() > 1;
        for (&(layer, li, gi), panel) in self.layers.iter().zip(panels.iter()) {
            let (rows, cols) = grid.grid_shape(gi);
            let (gr, gc) = (rows as f64, cols as f64);
            let hz = match g.horizon.horizon {
                Some(h) if layer >= h => " (≥ horizon)",
                _ => "",
            };
            let caption = if several {
                format!("layer K = {layer}{hz}, grid {gi}")
            } else {
                format!("layer K = {layer}{hz}")
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(caption, ("sans-serif", 16))
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
                .x_labels(cols.min(8))
                .y_labels(rows.min(8))
                .x_label_formatter(&int)
                .y_label_formatter(&int)
                .x_desc("window column")
                .y_desc("window row")
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .draw()
                .map_err(derr)?;
            chart
                .draw_series(grid.windows_of_grid(gi).into_iter().map(|w| {
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

/// "R×C window grid", or each grid's shape when the windows lie on several token grids.
pub(crate) fn grids_label(a: &Analysis) -> String {
    let grid = &a.grid;
    if grid.num_grids() > 1 {
        let shapes: Vec<String> = (0..grid.num_grids())
            .map(|g| {
                let (r, c) = grid.grid_shape(g);
                format!("{r}×{c} (grid {g})")
            })
            .collect();
        format!("window grids {}", shapes.join(", "))
    } else {
        format!("{}×{} window grid", grid.rows, grid.cols)
    }
}

/// A grid of spatial heatmaps of Ī[K,·] of (`model`, `task`) for `layers` (all measured layers
/// when empty), sharing one colour scale and colour bar; with several token grids (LLaVA-NeXT's base
/// and high-resolution grids) each layer has one panel per grid. Use `horizon_analysis::POOLED_TASK` for
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
    // Several token grids (LLaVA-NeXT): one panel per layer and grid, a layer's grids side by side.
    let grids = a.grid.num_grids();
    let cols = (chosen.len() as f64).sqrt().ceil().max(1.0) as usize;
    let cols = if grids > 1 {
        cols.clamp(1, 3) * grids
    } else {
        cols.clamp(1, 6)
    };
    let chosen: Vec<(i32, usize, usize)> = chosen
        .into_iter()
        .flat_map(|(k, li)| (0..grids).map(move |gi| (k, li, gi)))
        .collect();
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
