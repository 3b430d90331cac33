//! The information horizon: the first layer from which every deeper layer's information vanishes.

use serde::{Deserialize, Serialize};

/// The text reported when no horizon is found.
pub const NO_HORIZON: &str = "no horizon within the measured layers";

/// The vanishing threshold ε on |m_K|.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Threshold {
    /// ε = fraction · max_K |m_K| of the same (model, task) group.
    Relative(f64),
    /// ε = the given value, in units of the metric.
    Absolute(f64),
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Relative(0.05)
    }
}

/// The horizon of one (model, task) group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HorizonResult {
    /// The horizon layer H, or `None`.
    pub horizon: Option<i32>,
    /// "layer H" or [`NO_HORIZON`].
    pub description: String,
    /// The absolute threshold ε applied.
    pub threshold_value: f64,
    /// max_K |m_K| over the measured layers.
    pub max_abs_mean: f64,
    /// The layer with the largest |m_K|.
    pub peak_layer: Option<i32>,
    /// Whether each measured layer (ascending) vanishes: (layer, vanishes).
    pub vanishing: Vec<(i32, bool)>,
}

/// Finds the horizon from per-layer `(layer, m_K, ci_low, ci_high)` (any order; layers without a
/// finite mean are ignored). A layer vanishes when `|m_K| ≤ ε` and, if `require_ci_covers_zero`,
/// `ci_low ≤ 0 ≤ ci_high` (a NaN CI, e.g. from one sample, does not cover zero).
pub fn find_horizon(
    layers: &[(i32, f64, f64, f64)],
    threshold: Threshold,
    require_ci_covers_zero: bool,
) -> HorizonResult {
    let mut ls: Vec<(i32, f64, f64, f64)> =
        layers.iter().copied().filter(|l| l.1.is_finite()).collect();
    ls.sort_by_key(|l| l.0);
    let (mut max_abs, mut peak) = (0.0f64, None);
    for l in &ls {
        if peak.is_none() || l.1.abs() > max_abs {
            max_abs = l.1.abs();
            peak = Some(l.0);
        }
    }
    let eps = match threshold {
        Threshold::Relative(f) => f * max_abs,
        Threshold::Absolute(a) => a,
    };
    let vanishing: Vec<(i32, bool)> = ls
        .iter()
        .map(|&(k, m, lo, hi)| {
            let small = m.abs() <= eps;
            let covers = !require_ci_covers_zero || (lo <= 0.0 && hi >= 0.0);
            (k, small && covers)
        })
        .collect();
    let mut horizon = None;
    for &(k, v) in vanishing.iter().rev() {
        if v {
            horizon = Some(k);
        } else {
            break;
        }
    }
    HorizonResult {
        horizon,
        description: match horizon {
            Some(h) => format!("layer {h}"),
            None => NO_HORIZON.to_string(),
        },
        threshold_value: eps,
        max_abs_mean: max_abs,
        peak_layer: peak,
        vanishing,
    }
}
