//! `horizon info`: visual-token information per layer for every sample of a benchmark, written as
//! long-format Parquet part files (schema in `horizon_data::info_rows`).

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use horizon_data::bench::{self, OpenOptions, Sample};
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::info_rows::{completed_samples, part_files, write_info_rows, InfoRow};
use horizon_runner::device::dtype_name;
use horizon_runner::info::{full_run, sweep_sample, InfoMode, SweepConfig, Variant, WindowGrid};

use crate::{load_model, ModelOptions};

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
    #[arg(long, default_value = "keep-only", value_parser = InfoMode::parse)]
    pub mode: InfoMode,
    /// gt (first token of the ground-truth answer) or greedy (the unpruned model's first token).
    #[arg(long, default_value = "gt", value_parser = ["gt", "greedy"])]
    pub target: String,
    /// Use at most this many samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use at most this many samples of each task category (before --limit).
    #[arg(long)]
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
    /// Continue an interrupted run in --out: samples already written are skipped.
    #[arg(long)]
    pub resume: bool,
}

/// `1-31`, `1,4,8`, `all` → sorted, unique layer indices below `num_layers`.
pub fn parse_layers(spec: Option<&str>, num_layers: usize) -> Result<Vec<usize>> {
    let spec = match spec {
        None => return Ok((1..num_layers).collect()),
        Some(s) => s.trim(),
    };
    if spec == "all" {
        return Ok((0..num_layers).collect());
    }
    let mut layers = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let parse = |s: &str| -> Result<usize> {
            s.trim()
                .parse()
                .map_err(|_| anyhow!("--layers: '{s}' is not a layer number (spec '{spec}')"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    bail!("--layers: empty range '{item}'");
                }
                layers.extend(a..=b);
            }
            None => layers.push(parse(item)?),
        }
    }
    layers.sort_unstable();
    layers.dedup();
    if let Some(&l) = layers.iter().find(|&&l| l >= num_layers) {
        bail!("--layers: layer {l} does not exist (the decoder has {num_layers} layers, 0-based)");
    }
    Ok(layers)
}

