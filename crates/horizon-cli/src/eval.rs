//! `horizon eval`: greedy answers over a benchmark, scored by the benchmark's official rules
//! (`horizon_data::score`): predictions streamed into resumable Parquet parts, then the score table
//! (JSON + Markdown), one row per metric with its convention named. With `--prune SPEC` (repeatable)
//! one evaluation per spec and seed, and a summary of score, latency, KV cache and token counts.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

use horizon_analysis::prune::summary_markdown;
use horizon_data::bench::Sample;
use horizon_data::score::Benchmark;
use horizon_runner::evaluate::{EvalProgress, EvalReport, Evaluation, Evaluations, InfoRowScores};
use horizon_runner::processor::Processor;
use horizon_runner::prune::oracle_rows::{check_info_rows_cover, read_info_row_scores};
use horizon_runner::prune::runs::{check_specs_on_samples, visual_shapes};
use horizon_runner::prune::PruneSpec;
use horizon_runner::VlModel;

use crate::options::{
    at_least_one, prune_spec, BenchOptions, ModelOptions, PruneSettings, ScaleOptions, Workers,
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
    /// Samples answered at once, each on its own thread with one libtorch thread (for a CPU, where
    /// one sample's operators keep the cores only partly busy), or auto: on a CPU as many as
    /// libtorch's threads, on a GPU 1. The answers are those of one sample at a time (up to float
    /// rounding, which can flip a near-tie); the latency columns are then each sample's on one
    /// thread beside the others: --workers 1 times each sample with every thread.
    #[arg(long, default_value = "auto")]
    workers: Workers,
    /// `info` stages read their window scores from these `horizon info` rows (keep-only, target
    /// gt, the same checkpoint and --info-window) instead of computing them.
    #[arg(long)]
    info_rows: Option<PathBuf>,
}

/// `horizon eval`'s report of its runs on stderr: the header (benchmark, scorer, prompt style, first
/// prompt) once the first run has passed every check, so that an error before it stays one line; a
/// progress bar per run, and a line when each ends.
pub struct EvalPrinter {
    header: Option<String>,
    bar: Option<indicatif::ProgressBar>,
}

impl EvalPrinter {
    /// Prints `header` when the first run starts (`None`: no header).
    pub fn new(header: Option<String>) -> Self {
        Self { header, bar: None }
    }
}

impl EvalProgress for EvalPrinter {
    fn begin(&mut self, spec: &PruneSpec, _out: &Path) {
        self.bar = Some(bar(0, &format!("samples {spec}")));
    }

    fn progress(&mut self, done: usize, pending: usize) {
        let Some(progress) = &self.bar else { return };
        if let Some(header) = self.header.take() {
            progress.suspend(|| eprintln!("{header}"));
        }
        progress.set_length(pending as u64);
        progress.set_position(done as u64);
    }

    fn end(&mut self, spec: &PruneSpec, out: &Path, report: &EvalReport) {
        if let Some(progress) = self.bar.take() {
            progress.finish_and_clear();
        }
        eprintln!(
            "horizon eval: {spec}: {} samples ({} already done) in {}",
            report.samples,
            report.already_done,
            out.display()
        );
    }
}

/// What the runs of `horizon eval` and `horizon prune-sweep` share, from their options (each run
/// sets its own spec and seed).
pub struct EvalOptions<'a> {
    pub model: &'a ModelOptions,
    pub bench: &'a BenchOptions,
    pub model_name: Option<&'a str>,
    pub max_new_tokens: usize,
    pub scorer: Option<Benchmark>,
    pub samples_per_part: usize,
    pub scale: &'a ScaleOptions,
    pub prune_settings: &'a PruneSettings,
    pub warmup: bool,
    pub info_rows: Option<std::sync::Arc<InfoRowScores>>,
    pub workers: Workers,
}

impl EvalOptions<'_> {
    /// The evaluations of `samples` on the loaded `model`.
    pub fn evaluations<'a>(
        self,
        model: &'a VlModel,
        processor: &'a Processor,
        samples: &'a [Sample],
    ) -> Evaluations<'a> {
        Evaluations {
            model,
            processor,
            samples,
            base: Evaluation {
                model_name: model_name(self.model, self.model_name),
                model_path: self.model.model.clone(),
                bench: self.bench.bench.clone(),
                template: self.model.template,
                prompt_style: self.bench.prompt_style,
                max_new_tokens: self.max_new_tokens,
                scorer: self.scorer,
                samples_per_part: self.samples_per_part,
                shard: self.scale.shard(),
                processor_settings: self.model.processor_settings(),
                prune: PruneSpec::none(),
                prune_options: self.prune_settings.options(),
                warmup: self.warmup,
                info_rows: self.info_rows,
                workers: self.workers.count(self.model.run.device),
            },
            resume: self.scale.resume,
            stop: self.scale.stop_rule(),
        }
    }
}

/// What a run stopped by its stop rule says.
pub const STOPPED: &str =
    "stopped by --max-samples-per-run / --time-budget-min; rerun with --resume to continue";

/// The model's label: `--model-name`, or the checkpoint directory's name.
pub fn model_name(model: &ModelOptions, given: Option<&str>) -> String {
    given.map(str::to_string).unwrap_or_else(|| {
        model
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    })
}

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
    if !args.prune.is_empty() {
        // Every spec on every sample's visual tokens, before the first answer.
        let shapes = visual_shapes(&model, &processor, &samples, args.model.template)?;
        check_specs_on_samples(&args.prune, &shapes, &args.prune_settings.options())?;
    }
    let header = format!(
        "horizon eval: {}",
        plan.describe(
            args.bench.benchmark.is_some(),
            first_prompt(&processor, &samples, args)?.as_deref()
        )
    );
    let info_rows = match &args.info_rows {
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
    };
    let evaluations = EvalOptions {
        model: &args.model,
        bench: &args.bench,
        model_name: args.model_name.as_deref(),
        max_new_tokens: args.max_new_tokens,
        scorer: args.scorer,
        samples_per_part: args.samples_per_part,
        scale: &args.scale,
        prune_settings: &args.prune_settings,
        warmup: !args.no_warmup,
        info_rows,
        workers: args.workers,
    }
    .evaluations(&model, &processor, &samples);
    let mut printer = EvalPrinter::new(Some(header));
    if args.prune.is_empty() {
        let report = evaluations.evaluate(
            &PruneSpec::none(),
            args.prune_settings.prune_seed,
            &args.out,
            &mut printer,
        )?;
        match report.scores {
            Some(table) => print!("{}", table.to_markdown()),
            None => eprintln!("{STOPPED}"),
        }
        return Ok(());
    }
    match evaluations.compare(&args.prune, args.repeats, &args.out, &mut printer)? {
        Some(specs) => print!("{}", summary_markdown(&specs)),
        None => eprintln!("{STOPPED}"),
    }
    Ok(())
}
