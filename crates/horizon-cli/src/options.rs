//! Option values shared by every subcommand, each parsed once into its typed value by clap: the
//! checkpoint and how to run it, the device and dtype, and the sweep's mode and target.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tch::{Device, Kind};

use std::collections::BTreeMap;
use std::str::FromStr;

use horizon_data::bench::prompts::PromptStyle;
use horizon_data::bench::{self, BenchmarkKind, OpenOptions, Sample, Selection};
use horizon_data::imageproc::ResampleOrder;
use horizon_runner::device::{parse_device, parse_dtype};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::prune::{DartPivotOrder, PruneOptions, PruneSpec};
use horizon_runner::sweep::{Shard, StopRule};
use horizon_runner::{ModelInputs, PositionPolicy, VlModel};

/// The Pillow release HF's PIL-backend preprocessing is reproduced for unless told otherwise (the one
/// the fixtures were made with).
pub const DEFAULT_PILLOW_VERSION: &str = "12.3.0";

/// `--device`: cpu, cuda or cuda:N (checked against the devices libtorch sees).
pub fn device_value(s: &str) -> Result<Device> {
    parse_device(s).map_err(without_option_prefix)
}

/// `--dtype`: f32, bf16 or f16.
pub fn dtype_value(s: &str) -> Result<Kind> {
    parse_dtype(s).map_err(without_option_prefix)
}

/// clap names the option itself; drop the `--option: ` the runner's parsers put first.
fn without_option_prefix(e: anyhow::Error) -> anyhow::Error {
    let msg = e.to_string();
    match msg.split_once(": ") {
        Some((opt, rest)) if opt.starts_with("--") => anyhow::anyhow!("{rest}"),
        _ => e,
    }
}

/// `--pillow-version`: which Pillow release's bicubic resize to reproduce.
pub fn pillow_value(s: &str) -> Result<ResampleOrder> {
    ResampleOrder::from_pillow_version(s).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Which checkpoint to run and how.
#[derive(Args, Clone)]
pub struct ModelOptions {
    /// HF checkpoint directory (config.json, safetensors shards, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt template: auto (the checkpoint's chat template: llava-hf's for LLaVA-1.5, Qwen2.5-VL chat
    /// with its default system message for Qwen2.5-VL; for LLaVA-NeXT the one the checkpoint carries or,
    /// carrying none, its decoder's: Vicuna `USER: <image>\n{prompt} ASSISTANT:`, Mistral
    /// `[INST] <image>\n{prompt} [/INST]`, or, for a tokenizer with ChatML's tokens as llava-v1.6-34b-hf's,
    /// ChatML `<|im_start|>user\n<image>\n{prompt}<|im_end|>\n<|im_start|>assistant\n`), llava-hf
    /// (`USER: <image>\n{prompt} ASSISTANT:`), vicuna-v1 (original LLaVA with its system text, as the
    /// reference procedure uses), qwen (Qwen2.5-VL chat with its default system message), or raw (the
    /// prompt as given, with one `<image>` for LLaVA and LLaVA-NeXT or one `<|image_pad|>` for Qwen2.5-VL).
    #[arg(long, default_value = "auto", value_parser = PromptTemplate::parse)]
    pub template: PromptTemplate,
    #[command(flatten)]
    pub run: RunOptions,
    /// Pillow release whose bicubic resize to reproduce: HF's PIL-backend preprocessing calls Pillow,
    /// and Pillow 13 changed the pass order of some resizes.
    #[arg(long, default_value = DEFAULT_PILLOW_VERSION, value_parser = pillow_value)]
    pub pillow_version: ResampleOrder,
    /// Qwen2.5-VL: the image processor's `min_pixels` (default: the checkpoint's). It changes the
    /// visual token count and so the scores (lmms-eval uses 256·28² = 200704); recorded in outputs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_pixels: Option<u64>,
    /// Qwen2.5-VL: the image processor's `max_pixels` (default: the checkpoint's; lmms-eval uses
    /// 1605632); recorded in outputs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: Option<u64>,
}

/// Where and in which precision models run.
#[derive(Args, Clone, Copy)]
pub struct RunOptions {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = device_value)]
    pub device: Device,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = dtype_value)]
    pub dtype: Kind,
}

impl ModelOptions {
    /// The processor settings given on the command line, for the outputs' metadata.
    pub fn processor_settings(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(v) = self.min_pixels {
            m.insert("min_pixels".into(), v.to_string());
        }
        if let Some(v) = self.max_pixels {
            m.insert("max_pixels".into(), v.to_string());
        }
        m
    }

