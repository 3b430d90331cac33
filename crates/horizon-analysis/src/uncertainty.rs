//! The horizon's own uncertainty: a bootstrap over samples of the horizon layer H of each
//! (model, task) group, paired comparisons of two groups' horizons over joint resamples, and the
//! horizon under the other metrics and thresholds.
//!
//! One resample draws the group's n samples with replacement and applies the horizon rule to the
//! resample's layer means `m*_K` (mean over the drawn samples that have layer K of their window
//! mean `I_s`). The relative threshold is recomputed from the resample (`f · max_K |m*_K|`). The
//! interval a vanishing layer must cover 0 with is the full data's percentile interval moved to
//! the resample's mean, `[m*_K − (m_K − lo_K), m*_K + (hi_K − m_K)]`: a nested bootstrap per
//! resample would cost B² resamples, and on the identity resample the rule is exactly the point
//! estimate's.

use crate::aggregate::{Analysis, GroupResult};
use crate::horizon::{find_horizon, Threshold};
use crate::stats;
use crate::Metric;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Relative thresholds of the sensitivity table (fractions of max_K |m_K|).
pub const SENSITIVITY_THRESHOLDS: [f64; 5] = [0.01, 0.02, 0.05, 0.1, 0.2];

/// The per-sample level `I_s` (mean over the sample's windows) of one group at each of its
/// measured layers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleLevels {
    /// (task, sample_id) of each row; the key that pairs samples across models.
    pub keys: Vec<(String, String)>,
    /// One row per sample, one column per entry of the group's `layers` (NaN: the sample has no
    /// window value at that layer).
    pub levels: Array2<f64>,
}

/// How often one horizon value came out over the resamples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HorizonCount {
    /// The horizon layer, or null for "no horizon within the measured layers".
    pub horizon: Option<i32>,
    pub count: usize,
    pub fraction: f64,
}

/// The bootstrap distribution of one group's horizon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HorizonBootstrap {
    /// Resamples B.
    pub resamples: usize,
    /// Confidence of the interval.
    pub confidence: f64,
    /// Lower end of the percentile interval (null: no horizon). Horizons are ordered by layer with
    /// "no horizon" deepest; the ends are the (1−c)/2 and 1−(1−c)/2 quantiles of the resampled
    /// horizons, each the smallest value whose cumulative fraction reaches the level.
    pub low: Option<i32>,
    /// Upper end of the percentile interval (null: no horizon).
    pub high: Option<i32>,
    /// Fraction of resamples with no horizon within the measured layers.
    pub p_no_horizon: f64,
    /// Every horizon value that occurred, ascending, "no horizon" last.
    pub distribution: Vec<HorizonCount>,
}

/// The two groups of a [`Comparison`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub model: String,
    pub task: String,
}

/// Two groups' horizons compared over joint resamples: the samples both groups have (same task
/// and sample id) are drawn together, the others independently within each group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `tasks` (two tasks of one model) or `models` (one task, two models).
    pub kind: String,
    pub a: GroupRef,
    pub b: GroupRef,
    /// Samples both groups have.
    pub shared_samples: usize,
    pub resamples: usize,
    /// Fraction of resamples where a's horizon is deeper than b's ("no horizon" is deeper than
    /// every layer).
    pub p_a_deeper: f64,
    pub p_equal: f64,
    pub p_b_deeper: f64,
    /// Fraction of resamples where neither has a horizon (part of `p_equal`).
    pub p_both_no_horizon: f64,
}

/// One row of the sensitivity table: the point-estimate horizon of a group under one metric and
/// threshold (mode, target, CI rule as in the parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityRow {
    pub model: String,
    pub task: String,
    pub metric: Metric,
    pub threshold: Threshold,
    pub horizon: Option<i32>,
}

/// The bootstrap seed of one group's horizon distribution.
pub fn horizon_seed(seed: u64, model: &str, task: &str) -> u64 {
    stats::splitmix64(stats::group_seed(seed, model, task, -1) ^ 0x686f72697a6f6e)
}

/// The bootstrap seed of the comparison of groups a and b.
pub fn comparison_seed(seed: u64, a: &GroupRef, b: &GroupRef) -> u64 {
    stats::splitmix64(
        horizon_seed(seed, &a.model, &a.task)
            ^ horizon_seed(seed, &b.model, &b.task).rotate_left(29),
    )
}

