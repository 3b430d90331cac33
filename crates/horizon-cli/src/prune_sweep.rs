//! `horizon prune-sweep`: the layer-by-layer comparison of arXiv 2512.07580 as one command. Each
//! method (and random, over several seeds) prunes at each layer K of `--layers` to one keep ratio; each
//! run is scored by the benchmark's official rules; the output is the score relative to the unpruned
//! model versus K (sweep.json, sweep.md, prune_sweep.png/svg with the horizon marked), and with
//! `--compare` a table in the form of the paper's Table 1 (method alone versus method early + random
//! late at matched layer-averaged budgets).

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

use horizon_analysis::prune::{sweep_curves, table1_json, table1_markdown, BudgetRow, SweepScore};
use horizon_plot::{plot_prune_sweep, PruneSweepOptions};
use horizon_runner::prune::runs::{plan_runs, summarize_specs, SpecRun};
use horizon_runner::prune::{Keep, Method, PruneSpec};
use horizon_runner::sweep::parse_layers;

use crate::eval::{write_summary, write_text, EvalContext};
use crate::options::{
    at_least_one, prune_spec, BenchOptions, ModelOptions, PruneSettings, ScaleOptions,
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
    /// layer (fastv at 0, pooling past 0, …) skip it, and sweep.json lists what was skipped.
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
    #[command(flatten)]
    pub prune_settings: PruneSettings,
    #[command(flatten)]
    pub scale: ScaleOptions,
}

/// The horizons of `model` in a horizon.json: pooled over its tasks (`None`: still informative at
/// the last measured layer) and per task.
struct Horizons {
    pooled: Option<f64>,
    tasks: Vec<(String, Option<i32>)>,
}

