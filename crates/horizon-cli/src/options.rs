//! Option values shared by every subcommand, each parsed once into its typed value by clap: the
//! checkpoint and how to run it, the device and dtype, and the sweep's mode and target.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tch::{Device, Kind};

use horizon_data::imageproc::ResampleOrder;
use horizon_runner::device::{parse_device, parse_dtype};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{ModelInputs, VlModel};

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
    /// Prompt template: auto (the family's chat template), llava-hf (`USER: <image>\n{prompt} ASSISTANT:`),
    /// vicuna-v1 (original LLaVA with its system text, as the reference procedure uses), qwen (Qwen2.5-VL
    /// chat with its default system message), or raw (the prompt as given, with one `<image>` for LLaVA or
    /// one `<|image_pad|>` for Qwen2.5-VL).
    #[arg(long, default_value = "auto", value_parser = PromptTemplate::parse)]
    pub template: PromptTemplate,
    #[command(flatten)]
    pub run: RunOptions,
    /// Pillow release whose bicubic resize to reproduce: HF's PIL-backend preprocessing calls Pillow,
    /// and Pillow 13 changed the pass order of some resizes.
    #[arg(long, default_value = DEFAULT_PILLOW_VERSION, value_parser = pillow_value)]
    pub pillow_version: ResampleOrder,
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
    /// The bundled defaults for `dir`: the family's own template, this Pillow, on `run`.
    pub fn for_dir(dir: PathBuf, run: RunOptions) -> Self {
        Self {
            model: dir,
            template: PromptTemplate::Auto,
            run,
            pillow_version: pillow_value(DEFAULT_PILLOW_VERSION).expect("a known Pillow release"),
        }
    }

    /// Loads the model and its processor as the options say.
    pub fn load(&self) -> Result<(VlModel, Processor)> {
        let model = VlModel::load(&self.model, self.run.device, self.run.dtype)?;
        let mut processor = Processor::load(&self.model, &model)?;
        processor.set_resample_order(self.pillow_version);
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