/// The horizon of `g` on the resample that takes row `draws[i]` of its sample levels (with
/// repetition); `None` = no horizon.
pub fn resampled_horizon(
    g: &GroupResult,
    draws: &[usize],
    threshold: Threshold,
    require_ci_covers_zero: bool,
) -> Option<i32> {
    let lv = &g.samples.levels;
    let layers: Vec<(i32, f64, f64, f64)> = g
        .layers
        .iter()
        .enumerate()
        .map(|(j, l)| {
            let (mut sum, mut cnt) = (0.0, 0usize);
            for &i in draws {
                let x = lv[[i, j]];
                if !x.is_nan() {
                    sum += x;
                    cnt += 1;
                }
            }
            let m = if cnt > 0 { sum / cnt as f64 } else { f64::NAN };
            (
                l.layer,
                m,
                m - (l.mean - l.ci_low),
                m + (l.ci_high - l.mean),
            )
        })
        .collect();
    find_horizon(&layers, threshold, require_ci_covers_zero).horizon
}

/// Horizons ordered by layer, "no horizon" deepest.
fn depth(h: Option<i32>) -> i64 {
    h.map(i64::from).unwrap_or(i64::MAX)
}

/// The bootstrap distribution of `g`'s horizon: `b` resamples of its samples from a ChaCha8 stream
/// seeded with `seed`, each draw `rng.gen_range(0..n)`.
pub fn horizon_bootstrap(
    g: &GroupResult,
    b: usize,
    confidence: f64,
    seed: u64,
    threshold: Threshold,
    require_ci_covers_zero: bool,
) -> HorizonBootstrap {
    let n = g.samples.levels.nrows();
    if n == 0 || b == 0 {
        return HorizonBootstrap {
            resamples: 0,
            confidence,
            ..Default::default()
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws = vec![0usize; n];
    let hs: Vec<Option<i32>> = (0..b)
        .map(|_| {
            for d in draws.iter_mut() {
                *d = rng.gen_range(0..n);
            }
            resampled_horizon(g, &draws, threshold, require_ci_covers_zero)
        })
        .collect();
    summarize(&hs, confidence)
}

/// Counts, percentile interval and "no horizon" fraction of resampled horizons.
pub fn summarize(hs: &[Option<i32>], confidence: f64) -> HorizonBootstrap {
    let b = hs.len();
    let mut sorted = hs.to_vec();
    sorted.sort_by_key(|&h| depth(h));
    let mut distribution: Vec<HorizonCount> = Vec::new();
    for &h in &sorted {
        match distribution.last_mut() {
            Some(c) if c.horizon == h => c.count += 1,
            _ => distribution.push(HorizonCount {
                horizon: h,
                count: 1,
                fraction: 0.0,
            }),
        }
    }
    for c in &mut distribution {
        c.fraction = c.count as f64 / b as f64;
    }
    let alpha = (1.0 - confidence).clamp(0.0, 1.0) / 2.0;
    // Smallest value whose cumulative fraction reaches q (inverted empirical CDF).
    let quantile = |q: f64| -> Option<i32> {
        let need = (q * b as f64).ceil().max(1.0) as usize;
        sorted[need.min(b) - 1]
    };
    HorizonBootstrap {
        resamples: b,
        confidence,
        low: if b > 0 { quantile(alpha) } else { None },
        high: if b > 0 { quantile(1.0 - alpha) } else { None },
        p_no_horizon: if b > 0 {
            hs.iter().filter(|h| h.is_none()).count() as f64 / b as f64
        } else {
            0.0
        },
        distribution,
    }
}

/// Compares the horizons of `a` and `b` over `resamples` joint resamples seeded with `seed`: per
/// resample, first the shared samples (in `a`'s order) are drawn together, then `a`'s own, then
/// `b`'s own, each stratum keeping its size.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    kind: &str,
    a: &GroupResult,
    b: &GroupResult,
    resamples: usize,
    seed: u64,
    threshold: Threshold,
    require_ci_covers_zero: bool,
) -> Comparison {
    let index_b: HashMap<&(String, String), usize> = b
        .samples
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k, i))
        .collect();
    let mut shared: Vec<(usize, usize)> = Vec::new();
    let mut only_a: Vec<usize> = Vec::new();
    let mut in_a = vec![false; b.samples.keys.len()];
    for (i, k) in a.samples.keys.iter().enumerate() {
        match index_b.get(k) {
            Some(&j) => {
                shared.push((i, j));
                in_a[j] = true;
            }
            None => only_a.push(i),
        }
    }
    let only_b: Vec<usize> = (0..b.samples.keys.len()).filter(|&j| !in_a[j]).collect();
    let refs = (
        GroupRef {
            model: a.model.clone(),
            task: a.task.clone(),
        },
        GroupRef {
            model: b.model.clone(),
            task: b.task.clone(),
        },
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut deeper_a, mut equal, mut deeper_b, mut both_none) = (0usize, 0usize, 0usize, 0usize);
    let (mut da, mut db) = (Vec::new(), Vec::new());
    let runs = if a.samples.keys.is_empty() || b.samples.keys.is_empty() {
        0
    } else {
        resamples
    };
    for _ in 0..runs {
        da.clear();
        db.clear();
        for _ in 0..shared.len() {
            let (i, j) = shared[rng.gen_range(0..shared.len())];
            da.push(i);
            db.push(j);
        }
        for _ in 0..only_a.len() {
            da.push(only_a[rng.gen_range(0..only_a.len())]);
        }
        for _ in 0..only_b.len() {
            db.push(only_b[rng.gen_range(0..only_b.len())]);
        }
        let ha = resampled_horizon(a, &da, threshold, require_ci_covers_zero);
        let hb = resampled_horizon(b, &db, threshold, require_ci_covers_zero);
        match depth(ha).cmp(&depth(hb)) {
            std::cmp::Ordering::Greater => deeper_a += 1,
            std::cmp::Ordering::Less => deeper_b += 1,
            std::cmp::Ordering::Equal => {
                equal += 1;
                if ha.is_none() {
                    both_none += 1;
                }
            }
        }
    }
    let frac = |c: usize| {
        if runs > 0 {
            c as f64 / runs as f64
        } else {
            f64::NAN
        }
    };
    Comparison {
        kind: kind.to_string(),
        a: refs.0,
        b: refs.1,
        shared_samples: shared.len(),
        resamples: runs,
        p_a_deeper: frac(deeper_a),
        p_equal: frac(equal),
        p_b_deeper: frac(deeper_b),
        p_both_no_horizon: frac(both_none),
    }
}

