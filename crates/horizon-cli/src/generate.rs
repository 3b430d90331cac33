//! `horizon generate`: greedy generation with a KV cache from an image and a question.

use anyhow::Result;
use clap::Args;

use horizon_runner::generate::{generate_greedy, GenerationConfig};
use horizon_runner::Intervention;

use crate::options::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Stop after this many new tokens (or at EOS).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=8192))]
    max_new_tokens: u32,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let (model, processor, inputs) = args.model.load()?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens as usize,
        eos_token_ids: processor.eos_token_ids().to_vec(),
    };
    let ids = generate_greedy(&model, &inputs, &mut Intervention::none(), &config)?;
    println!("{}", processor.decode(&ids)?);
    Ok(())
}
