//! `horizon eval`: greedy answers over a benchmark, scored by the benchmark's official rules
//! (`horizon_data::score`): predictions streamed into resumable Parquet parts, then the score table
//! (JSON + Markdown), one row per metric with its convention named.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use horizon_data::score::Benchmark;
use horizon_runner::evaluate::Evaluation;

use crate::options::{at_least_one, BenchOptions, ModelOptions, ScaleOptions};
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
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let (model, processor) = args.model.load()?;
    let samples = args.bench.samples()?;
    let evaluation = Evaluation {
        model_name: args.model_name.clone().unwrap_or_else(|| {
            args.model
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        }),
        model_path: args.model.model.clone(),
        bench: args.bench.bench.clone(),
        template: args.model.template,
        prompt_style: args.bench.prompt_style,
        max_new_tokens: args.max_new_tokens,
        scorer: args.scorer,
        samples_per_part: args.samples_per_part,
        shard: args.scale.shard(),
        processor_settings: args.model.processor_settings(),
    };
    let progress = bar(0, "samples");
    let report = evaluation.run(
        &model,
        &processor,
        &samples,
        &args.out,
        args.scale.resume,
        args.scale.stop_rule(),
        &mut |done, pending| {
            progress.set_length(pending as u64);
            progress.set_position(done as u64);
        },
    )?;
    progress.finish_and_clear();
    eprintln!(
        "horizon eval: {} samples ({} already done) in {}",
        report.samples,
        report.already_done,
        args.out.display()
    );
    match &report.scores {
        Some(table) => print!("{}", table.to_markdown()),
        None => eprintln!(
            "stopped by --max-samples-per-run / --time-budget-min; rerun with --resume to continue"
        ),
    }
    Ok(())
}
