//! `horizon demo`: the main job end to end on the bundled models and benchmark (or any given ones):
//! information per layer for every model, per-layer statistics and horizons per task and per model,
//! every figure, and a printed summary. Each stage is the same code as its own subcommand.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

use std::str::FromStr;

use horizon_analysis::write_outputs;
use horizon_data::info_rows::{InfoMode, Target};

use crate::analysis::{print_summary, render_figures, AnalysisArgs};
use crate::info::{self, InfoArgs};

use crate::options::{
    at_least_one, non_negative, parsed, BenchOptions, ModelOptions, RunOptions, ScaleOptions,
};
use crate::prune_sweep::{self, PruneSweepArgs};
use horizon_runner::prune::PruneSpec;

/// The bundled models, larger first (the order of the rows and curves).
pub const BUNDLED_MODELS: [&str; 2] = ["data/models/horizon-large", "data/models/horizon-small"];
/// The bundled benchmark.
pub const BUNDLED_BENCH: &str = "data/synthetic/test.parquet";

#[derive(Args)]
pub struct DemoArgs {
    /// Model directories (HF llava-hf or Qwen2.5-VL checkpoints); each is labelled by its directory name.
    #[arg(long, value_delimiter = ',', default_values_t = BUNDLED_MODELS.map(String::from))]
    models: Vec<String>,
    /// Benchmark: HF parquet (file or directory) or LLaVA question .jsonl with --image-dir.
    #[arg(long, default_value = BUNDLED_BENCH)]
    bench: PathBuf,
    /// Image folder of a LLaVA question .jsonl.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Answers file of a LLaVA question .jsonl.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Samples per task category (the default keeps the bundled run under 10 minutes on 2 CPU cores).
    #[arg(long, default_value_t = 60, value_parser = at_least_one)]
    per_category: usize,
    /// At most this many samples in all (after --per-category).
    #[arg(long)]
    limit: Option<usize>,
    /// Cut layers K, 0-based (`all`, `1-11`, `1,4,8`).
    #[arg(long, default_value = "all")]
    layers: String,
    /// Window side s (s×s visual tokens; 1 = single tokens).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    window: u32,
    /// keep-only or leave-out.
    #[arg(long, default_value = "keep-only", value_parser = InfoMode::from_str)]
    mode: InfoMode,
    /// gt or greedy.
    #[arg(long, default_value = "gt", value_parser = Target::from_str)]
    target: Target,
    /// Variants per batch (default: from a 2 GB memory budget).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    #[command(flatten)]
    run: RunOptions,
    /// Seed of the bootstrap (and of the sample shuffle when --shuffle is given).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Shuffle the benchmark with --seed before taking --per-category samples.
    #[arg(long)]
    shuffle: bool,
    /// Vanishing threshold as a fraction of the largest mean information.
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true, value_parser = non_negative)]
    threshold: f64,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    bootstrap: usize,
    /// Output directory: `info/<model>/` (Parquet rows), analysis/ (horizon.json, layers.parquet,
    /// windows.parquet), figures/ (PNG and SVG). A rerun continues the info runs where they stopped.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// png, svg or both.
    #[arg(long, default_value = "both", value_parser = ["png", "svg", "both"])]
    format: String,
    /// Samples per task category of the pruning sweep on the first model (prune/ under --out; 65 runs
    /// of each sample: every layer for FastV, DivPrune and 3 random seeds, and the Table-1 specs).
    #[arg(long, default_value_t = 12, value_parser = at_least_one)]
    prune_per_category: usize,
    /// Visual tokens kept at every layer in the pruning sweep.
    #[arg(long, default_value = "25%")]
    prune_keep: String,
    /// Pruning layers K of the sweep (`all`, `1-11`, `1,4,8`).
    #[arg(long, default_value = "all")]
    prune_layers: String,
    /// Skip the pruning sweep.
    #[arg(long)]
    no_prune: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if args.models.is_empty() {
        bail!("--models: no model given");
    }
    // The pruning sweep comes last: its options, benchmark and token counts are checked first.
    if !args.no_prune {
        check_model_dir(&args.models[0])?;
        prune_sweep::prepare(&prune_sweep_args(args, None)?)?;
    }
    let mut info_dirs = Vec::new();
    for (i, model) in args.models.iter().enumerate() {
        check_model_dir(model)?;
        let model = PathBuf::from(model);
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("model{i}"));
        let out = args.out.join("info").join(&name);
        eprintln!(
            "[{}/{}] {name}: information per layer",
            i + 1,
            args.models.len()
        );
        // Every option the demo does not set takes `horizon info`'s own default.
        let defaults: InfoArgs = parsed(&[
            "--model".as_ref(),
            model.as_os_str(),
            "--bench".as_ref(),
            args.bench.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ])?;
        info::run(&InfoArgs {
            model: ModelOptions {
                run: args.run,
                ..defaults.model
            },
            model_name: Some(name),
            bench: bench_options(args, defaults.bench, args.per_category),
            layers: Some(args.layers.clone()),
            window: args.window,
            mode: args.mode,
            target: args.target,
            estimate: horizon_data::info_rows::Estimate::Exact,
            batch_size: args.batch_size,
            scale: ScaleOptions {
                resume: true,
                ..defaults.scale
            },
            ..defaults
        })?;
        info_dirs.push(out);
    }
    eprintln!("statistics, horizons and figures");
    // Every analysis option the demo does not set takes `horizon horizon`'s own default.
    let defaults: AnalysisArgs = parsed(&["--info".as_ref(), ".".as_ref()])?;
    let analysis = AnalysisArgs {
        info: info_dirs,
        mode: args.mode,
        target: args.target,
        threshold: args.threshold,
        bootstrap: args.bootstrap,
        seed: args.seed,
        ..defaults
    }
    .run()?;
    let analysis_dir = args.out.join("analysis");
    write_outputs(&analysis, &analysis_dir)?;
    let figures = args.out.join("figures");
    let n = render_figures(&analysis, &figures, &[], &args.format)?;
    println!();
    print_summary(&analysis);
    println!();
    println!(
        "wrote {} (horizon.json, layers.parquet, windows.parquet) and {n} figures in {}",
        analysis_dir.display(),
        figures.display()
    );
    if !args.no_prune {
        prune_demo(args, &analysis_dir.join("horizon.json"))?;
    }
    Ok(())
}