/// Every pair of tasks of each model (pooled group excluded) and every pair of models on each task
/// they both have (pooled groups included), in the order of `a.groups`.
pub fn comparisons(a: &Analysis) -> Vec<Comparison> {
    let p = &a.params;
    let mut pairs: Vec<(&str, &GroupResult, &GroupResult)> = Vec::new();
    for (i, x) in a.groups.iter().enumerate() {
        for y in &a.groups[i + 1..] {
            if x.model == y.model && !x.pooled && !y.pooled {
                pairs.push(("tasks", x, y));
            }
        }
    }
    for (i, x) in a.groups.iter().enumerate() {
        for y in &a.groups[i + 1..] {
            if x.model != y.model && x.task == y.task {
                pairs.push(("models", x, y));
            }
        }
    }
    let run = |&(kind, x, y): &(&str, &GroupResult, &GroupResult)| {
        let seed = comparison_seed(
            p.seed,
            &GroupRef {
                model: x.model.clone(),
                task: x.task.clone(),
            },
            &GroupRef {
                model: y.model.clone(),
                task: y.task.clone(),
            },
        );
        compare(
            kind,
            x,
            y,
            p.bootstrap,
            seed,
            p.threshold,
            p.require_ci_covers_zero,
        )
    };
    use rayon::prelude::*;
    pairs.par_iter().map(run).collect()
}

/// The horizon of every group of `a` (analysed with one metric) at each of `thresholds`, and at
/// the parameters' own threshold when `a` has the primary metric.
pub fn sensitivity_rows(
    a: &Analysis,
    primary: bool,
    thresholds: &[Threshold],
) -> Vec<SensitivityRow> {
    let mut ts: Vec<Threshold> = thresholds.to_vec();
    if primary && !ts.contains(&a.params.threshold) {
        ts.push(a.params.threshold);
    }
    let mut rows = Vec::new();
    for g in &a.groups {
        let layers: Vec<(i32, f64, f64, f64)> = g
            .layers
            .iter()
            .map(|l| (l.layer, l.mean, l.ci_low, l.ci_high))
            .collect();
        for &t in &ts {
            rows.push(SensitivityRow {
                model: g.model.clone(),
                task: g.task.clone(),
                metric: a.params.metric,
                threshold: t,
                horizon: find_horizon(&layers, t, a.params.require_ci_covers_zero).horizon,
            });
        }
    }
    rows
}

/// "layers 4–6", "layer 5", "layer 9 – no horizon", "no horizon"; empty without resamples.
pub fn interval_text(b: &HorizonBootstrap) -> String {
    if b.resamples == 0 {
        return String::new();
    }
    match (b.low, b.high) {
        (Some(l), Some(h)) if l == h => format!("layer {l}"),
        (Some(l), Some(h)) => format!("layers {l}–{h}"),
        (Some(l), None) => format!("layer {l} – no horizon"),
        (None, _) => "no horizon".to_string(),
    }
}
