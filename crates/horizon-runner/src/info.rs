//! Token information per decoder layer (arXiv 2512.07580), computed by resuming from stored layer
//! inputs instead of re-running the model per variant.
//!
//! Cutting at layer K leaves layers `< K` untouched, so one unpruned prefill per sample gives the input
//! of every layer; each variant (a keep-set of prompt positions) then runs through layers `K..L-1` only,
//! gathered from that stored input with its original position ids. Variants of equal length run as one
//! batch. [`naive_variant`] is the reference procedure (a full forward with the cut, one variant at a
//! time) that tests hold the engine against.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use crate::intervention::Intervention;
use crate::model::{ModelInputs, VlModel};
use crate::nn::check_finite;
pub use horizon_data::info_rows::{InfoMode, Target};
pub use horizon_data::window::WindowGrid;

/// What a variant keeps from layer K on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The unpruned model (no cut).
    Full,
    /// No visual token from layer K on: the text-only baseline.
    TextOnly,
    /// A window variant (keep-only or leave-out, per the sweep's mode).
    Window(usize),
}

/// p(y), log p(y) and KL(unpruned ‖ variant) of one variant's first-token distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariantResult {
    /// Cut layer K; `None` for [`Variant::Full`].
    pub layer: Option<usize>,
    pub variant: Variant,
    pub p: f64,
    pub logp: f64,
    pub kl: f64,
}

/// Settings of one sample's sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Cut layers K (0-based), each `< num_layers`.
    pub layers: Vec<usize>,
    pub window_size: usize,
    pub mode: InfoMode,
    /// Variants per batch; `None` picks one from `memory_budget_bytes`.
    pub batch_size: Option<usize>,
    /// Rough bound on activation memory per batch when `batch_size` is `None`.
    pub memory_budget_bytes: usize,
}

/// Keep-sets (original prompt indices, ascending) of the text-only baseline and of every window variant.
pub fn variant_keep_sets(
    inputs: &ModelInputs,
    grid: &WindowGrid,
    mode: InfoMode,
) -> (Vec<usize>, Vec<Vec<usize>>) {
    let seq = inputs.seq_len();
    let visual = &inputs.visual.positions;
    let is_visual = {
        let mut v = vec![false; seq];
        for &p in visual {
            v[p] = true;
        }
        v
    };
    let text_only: Vec<usize> = (0..seq).filter(|&p| !is_visual[p]).collect();
    let windows = (0..grid.num_windows())
        .map(|w| {
            let mut in_window = vec![false; seq];
            for t in grid.window_tokens(w) {
                in_window[visual[t]] = true;
            }
            (0..seq)
                .filter(|&p| match mode {
                    InfoMode::KeepOnly => !is_visual[p] || in_window[p],
                    InfoMode::LeaveOut => !in_window[p],
                })
                .collect()
        })
        .collect();
    (text_only, windows)
}

/// Log-probabilities (f32) of the next token for last-position hidden states `[B, D]`.
fn next_token_log_probs(model: &VlModel, last_hidden: &Tensor) -> Tensor {
    model
        .lm_head(last_hidden)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float)
}

/// (p, log p, KL(full ‖ variant)) per row of `logp` `[B, V]`.
fn score(logp: &Tensor, full_logp: &Tensor, target: i64) -> Vec<(f64, f64, f64)> {
    let full_p = full_logp.exp();
    let kl = (&full_p * (full_logp - logp)).sum_dim_intlist(-1, false, Kind::Double);
    let lp = logp.select(-1, target).to_kind(Kind::Double);
    let lp: Vec<f64> = Vec::try_from(lp.to_device(tch::Device::Cpu)).expect("f64");
    let kl: Vec<f64> = Vec::try_from(kl.to_device(tch::Device::Cpu)).expect("f64");
    lp.into_iter()
        .zip(kl)
        .map(|(l, k)| (l.exp(), l, k))
        .collect()
}

/// The unpruned model's next-token log-probabilities `[1, V]` and its stored layer inputs.
pub struct FullRun {
    pub log_probs: Tensor,
    pub layer_inputs: Vec<Tensor>,
}

impl FullRun {
    /// The unpruned model's own first answer token (the `greedy` target).
    pub fn greedy_token(&self) -> i64 {
        self.log_probs.argmax(-1, false).int64_value(&[0])
    }
}

