//! The information oracle's keep-sets: windows ranked by the probability of the answer when only
//! that window's visual tokens remain from layer K, computed by the information engine or read from
//! `horizon info` rows.

use anyhow::{bail, Result};

use horizon_data::window::WindowGrid;

use super::Stage;
use crate::info::{full_run, sweep_sample, InfoMode, SweepConfig, Variant};
use crate::model::{ModelInputs, VlModel};

/// The information oracle's keep-set (sequence indices of visual tokens): windows ranked by the
/// probability of the answer when only that window's visual tokens remain from layer K.
pub(super) fn info_keep(
    model: &VlModel,
    inputs: &ModelInputs,
    stage: &Stage,
    window: usize,
    target: i64,
) -> Result<Vec<usize>> {
    let grid = WindowGrid::new(inputs.visual.grid, window)?;
    let n = inputs.visual.positions.len();
    let k = stage.count_within(n)?;
    let full = full_run(model, inputs)?;
    let cfg = SweepConfig {
        layers: vec![stage.layer],
        window_size: window,
        mode: InfoMode::KeepOnly,
        batch_size: None,
        memory_budget_bytes: 1 << 30,
    };
    let results = sweep_sample(model, inputs, &full, target, &cfg)?;
    let mut scores = vec![f32::NEG_INFINITY; grid.num_windows()];
    for r in results {
        if let Variant::Window(w) = r.variant {
            scores[w] = r.p as f32;
        }
    }
    Ok(keep_best_windows(inputs, &grid, &scores, k))
}

/// The information oracle's keep-set from scores read from `horizon info` rows (the same p values
/// the engine computes, ranked the same way).
pub(super) fn info_keep_from_rows(
    inputs: &ModelInputs,
    stage: &Stage,
    window: usize,
    rows: &std::collections::BTreeMap<usize, Vec<f64>>,
) -> Result<Vec<usize>> {
    let grid = WindowGrid::new(inputs.visual.grid, window)?;
    let n = inputs.visual.positions.len();
    let k = stage.count_within(n)?;
    let Some(p) = rows.get(&stage.layer) else {
        bail!(
            "the info rows of this sample have no layer {} (they have {:?})",
            stage.layer,
            rows.keys().collect::<Vec<_>>()
        );
    };
    if p.len() != grid.num_windows() || p.iter().any(|v| !v.is_finite()) {
        bail!(
            "the info rows of this sample at layer {} hold {} finite window values, the {}x{} windows need {}",
            stage.layer,
            p.iter().filter(|v| v.is_finite()).count(),
            window,
            window,
            grid.num_windows()
        );
    }
    let scores: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    Ok(keep_best_windows(inputs, &grid, &scores, k))
}

/// Windows by score (ties: lower index first), their tokens until `k` (a last window partly, in
/// raster order); sequence indices, sorted.
fn keep_best_windows(
    inputs: &ModelInputs,
    grid: &WindowGrid,
    scores: &[f32],
    k: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = Vec::with_capacity(k);
    for w in order {
        for t in grid.window_tokens(w) {
            if kept.len() < k {
                kept.push(inputs.visual.positions[t]);
            }
        }
    }
    kept.sort_unstable();
    kept
}
