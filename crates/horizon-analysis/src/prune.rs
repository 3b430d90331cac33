//! Prune-sweep curves and the matched-budget table of visual-token pruning experiments.
//!
//! * [`sweep_curves`]: scores of "prune with method M at layer K to a fixed keep ratio" runs,
//!   as percent of the unpruned model, averaged over seeds per (method, layer). Random pruning is
//!   the baseline every method is compared against ([`gap_to_random`]).
//! * [`table1_markdown`] / [`table1_json`]: "method alone" against "method early + random late"
//!   at matched layer-averaged visual-token budgets T_eq (the layout of Table 1 of "All You Need
//!   Are Random Visual Tokens?").

use crate::stats;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// One scored run of a prune sweep: `method` pruned at layer `layer` to a fixed keep ratio; `seed`
/// for random stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepScore {
    pub method: String,
    pub layer: usize,
    pub seed: Option<u64>,
    pub score: f64,
}

/// One layer of a [`SweepCurve`]; all values in percent of the unpruned score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub layer: usize,
    pub mean_relative: f64,
    /// Sample std (n − 1) over the runs; 0 for a single run.
    pub std_relative: f64,
    pub min_relative: f64,
    pub max_relative: f64,
    /// Runs (seeds) averaged.
    pub runs: usize,
}

/// The relative score of one method against the pruning layer, layers ascending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepCurve {
    pub method: String,
    pub points: Vec<CurvePoint>,
}

impl SweepCurve {
    /// The point at `layer`, if measured.
    pub fn point(&self, layer: usize) -> Option<&CurvePoint> {
        self.points.iter().find(|p| p.layer == layer)
    }
}

fn check_unpruned(unpruned: f64) -> Result<()> {
    if !(unpruned.is_finite() && unpruned > 0.0) {
        bail!("unpruned score {unpruned} must be positive and finite (scores are relative to it)");
    }
    Ok(())
}

/// Groups `scores` into one curve per method (methods in order of first appearance, layers
/// ascending) of `100 · score / unpruned`, reduced over the runs (seeds) of each (method, layer).
pub fn sweep_curves(scores: &[SweepScore], unpruned: f64) -> Result<Vec<SweepCurve>> {
    check_unpruned(unpruned)?;
    let mut methods: Vec<(&str, BTreeMap<usize, Vec<f64>>)> = Vec::new();
    for s in scores {
        if !s.score.is_finite() {
            bail!(
                "score of method `{}` at layer {}{} is {} (must be finite)",
                s.method,
                s.layer,
                s.seed.map(|x| format!(", seed {x}")).unwrap_or_default(),
                s.score
            );
        }
        let i = match methods.iter().position(|(m, _)| *m == s.method) {
            Some(i) => i,
            None => {
                methods.push((&s.method, BTreeMap::new()));
                methods.len() - 1
            }
        };
        methods[i]
            .1
            .entry(s.layer)
            .or_default()
            .push(100.0 * s.score / unpruned);
    }
    Ok(methods
        .into_iter()
        .map(|(method, layers)| SweepCurve {
            method: method.to_string(),
            points: layers
                .into_iter()
                .map(|(layer, v)| CurvePoint {
                    layer,
                    mean_relative: stats::mean(&v),
                    std_relative: if v.len() > 1 {
                        stats::sample_std(&v)
                    } else {
                        0.0
                    },
                    min_relative: v.iter().copied().fold(f64::INFINITY, f64::min),
                    max_relative: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    runs: v.len(),
                })
                .collect(),
        })
        .collect())
}

/// `(method, layer, method mean − random mean)` in percentage points, for every method other than
/// `random` and every layer both measured; in curve order, layers ascending. Empty when there is no
/// curve named `random`.
pub fn gap_to_random(curves: &[SweepCurve], random: &str) -> Vec<(String, usize, f64)> {
    let Some(r) = curves.iter().find(|c| c.method == random) else {
        return Vec::new();
    };
    curves
        .iter()
        .filter(|c| c.method != random)
        .flat_map(|c| {
            c.points.iter().filter_map(move |p| {
                r.point(p.layer)
                    .map(|q| (c.method.clone(), p.layer, p.mean_relative - q.mean_relative))
            })
        })
        .collect()
}

/// One row of the matched-budget table: a pruning spec evaluated (possibly `repeats` times with
/// different seeds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetRow {
    /// The spec as run, e.g. `divprune@0:284,random@20:38`.
    pub spec: String,
    /// The method label, e.g. `divprune+random`.
    pub label: String,
    /// Layer-averaged number of visual tokens the decoder sees.
    pub t_eq: f64,
    /// Visual tokens kept from layer 0 on (after the first stage).
    pub retained_from_layer0: f64,
    /// Visual tokens left at the last layer.
    pub retained_final: f64,
    pub score_mean: f64,
    /// Sample std over the repeats (shown when repeats > 1).
    pub score_std: f64,
    pub repeats: usize,
}

