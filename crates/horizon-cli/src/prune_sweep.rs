//! `horizon prune-sweep`: the layer-by-layer comparison of arXiv 2512.07580 as one command. Each
//! method (and random, over several seeds) prunes at each layer K of `--layers` to one keep ratio; each
//! run is scored by the benchmark's official rules; the output is the score relative to the unpruned
//! model versus K (sweep.json, sweep.md, prune_sweep.png/svg with the horizon marked), and with
//! `--compare` a table in the form of the paper's Table 1 (method alone versus method early + random
//! late at matched layer-averaged budgets).

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

use horizon_analysis::prune::ModelHorizons;
use horizon_data::bench::Sample;
use horizon_plot::{plot_prune_sweep, PruneSweepOptions};
use horizon_runner::processor::Processor;
use horizon_runner::prune::file_stage::KeepFile;
use horizon_runner::prune::runs::{check_specs_on_samples, visual_shapes, LayerSweep, SweepPlan};
use horizon_runner::prune::sweep_run::SweepLabels;
use horizon_runner::prune::{Keep, Method, PruneSpec};
use horizon_runner::sweep::parse_layers;
use horizon_runner::VlModel;

use crate::eval::{model_name, EvalOptions, EvalPrinter, STOPPED};
use crate::options::{
    at_least_one, prune_spec, BenchOptions, ModelOptions, PruneSettings, ScaleOptions, Workers,
};

#[derive(Args)]
pub struct PruneSweepArgs {
    #[command(flatten)]
    pub model: ModelOptions,
    #[command(flatten)]
    pub bench: BenchOptions,
    /// Output directory: runs/ (one evaluation per method, layer and seed), sweep.json, sweep.md,
    /// prune_sweep.png and prune_sweep.svg; with --compare also table1.md and table1.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Methods to sweep, comma-separated (random is always added). Methods that cannot run at some
    /// layer (fastv at 0, avg-pooling past 0, …) skip it, and sweep.json lists what was skipped.
    /// `file:PATH` is a curve of `file@K:PATH` at each K: the tokens PATH lists for each sample
    /// (docs/pruning.md), whatever --keep says.
    #[arg(long, default_value = "fastv,divprune", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Pruning layers K: `all`, a list `0,2,4` or ranges `1-8` (default: all layers).
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Visual tokens kept at every K: a count or a percentage of the visual tokens (`25%`).
    #[arg(long, default_value = "50%")]
    pub keep: String,
    /// Seeds of the random curve (its spread is drawn); other specs with random stages too.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub repeats: usize,
    /// A horizon.json (`horizon horizon`) whose horizon is marked on the figure: the pooled horizon of
    /// the model named by --model-name (or the file's only model).
    #[arg(long)]
    pub horizon: Option<PathBuf>,
    /// Extra specs for the Table-1 comparison (repeatable), e.g. `divprune@0:284` and
    /// `divprune@0:284,random@20:38`; grouped by their measured layer-averaged budget T_eq.
    #[arg(long = "compare", value_parser = prune_spec)]
    pub compare: Vec<PruneSpec>,
    /// Label of the model in the outputs (default: the model directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Stop after this many new tokens (or at EOS).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub max_new_tokens: usize,
    /// Samples per Parquet part file.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub samples_per_part: usize,
    /// Samples answered at once in each run, each on its own thread with one libtorch thread, or
    /// auto: on a CPU as many as libtorch's threads, on a GPU 1 (`horizon eval --workers`).
    #[arg(long, default_value = "auto")]
    pub workers: Workers,
    #[command(flatten)]
    pub prune_settings: PruneSettings,
    #[command(flatten)]
    pub scale: ScaleOptions,
}

fn read_horizons(path: &Path, model: &str) -> Result<ModelHorizons> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let report: horizon_analysis::HorizonReport = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a horizon.json ({e})", path.display()))?;
    ModelHorizons::of(&report, model, &path.display().to_string())
}

/// `--keep`: parsed through the spec grammar so that its errors read like --prune's.
pub fn parse_keep(text: &str) -> Result<Keep> {
    let probe = PruneSpec::parse(&format!("random@1:{}", text.trim())).map_err(|e| {
        anyhow::anyhow!(
            "--keep: {}",
            e.to_string().rsplit(": ").next().unwrap_or("")
        )
    })?;
    Ok(probe.stages[0].keep)
}

