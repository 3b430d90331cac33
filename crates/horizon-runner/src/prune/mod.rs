//! Visual-token pruning: any method at any layer, in stages, through the one decoder loop.
//!
//! A [`PruneSpec`] (`divprune@0:284,random@20:38`) becomes a [`TokenSelector`](crate::intervention::TokenSelector) that, before each
//! decoder layer holding a stage, scores the visual tokens left from what the previous layer produced
//! (its attention rows, keys or outputs, which the decoder computes for that layer only) and keeps the
//! chosen ones. Methods that build new tokens before the decoder (pooling, VisionZip) rebuild the
//! input embeddings first. Every run records the visual tokens each layer processed, from which the
//! three budget conventions of the literature follow ([`VisualCounts`]).
//!
//! Positions: a stage at K ≥ 1 keeps the original position ids (FastV, DART, VTW, SparseVLM v2 do;
//! it makes removal equal to key masking), except SparseVLM v1.5's cuts, which recycle dropped tokens
//! and take the first n of the current ids as released ([`recycle`]); a stage at K = 0 renumbers for LLaVA (the LLM sees a shorter
//! sequence, as DivPrune and every pre-LLM method there) and keeps the M-RoPE ids for Qwen2.5-VL
//! (slicing the 3-D ids, as the Qwen ports of these methods do; `docs/pruning.md`). [`PruneOptions::positions`] overrides both.

pub mod family;
pub mod file_stage;
mod generation;
pub mod methods;
mod oracle;
pub mod oracle_rows;
pub mod recycle;
pub mod runs;
mod selector;
pub mod spec;
pub mod sweep_run;
mod tensor_rows;
mod tokens;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::Tensor;

use horizon_data::window::TokenGrid;

use crate::decoder::{DecoderOutput, KvCache};
use crate::intervention::PositionPolicy;
use crate::model::{ModelInputs, VlModel};
pub use family::{PruneFamily, VisionZipCrops, VisionZipSource};
pub use generation::{generate_pruned, generate_pruned_with_logits, synchronize, PrunedGeneration};
use selector::PruneSelector;
pub use spec::{Keep, Method, PruneSpec, Stage, StageInput, StagePlan};
use tokens::{build_tokens, rebuild, DecoderInputs};

/// Settings of the methods that have them, and the seed of random stages.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOptions {
    /// Overrides every stage's position convention.
    pub positions: Option<PositionPolicy>,
    /// Seed of random stages; each sample draws from its own stream ([`sample_seed`]).
    pub seed: u64,
    /// Window FastV: side of the square windows of the visual grid.
    pub window_size: usize,
    /// ToDRE: the attention-ratio threshold below which every visual token is withdrawn.
    pub tau: f64,
    /// Information oracle: side of its windows.
    pub info_window: usize,
    /// DART: image pivots and text pivots each.
    pub dart_pivots: usize,
    /// DART: the order its pivots take their quotas in.
    pub dart_pivot_order: DartPivotOrder,
    /// The key of the sample being run, which a `file@K:PATH` stage looks its kept tokens up by
    /// (set per sample by the evaluation; `None` where a run has no sample).
    pub sample_key: Option<String>,
    /// Information oracle: this sample's window scores read from `horizon info` rows (p(answer)
    /// with only window w kept, per cut layer) instead of computed on the fly.
    pub info_scores: Option<std::collections::BTreeMap<usize, Vec<f64>>>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            positions: None,
            seed: 0,
            window_size: 6,
            tau: 0.10,
            info_window: 2,
            dart_pivots: 4,
            dart_pivot_order: DartPivotOrder::Set,
            sample_key: None,
            info_scores: None,
        }
    }
}

/// The order in which DART's pivots take their quotas, which decides who keeps a token that two
/// pivots would both take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DartPivotOrder {
    /// The released code's: it walks `set(image_pivots + text_pivots)` (each list by key L1 norm,
    /// largest first), i.e. CPython's set iteration order of the pivots' sequence indices
    /// ([`methods::python_set_order`]).
    Set,
    /// Ascending sequence index.
    Sequence,
}

