//! `horizon info`: visual-token information per layer for every sample of a benchmark, written as
//! long-format Parquet part files (schema in `horizon_data::info_rows`).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::str::FromStr;

use horizon_data::info_rows::{Estimate, InfoMode, KlEstimate, Target};
use horizon_runner::sweep::{kl_estimate_of, parse_layers, InfoSweep};

use crate::options::{BenchOptions, ModelOptions, ScaleOptions, Workers};
use crate::progress::bar;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelOptions,
    /// Label of the model in the output rows (default: the model directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub bench: BenchOptions,
    /// Output directory for part-*.parquet files.
    #[arg(long)]
    pub out: PathBuf,
    /// Cut layers K, 0-based: e.g. `1-31`, `1,4,8`, `all`. Default: 1 to the last layer, as the reference.
    #[arg(long)]
    pub layers: Option<String>,
    /// Window side s: s×s blocks of the visual token grid (1 = single tokens).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub window: u32,
    /// keep-only (keep only window w's visual tokens; the reference) or leave-out (drop only window w).
    #[arg(long, default_value = "keep-only", value_parser = InfoMode::from_str)]
    pub mode: InfoMode,
    /// gt (first token of the ground-truth answer) or greedy (the unpruned model's first token).
    #[arg(long, default_value = "gt", value_parser = Target::from_str)]
    pub target: Target,
    /// exact (every variant run as its cut) or gradient (estimates of every layer and window from
    /// forward and backward passes with a soft mask on the visual keys, linearised in each layer's
    /// attention with AtP*'s QK fix: leave-out at the unpruned run, extrapolated along the answer's
    /// log-odds, keep-only at each cut's text-only run; a fast preview, to be read in p (its log p
    /// and KL agree far less), see BENCHMARKS.md for how far it agrees; recorded in the run
    /// metadata, and a run is never resumed with the other).
    #[arg(long, default_value = "exact", value_parser = Estimate::from_str)]
    pub estimate: Estimate,
    /// How leave-out's gradient estimate scores KL(unpruned ‖ variant): answer (the default: the
    /// KL between the answer-versus-rest splits of the unpruned and the estimated p(y), a lower
    /// bound, from p's own backward pass, so one forward and one backward pass per sample) or
    /// fisher (½ Σ p(y) Δlog p(y)² over the unpruned run's 4 most likely tokens, one backward pass
    /// per token: about twice as long, the same p and log p, a KL whose per-layer means follow
    /// the exact ones more closely, see BENCHMARKS.md). Only with --mode leave-out --estimate
    /// gradient.
    #[arg(long, value_parser = KlEstimate::from_str)]
    pub estimate_kl: Option<KlEstimate>,
    /// Variants per batch through the resumed layers (default: chosen from --memory-budget-mb).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Activation memory one batch may use when --batch-size is not given (and, with --estimate
    /// gradient, the memory by which keep-only's estimate groups its cut layers into one batch and
    /// leave-out's up to 8 samples of a part); shared among the --workers, each batch getting its
    /// worker's share.
    #[arg(long, default_value_t = 2048)]
    pub memory_budget_mb: usize,
    /// Samples computed at once, each on its own thread with one libtorch thread (for a CPU, where a
    /// small model's operators keep the cores only partly busy), or auto: on a CPU as many as
    /// libtorch's threads, on a GPU 1. Each worker's batches get their share of
    /// --memory-budget-mb. The rows are those of one sample at a time, up to float rounding
    #[arg(long, default_value = "auto")]
    pub workers: Workers,
    /// Samples per Parquet part file (each part is written atomically).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub samples_per_part: u32,
    #[command(flatten)]
    pub scale: ScaleOptions,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    // Everything that can fail on the options or the data fails before the model loads.
    let kl_estimate = kl_estimate_of(args.estimate, args.mode, args.estimate_kl)?;
    let mut samples = args.bench.samples()?;
    let text_only = samples.iter().filter(|s| !s.has_image()).count();
    if text_only > 0 {
        // No visual tokens to measure.
        eprintln!("horizon info: leaving out {text_only} text-only questions (no image)");
        samples.retain(|s| s.has_image());
    }
    let checked = horizon_data::bench::check_samples(&samples, None, args.bench.prompt_style)
        .with_context(|| format!("--bench {}", args.bench.bench.display()))?;
    let (model, processor) = args.model.load()?;
    let layers = parse_layers(args.layers.as_deref(), model.num_layers())?;
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let sweep = InfoSweep {
        model_name,
        model_path: args.model.model.clone(),
        bench: args.bench.bench.clone(),
        layers,
        window: args.window as usize,
        mode: args.mode,
        target: args.target,
        estimate: args.estimate,
        kl_estimate: args.estimate_kl,
        template: args.model.template,
        prompt_style: args.bench.prompt_style,
        processor_settings: args.model.processor_settings(),
        batch_size: args.batch_size.map(|b| b as usize),
        memory_budget_bytes: args.memory_budget_mb << 20,
        samples_per_part: args.samples_per_part as usize,
        shard: args.scale.shard(),
        workers: args.workers.count(args.model.run.device),
    };
    let plan = sweep.plan(&model, &samples, &args.out, args.scale.resume)?;
    let full_prompt = samples
        .first()
        .map(|s| {
            let q = horizon_data::bench::question_prompt(s, args.bench.prompt_style);
            processor.prompt_text(&q, args.model.template, true)
        })
        .transpose()?;
    eprintln!(
        "horizon info: {}",
        checked.describe(args.bench.benchmark.is_some(), full_prompt.as_deref())
    );
    eprintln!(
        "horizon info: {} samples ({} already done), layers {:?}, window {}, {}, target {}, estimate {}",
        plan.samples,
        plan.already_done,
        sweep.layers,
        sweep.window,
        sweep.mode,
        sweep.target,
        match (sweep.estimate, sweep.mode) {
            (Estimate::Gradient, InfoMode::LeaveOut) => format!("gradient (KL {kl_estimate})"),
            (estimate, _) => estimate.to_string(),
        }
    );
    if plan.excluded() > 0 {
        eprintln!(
            "excluded {} samples without a ground-truth answer (--target gt scores it; --target greedy keeps them; listed in DONE.json)",
            plan.excluded()
        );
    }
    let progress = bar(plan.pending() as u64, "samples");
    let stop = args.scale.stop_rule();
    let report = plan.run(&model, &processor, stop, &mut |done, _| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {} part files to {}",
        report.part_files,
        args.out.display()
    );
    if report.stopped_early {
        eprintln!(
            "stopped by --max-samples-per-run / --time-budget-min; rerun with --resume to continue"
        );
    }
    Ok(())
}
