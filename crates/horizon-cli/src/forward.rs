//! `horizon forward`: one forward pass, of the plain model or pruned by `--prune`; saves the logits of
//! every prompt position the last layer processed.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

use horizon_data::atomic::write_atomic;
use horizon_runner::nn::check_finite;
use horizon_runner::prune::{prefill_pruned, PruneSpec};

use crate::options::{prune_spec, ModelArgs, PruneSettings};

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output safetensors file: `logits` (f32, [kept, vocab]: one row per prompt position the last layer
    /// processed, all of them without pruning), `input_ids` (i64, `[seq_len]`), `kept` (i64, `[kept]`:
    /// their indices in the sequence the decoder saw) and `visual_per_layer` (i64, `[layers]`).
    #[arg(long)]
    save_logits: PathBuf,
    /// Prune the visual tokens: `method@K:keep[,…]` (README, "Pruning"); `none` is the plain model.
    #[arg(long, default_value = "none", value_parser = prune_spec)]
    prune: PruneSpec,
    #[command(flatten)]
    prune_settings: PruneSettings,
    /// The expected answer: the information oracle (`info@K:keep`) ranks windows by its first token.
    #[arg(long)]
    answer: Option<String>,
}

pub fn run(args: &ForwardArgs) -> Result<()> {
    horizon_data::atomic::check_file_target(&args.save_logits)?;
    let (model, processor, inputs) = args.model.load()?;
    let target = match &args.answer {
        Some(a) => processor.first_answer_token(a)?,
        None => None,
    };
    let opts = args.prune_settings.options();
    let run = prefill_pruned(&model, &inputs, &args.prune, &opts, opts.seed, target, None)?;
    let logits = model
        .lm_head(&run.output.hidden)
        .squeeze_dim(0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    check_finite(&logits, "the logits")?;
    let input_ids = inputs.input_ids.squeeze_dim(0).to_device(tch::Device::Cpu);
    let kept: Vec<i64> = run.output.kept.iter().map(|&k| k as i64).collect();
    let per_layer: Vec<i64> = run.counts.per_layer.iter().map(|&k| k as i64).collect();
    write_safetensors_atomic(
        &args.save_logits,
        &[
            ("logits", &logits),
            ("input_ids", &input_ids),
            ("kept", &Tensor::from_slice(&kept)),
            ("visual_per_layer", &Tensor::from_slice(&per_layer)),
        ],
    )?;
    let size = logits.size();
    eprintln!(
        "wrote {} (logits [{}, {}], {} visual tokens)",
        args.save_logits.display(),
        size[0],
        size[1],
        inputs.visual.positions.len(),
    );
    if !args.prune.is_none() {
        eprintln!(
            "{}: visual tokens per layer {:?}, T_eq {:.2}",
            args.prune,
            run.counts.per_layer,
            run.counts.t_eq()
        );
    }
    for s in &run.stages {
        eprintln!(
            "  {}: kept {} visual tokens{}",
            s.stage,
            s.kept_visual.len(),
            if s.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.note)
            }
        );
    }
    Ok(())
}

/// Writes the tensors atomically: readers never see a partial file.
fn write_safetensors_atomic(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    write_atomic(path, |tmp| {
        Tensor::write_safetensors(tensors, tmp)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })
}