/// `--methods`: known method names, deduplicated in order, random added; and the files of the
/// `file:PATH` curves, read.
fn parse_methods(names: &[String]) -> Result<(Vec<Method>, Vec<KeepFile>)> {
    let mut methods = Vec::new();
    let mut files: Vec<KeepFile> = Vec::new();
    for name in names {
        if let Some(path) = name.trim().strip_prefix("file:") {
            let file = KeepFile::read(Path::new(path))
                .map_err(|e| anyhow::anyhow!("--methods file:{path}: {e:#}"))?;
            if !files.contains(&file) {
                files.push(file);
            }
            continue;
        }
        if name.trim() == "file" {
            anyhow::bail!("--methods file: name the file of kept tokens, e.g. file:kept.parquet");
        }
        let m = Method::from_name(name.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "--methods: unknown method `{name}` (known: {})",
                Method::ALL
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        methods.push(m);
    }
    Ok((LayerSweep::methods_with_random(&methods), files))
}

/// A sweep checked and planned, before anything runs.
pub struct PreparedSweep {
    model: VlModel,
    processor: Processor,
    samples: Vec<Sample>,
    model_name: String,
    keep: Keep,
    layers: Vec<usize>,
    horizons: Option<ModelHorizons>,
    plan: SweepPlan,
}

/// Everything that can be checked before the first run: the options, the horizon.json, the
/// benchmark, and each run's token counts against the visual tokens the samples give the model.
pub fn prepare(args: &PruneSweepArgs) -> Result<PreparedSweep> {
    let keep = parse_keep(&args.keep)?;
    let (methods, files) = parse_methods(&args.methods)?;
    let (model, processor) = args.model.load()?;
    let num_layers = model.num_layers();
    let layers = parse_layers(Some(&args.layers), num_layers)?;
    for spec in &args.compare {
        spec.check(num_layers)?;
    }
    let model_name = model_name(&args.model, args.model_name.as_deref());
    let horizons = match &args.horizon {
        Some(p) => Some(read_horizons(p, &model_name)?),
        None => None,
    };
    let sweep = LayerSweep {
        methods,
        layers: layers.clone(),
        keep,
        repeats: args.repeats,
        seed: args.prune_settings.prune_seed,
        compare: args.compare.clone(),
        files,
    };
    let plan = sweep.plan(num_layers, &args.out.join("runs"));
    let samples = args.bench.samples()?;
    // Every run's spec on every sample's visual tokens, before the first run.
    let shapes = visual_shapes(&model, &processor, &samples, args.model.template)?;
    check_specs_on_samples(
        plan.runs.iter().map(|r| &r.spec),
        &shapes,
        &args.prune_settings.options(),
    )?;
    Ok(PreparedSweep {
        model,
        processor,
        samples,
        model_name,
        keep,
        layers,
        horizons,
        plan,
    })
}

pub fn run(args: &PruneSweepArgs) -> Result<()> {
    let PreparedSweep {
        model,
        processor,
        samples,
        model_name,
        keep,
        layers,
        horizons,
        plan,
    } = prepare(args)?;
    let num_layers = model.num_layers();
    let horizon = horizons.as_ref().and_then(|h| h.pooled);
    let evaluations = EvalOptions {
        model: &args.model,
        bench: &args.bench,
        model_name: Some(&model_name),
        max_new_tokens: args.max_new_tokens,
        scorer: None,
        samples_per_part: args.samples_per_part,
        scale: &args.scale,
        prune_settings: &args.prune_settings,
        warmup: true,
        info_rows: None,
        workers: args.workers,
    }
    .evaluations(&model, &processor, &samples);
    let mut printer = EvalPrinter::new(None);
    let bench = args.bench.bench.display().to_string();
    let source = args.horizon.as_ref().map(|p| p.display().to_string());
    let labels = SweepLabels {
        model: &model_name,
        bench: &bench,
        keep,
        layers: &layers,
        horizons: horizons.as_ref().zip(source.as_deref()),
        compare: &args.compare,
    };
    let Some(outcome) = plan.run(&evaluations, &mut printer, &labels, &args.out)? else {
        eprintln!("{STOPPED}");
        return Ok(());
    };
    let opts = PruneSweepOptions {
        title: format!("{model_name}: pruning at layer K"),
        random_method: "random".into(),
        horizon_layer: horizon,
        num_layers: Some(num_layers),
        // A horizon.json without a pooled horizon is said so, not silently left unmarked.
        keep_label: match &horizons {
            Some(h) if h.pooled.is_none() => {
                format!("keep {keep}; information horizon (all tasks): none")
            }
            _ => format!("keep {keep}"),
        },
    };
    for ext in ["png", "svg"] {
        plot_prune_sweep(
            &outcome.report.curves,
            &opts,
            &args.out.join(format!("prune_sweep.{ext}")),
        )?;
    }
    if let Some(table) = &outcome.table1 {
        println!("{table}");
    }
    print!("{}", outcome.markdown);
    eprintln!(
        "wrote sweep.json, sweep.md, prune_sweep.png/svg to {}",
        args.out.display()
    );
    Ok(())
}
