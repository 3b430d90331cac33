//! `horizon info`: visual-token information per layer for every sample of a benchmark, written as
//! long-format Parquet part files (schema in `horizon_data::info_rows`).

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::str::FromStr;

use horizon_data::bench::{self, OpenOptions, Selection};
use horizon_data::info_rows::{InfoMode, Target};
use horizon_runner::sweep::{parse_layers, InfoSweep, Shard, StopRule};

use crate::options::ModelOptions;
use crate::progress::bar;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelOptions,
    /// Label of the model in the output rows (default: the model directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Benchmark: an HF-parquet file or directory (lmms-lab MME/TextVQA/POPE layouts, the bundled
    /// synthetic set) or a LLaVA question .jsonl (with --image-dir).
    #[arg(long)]
    pub bench: PathBuf,
    /// Image folder of a LLaVA question .jsonl.
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Answers file of a LLaVA question .jsonl (ground truth for --target gt).
    #[arg(long)]
    pub answers: Option<PathBuf>,
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
    /// Use at most this many samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use at most this many samples of each task category (before --limit).
    #[arg(long, value_parser = crate::options::at_least_one)]
    pub per_category: Option<usize>,
    /// Shuffle the sample order with this seed before --per-category and --limit (default: benchmark order).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Variants per batch through the resumed layers (default: chosen from --memory-budget-mb).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Activation memory one batch may use when --batch-size is not given.
    #[arg(long, default_value_t = 2048)]
    pub memory_budget_mb: usize,
    /// Samples per Parquet part file (each part is written atomically).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub samples_per_part: u32,
    /// Continue an interrupted run in --out: samples already written are skipped. The checkpoint,
    /// the selected samples and every setting that changes the rows must be the same.
    #[arg(long)]
    pub resume: bool,
    /// Run only shard i of n (0-based; the samples at selection positions ≡ i mod n), e.g. one per
    /// GPU or Slurm array task; `horizon merge` combines the finished shards.
    #[arg(long, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// Stop after this many samples (their parts complete); `--resume` continues. For job limits.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_samples_per_run: Option<u32>,
    /// Stop starting new parts after this many minutes; `--resume` continues. For job time limits.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_minutes)]
    pub time_budget_min: Option<f64>,
}

/// `--time-budget-min`: a positive, finite number of minutes.
fn positive_minutes(s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => anyhow::bail!("'{s}' is not a positive number of minutes"),
    }
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let (model, processor) = args.model.load()?;
    let layers = parse_layers(args.layers.as_deref(), model.num_layers())?;
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let opts = OpenOptions {
        image_dir: args.image_dir.clone(),
        answers: args.answers.clone(),
        ..OpenOptions::default()
    };
    let selection = Selection {
        seed: args.seed,
        per_category: args.per_category,
        limit: args.limit,
    };
    let samples = selection.apply(bench::read_all(&args.bench, &opts)?);
    let sweep = InfoSweep {
        model_name,
        model_path: args.model.model.clone(),
        bench: args.bench.clone(),
        layers,
        window: args.window as usize,
        mode: args.mode,
        target: args.target,
        template: args.model.template,
        batch_size: args.batch_size.map(|b| b as usize),
        memory_budget_bytes: args.memory_budget_mb << 20,
        samples_per_part: args.samples_per_part as usize,
        shard: args.shard.unwrap_or_else(Shard::whole),
    };
    let plan = sweep.plan(&model, &samples, &args.out, args.resume)?;
    eprintln!(
        "horizon info: {} samples ({} already done), layers {:?}, window {}, {}, target {}",
        plan.samples, plan.already_done, sweep.layers, sweep.window, sweep.mode, sweep.target
    );
    let progress = bar(plan.pending() as u64, "samples");
    let stop = StopRule {
        max_samples: args.max_samples_per_run.map(|n| n as usize),
        max_seconds: args.time_budget_min.map(|m| m * 60.0),
    };
    let report = plan.run(&model, &processor, stop, &mut |done, _| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    if report.skipped_no_answer > 0 {
        eprintln!(
            "skipped {} samples without a ground-truth answer (use --target greedy for them)",
            report.skipped_no_answer
        );
    }
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