/// Budget groups: a row joins the first group whose first row's T_eq is within `tolerance`
/// (relative) of its own; groups by descending T_eq (non-finite last), rows in input order. Budgets
/// computed from token counts rarely match exactly (191.75 against 192), hence the tolerance.
fn budget_groups(rows: &[BudgetRow], tolerance: f64) -> Vec<Vec<&BudgetRow>> {
    let mut groups: Vec<Vec<&BudgetRow>> = Vec::new();
    for r in rows {
        match groups.iter_mut().find(|g| {
            let t0 = g[0].t_eq;
            (r.t_eq - t0).abs() <= tolerance * t0.abs()
        }) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let key = |g: &Vec<&BudgetRow>| {
        let t = g[0].t_eq;
        if t.is_nan() {
            f64::NEG_INFINITY
        } else {
            t
        }
    };
    groups.sort_by(|a, b| key(b).total_cmp(&key(a)));
    groups
}

/// A token count: at most two decimals, trailing zeros dropped (192, 191.75, 12.5).
fn fmt_count(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Decimals for scores: four significant digits of the unpruned score (61.23, 0.6123), so that
/// accuracies in percent and in fractions both read well.
fn score_decimals(unpruned: f64) -> usize {
    if !(unpruned.is_finite() && unpruned != 0.0) {
        return 3;
    }
    (3 - unpruned.abs().log10().floor() as i64).clamp(0, 6) as usize
}

fn relative(score: f64, unpruned: f64) -> Option<f64> {
    (unpruned.is_finite() && unpruned > 0.0 && score.is_finite()).then(|| 100.0 * score / unpruned)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The matched-budget table as Markdown: an `unpruned` row (T_eq "all", relative 100.0), then the
/// budget groups (see `budget_tolerance`, a relative tolerance such as 0.05) by descending T_eq.
/// The budget of a group is its first row's T_eq and is repeated on each row, so that every row
/// stands alone. Scores show `mean ± std` when repeats > 1.
pub fn table1_markdown(rows: &[BudgetRow], unpruned: f64, budget_tolerance: f64) -> String {
    let d = score_decimals(unpruned);
    let rel = |s: f64| relative(s, unpruned).map_or("—".into(), |r| format!("{r:.1}"));
    let mut out = String::from(
        "| Budget (T_eq) | Spec | Method | T_eq | Retained from layer 0 | Retained at last layer | Score | Relative (%) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    out.push_str(&format!(
        "| all | — | unpruned | all | all | all | {unpruned:.d$} | {} |\n",
        rel(unpruned)
    ));
    for g in budget_groups(rows, budget_tolerance) {
        let budget = fmt_count(g[0].t_eq);
        for r in g {
            let score = if r.repeats > 1 {
                format!("{:.d$} ± {:.d$}", r.score_mean, r.score_std)
            } else {
                format!("{:.d$}", r.score_mean)
            };
            out.push_str(&format!(
                "| {budget} | {} | {} | {} | {} | {} | {score} | {} |\n",
                cell(&r.spec),
                cell(&r.label),
                fmt_count(r.t_eq),
                fmt_count(r.retained_from_layer0),
                fmt_count(r.retained_final),
                rel(r.score_mean)
            ));
        }
    }
    out
}

/// The content of [`table1_markdown`] as JSON: `unpruned`, `budget_tolerance` and `budgets`, each
/// with its `t_eq` (first row's) and `rows` (the [`BudgetRow`] fields plus `relative`, percent of
/// the unpruned score; null when undefined).
pub fn table1_json(rows: &[BudgetRow], unpruned: f64, budget_tolerance: f64) -> serde_json::Value {
    let budgets: Vec<serde_json::Value> = budget_groups(rows, budget_tolerance)
        .into_iter()
        .map(|g| {
            json!({
                "t_eq": g[0].t_eq,
                "rows": g.iter().map(|r| json!({
                    "spec": r.spec,
                    "label": r.label,
                    "t_eq": r.t_eq,
                    "retained_from_layer0": r.retained_from_layer0,
                    "retained_final": r.retained_final,
                    "score_mean": r.score_mean,
                    "score_std": r.score_std,
                    "repeats": r.repeats,
                    "relative": relative(r.score_mean, unpruned),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "unpruned": { "score": unpruned, "relative": relative(unpruned, unpruned) },
        "budget_tolerance": budget_tolerance,
        "budgets": budgets,
    })
}
