//! Running a planned layer sweep: its evaluations, the scores relative to the unpruned run, and its
//! reports (summary.*, sweep.json, sweep.md, table1.*). The library half of `horizon prune-sweep`, so
//! that notebooks and other programs run the same sweep; the CLI adds the figure and the printing.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;

use horizon_analysis::prune::{
    summarize_specs, sweep_curves, table1_json, table1_markdown, BudgetRow, ModelHorizons,
    RunSummary, SweepReport,
};

use super::runs::{SpecRun, SweepPlan};
use super::{Keep, PruneSpec};
use crate::evaluate::{write_summary, write_text, EvalProgress, Evaluations};

/// What a sweep is of, as its reports name it.
pub struct SweepLabels<'a> {
    pub model: &'a str,
    pub bench: &'a str,
    pub keep: Keep,
    pub layers: &'a [usize],
    /// The model's horizons, marked in the reports, and the horizon.json they were read from.
    pub horizons: Option<(&'a ModelHorizons, &'a str)>,
    /// The Table-1 specs: with any, table1.md and table1.json are written.
    pub compare: &'a [PruneSpec],
}

/// A finished sweep, as written to its output directory.
pub struct SweepOutcome {
    pub report: SweepReport,
    /// sweep.md.
    pub markdown: String,
    /// table1.md, when there were specs to compare.
    pub table1: Option<String>,
}

/// Relative scores in Table 1 group specs whose layer-averaged budgets differ by at most 5%.
const TABLE1_BUDGET_TOLERANCE: f64 = 0.05;

impl SweepPlan {
    /// Runs every evaluation of the plan (each in its directory under `out/runs`, resumed when
    /// `evaluations` resumes), the unpruned run first: every other score is relative to it, so a zero
    /// score stops the sweep before any pruned run. Writes summary.json/.md, sweep.json, sweep.md and
    /// with comparison specs table1.md/.json to `out`. `None` when the stop rule ended a run early
    /// (nothing is summarised; a rerun continues).
    pub fn run(
        &self,
        evaluations: &Evaluations,
        progress: &mut dyn EvalProgress,
        labels: &SweepLabels,
        out: &Path,
    ) -> Result<Option<SweepOutcome>> {
        let runs_dir = out.join("runs");
        std::fs::create_dir_all(&runs_dir)
            .with_context(|| format!("{}: cannot create", runs_dir.display()))?;
        let (mut summaries, mut complete) = evaluations.evaluate_all(&self.runs[..1], progress)?;
        if let Some(unpruned) = summaries.first() {
            if !(unpruned.score.is_finite() && unpruned.score > 0.0) {
                bail!(
                    "{}: the unpruned model scores {} ({}); scores relative to it are undefined, so no pruned run was started",
                    unpruned.dir,
                    unpruned.score,
                    unpruned.metric
                );
            }
        }
        let (rest, rest_complete) = evaluations.evaluate_all(&self.runs[1..], progress)?;
        summaries.extend(rest);
        complete &= rest_complete;
        if !complete {
            return Ok(None);
        }
        let spec_summaries = summarize_specs(&summaries);
        write_summary(out, &spec_summaries)?;
        // The plan's first run is the unpruned one.
        let unpruned = summaries
            .first()
            .map(|s| s.score)
            .ok_or_else(|| anyhow::anyhow!("the unpruned run is missing"))?;
        let finished: Vec<(&SpecRun, &RunSummary)> = self.runs.iter().zip(&summaries).collect();
        let scores = self.scores(&finished);
        let curves = sweep_curves(&scores, unpruned)?;
        let metric = spec_summaries
            .first()
            .map(|s| s.metric.clone())
            .unwrap_or_default();
        let horizons = labels.horizons.map(|(h, _)| h);
        let report = SweepReport {
            model: labels.model.to_string(),
            bench: labels.bench.to_string(),
            metric: metric.clone(),
            keep: labels.keep.to_string(),
            layers: labels.layers.to_vec(),
            horizon_layer: horizons.and_then(|h| h.pooled),
            task_horizons: horizons.map(|h| h.tasks.iter().cloned().collect()),
            unpruned_score: unpruned,
            scores,
            curves,
            skipped: self.skipped.clone(),
        };
        write_text(&out.join("sweep.json"), &report.to_json()?)?;
        let markdown = report.markdown(labels.horizons);
        write_text(&out.join("sweep.md"), &markdown)?;
        let table1 = if labels.compare.is_empty() {
            None
        } else {
            let rows: Vec<BudgetRow> = self
                .spec_summaries_of(labels.compare, &spec_summaries)
                .into_iter()
                .map(BudgetRow::of)
                .collect();
            let table = table1_markdown(&rows, unpruned, TABLE1_BUDGET_TOLERANCE);
            write_text(&out.join("table1.md"), &table)?;
            let mut json = table1_json(&rows, unpruned, TABLE1_BUDGET_TOLERANCE);
            json["metric"] = json!(metric);
            write_text(
                &out.join("table1.json"),
                &serde_json::to_string_pretty(&json)?,
            )?;
            Some(table)
        };
        Ok(Some(SweepOutcome {
            report,
            markdown,
            table1,
        }))
    }
}
