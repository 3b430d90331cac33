//! `horizon generate`: greedy generation with a KV cache from an image and a question, of the plain
//! model or pruned by `--prune` (the cache then holds only the kept tokens).

use anyhow::Result;
use clap::Args;

use horizon_runner::generate::GenerationConfig;
use horizon_runner::prune::{generate_pruned, PruneSpec};

use crate::options::{prune_spec, ModelArgs, PruneSettings};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Stop after this many new tokens (or at EOS).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=8192))]
    max_new_tokens: u32,
    /// Prune the visual tokens: `method@K:keep[,…]` (README, "Pruning"); `none` is the plain model.
    #[arg(long, default_value = "none", value_parser = prune_spec)]
    prune: PruneSpec,
    #[command(flatten)]
    prune_settings: PruneSettings,
    /// The expected answer: the information oracle (`info@K:keep`) ranks windows by its first token.
    #[arg(long)]
    answer: Option<String>,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let (model, processor, inputs) = args.model.load()?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens as usize,
        eos_token_ids: processor.eos_token_ids().to_vec(),
    };
    let target = match &args.answer {
        Some(a) => processor.first_answer_token(a)?,
        None => None,
    };
    let opts = args.prune_settings.options();
    let run = generate_pruned(
        &model,
        &inputs,
        &args.prune,
        &opts,
        opts.seed,
        target,
        &config,
    )?;
    println!("{}", processor.decode(&run.tokens)?);
    if !args.prune.is_none() {
        eprintln!(
            "{}: visual tokens per layer {:?} (T_eq {:.2}), KV cache {} bytes",
            args.prune,
            run.counts.per_layer,
            run.counts.t_eq(),
            run.kv_bytes
        );
    }
    Ok(())
}