impl DartPivotOrder {
    pub fn name(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Sequence => "sequence",
        }
    }

    /// `set` or `sequence`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "set" => Ok(Self::Set),
            "sequence" => Ok(Self::Sequence),
            other => anyhow::bail!("'{other}' is not one of set, sequence"),
        }
    }
}

/// The random stream of one sample under run seed `seed`: independent of the order samples are run
/// in, so shards and resumed runs draw what a single run draws.
pub fn sample_seed(seed: u64, sample_key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(sample_key.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Visual tokens each decoder layer processed, and the budget conventions derived from them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VisualCounts {
    /// Visual tokens in the prompt.
    pub prompt: usize,
    pub per_layer: Vec<usize>,
}

impl VisualCounts {
    /// What reaches the LLM (DivPrune, VisionZip, pooling count this way).
    pub fn retained_from_layer0(&self) -> usize {
        self.per_layer.first().copied().unwrap_or(self.prompt)
    }

    /// What the last layer still sees (FastV, DART count the tokens kept from K).
    pub fn retained_final(&self) -> usize {
        self.per_layer.last().copied().unwrap_or(self.prompt)
    }

    /// Layer-averaged equivalent count `T_eq = Σ_layers count / L` (SparseVLM budgets, the reference's
    /// two-stage names).
    pub fn t_eq(&self) -> f64 {
        if self.per_layer.is_empty() {
            return self.prompt as f64;
        }
        self.per_layer.iter().sum::<usize>() as f64 / self.per_layer.len() as f64
    }
}

/// What one stage chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRecord {
    pub stage: String,
    /// Sequence indices (of the sequence the decoder saw) of the visual tokens kept.
    pub kept_visual: Vec<usize>,
    /// Method facts worth reporting (DART's pivots, ToDRE's ratios, the pooled grid, …).
    pub note: String,
}

/// A pruned prefill.
pub struct PrunedPrefill {
    pub output: DecoderOutput,
    /// Length of the sequence the decoder saw (shorter than the prompt after a token-building stage).
    pub prompt_len: usize,
    pub counts: VisualCounts,
    pub stages: Vec<StageRecord>,
}

/// The convention of a stage at `layer` (see the module docs).
fn default_policy(model: &VlModel, layer: usize) -> PositionPolicy {
    if layer == 0 {
        model.prune_family().pre_llm_positions()
    } else {
        PositionPolicy::Original
    }
}

/// Prefill of `inputs` pruned by `spec`. `seed` is this sample's random stream ([`sample_seed`]);
/// `target` is the answer's first token, which only the information oracle reads. `cache` records the
/// kept tokens' keys/values and decode positions that follow the stages' conventions.
#[allow(clippy::too_many_arguments)]
pub fn prefill_pruned(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
    seed: u64,
    target: Option<i64>,
    cache: Option<&mut KvCache>,
) -> Result<PrunedPrefill> {
    prefill_pruned_with_layer_inputs(model, inputs, spec, options, seed, target, cache, None)
}

/// [`prefill_pruned`], `layer_inputs` receiving each decoder layer's input `[1, S_l, D]` (the tokens
/// a cut built included, where it placed them).
#[allow(clippy::too_many_arguments)]
pub fn prefill_pruned_with_layer_inputs(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
    seed: u64,
    target: Option<i64>,
    cache: Option<&mut KvCache>,
    layer_inputs: Option<&mut Vec<Tensor>>,
) -> Result<PrunedPrefill> {
    let _guard = tch::no_grad_guard();
    let num_layers = model.num_layers();
    spec.check(num_layers)?;
    let policy = |layer: usize| options.positions.unwrap_or(default_policy(model, layer));
    let (dec, built) = decoder_inputs(model, inputs, spec, options, policy(0))?;
    let records: Vec<StageRecord> = built.into_iter().collect();
    // A token-building first stage leaves its own grid; otherwise the family's grids of the prompt.
    let grids = if records.is_empty() {
        model.window_grid(inputs, 1)?.grids
    } else {
        vec![TokenGrid::whole(dec.visual.grid.0, dec.visual.grid.1)]
    };
    let stages: Vec<(usize, Stage)> = spec
        .stages
        .iter()
        .cloned()
        .enumerate()
        .skip(records.len())
        .collect();
    let mut selector = PruneSelector::new(
        spec,
        stages,
        options,
        (0..num_layers).map(policy).collect(),
        grids,
        ChaCha8Rng::seed_from_u64(seed),
        records,
    );
    selector.prepare(model, inputs, target)?;
    let output = model.decoder().prefill(
        &dec.embeds,
        &dec.positions,
        dec.rope_deltas,
        &dec.visual,
        &mut selector,
        cache,
        layer_inputs,
    )?;
    let counts = VisualCounts {
        prompt: inputs.visual.positions.len(),
        per_layer: output.visual_per_layer.clone(),
    };
    Ok(PrunedPrefill {
        prompt_len: dec.embeds.size()[1] as usize,
        output,
        counts,
        stages: selector.into_records(),
    })
}

/// What the decoder receives under `spec` before its first layer (after a first token-building stage,
/// `avg-pooling@0` or `visionzip@0`, when the spec starts with one; the prompt's own otherwise).
pub struct PrunedDecoderInputs {
    /// Input embeddings `[1, S', D]`.
    pub embeds: Tensor,
    /// Position ids `[1, S']` (1-D) or `[3, 1, S']` (M-RoPE).
    pub positions: Tensor,
    /// What decoding adds to a cache position (M-RoPE; 0 for 1-D rotary) while positions are these.
    pub rope_deltas: i64,
    /// Sequence indices of the visual tokens.
    pub visual_positions: Vec<usize>,
}

/// The decoder's inputs under `spec` ([`PrunedDecoderInputs`]), as [`prefill_pruned`] builds them.
pub fn pruned_decoder_inputs(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
) -> Result<PrunedDecoderInputs> {
    let _guard = tch::no_grad_guard();
    let policy = options.positions.unwrap_or(default_policy(model, 0));
    let (dec, _) = decoder_inputs(model, inputs, spec, options, policy)?;
    Ok(PrunedDecoderInputs {
        embeds: dec.embeds,
        positions: dec.positions,
        rope_deltas: dec.rope_deltas,
        visual_positions: dec.visual.positions,
    })
}

/// The prompt's embeddings and positions, rebuilt by `spec`'s first stage when it builds tokens (its
/// record returned with them), under the first stage's position convention `policy`.
fn decoder_inputs(
    model: &VlModel,
    inputs: &ModelInputs,
    spec: &PruneSpec,
    options: &PruneOptions,
    policy: PositionPolicy,
) -> Result<(DecoderInputs, Option<StageRecord>)> {
    let dec = DecoderInputs {
        embeds: model.input_embeds(inputs)?,
        positions: inputs.position_ids.shallow_clone(),
        rope_deltas: inputs.rope_deltas,
        visual: inputs.visual.clone(),
    };
    match spec.stages.first() {
        Some(stage) if stage.method.creates_tokens() => {
            let label = stage_label(spec, 0);
            let built =
                build_tokens(model, inputs, &dec, stage, options).with_context(|| label.clone())?;
            let dec = rebuild(model, inputs, dec, &built, policy).with_context(|| label.clone())?;
            let record = StageRecord {
                stage: stage.to_string(),
                kept_visual: dec.visual.positions.clone(),
                note: built.note,
            };
            Ok((dec, Some(record)))
        }
        _ => Ok((dec, None)),
    }
}

fn stage_label(spec: &PruneSpec, index: usize) -> String {
    format!(
        "--prune {spec}: stage {} `{}`",
        index + 1,
        spec.stages[index]
    )
}