fn read_first_metadata(dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let Some(first) = part_files(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let file =
        std::fs::File::open(&first).with_context(|| format!("{}: cannot open", first.display()))?;
    let reader = parquet::file::reader::SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", first.display()))?;
    use parquet::file::reader::FileReader;
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    Ok(Some(
        kv.into_iter()
            .filter_map(|k| k.value.map(|v| (k.key, v)))
            .collect(),
    ))
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let (model, processor) = load_model(&args.model)?;
    let num_layers = model.num_layers();
    let layers = parse_layers(args.layers.as_deref(), num_layers)?;
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
    let benchmark = bench::open(&args.bench, &opts)?;
    let mut samples: Vec<Sample> = benchmark.iter().collect::<Result<_>>()?;
    if let Some(seed) = args.seed {
        samples.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    if let Some(n) = args.per_category {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        samples.retain(|s| {
            let c = seen.entry(s.category.clone()).or_default();
            *c += 1;
            *c <= n
        });
    }
    if let Some(limit) = args.limit {
        samples.truncate(limit);
    }

    // Everything that determines the rows; a resumed run must use the same.
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    metadata.insert("horizon.model".into(), model_name.clone());
    metadata.insert(
        "horizon.model_path".into(),
        args.model.model.display().to_string(),
    );
    metadata.insert("horizon.model_type".into(), model.model_type().into());
    metadata.insert("horizon.num_layers".into(), num_layers.to_string());
    metadata.insert("horizon.layers".into(), format!("{layers:?}"));
    metadata.insert("horizon.window_size".into(), args.window.to_string());
    metadata.insert("horizon.mode".into(), args.mode.name().into());
    metadata.insert("horizon.target".into(), args.target.clone());
    metadata.insert(
        "horizon.template".into(),
        format!("{:?}", args.model.template),
    );
    metadata.insert("horizon.dtype".into(), dtype_name(model.kind()).into());
    metadata.insert("horizon.bench".into(), args.bench.display().to_string());
    let existing = read_first_metadata(&args.out)?;
    let done = match (existing, args.resume) {
        (None, _) => Default::default(),
        (Some(_), false) => bail!(
            "{}: already holds results; pass --resume to continue that run, or choose another --out",
            args.out.display()
        ),
        (Some(prev), true) => {
            for (k, v) in &metadata {
                if k != "horizon.model_path" && k != "horizon.bench" && prev.get(k) != Some(v) {
                    bail!(
                        "{}: --resume with different settings: {k} was {}, now {v}",
                        args.out.display(),
                        prev.get(k).map_or("unset", String::as_str)
                    );
                }
            }
            completed_samples(&args.out)?
        }
    };
    let todo: Vec<(usize, &Sample)> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| !done.contains(&(model_name.clone(), s.id.clone())))
        .collect();
    eprintln!(
        "horizon info: {} samples ({} already done), layers {:?}, window {}, {}, target {}",
        samples.len(),
        samples.len() - todo.len(),
        layers,
        args.window,
        args.mode.name(),
        args.target
    );
    let cfg = SweepConfig {
        layers,
        window_size: args.window as usize,
        mode: args.mode,
        batch_size: args.batch_size.map(|b| b as usize),
        memory_budget_bytes: args.memory_budget_mb << 20,
    };
    let metadata: Vec<(String, String)> = metadata.into_iter().collect();
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} samples  {elapsed} elapsed, eta {eta}  {msg}",
        )
        .expect("valid template"),
    );
    let mut skipped = 0usize;
    for chunk in todo.chunks(args.samples_per_part as usize) {
        let mut rows = Vec::new();
        for (_, sample) in chunk {
            let image = to_rgb_like_pil(
                sample
                    .image
                    .decode()
                    .with_context(|| format!("sample {}", sample.id))?,
            );
            let inputs = processor
                .prepare_image(&model, &sample.question, &image, args.model.template)
                .with_context(|| format!("sample {}", sample.id))?;
            let full = full_run(&model, &inputs)?;
            let target = if args.target == "greedy" {
                full.greedy_token()
            } else {
                match sample
                    .answer()
                    .map(|a| processor.first_answer_token(&a))
                    .transpose()?
                    .flatten()
                {
                    Some(t) => t,
                    None => {
                        skipped += 1;
                        bar.inc(1);
                        continue;
                    }
                }
            };
            let grid = WindowGrid::new(inputs.visual_grid, cfg.window_size)?;
            for r in sweep_sample(&model, &inputs, &full, target, &cfg)? {
                let (variant, window) = match r.variant {
                    Variant::Full => ("full", None),
                    Variant::TextOnly => ("text_only", None),
                    Variant::Window(w) => ("window", Some(w)),
                };
                let (wr, wc) = window.map_or((-1, -1), |w| {
                    let (r, c) = grid.window_position(w);
                    (r as i32, c as i32)
                });
                rows.push(InfoRow {
                    model: model_name.clone(),
                    task: sample.category.clone(),
                    sample_id: sample.id.clone(),
                    layer: r.layer.map_or(-1, |k| k as i32),
                    variant,
                    window: window.map_or(-1, |w| w as i32),
                    window_row: wr,
                    window_col: wc,
                    mode: args.mode.name(),
                    target: if args.target == "greedy" {
                        "greedy"
                    } else {
                        "gt"
                    },
                    target_token: target,
                    p: r.p,
                    logp: r.logp,
                    kl: r.kl,
                });
            }
            bar.inc(1);
        }
        if !rows.is_empty() {
            let part = args.out.join(format!("part-{:06}.parquet", chunk[0].0));
            if part.exists() {
                bail!(
                    "{}: exists already (was the sample order changed?)",
                    part.display()
                );
            }
            write_info_rows(&part, &rows, &metadata)?;
        }
    }
    bar.finish_and_clear();
    if skipped > 0 {
        eprintln!("skipped {skipped} samples without a ground-truth answer (use --target greedy for them)");
    }
    eprintln!(
        "wrote {} part files to {}",
        part_files(&args.out)?.len(),
        args.out.display()
    );
    Ok(())
}
