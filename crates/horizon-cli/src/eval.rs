//! `horizon eval`: greedy-generation accuracy per category on a benchmark, with per-sample predictions.

use anyhow::{Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

use horizon_data::bench::{self, OpenOptions};
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::predictions::{write_predictions, Prediction};
use horizon_runner::generate::{generate_greedy, GenerationConfig};
use horizon_runner::Intervention;

use crate::options::{at_least_one, ModelOptions};
use crate::progress::bar;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelOptions,
    /// Benchmark (HF parquet or LLaVA jsonl, as for `horizon info`).
    #[arg(long)]
    bench: PathBuf,
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Use at most this many samples.
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
    /// Use at most this many samples of each category (the first ones in benchmark order).
    #[arg(long, value_parser = at_least_one)]
    per_category: Option<usize>,
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    max_new_tokens: usize,
    /// Also write per-category accuracy as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write every evaluated sample's question, reference answers, prediction and match as Parquet
    /// (schema in the README, "Output schemas").
    #[arg(long)]
    predictions: Option<PathBuf>,
}

/// Exact match after trimming and lower-casing (the synthetic answers are single words or glyph strings).
fn normalize(s: &str) -> String {
    s.trim().trim_end_matches('.').to_lowercase()
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let (model, processor) = args.model.load()?;
    let opts = OpenOptions {
        image_dir: args.image_dir.clone(),
        limit: args.limit,
        ..OpenOptions::default()
    };
    let benchmark = bench::open(&args.bench, &opts)?;
    let gen = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        eos_token_ids: processor.eos_token_ids().to_vec(),
    };
    let bar = bar(benchmark.len() as u64, "samples");
    let mut per_cat: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut predictions = Vec::new();
    for sample in benchmark.iter() {
        let sample = sample?;
        if let Some(n) = args.per_category {
            if per_cat.get(&sample.category).is_some_and(|e| e.1 >= n) {
                bar.inc(1);
                continue;
            }
        }
        let image = to_rgb_like_pil(
            sample
                .image
                .decode()
                .with_context(|| format!("sample {}", sample.id))?,
        );
        let inputs =
            processor.prepare_image(&model, &sample.question, &image, args.model.template)?;
        let ids = generate_greedy(&model, &inputs, &mut Intervention::none(), &gen)?;
        let answer = processor.decode(&ids)?;
        let e = per_cat.entry(sample.category.clone()).or_default();
        e.1 += 1;
        let correct = sample
            .answers
            .iter()
            .any(|a| normalize(a) == normalize(&answer));
        if correct {
            e.0 += 1;
        }
        if args.predictions.is_some() {
            predictions.push(Prediction {
                sample_key: sample.id.clone(),
                question_id: sample.id.clone(),
                category: sample.category.clone(),
                question: sample.question.clone(),
                answers: sample.answers.clone(),
                prediction: answer,
                correct,
                ..Prediction::default()
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("| category | correct | total | accuracy |");
    println!("|---|---|---|---|");
    for (cat, (ok, n)) in &per_cat {
        println!(
            "| {cat} | {ok} | {n} | {:.1}% |",
            100.0 * *ok as f64 / (*n).max(1) as f64
        );
    }
    if let Some(path) = &args.json {
        let v: serde_json::Value = per_cat
            .iter()
            .map(|(c, (ok, n))| (c.clone(), serde_json::json!({"correct": ok, "total": n})))
            .collect::<serde_json::Map<_, _>>()
            .into();
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let Some(path) = &args.predictions {
        let metadata = [
            ("horizon.model", &args.model.model),
            ("horizon.bench", &args.bench),
        ]
        .map(|(k, v)| (k.to_string(), v.display().to_string()));
        write_predictions(path, &predictions, &metadata)?;
    }
    Ok(())
}