    /// Loads the model and its processor as the options say.
    pub fn load(&self) -> Result<(VlModel, Processor)> {
        let model = VlModel::load(&self.model, self.run.device, self.run.dtype)?;
        let mut processor = Processor::load(&self.model, &model)?;
        processor.set_resample_order(self.pillow_version);
        if self.min_pixels.is_some() || self.max_pixels.is_some() {
            processor.set_pixel_bounds(self.min_pixels, self.max_pixels)?;
        }
        Ok((model, processor))
    }
}

/// One image and one question on a model.
#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub options: ModelOptions,
    /// Image file (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// The question; it is placed in the prompt template with the image.
    #[arg(long)]
    pub prompt: String,
}

impl ModelArgs {
    /// The model, its processor and the prepared inputs.
    pub fn load(&self) -> Result<(VlModel, Processor, ModelInputs)> {
        let (model, processor) = self.options.load()?;
        let inputs = processor.prepare(&model, &self.prompt, &self.image, self.options.template)?;
        Ok((model, processor, inputs))
    }
}

/// `T` as clap fills it from `args` (each option not given takes its declared default): the one
/// source of a command's defaults for another command that runs it (`horizon demo`).
pub fn parsed<T: clap::Args + clap::FromArgMatches>(args: &[&std::ffi::OsStr]) -> Result<T> {
    let command = T::augment_args(clap::Command::new("horizon").no_binary_name(true));
    let matches = command
        .try_get_matches_from(args)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// A finite number ≥ 0 (thresholds).
pub fn non_negative(s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => anyhow::bail!("'{s}' is not a finite number >= 0"),
    }
}

/// A number strictly between 0 and 1 (confidence levels).
pub fn unit_open(s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => anyhow::bail!("'{s}' is not a number in (0, 1)"),
    }
}

/// A whole number ≥ 1 (counts where 0 would make an empty or meaningless run).
pub fn at_least_one(s: &str) -> Result<usize> {
    match s.parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => anyhow::bail!("'{s}' is not a whole number >= 1"),
    }
}

/// Which benchmark samples a run uses, and how their prompts are built.
#[derive(Args, Clone)]
pub struct BenchOptions {
    /// Benchmark: an lmms-lab HF-parquet file or directory (MME, POPE, TextVQA, ScienceQA-IMG, GQA,
    /// MMBench; the bundled synthetic set), or LLaVA's evaluation files (a question .jsonl, ScienceQA's
    /// .json, MMBench's .tsv) with --image-dir and --answers.
    #[arg(long)]
    pub bench: PathBuf,
    /// Image folder of a LLaVA question file (GQA parquet: the images config).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Ground-truth file or folder of a LLaVA question file (POPE label files, TextVQA annotations, ...).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// The benchmark, overriding detection from the files: mme, pope, textvqa, scienceqa, gqa,
    /// mmbench, synthetic or generic.
    #[arg(long, value_parser = BenchmarkKind::from_str)]
    pub benchmark: Option<BenchmarkKind>,
    /// The parquet split when a folder holds several (default: the benchmark's evaluation split).
    #[arg(long)]
    pub split: Option<String>,
    /// Benchmark prompts as LLaVA-1.5's evaluation scripts build them (llava) or as lmms-eval does.
    #[arg(long, default_value = "llava", value_parser = PromptStyle::from_str)]
    pub prompt_style: PromptStyle,
    /// Use at most this many samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use at most this many samples of each task category (before --limit).
    #[arg(long, value_parser = at_least_one)]
    pub per_category: Option<usize>,
    /// Shuffle the sample order with this seed before --per-category and --limit (default: benchmark order).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl BenchOptions {
    /// The selected samples, in run order.
    pub fn samples(&self) -> Result<Vec<Sample>> {
        let opts = OpenOptions {
            image_dir: self.image_dir.clone(),
            answers: self.answers.clone(),
            benchmark: self.benchmark,
            split: self.split.clone(),
            ..OpenOptions::default()
        };
        let selection = Selection {
            seed: self.seed,
            per_category: self.per_category,
            limit: self.limit,
        };
        Ok(selection.apply(bench::read_all(&self.bench, &opts)?))
    }
}

