//! The confidence band, one drawing for every figure that shades an interval around a curve.

use crate::figure::derr;
use anyhow::Result;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Shades the area between `lo` and `hi` of `points` (x, lo, hi), ascending x, finite bounds) in
/// `color` at 18 % opacity. Fewer than two points have no area: with `single_point_cap` they are
/// drawn as error bars whose caps have that half-width, otherwise nothing is drawn.
pub(crate) fn draw_band<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    points: &[(f64, f64, f64)],
    color: RGBColor,
    single_point_cap: Option<f64>,
) -> Result<()> {
    if points.len() >= 2 {
        let poly: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, _, hi)| (x, hi))
            .chain(points.iter().rev().map(|&(x, lo, _)| (x, lo)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                poly,
                color.mix(0.18).filled(),
            )))
            .map_err(derr)?;
    } else if let Some(cap) = single_point_cap {
        chart
            .draw_series(points.iter().flat_map(|&(x, a, b)| {
                [
                    vec![(x, a), (x, b)],
                    vec![(x - cap, a), (x + cap, a)],
                    vec![(x - cap, b), (x + cap, b)],
                ]
                .map(|seg| PathElement::new(seg, color.stroke_width(2)))
            }))
            .map_err(derr)?;
    }
    Ok(())
}
