//! Prune-sweep curves and the matched-budget table of visual-token pruning experiments.
//!
//! * [`sweep_curves`]: scores of "prune with method M at layer K to a fixed keep ratio" runs,
//!   as percent of the unpruned model, averaged over seeds per (method, layer). Random pruning is
//!   the baseline every method is compared against ([`gap_to_random`]).
//! * [`table1_markdown`] / [`table1_json`]: "method alone" against "method early + random late"
//!   at matched layer-averaged visual-token budgets T_eq (the layout of Table 1 of "All You Need
//!   Are Random Visual Tokens?").
//! * [`RunSummary`] / [`SpecSummary`]: what each run of a pruning comparison measured (score,
//!   latency, KV cache, visual tokens in the three budget conventions) and each spec over its seeds,
//!   with [`summary_markdown`].
//! * [`SweepReport`]: the layer sweep's `sweep.json` and `sweep.md`.

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

/// What one finished run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub spec: String,
    pub label: String,
    pub seed: Option<u64>,
    pub dir: String,
    pub metric: String,
    pub score: f64,
    pub samples: usize,
    pub prefill_ms: f64,
    pub decode_ms_per_token: Option<f64>,
    pub end_to_end_ms: f64,
    pub kv_cache_bytes_peak: i64,
    pub kv_cache_bytes_mean: f64,
    pub visual_tokens_layer0: f64,
    pub visual_tokens_final: f64,
    pub visual_tokens_t_eq: f64,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// One spec over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecSummary {
    pub spec: String,
    pub label: String,
    pub repeats: usize,
    pub metric: String,
    pub score_mean: f64,
    /// Sample standard deviation over seeds (0 for one run).
    pub score_std: f64,
    /// 100 · score / unpruned score.
    pub relative: Option<f64>,
    pub prefill_ms: f64,
    pub decode_ms_per_token: Option<f64>,
    pub end_to_end_ms: f64,
    pub kv_cache_bytes_peak: i64,
    pub visual_tokens_layer0: f64,
    pub visual_tokens_final: f64,
    pub visual_tokens_t_eq: f64,
    pub runs: Vec<RunSummary>,
}