/// A model directory has a config.json.
fn check_model_dir(model: &str) -> Result<()> {
    let dir = PathBuf::from(model);
    if !dir.join("config.json").exists() {
        bail!(
            "{}: no config.json (not a model directory{})",
            dir.display(),
            if BUNDLED_MODELS.contains(&model) {
                "; run from the repository root"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The paper's pruning experiment, small: FastV, DivPrune and random (3 seeds) at every layer of the
/// first model to one keep ratio, the horizon marked, and a Table-1 comparison at a layer-averaged
/// budget of a quarter of the visual tokens.
fn prune_demo(args: &DemoArgs, horizon: &std::path::Path) -> Result<()> {
    eprintln!("pruning sweep on {}", first_model_name(args));
    prune_sweep::run(&prune_sweep_args(
        args,
        horizon.exists().then(|| horizon.to_path_buf()),
    )?)
}

fn first_model_name(args: &DemoArgs) -> String {
    PathBuf::from(&args.models[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model0".into())
}

/// The demo's benchmark selection: `defaults` with the demo's benchmark files, `per_category`, and
/// its limit and shuffle.
fn bench_options(args: &DemoArgs, defaults: BenchOptions, per_category: usize) -> BenchOptions {
    BenchOptions {
        image_dir: args.image_dir.clone(),
        answers: args.answers.clone(),
        limit: args.limit,
        per_category: Some(per_category),
        seed: args.shuffle.then_some(args.seed),
        ..defaults
    }
}

/// The demo's pruning sweep on the first model, marking the horizon of `horizon` (a horizon.json);
/// every option it does not set takes `horizon prune-sweep`'s own default.
fn prune_sweep_args(args: &DemoArgs, horizon: Option<PathBuf>) -> Result<PruneSweepArgs> {
    let model = PathBuf::from(&args.models[0]);
    let name = first_model_name(args);
    let compare = [
        "random@0:16",
        "divprune@0:16",
        "divprune@0:24,random@6:8",
        "fastv@2:6",
        "fastv@2:12,random@6:4",
    ];
    let is_bundled = args.models[0] == BUNDLED_MODELS[0];
    let out = args.out.join("prune");
    let defaults: PruneSweepArgs = parsed(&[
        "--model".as_ref(),
        model.as_os_str(),
        "--bench".as_ref(),
        args.bench.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])?;
    Ok(PruneSweepArgs {
        model: ModelOptions {
            run: args.run,
            ..defaults.model
        },
        bench: bench_options(args, defaults.bench, args.prune_per_category),
        methods: vec!["fastv".into(), "divprune".into()],
        layers: args.prune_layers.clone(),
        keep: args.prune_keep.clone(),
        repeats: 3,
        horizon,
        // The budgets are the bundled large model's (64 visual tokens, 12 layers).
        compare: if is_bundled {
            compare
                .iter()
                .map(|s| PruneSpec::parse(s))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        },
        model_name: Some(name),
        max_new_tokens: 8,
        scale: ScaleOptions {
            resume: true,
            ..defaults.scale
        },
        ..defaults
    })
}
