//! Greedy generation with a pruned prefill: the cache holds only the kept tokens.

use anyhow::Result;
use tch::Tensor;

use super::{prefill_pruned, PruneOptions, PruneSpec, StageRecord, VisualCounts};
use crate::decoder::KvCache;
use crate::model::{ModelInputs, VlModel};

/// A pruned greedy generation with what it cost.
pub struct PrunedGeneration {
    pub tokens: Vec<i64>,
    pub counts: VisualCounts,
    pub stages: Vec<StageRecord>,
    /// Wall time of the prefill (pruning included) and of the decoding steps, device-synchronized.
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Decoding steps run (new tokens after the first, which the prefill gives).
    pub decode_steps: usize,
    /// Bytes of the KV cache at the end (its peak: it only grows).
    pub kv_bytes: usize,
    /// Prompt tokens each layer cached.
    pub tokens_per_layer: Vec<usize>,
}

/// Waits for the device's queued work, so that wall times measure it.
pub fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Greedy generation under `spec`: the cache holds only the kept tokens, decode positions follow the
/// stages' position conventions.
#[allow(clippy::too_many_arguments)]
pub fn generate_pruned(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
    seed: u64,
    target: Option<i64>,
    config: &crate::generate::GenerationConfig,
) -> Result<PrunedGeneration> {
    Ok(run(model, inputs, spec, options, seed, target, config, false)?.0)
}

/// [`generate_pruned`], also returning the f32 logits `[N, V]` that chose each of the N tokens (row
/// 0: the pruned prefill's last position).
#[allow(clippy::too_many_arguments)]
pub fn generate_pruned_with_logits(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
    seed: u64,
    target: Option<i64>,
    config: &crate::generate::GenerationConfig,
) -> Result<(PrunedGeneration, Tensor)> {
    let (run, logits) = run(model, inputs, spec, options, seed, target, config, true)?;
    Ok((run, logits.expect("logits kept")))
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
    seed: u64,
    target: Option<i64>,
    config: &crate::generate::GenerationConfig,
    keep_logits: bool,
) -> Result<(PrunedGeneration, Option<Tensor>)> {
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let mut cache = KvCache::new(model.num_layers());
    synchronize(device);
    let started = std::time::Instant::now();
    let prefill = prefill_pruned(model, inputs, spec, options, seed, target, Some(&mut cache))?;
    synchronize(device);
    let prefill_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let (hidden, prompt_len) = (&prefill.output.hidden, prefill.prompt_len);
    let (tokens, logits) = if keep_logits {
        let (tokens, logits) = crate::generate::continue_greedy_with_logits(
            model, hidden, prompt_len, &mut cache, config,
        )?;
        (tokens, Some(logits))
    } else {
        let tokens =
            crate::generate::continue_greedy(model, hidden, prompt_len, &mut cache, config)?;
        (tokens, None)
    };
    synchronize(device);
    let generation = PrunedGeneration {
        decode_steps: tokens.len().saturating_sub(1),
        tokens,
        counts: prefill.counts,
        stages: prefill.stages,
        prefill_seconds,
        decode_seconds: started.elapsed().as_secs_f64(),
        kv_bytes: cache.bytes(),
        tokens_per_layer: prefill.output.tokens_per_layer,
    };
    Ok((generation, logits))
}