fn read_horizons(path: &PathBuf, model: &str) -> Result<Horizons> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let report: horizon_analysis::HorizonReport = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a horizon.json ({e})", path.display()))?;
    let entry = match report.models.iter().find(|m| m.model == model) {
        Some(m) => m,
        None if report.models.len() == 1 => &report.models[0],
        None => bail!(
            "{}: no model named {model:?} (it has {}); pass --model-name",
            path.display(),
            report
                .models
                .iter()
                .map(|m| m.model.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Ok(Horizons {
        pooled: entry.pooled.horizon.horizon.map(f64::from),
        tasks: entry
            .tasks
            .iter()
            .map(|t| (t.task.clone(), t.horizon.horizon))
            .collect(),
    })
}

pub fn run(args: &PruneSweepArgs) -> Result<()> {
    let keep_text = args.keep.trim();
    // Parse the keep once through the spec grammar so that its errors read like --prune's.
    let probe = PruneSpec::parse(&format!("random@1:{keep_text}")).map_err(|e| {
        anyhow::anyhow!(
            "--keep: {}",
            e.to_string().rsplit(": ").next().unwrap_or("")
        )
    })?;
    let keep: Keep = probe.stages[0].keep;
    let mut methods: Vec<Method> = Vec::new();
    for name in &args.methods {
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
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    if !methods.contains(&Method::Random) {
        methods.push(Method::Random);
    }
    let (model, processor) = args.model.load()?;
    let num_layers = model.num_layers();
    let layers = parse_layers(Some(&args.layers), num_layers)?;
    for spec in &args.compare {
        spec.check(num_layers)?;
    }
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let horizons = match &args.horizon {
        Some(p) => Some(read_horizons(p, &model_name)?),
        None => None,
    };
    let horizon = horizons.as_ref().and_then(|h| h.pooled);
    let mut specs = Vec::new();
    let mut skipped = Vec::new();
    for &m in &methods {
        for &k in &layers {
            let text = format!("{}@{k}:{keep}", m.name());
            match PruneSpec::parse(&text).and_then(|s| s.check(num_layers).map(|_| s)) {
                Ok(s) => specs.push((m, k, s)),
                Err(e) => skipped.push(json!({"spec": text, "why": e.to_string()})),
            }
        }
    }
    let samples = args.bench.samples()?;
    let ctx = EvalContext {
        model: &model,
        processor: &processor,
        model_options: &args.model,
        bench: &args.bench,
        samples: &samples,
        model_name: model_name.clone(),
        max_new_tokens: args.max_new_tokens,
        scorer: None,
        samples_per_part: args.samples_per_part,
        scale: &args.scale,
        options: args.prune_settings.options(),
        warmup: true,
        info_rows: None,
    };
    let runs_dir = args.out.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("{}: cannot create", runs_dir.display()))?;
    let sweep_specs: Vec<PruneSpec> = specs.iter().map(|(_, _, s)| s.clone()).collect();
    let mut runs: Vec<SpecRun> = plan_runs(
        &sweep_specs,
        args.repeats,
        args.prune_settings.prune_seed,
        &runs_dir,
    );
    for r in plan_runs(
        &args.compare,
        args.repeats,
        args.prune_settings.prune_seed,
        &runs_dir,
    ) {
        if !runs.contains(&r) {
            runs.push(r);
        }
    }
    let (summaries, complete) = ctx.evaluate_all(&runs)?;
    if !complete {
        eprintln!(
            "stopped by --max-samples-per-run / --time-budget-min; rerun with --resume to continue"
        );
        return Ok(());
    }
    let spec_summaries = summarize_specs(&summaries);
    write_summary(&args.out, &spec_summaries)?;
    let unpruned = spec_summaries
        .iter()
        .find(|s| s.spec == "none")
        .map(|s| s.score_mean)
        .ok_or_else(|| anyhow::anyhow!("the unpruned run is missing"))?;
    let mut scores = Vec::new();
    for s in &summaries {
        if let Some((m, k, _)) = specs.iter().find(|(_, _, spec)| spec.to_string() == s.spec) {
            scores.push(SweepScore {
                method: m.name().into(),
                layer: *k,
                seed: s.seed,
                score: s.score,
            });
        }
    }
    let curves = sweep_curves(&scores, unpruned)?;
    let metric = spec_summaries
        .first()
        .map(|s| s.metric.clone())
        .unwrap_or_default();
    let sweep = json!({
        "model": model_name,
        "bench": args.bench.bench.display().to_string(),
        "metric": metric,
        "keep": keep.to_string(),
        "layers": layers,
        "horizon_layer": horizon,
        "task_horizons": horizons.as_ref().map(|h| h.tasks.iter()
            .map(|(t, l)| (t.clone(), json!(l))).collect::<serde_json::Map<_, _>>()),
        "unpruned_score": unpruned,
        "scores": scores,
        "curves": curves,
        "skipped": skipped,
    });
    write_text(
        &args.out.join("sweep.json"),
        &serde_json::to_string_pretty(&sweep)?,
    )?;
    let mut md = format!(
        "Relative score (% of the unpruned model's {metric} = {unpruned:.2}) when pruning to keep {keep} at layer K\n\n| method |"
    );
    for k in &layers {
        md.push_str(&format!(" K={k} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(layers.len()));
    md.push('\n');
    for c in &curves {
        md.push_str(&format!("| {} |", c.method));
        for k in &layers {
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
    if let Some(h) = &horizons {
        md.push_str(&format!(
            "\nInformation horizon (from {}), all tasks: {}; per task: {}\n",
            args.horizon.as_ref().expect("set").display(),
            layer_or_none(h.pooled),
            h.tasks
                .iter()
                .map(|(t, l)| format!("{t} {}", l.map_or("none".into(), |l| l.to_string())))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    write_text(&args.out.join("sweep.md"), &md)?;
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
        plot_prune_sweep(&curves, &opts, &args.out.join(format!("prune_sweep.{ext}")))?;
    }
    if !args.compare.is_empty() {
        let rows: Vec<BudgetRow> = spec_summaries
            .iter()
            .filter(|s| args.compare.iter().any(|c| c.to_string() == s.spec))
            .map(|s| BudgetRow {
                spec: s.spec.clone(),
                label: s.label.clone(),
                t_eq: s.visual_tokens_t_eq,
                retained_from_layer0: s.visual_tokens_layer0,
                retained_final: s.visual_tokens_final,
                score_mean: s.score_mean,
                score_std: s.score_std,
                repeats: s.repeats,
            })
            .collect();
        let table = table1_markdown(&rows, unpruned, 0.05);
        write_text(&args.out.join("table1.md"), &table)?;
        write_text(
            &args.out.join("table1.json"),
            &serde_json::to_string_pretty(&{
                let mut t = table1_json(&rows, unpruned, 0.05);
                t["metric"] = json!(metric);
                t
            })?,
        )?;
        println!("{table}");
    }
    print!("{md}");
    eprintln!(
        "wrote sweep.json, sweep.md, prune_sweep.png/svg to {}",
        args.out.display()
    );
    Ok(())
}
