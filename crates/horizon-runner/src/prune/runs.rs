//! Several pruning specs evaluated on one benchmark (`horizon eval --prune …`, `horizon prune-sweep`):
//! one evaluation directory per (spec, seed), and a summary per spec — the official score (mean ± std
//! over seeds), relative to the unpruned model, latency, KV-cache memory and visual-token counts in the
//! three conventions.

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

use horizon_data::predictions::Prediction;
use horizon_data::score::ScoreTable;

use super::{Method, PruneSpec};

/// One evaluation of a sweep or comparison: a spec under one seed, in its own directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecRun {
    pub spec: PruneSpec,
    pub seed: u64,
    pub dir: PathBuf,
}

/// Whether `spec` draws random numbers (only those get several seeds).
pub fn is_random(spec: &PruneSpec) -> bool {
    spec.stages.iter().any(|s| s.method == Method::Random)
}

/// A directory name for `spec`: `fastv@2:50%` → `fastv-at2-keep50pct`, stages joined by `+`.
pub fn spec_slug(spec: &PruneSpec) -> String {
    if spec.is_none() {
        return "unpruned".into();
    }
    spec.stages
        .iter()
        .map(|s| {
            let keep = s.keep.to_string().replace('%', "pct").replace('.', "p");
            format!("{}-at{}-keep{keep}", s.method.name(), s.layer)
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// The runs of `specs` under `out`: the unpruned model first (added when missing: relative scores
/// need it), then each spec once, or `repeats` times with seeds `seed, seed + 1, …` when it has a
/// random stage.
pub fn plan_runs(specs: &[PruneSpec], repeats: usize, seed: u64, out: &Path) -> Vec<SpecRun> {
    let mut all: Vec<PruneSpec> = vec![PruneSpec::none()];
    for s in specs {
        if !all.contains(s) {
            all.push(s.clone());
        }
    }
    let mut runs = Vec::new();
    for spec in all {
        let seeds = if is_random(&spec) { repeats.max(1) } else { 1 };
        for r in 0..seeds {
            let seed = seed + r as u64;
            let slug = spec_slug(&spec);
            let dir = if is_random(&spec) {
                out.join(format!("{slug}-seed{seed}"))
            } else {
                out.join(slug)
            };
            runs.push(SpecRun {
                spec: spec.clone(),
                seed,
                dir,
            });
        }
    }
    runs
}

/// The headline number of a score table: its first row (each scorer lists its main metric first).
pub fn headline(table: &ScoreTable) -> Result<(String, f64)> {
    match table.rows.first() {
        Some(r) => Ok((
            format!("{} {} ({})", r.benchmark, r.metric, r.convention),
            r.value,
        )),
        None => bail!("the score table is empty"),
    }
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

/// The summary of one run from its predictions and scores.
pub fn summarize_run(
    run: &SpecRun,
    predictions: &[Prediction],
    scores: &ScoreTable,
) -> Result<RunSummary> {
    let (metric, score) = headline(scores)?;
    let per_sample_e2e = predictions.iter().map(|p| {
        let decode =
            p.decode_ms_per_token.unwrap_or(0.0) * (p.new_tokens.unwrap_or(1).max(1) - 1) as f64;
        p.prefill_ms.unwrap_or(0.0) + decode
    });
    Ok(RunSummary {
        spec: run.spec.to_string(),
        label: run.spec.methods_label(),
        seed: is_random(&run.spec).then_some(run.seed),
        dir: run.dir.display().to_string(),
        metric,
        score,
        samples: predictions.len(),
        prefill_ms: mean(predictions.iter().filter_map(|p| p.prefill_ms)).unwrap_or(f64::NAN),
        decode_ms_per_token: mean(predictions.iter().filter_map(|p| p.decode_ms_per_token)),
        end_to_end_ms: mean(per_sample_e2e).unwrap_or(f64::NAN),
        kv_cache_bytes_peak: predictions
            .iter()
            .filter_map(|p| p.kv_cache_bytes)
            .max()
            .unwrap_or(0),
        kv_cache_bytes_mean: mean(
            predictions
                .iter()
                .filter_map(|p| p.kv_cache_bytes.map(|b| b as f64)),
        )
        .unwrap_or(0.0),
        visual_tokens_layer0: mean(
            predictions
                .iter()
                .filter_map(|p| p.visual_tokens_layer0.map(|v| v as f64)),
        )
        .unwrap_or(f64::NAN),
        visual_tokens_final: mean(
            predictions
                .iter()
                .filter_map(|p| p.visual_tokens_final.map(|v| v as f64)),
        )
        .unwrap_or(f64::NAN),
        visual_tokens_t_eq: mean(predictions.iter().filter_map(|p| p.visual_tokens_t_eq))
            .unwrap_or(f64::NAN),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_slugs() {
        let specs = vec![
            PruneSpec::parse("fastv@2:50%").unwrap(),
            PruneSpec::parse("divprune@0:284,random@20:38").unwrap(),
        ];
        let runs = plan_runs(&specs, 3, 7, Path::new("out"));
        let dirs: Vec<String> = runs.iter().map(|r| r.dir.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "out/unpruned",
                "out/fastv-at2-keep50pct",
                "out/divprune-at0-keep284+random-at20-keep38-seed7",
                "out/divprune-at0-keep284+random-at20-keep38-seed8",
                "out/divprune-at0-keep284+random-at20-keep38-seed9",
            ]
        );
    }

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
