//! `horizon forward`: one forward pass of the unmodified model; saves the logits of every prompt
//! position.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

use horizon_data::atomic::write_atomic;
use horizon_runner::nn::check_finite;
use horizon_runner::Intervention;

use crate::options::ModelArgs;

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output safetensors file: `logits` (f32, [seq_len, vocab]) and `input_ids` (i64, [seq_len]).
    #[arg(long)]
    save_logits: PathBuf,
}

pub fn run(args: &ForwardArgs) -> Result<()> {
    let (model, _, inputs) = args.model.load()?;
    let out = model.prefill(&inputs, &mut Intervention::none(), None, None)?;
    let logits = model
        .lm_head(&out.hidden)
        .squeeze_dim(0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    check_finite(&logits, "the logits")?;
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

/// Writes the tensors atomically: readers never see a partial file.
fn write_safetensors_atomic(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    write_atomic(path, |tmp| {
        Tensor::write_safetensors(tensors, tmp)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })
}