/// One unpruned prefill keeping every layer's input.
pub fn full_run(model: &VlModel, inputs: &ModelInputs) -> Result<FullRun> {
    let mut layer_inputs = Vec::with_capacity(model.num_layers());
    let out = model.prefill(
        inputs,
        &mut Intervention::none(),
        None,
        Some(&mut layer_inputs),
    )?;
    let last = out.hidden.select(1, out.hidden.size()[1] - 1);
    let log_probs = next_token_log_probs(model, &last);
    check_finite(&log_probs, "the unpruned model's next-token distribution")?;
    Ok(FullRun {
        log_probs,
        layer_inputs,
    })
}

/// Picks a batch size so that one batch's activations stay near `budget` bytes: per variant roughly
/// `seq × (hidden × 6 + intermediate × 3 + heads × seq)` elements live at once in a decoder layer.
fn auto_batch_size(model: &VlModel, seq: usize, budget: usize, elem_bytes: usize) -> usize {
    let (hidden, intermediate, heads) = model.text_dims();
    let per_token = hidden as usize * 6 + intermediate as usize * 3 + heads as usize * seq;
    let per_variant = (seq * per_token * elem_bytes).max(1);
    (budget / per_variant).clamp(1, 1024)
}

/// Runs every variant of one sample: the full model, then for each K the text-only baseline and all
/// window variants, batched by keep-set length. `target` is the token y whose probability is scored.
pub fn sweep_sample(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    cfg: &SweepConfig,
) -> Result<Vec<VariantResult>> {
    let _guard = tch::no_grad_guard();
    let num_layers = model.num_layers();
    if let Some(&k) = cfg.layers.iter().find(|&&k| k >= num_layers) {
        bail!("--layers: layer {k} does not exist (the decoder has {num_layers} layers, 0-based)");
    }
    let grid = model.window_grid(inputs, cfg.window_size)?;
    let (text_only, windows) = variant_keep_sets(inputs, &grid, cfg.mode);
    let device = model.device();
    let (p0, lp0, _) = score(&full.log_probs, &full.log_probs, target)[0];
    let mut results = vec![VariantResult {
        layer: None,
        variant: Variant::Full,
        p: p0,
        logp: lp0,
        kl: 0.0,
    }];
    // All variants of one K, grouped by keep-set length (edge windows may be smaller).
    let mut variants: Vec<(Variant, &Vec<usize>)> = vec![(Variant::TextOnly, &text_only)];
    variants.extend(
        windows
            .iter()
            .enumerate()
            .map(|(w, k)| (Variant::Window(w), k)),
    );
    let mut by_len: std::collections::BTreeMap<usize, Vec<(Variant, &Vec<usize>)>> =
        Default::default();
    for v in variants {
        by_len.entry(v.1.len()).or_default().push(v);
    }
    let elem_bytes = full.layer_inputs[0].kind().elt_size_in_bytes();
    for &k in &cfg.layers {
        let stored = &full.layer_inputs[k];
        for (&len, group) in &by_len {
            let batch = cfg
                .batch_size
                .unwrap_or_else(|| auto_batch_size(model, len, cfg.memory_budget_bytes, elem_bytes))
                .max(1);
            for chunk in group.chunks(batch) {
                let pos: Vec<i64> = chunk
                    .iter()
                    .flat_map(|(_, keep)| keep.iter().map(|&p| p as i64))
                    .collect();
                let pos = Tensor::from_slice(&pos)
                    .to_device(device)
                    .reshape([chunk.len() as i64, len as i64]);
                let hidden = stored
                    .squeeze_dim(0)
                    .index_select(0, &pos.reshape([-1]))
                    .reshape([chunk.len() as i64, len as i64, -1]);
                let out = model.forward_from_layer(k, &hidden, &pos, inputs)?;
                let last = out.select(1, len as i64 - 1);
                let logp = next_token_log_probs(model, &last);
                check_finite(
                    &logp,
                    &format!("the next-token distribution after a cut at layer {k}"),
                )?;
                for ((variant, _), (p, lp, kl)) in
                    chunk.iter().zip(score(&logp, &full.log_probs, target))
                {
                    results.push(VariantResult {
                        layer: Some(k),
                        variant: *variant,
                        p,
                        logp: lp,
                        kl,
                    });
                }
            }
        }
    }
    Ok(results)
}

/// The reference procedure for one variant: a full forward with the tokens outside `keep` dropped at
/// layer K, at batch 1, scored like the engine.
pub fn naive_variant(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    layer: usize,
    keep: &[usize],
) -> Result<(f64, f64, f64)> {
    let mut iv = Intervention::cut_at(layer, keep.iter().copied())?;
    let out = model.prefill(inputs, &mut iv, None, None)?;
    let last = out.hidden.select(1, out.hidden.size()[1] - 1);
    let _guard = tch::no_grad_guard();
    Ok(score(&next_token_log_probs(model, &last), &full.log_probs, target)[0])
}