/// Groups runs by spec (first-appearance order) with the unpruned run (`none`) as the reference of
/// `relative`.
pub fn summarize_specs(runs: &[RunSummary]) -> Vec<SpecSummary> {
    let mut specs: Vec<SpecSummary> = Vec::new();
    for r in runs {
        match specs.iter_mut().find(|s| s.spec == r.spec) {
            Some(s) => s.runs.push(r.clone()),
            None => specs.push(SpecSummary {
                spec: r.spec.clone(),
                label: r.label.clone(),
                repeats: 0,
                metric: r.metric.clone(),
                score_mean: 0.0,
                score_std: 0.0,
                relative: None,
                prefill_ms: 0.0,
                decode_ms_per_token: None,
                end_to_end_ms: 0.0,
                kv_cache_bytes_peak: 0,
                visual_tokens_layer0: 0.0,
                visual_tokens_final: 0.0,
                visual_tokens_t_eq: 0.0,
                runs: vec![r.clone()],
            }),
        }
    }
    for s in &mut specs {
        let n = s.runs.len();
        let m = |f: fn(&RunSummary) -> f64| s.runs.iter().map(f).sum::<f64>() / n as f64;
        s.repeats = n;
        s.score_mean = m(|r| r.score);
        s.score_std = if n > 1 {
            let mu = s.score_mean;
            (s.runs.iter().map(|r| (r.score - mu).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        s.prefill_ms = m(|r| r.prefill_ms);
        s.decode_ms_per_token = mean(s.runs.iter().filter_map(|r| r.decode_ms_per_token));
        s.end_to_end_ms = m(|r| r.end_to_end_ms);
        s.kv_cache_bytes_peak = s
            .runs
            .iter()
            .map(|r| r.kv_cache_bytes_peak)
            .max()
            .unwrap_or(0);
        s.visual_tokens_layer0 = m(|r| r.visual_tokens_layer0);
        s.visual_tokens_final = m(|r| r.visual_tokens_final);
        s.visual_tokens_t_eq = m(|r| r.visual_tokens_t_eq);
    }
    let unpruned = specs
        .iter()
        .find(|s| s.spec == "none")
        .map(|s| s.score_mean);
    for s in &mut specs {
        s.relative = unpruned
            .filter(|&u| u > 0.0)
            .map(|u| 100.0 * s.score_mean / u);
    }
    specs
}

/// The summary table in Markdown.
pub fn summary_markdown(specs: &[SpecSummary]) -> String {
    let mut out = String::new();
    if let Some(first) = specs.first() {
        out.push_str(&format!("Score: {}\n\n", first.metric));
    }
    out.push_str("| spec | score | relative (%) | visual tokens: layer 0 / last / T_eq | prefill ms | decode ms/token | end to end ms | peak KV cache (MiB) | runs |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for s in specs {
        let score = if s.repeats > 1 {
            format!("{:.2} ± {:.2}", s.score_mean, s.score_std)
        } else {
            format!("{:.2}", s.score_mean)
        };
        out.push_str(&format!(
            "| `{}` | {score} | {} | {:.1} / {:.1} / {:.2} | {:.2} | {} | {:.2} | {:.3} | {} |\n",
            s.spec,
            s.relative.map_or("–".into(), |r| format!("{r:.1}")),
            s.visual_tokens_layer0,
            s.visual_tokens_final,
            s.visual_tokens_t_eq,
            s.prefill_ms,
            s.decode_ms_per_token
                .map_or("–".into(), |d| format!("{d:.2}")),
            s.end_to_end_ms,
            s.kv_cache_bytes_peak as f64 / (1024.0 * 1024.0),
            s.repeats
        ));
    }
    out
}

impl BudgetRow {
    /// The row of a spec's summary.
    pub fn of(s: &SpecSummary) -> Self {
        Self {
            spec: s.spec.clone(),
            label: s.label.clone(),
            t_eq: s.visual_tokens_t_eq,
            retained_from_layer0: s.visual_tokens_layer0,
            retained_final: s.visual_tokens_final,
            score_mean: s.score_mean,
            score_std: s.score_std,
            repeats: s.repeats,
        }
    }
}

/// The information horizons of one model in a horizon.json: pooled over its tasks (`None`: still
/// informative at the last measured layer) and per task.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelHorizons {
    pub pooled: Option<f64>,
    pub tasks: Vec<(String, Option<i32>)>,
}

impl ModelHorizons {
    /// The horizons of `model` in `report` (of its only model when none has that name); `source`
    /// names the file in errors.
    pub fn of(report: &crate::HorizonReport, model: &str, source: &str) -> Result<Self> {
        let entry = match report.models.iter().find(|m| m.model == model) {
            Some(m) => m,
            None if report.models.len() == 1 => &report.models[0],
            None => bail!(
                "{source}: no model named {model:?} (it has {}); pass --model-name",
                report
                    .models
                    .iter()
                    .map(|m| m.model.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Ok(Self {
            pooled: entry.pooled.horizon.horizon.map(f64::from),
            tasks: entry
                .tasks
                .iter()
                .map(|t| (t.task.clone(), t.horizon.horizon))
                .collect(),
        })
    }
}

/// A pruning spec of a sweep that cannot run (a method at a layer it does not support), and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedSpec {
    pub spec: String,
    pub why: String,
}

/// The layer sweep's result (`sweep.json`): each method's score relative to the unpruned model
/// against the pruning layer K, at one keep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub model: String,
    pub bench: String,
    pub metric: String,
    pub keep: String,
    pub layers: Vec<usize>,
    /// The pooled information horizon of the model, when a horizon.json was given and has one.
    pub horizon_layer: Option<f64>,
    /// Per task, when a horizon.json was given.
    pub task_horizons: Option<BTreeMap<String, Option<i32>>>,
    pub unpruned_score: f64,
    pub scores: Vec<SweepScore>,
    pub curves: Vec<SweepCurve>,
    pub skipped: Vec<SkippedSpec>,
}

impl SweepReport {
    /// `sweep.json`: the report with its keys in alphabetical order at every level.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(&serde_json::to_value(self)?)?)
    }

    /// `sweep.md`: a table of the relative scores (mean ± std over seeds) by method and layer, then
    /// the horizons of `horizons`, read from `horizon_source`.
    pub fn markdown(&self, horizons: Option<(&ModelHorizons, &str)>) -> String {
        let (metric, unpruned, keep) = (&self.metric, self.unpruned_score, &self.keep);
        let mut md = format!(
            "Relative score (% of the unpruned model's {metric} = {unpruned:.2}) when pruning to keep {keep} at layer K\n\n| method |"
        );
        for k in &self.layers {
            md.push_str(&format!(" K={k} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(self.layers.len()));
        md.push('\n');
        for c in &self.curves {
            md.push_str(&format!("| {} |", c.method));
            for k in &self.layers {
                match c.points.iter().find(|p| p.layer == *k) {
                    Some(p) if p.runs > 1 => md.push_str(&format!(
                        " {:.1} ± {:.1} |",
                        p.mean_relative, p.std_relative
                    )),
                    Some(p) => md.push_str(&format!(" {:.1} |", p.mean_relative)),
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        let layer_or_none = |h: Option<f64>| match h {
            Some(h) => format!("layer {h}"),
            None => "none (still informative at the last layer)".to_string(),
        };
        if let Some((h, source)) = horizons {
            md.push_str(&format!(
                "\nInformation horizon (from {source}), all tasks: {}; per task: {}\n",
                layer_or_none(h.pooled),
                h.tasks
                    .iter()
                    .map(|(t, l)| format!("{t} {}", l.map_or("none".into(), |l| l.to_string())))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_summary_mean_std_relative() {
        let run = |spec: &str, score: f64| RunSummary {
            spec: spec.into(),
            label: spec.into(),
            seed: None,
            dir: String::new(),
            metric: "m".into(),
            score,
            samples: 1,
            prefill_ms: 1.0,
            decode_ms_per_token: None,
            end_to_end_ms: 1.0,
            kv_cache_bytes_peak: 10,
            kv_cache_bytes_mean: 10.0,
            visual_tokens_layer0: 576.0,
            visual_tokens_final: 144.0,
            visual_tokens_t_eq: 171.0,
        };
        let s = summarize_specs(&[
            run("none", 80.0),
            run("random@2:144", 50.0),
            run("random@2:144", 60.0),
            run("random@2:144", 70.0),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].repeats, 3);
        assert!((s[1].score_mean - 60.0).abs() < 1e-12);
        assert!((s[1].score_std - 10.0).abs() < 1e-12);
        assert!((s[1].relative.unwrap() - 75.0).abs() < 1e-12);
        assert!(summary_markdown(&s).contains("60.00 ± 10.00"));
    }
}
