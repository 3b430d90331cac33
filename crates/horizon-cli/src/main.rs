//! `horizon`: visual-token information per decoder layer, the information horizon, and its figures.

mod analysis;
mod bench;
mod demo;
mod info;
mod options;
mod progress;
mod train;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Kind, Tensor};

use horizon_data::atomic::write_atomic;
use horizon_runner::generate::{generate_greedy, GenerationConfig};
use horizon_runner::processor::Processor;
use horizon_runner::{Intervention, VlModel};

use options::ModelOptions;

#[derive(Parser)]
#[command(
    name = "horizon",
    version,
    about = "How much each visual token of a vision-language model still matters at each decoder layer",
    long_about = "horizon runs HF-format vision-language checkpoints (llava-hf LLaVA-1.5, Qwen2.5-VL) with \
libtorch, measures per-layer visual-token information, locates the information horizon, and renders its figures."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: information maps for the bundled models (or --models) on the bundled benchmark,
    /// horizons per task and per model, all figures and a printed summary (resumable).
    Demo(demo::DemoArgs),
    /// One forward pass of the unmodified model; saves the logits of every prompt position.
    Forward(ForwardArgs),
    /// Greedy generation (KV cache) from an image and a question; prints the answer.
    Generate(GenerateArgs),
    /// Visual-token information per decoder layer over a benchmark, as long-format Parquet.
    Info(info::InfoArgs),
    /// Timings on a random-weight model of any config (llava-1.5-7b built in): plain forward, and the
    /// information engine against the naive per-variant procedure in the same run.
    Bench(bench::BenchArgs),
    /// Per-layer statistics and the information horizon from `horizon info` rows (horizon.json + Parquet).
    Horizon(analysis::HorizonArgs),
    /// Figures from `horizon info` rows: window heatmaps, information versus layer, layer x window map.
    Plot(analysis::PlotArgs),
    /// Writes a seeded synthetic benchmark (coarse perception and text-reading tasks) as HF parquet.
    Synth(train::SynthArgs),
    /// Trains a small LLaVA-format model from scratch on the synthetic tasks (resumable).
    Train(train::TrainArgs),
    /// Greedy-generation accuracy per category (exact match) on a benchmark.
    Eval(train::EvalArgs),
}

/// One image and one question.
#[derive(Args)]
struct ModelArgs {
    #[command(flatten)]
    options: ModelOptions,
    /// Image file (PNG or JPEG).
    #[arg(long)]
    image: PathBuf,
    /// The question; it is placed in the prompt template with the image.
    #[arg(long)]
    prompt: String,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output safetensors file: `logits` (f32, [seq_len, vocab]) and `input_ids` (i64, [seq_len]).
    #[arg(long)]
    save_logits: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Stop after this many new tokens (or at EOS).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=8192))]
    max_new_tokens: u32,
}

fn load(args: &ModelArgs) -> Result<(VlModel, Processor, horizon_runner::ModelInputs)> {
    let (model, processor) = args.options.load()?;
    let inputs = processor.prepare(&model, &args.prompt, &args.image, args.options.template)?;
    Ok((model, processor, inputs))
}

fn forward(args: &ForwardArgs) -> Result<()> {
    let (model, _, inputs) = load(&args.model)?;
    let out = model.prefill(&inputs, &mut Intervention::none(), None, None)?;
    let logits = model
        .lm_head(&out.hidden)
        .squeeze_dim(0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    let input_ids = inputs.input_ids.squeeze_dim(0).to_device(tch::Device::Cpu);
    write_safetensors_atomic(
        &args.save_logits,
        &[("logits", &logits), ("input_ids", &input_ids)],
    )?;
    let size = logits.size();
    eprintln!(
        "wrote {} (logits [{}, {}], {} visual tokens)",
        args.save_logits.display(),
        size[0],
        size[1],
        inputs.visual.positions.len()
    );
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let (model, processor, inputs) = load(&args.model)?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens as usize,
        eos_token_ids: processor.eos_token_ids().to_vec(),
    };
    let ids = generate_greedy(&model, &inputs, &mut Intervention::none(), &config)?;
    println!("{}", processor.decode(&ids)?);
    Ok(())
}

/// Writes the tensors atomically: readers never see a partial file.
fn write_safetensors_atomic(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    write_atomic(path, |tmp| {
        Tensor::write_safetensors(tensors, tmp)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })
}

fn main() -> ExitCode {
    // libtorch reports some failures by panicking inside tch; keep them to one line with a non-zero exit.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let first = msg.lines().next().unwrap_or(msg);
        eprintln!("error: internal failure: {first}");
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Forward(a) => forward(a),
        Command::Generate(a) => generate(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Horizon(a) => analysis::horizon(a),
        Command::Plot(a) => analysis::plot(a),
        Command::Synth(a) => train::synth(a),
        Command::Train(a) => train::run_train(a),
        Command::Eval(a) => train::eval(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