/// Resuming, sharding and stopping a long run.
#[derive(Args, Clone, Copy)]
pub struct ScaleOptions {
    /// Continue an interrupted run in --out: samples already written are skipped. The checkpoint,
    /// the selected samples and every setting that changes the results must be the same.
    #[arg(long)]
    pub resume: bool,
    /// Run only shard i of n (0-based; the samples at selection positions ≡ i mod n), e.g. one per
    /// GPU or Slurm array task; `horizon merge` combines finished `info` shards.
    #[arg(long, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// Stop after this many samples (their parts complete); `--resume` continues. For job limits.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_samples_per_run: Option<u32>,
    /// Stop starting new parts after this many minutes; `--resume` continues. For job time limits.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_minutes)]
    pub time_budget_min: Option<f64>,
}

impl ScaleOptions {
    pub fn shard(&self) -> Shard {
        self.shard.unwrap_or_else(Shard::whole)
    }

    pub fn stop_rule(&self) -> StopRule {
        StopRule {
            max_samples: self.max_samples_per_run.map(|n| n as usize),
            max_seconds: self.time_budget_min.map(|m| m * 60.0),
        }
    }
}

/// `--time-budget-min`: a positive, finite number of minutes.
fn positive_minutes(s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => anyhow::bail!("'{s}' is not a positive number of minutes"),
    }
}

/// `--prune`: a pruning spec `method@K:keep[,…]` or `none`.
pub fn prune_spec(s: &str) -> Result<PruneSpec> {
    PruneSpec::parse(s)
}

/// `--positions keep|renumber`.
pub fn positions_value(s: &str) -> Result<PositionPolicy> {
    match s {
        "keep" => Ok(PositionPolicy::Original),
        "renumber" => Ok(PositionPolicy::Renumbered),
        other => anyhow::bail!("'{other}' is not one of keep, renumber"),
    }
}

/// Settings of the pruning methods (every `--prune` spec of a run shares them).
#[derive(Args, Clone)]
pub struct PruneSettings {
    /// Position ids of kept tokens for every stage: `keep` (original, gapped) or `renumber`
    /// (contiguous). Default: each stage's convention — kept from K ≥ 1; at K = 0 renumbered for
    /// LLaVA and kept (M-RoPE ids sliced) for Qwen2.5-VL.
    #[arg(long, value_parser = positions_value)]
    pub positions: Option<PositionPolicy>,
    /// Seed of random stages (each sample draws its own stream from it; --repeats counts up from it).
    #[arg(long, default_value_t = PruneOptions::default().seed)]
    pub prune_seed: u64,
    /// Window FastV: side of its square windows on the visual grid.
    #[arg(long, default_value_t = PruneOptions::default().window_size, value_parser = at_least_one)]
    pub fastv_window: usize,
    /// ToDRE: attention-ratio threshold of its relevance stage.
    #[arg(long, default_value_t = PruneOptions::default().tau, value_parser = unit_open)]
    pub todre_tau: f64,
    /// Information oracle: side of its windows.
    #[arg(long, default_value_t = PruneOptions::default().info_window, value_parser = at_least_one)]
    pub info_window: usize,
    /// DART: number of image pivots and of text pivots.
    #[arg(long, default_value_t = PruneOptions::default().dart_pivots, value_parser = at_least_one)]
    pub dart_pivots: usize,
    /// DART: the order its pivots take their quotas in: `set` (the released code's, which walks a
    /// Python set of the pivots' sequence indices: CPython's set order) or `sequence` (ascending
    /// sequence index).
    #[arg(long, default_value = "set", value_parser = DartPivotOrder::parse)]
    pub dart_pivot_order: DartPivotOrder,
}

impl PruneSettings {
    pub fn options(&self) -> PruneOptions {
        PruneOptions {
            positions: self.positions,
            seed: self.prune_seed,
            window_size: self.fastv_window,
            tau: self.todre_tau,
            info_window: self.info_window,
            dart_pivots: self.dart_pivots,
            dart_pivot_order: self.dart_pivot_order,
            sample_key: None,
            info_scores: None,
        }
    }
}

/// `--workers`: a count, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

impl std::str::FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            n => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Self::Count(n)),
                _ => Err(format!("'{s}' is not a worker count (1 or more) or auto")),
            },
        }
    }
}

impl Workers {
    /// The number of sample workers on `device`.
    pub fn count(self, device: tch::Device) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Auto if device == tch::Device::Cpu => tch::get_num_threads().max(1) as usize,
            Self::Auto => 1,
        }
    }
}
