//! # horizon-plot
//!
//! Figures of a [`horizon_analysis::Analysis`] and of pruning sweeps, as PNG or SVG (picked by the
//! output path's extension):
//! * [`plot_window_heatmaps`]: a grid of spatial window maps Ī[K,·] for chosen layers, one shared
//!   colour scale and colour bar;
//! * [`plot_information_vs_layer`]: m_K against K, one curve per (model, task), bootstrap
//!   confidence bands, horizons marked;
//! * [`plot_layer_window_heatmap`]: `Ī[K,w]` as a layer × window image, the horizon marked;
//! * [`plot_prune_sweep`]: relative score of pruning methods against the pruning layer K, the
//!   random baseline's spread over seeds shaded, the horizon marked.
//!
//! The colour scale is diverging (blue < 0 < red, symmetric about 0) when the values have both
//! signs, sequential (viridis) otherwise. Missing cells are grey. Text uses the bundled DejaVu Sans
//! (`assets/DejaVuSans.ttf`, Bitstream Vera licence in `assets/DejaVuSans-LICENSE.txt`), registered
//! with plotters on first use.
//!
//! One module per figure; [`band`](crate) draws every confidence band (the bootstrap interval of
//! m_K, the random baseline's spread over seeds) with one function.

mod band;
mod curves;
mod figure;
mod heatmaps;
mod layer_window;
mod prune_sweep;
mod scale;

pub use curves::{plot_information_vs_layer, CurveOptions};
pub use figure::{information_label, register_fonts, Format};
pub use heatmaps::plot_window_heatmaps;
pub use layer_window::plot_layer_window_heatmap;
pub use prune_sweep::{plot_prune_sweep, PruneSweepOptions};
