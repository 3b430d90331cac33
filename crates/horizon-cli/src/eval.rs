//! `horizon eval`: greedy answers over a benchmark, scored by the benchmark's official rules
//! (`horizon_data::score`): predictions streamed into resumable Parquet parts, then the score table
//! (JSON + Markdown), one row per metric with its convention named. With `--prune SPEC` (repeatable)
//! one evaluation per spec and seed, and a summary of score, latency, KV cache and token counts.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

use horizon_analysis::prune::{summarize_specs, summary_markdown, RunSummary, SpecSummary};
use horizon_data::atomic::write_atomic;
use horizon_data::score::Benchmark;
use horizon_runner::evaluate::Evaluation;
use horizon_runner::processor::Processor;
use horizon_runner::prune::oracle_rows::{check_info_rows_cover, read_info_row_scores};
use horizon_runner::prune::runs::{plan_runs, summarize_run, SpecRun};
use horizon_runner::prune::{PruneOptions, PruneSpec};
use horizon_runner::VlModel;

use crate::options::{
    at_least_one, prune_spec, BenchOptions, ModelOptions, PruneSettings, ScaleOptions,
};
use crate::progress::bar;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelOptions,
    #[command(flatten)]
    bench: BenchOptions,
    /// Output directory: part-*.parquet (predictions as they stream), then predictions.parquet (every
    /// sample; schema in the README, "Output schemas"), scores.json, scores.md and DONE.json.
    #[arg(long)]
    out: PathBuf,
    /// Label of the model in the outputs (default: the model directory's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Stop after this many new tokens (or at EOS).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    max_new_tokens: usize,
    /// Score by this benchmark's rules instead of the one detected: mme, pope, textvqa, scienceqa,
    /// gqa, mmbench or other (exact match).
    #[arg(long, value_parser = Benchmark::from_name)]
    scorer: Option<Benchmark>,
    /// Samples per Parquet part file (each part is written atomically).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    samples_per_part: usize,
    #[command(flatten)]
    scale: ScaleOptions,
    /// Prune every prompt by this spec, `method@K:keep[,…]` (README, "Pruning"). Repeat it to compare
    /// specs: each runs in its own subdirectory of --out, the unpruned model too, and --out gets
    /// summary.json and summary.md.
    #[arg(long = "prune", value_parser = prune_spec)]
    prune: Vec<PruneSpec>,
    #[command(flatten)]
    prune_settings: PruneSettings,
    /// Runs of each spec with a random stage, with seeds --prune-seed, --prune-seed + 1, …: mean ± std.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    repeats: usize,
    /// Skip the untimed warm-up generation before the first timed sample.
    #[arg(long)]
    no_warmup: bool,
    /// `info` stages read their window scores from these `horizon info` rows (keep-only, target
    /// gt, the same checkpoint and --info-window) instead of computing them.
    #[arg(long)]
    info_rows: Option<PathBuf>,
}

/// Everything of an evaluation but its spec, seed and directory.
pub struct EvalContext<'a> {
    pub model: &'a VlModel,
    pub processor: &'a Processor,
    pub model_options: &'a ModelOptions,
    pub bench: &'a BenchOptions,
    pub samples: &'a [horizon_data::bench::Sample],
    pub model_name: String,
    pub max_new_tokens: usize,
    pub scorer: Option<Benchmark>,
    pub samples_per_part: usize,
    pub scale: &'a ScaleOptions,
    pub options: PruneOptions,
    pub warmup: bool,
    pub info_rows: Option<std::sync::Arc<horizon_runner::evaluate::InfoRowScores>>,
}

impl EvalContext<'_> {
    /// One evaluation (resumable like any other); `None` when stopped early.
    pub fn evaluate(
        &self,
        spec: &PruneSpec,
        seed: u64,
        out: &Path,
    ) -> Result<
        Option<(
            Vec<horizon_data::predictions::Prediction>,
            horizon_data::score::ScoreTable,
        )>,
    > {
        let evaluation = Evaluation {
            model_name: self.model_name.clone(),
            model_path: self.model_options.model.clone(),
            bench: self.bench.bench.clone(),
            template: self.model_options.template,
            prompt_style: self.bench.prompt_style,
            max_new_tokens: self.max_new_tokens,
            scorer: self.scorer,
            samples_per_part: self.samples_per_part,
            shard: self.scale.shard(),
            processor_settings: self.model_options.processor_settings(),
            prune: spec.clone(),
            prune_options: PruneOptions {
                seed,
                ..self.options.clone()
            },
            warmup: self.warmup,
            info_rows: self.info_rows.clone(),
        };
        let progress = bar(0, &format!("samples {spec}"));
        let resume = self.scale.resume;
        let report = evaluation.run(
            self.model,
            self.processor,
            self.samples,
            out,
            resume,
            self.scale.stop_rule(),
            &mut |done, pending| {
                if let Some(header) = RUN_HEADER.lock().ok().and_then(|mut h| h.take()) {
                    progress.suspend(|| eprintln!("{header}"));
                }
                progress.set_length(pending as u64);
                progress.set_position(done as u64);
            },
        )?;
        progress.finish_and_clear();
        eprintln!(
            "horizon eval: {spec}: {} samples ({} already done) in {}",
            report.samples,
            report.already_done,
            out.display()
        );
        Ok(report.scores.map(|s| (report.predictions, s)))
    }

    /// Every run of `runs`; the summaries of those that finished, and whether all did.
    pub fn evaluate_all(&self, runs: &[SpecRun]) -> Result<(Vec<RunSummary>, bool)> {
        let mut summaries = Vec::new();
        let mut complete = true;
        for run in runs {
            match self.evaluate(&run.spec, run.seed, &run.dir)? {
                Some((predictions, scores)) => {
                    summaries.push(summarize_run(run, &predictions, &scores)?)
                }
                None => complete = false,
            }
        }
        Ok((summaries, complete))
    }
}

pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))
    })
}

/// summary.json and summary.md of compared specs.
pub fn write_summary(out: &Path, specs: &[SpecSummary]) -> Result<()> {
    write_text(
        &out.join("summary.json"),
        &serde_json::to_string_pretty(specs)?,
    )?;
    write_text(&out.join("summary.md"), &summary_markdown(specs))
}

/// What `horizon eval` prints once its run has passed every check and starts (the benchmark, the
/// scorer, the prompt style and the first prompt), so that an error before it stays one line.
static RUN_HEADER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The first sample's prompt as the model gets it (chat template included).
fn first_prompt(
    processor: &Processor,
    samples: &[horizon_data::bench::Sample],
    args: &EvalArgs,
) -> Result<Option<String>> {
    samples
        .first()
        .map(|s| {
            let q = horizon_data::bench::question_prompt(s, args.bench.prompt_style);
            processor.prompt_text(&q, args.model.template, s.has_image())
        })
        .transpose()
}

pub fn run(args: &EvalArgs) -> Result<()> {
    // Everything that can fail on the data fails before the model loads.
    let samples = args.bench.samples()?;
    let kind = samples
        .first()
        .map_or(horizon_data::bench::BenchmarkKind::Generic, |s| s.benchmark);
    let scorer = args
        .scorer
        .unwrap_or_else(|| horizon_data::bench::default_scorer(kind));
    let plan = horizon_data::bench::check_samples(&samples, Some(scorer), args.bench.prompt_style)
        .with_context(|| format!("--bench {}", args.bench.bench.display()))?;
    let (model, processor) = args.model.load()?;
    for spec in &args.prune {
        spec.check(model.num_layers())?;
    }
    let header = format!(
        "horizon eval: {}",
        plan.describe(
            args.bench.benchmark.is_some(),
            first_prompt(&processor, &samples, args)?.as_deref()
        )
    );
    if let Ok(mut h) = RUN_HEADER.lock() {
        *h = Some(header);
    }
    let ctx = EvalContext {
        model: &model,
        processor: &processor,
        model_options: &args.model,
        bench: &args.bench,
        samples: &samples,
        model_name: args.model_name.clone().unwrap_or_else(|| {
            args.model
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        }),
        max_new_tokens: args.max_new_tokens,
        scorer: args.scorer,
        samples_per_part: args.samples_per_part,
        scale: &args.scale,
        options: args.prune_settings.options(),
        warmup: !args.no_warmup,
        info_rows: match &args.info_rows {
            Some(dir) => {
                let rows = read_info_row_scores(
                    dir,
                    &args.model.model,
                    args.prune_settings.info_window,
                    &samples,
                )?;
                // Every sample and info layer is looked up before the first answer, not at it.
                check_info_rows_cover(&rows, &samples, &args.prune)?;
                Some(std::sync::Arc::new(rows))
            }
            None => None,
        },
    };
    if args.prune.is_empty() {
        match ctx.evaluate(&PruneSpec::none(), args.prune_settings.prune_seed, &args.out)? {
            Some((_, table)) => print!("{}", table.to_markdown()),
            None => eprintln!(
                "stopped by --max-samples-per-run / --time-budget-min; rerun with --resume to continue"
            ),
        }
        return Ok(());
    }
    let runs = plan_runs(
        &args.prune,
        args.repeats,
        args.prune_settings.prune_seed,
        &args.out,
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let (summaries, complete) = ctx.evaluate_all(&runs)?;
    if !complete {
        eprintln!(
            "stopped by --max-samples-per-run / --time-budget-min; rerun with --resume to continue"
        );
        return Ok(());
    }
    let specs = summarize_specs(&summaries);
    write_summary(&args.out, &specs)?;
    print!("{}", summary_markdown(&specs));
    Ok(())
}
