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

use crate::decoder::{KvCache, SharedPrefix};
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

/// log p(y) and KL(full ‖ variant) per row of `logp` `[B, V]`, as f64 tensors `[B]` on its device.
fn score_on_device(logp: &Tensor, full_logp: &Tensor, target: i64) -> (Tensor, Tensor) {
    let full_p = full_logp.exp();
    let kl = (&full_p * (full_logp - logp)).sum_dim_intlist(-1, false, Kind::Double);
    (logp.select(-1, target).to_kind(Kind::Double), kl)
}

/// (p, log p, KL(full ‖ variant)) per row of `logp` `[B, V]`.
fn score(logp: &Tensor, full_logp: &Tensor, target: i64) -> Vec<(f64, f64, f64)> {
    let (lp, kl) = score_on_device(logp, full_logp, target);
    let lp: Vec<f64> = Vec::try_from(lp.to_device(tch::Device::Cpu)).expect("f64");
    let kl: Vec<f64> = Vec::try_from(kl.to_device(tch::Device::Cpu)).expect("f64");
    lp.into_iter()
        .zip(kl)
        .map(|(l, k)| (l.exp(), l, k))
        .collect()
}

/// The unpruned model's next-token log-probabilities `[1, V]`, its stored layer inputs and every
/// layer's keys and values.
pub struct FullRun {
    pub log_probs: Tensor,
    pub layer_inputs: Vec<Tensor>,
    /// Per layer, the post-rotary keys and the values `[1, kv_heads, S, head_dim]` of the prompt.
    pub keys_values: Vec<(Tensor, Tensor)>,
}

impl FullRun {
    /// The unpruned model's own first answer token (the `greedy` target).
    pub fn greedy_token(&self) -> i64 {
        self.log_probs.argmax(-1, false).int64_value(&[0])
    }
}

/// One unpruned prefill keeping every layer's input, keys and values.
pub fn full_run(model: &VlModel, inputs: &ModelInputs) -> Result<FullRun> {
    let mut layer_inputs = Vec::with_capacity(model.num_layers());
    let mut cache = KvCache::new(model.num_layers());
    let out = model.prefill(
        inputs,
        &mut Intervention::none(),
        Some(&mut cache),
        Some(&mut layer_inputs),
    )?;
    let last = out.hidden.select(1, out.hidden.size()[1] - 1);
    let log_probs = next_token_log_probs(model, &last);
    check_finite(&log_probs, "the unpruned model's next-token distribution")?;
    let keys_values = cache
        .layers
        .into_iter()
        .map(|kv| kv.expect("the prefill fills every layer's cache"))
        .collect();
    Ok(FullRun {
        log_probs,
        layer_inputs,
        keys_values,
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

/// The engine's shortcuts, each exact up to f32 rounding (tests/info_engine.rs holds every one
/// against the naive procedure); [`Shortcuts::ALL`] takes all of them, [`Shortcuts::NONE`] is
/// the plain resumed run (every kept position through every layer from K, one K per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortcuts {
    /// Under causal attention every position before a variant's first changed position (the text
    /// before the image; in leave-out mode everything before the dropped window) has the unpruned
    /// run's hidden states in every layer, so only the positions from there on run, attending to the
    /// unpruned run's keys and values of the positions before.
    pub prefix_kv: bool,
    /// The last layer computes only the last position (its query, output projection and MLP): the
    /// next-token distribution reads nothing else.
    pub last_position_only: bool,
    /// The variants of every cut layer K run as one batch: it enters at layer min K and takes in the
    /// rows of each later K at that layer, so each layer runs once per batch instead of once per K.
    pub stack_layers: bool,
}

impl Shortcuts {
    pub const NONE: Self = Self {
        prefix_kv: false,
        last_position_only: false,
        stack_layers: false,
    };
    pub const ALL: Self = Self {
        prefix_kv: true,
        last_position_only: true,
        stack_layers: true,
    };
}

/// The shortcuts that measurably help on the CPU (BENCHMARKS.md, "Engine shortcuts"): stacking the K
/// made the bundled model's sweep slower there, so it is off by default.
impl Default for Shortcuts {
    fn default() -> Self {
        Self {
            prefix_kv: true,
            last_position_only: true,
            stack_layers: false,
        }
    }
}

/// Number of leading prompt positions a keep-set keeps unchanged (`keep[i] == i`).
fn unchanged_prefix(keep: &[usize]) -> usize {
    keep.iter()
        .enumerate()
        .take_while(|(i, &p)| *i == p)
        .count()
}

/// Runs every variant of one sample with the default shortcuts ([`sweep_sample_with`]).
pub fn sweep_sample(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    cfg: &SweepConfig,
) -> Result<Vec<VariantResult>> {
    sweep_sample_with(model, inputs, full, target, cfg, Shortcuts::default())
}

/// One batch's results, still on the device: which (layer index in the sweep, variant ordinal) each
/// row is, log p(y) and KL `[B]`, and whether every logit was finite.
struct BatchScores {
    rows: Vec<(usize, usize)>,
    logp: Tensor,
    kl: Tensor,
    finite: Tensor,
    first_layer: usize,
}

/// Runs every variant of one sample: the full model, then for each K the text-only baseline and all
/// window variants, batched by keep-set length. `target` is the token y whose probability is scored.
/// Scores stay on the device until the sample's last batch, so a GPU sweep synchronises with the
/// host once per sample, not per batch.
pub fn sweep_sample_with(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    cfg: &SweepConfig,
    shortcuts: Shortcuts,
) -> Result<Vec<VariantResult>> {
    let _guard = tch::no_grad_guard();
    let num_layers = model.num_layers();
    if let Some(&k) = cfg.layers.iter().find(|&&k| k >= num_layers) {
        bail!("--layers: layer {k} does not exist (the decoder has {num_layers} layers, 0-based)");
    }
    let grid = model.window_grid(inputs, cfg.window_size)?;
    let (text_only, windows) = variant_keep_sets(inputs, &grid, cfg.mode);
    let (p0, lp0, _) = score(&full.log_probs, &full.log_probs, target)[0];
    let mut results = vec![VariantResult {
        layer: None,
        variant: Variant::Full,
        p: p0,
        logp: lp0,
        kl: 0.0,
    }];
    // All variants of one K (ordinal = place in this list), grouped by keep-set length (edge windows
    // may be smaller).
    let mut variants: Vec<(Variant, &Vec<usize>)> = vec![(Variant::TextOnly, &text_only)];
    variants.extend(
        windows
            .iter()
            .enumerate()
            .map(|(w, k)| (Variant::Window(w), k)),
    );
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, v) in variants.iter().enumerate() {
        by_len.entry(v.1.len()).or_default().push(i);
    }
    // Cut layers ascending with their index in `cfg.layers` (rows are reported in that order).
    let mut layers: Vec<(usize, usize)> = cfg.layers.iter().copied().enumerate().collect();
    layers.sort_by_key(|&(_, k)| k);
    let elem_bytes = full.layer_inputs[0].kind().elt_size_in_bytes();
    let mut plans: Vec<BatchPlan> = Vec::new();
    for (&len, group) in &by_len {
        let batch = cfg
            .batch_size
            .unwrap_or_else(|| auto_batch_size(model, len, cfg.memory_budget_bytes, elem_bytes))
            .max(1);
        let mut plan = |chunk: &[usize], layers: Vec<(usize, usize)>| {
            // The shared prefix: the shortest unchanged prefix in the batch; the last position runs.
            let prefix = if shortcuts.prefix_kv {
                chunk
                    .iter()
                    .map(|&i| unchanged_prefix(variants[i].1))
                    .min()
                    .unwrap_or(0)
                    .min(len - 1)
            } else {
                0
            };
            plans.push(BatchPlan {
                chunk: chunk.to_vec(),
                layers,
                len,
                prefix,
                last_only: shortcuts.last_position_only,
            });
        };
        if shortcuts.stack_layers {
            // A batch holds `chunk × number of K` rows by the last layer.
            for c in group.chunks((batch / layers.len().max(1)).max(1)) {
                plan(c, layers.clone());
            }
        } else {
            for &k in &layers {
                for c in group.chunks(batch) {
                    plan(c, vec![k]);
                }
            }
        }
    }
    // Every batch's gather indices go to the device in one copy, before any batch runs: no host
    // round trip between batches.
    let indices: Vec<i64> = plans
        .iter()
        .flat_map(|b| {
            b.chunk
                .iter()
                .flat_map(|&i| variants[i].1[b.prefix..].iter().map(|&q| q as i64))
        })
        .collect();
    let indices = Tensor::from_slice(&indices).to_device(model.device());
    let mut offset = 0i64;
    let mut batches = Vec::with_capacity(plans.len());
    for plan in &plans {
        let (n, suffix) = (plan.chunk.len() as i64, (plan.len - plan.prefix) as i64);
        let pos = indices.narrow(0, offset, n * suffix).reshape([n, suffix]);
        offset += n * suffix;
        batches.push(run_batch(model, inputs, full, target, plan, &pos)?);
    }
    if batches.is_empty() {
        return Ok(results);
    }
    let finite = Tensor::stack(&batches.iter().map(|b| &b.finite).collect::<Vec<_>>(), 0)
        .to_kind(Kind::Int64)
        .to_device(tch::Device::Cpu);
    let finite: Vec<i64> = Vec::try_from(finite).expect("i64");
    if let Some(bad) = finite.iter().position(|&f| f == 0) {
        let k = batches[bad].first_layer;
        check_finite(
            &Tensor::from_slice(&[f64::NAN]),
            &format!("the next-token distribution after a cut at layer {k}"),
        )?;
    }
    let to_vec = |parts: Vec<&Tensor>| -> Vec<f64> {
        Vec::try_from(Tensor::cat(&parts, 0).to_device(tch::Device::Cpu)).expect("f64")
    };
    let logp = to_vec(batches.iter().map(|b| &b.logp).collect());
    let kl = to_vec(batches.iter().map(|b| &b.kl).collect());
    let mut rows: Vec<(usize, usize, f64, f64)> = batches
        .iter()
        .flat_map(|b| b.rows.iter().copied())
        .zip(logp.into_iter().zip(kl))
        .map(|((li, vi), (lp, kl))| (li, vi, lp, kl))
        .collect();
    // The order of the plain engine: K as given, then by keep-set length, then by variant.
    let place: Vec<usize> = {
        let mut place = vec![0; variants.len()];
        for (n, &i) in by_len.values().flatten().enumerate() {
            place[i] = n;
        }
        place
    };
    rows.sort_by_key(|&(li, vi, _, _)| (li, place[vi]));
    results.extend(rows.into_iter().map(|(li, vi, lp, kl)| VariantResult {
        layer: Some(cfg.layers[li]),
        variant: variants[vi].0,
        p: lp.exp(),
        logp: lp,
        kl,
    }));
    Ok(results)
}

/// One batch of the sweep: the variants `chunk` (ordinals into the sweep's variant list, all of
/// keep-set length `len`) for every cut layer of `layers` (`(index in the sweep, K)`, K ascending),
/// positions before `prefix` taken from the unpruned run.
struct BatchPlan {
    chunk: Vec<usize>,
    layers: Vec<(usize, usize)>,
    len: usize,
    prefix: usize,
    /// The last layer computes the last position only.
    last_only: bool,
}

/// Runs one [`BatchPlan`]; `pos` `[n, len − prefix]` holds the prompt positions each variant runs.
/// Rows of the first K enter at layer K; each later K's rows join at their layer, so a layer runs
/// once for every K at or below it.
fn run_batch(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    plan: &BatchPlan,
    pos: &Tensor,
) -> Result<BatchScores> {
    let decoder = model.decoder();
    let num_layers = model.num_layers();
    let (chunk, layers, p) = (&plan.chunk, &plan.layers, plan.prefix);
    let (n, suffix) = pos.size2()?;
    let flat = pos.reshape([-1]);
    let positions = decoder
        .rotary_emb
        .gather_positions(&inputs.position_ids, pos);
    let kind = full.layer_inputs[0].kind();
    let (cos, sin) = decoder.rotary_emb.cos_sin(&positions, kind);
    let first = layers[0].1;
    let mut h: Option<Tensor> = None;
    let mut entered = 0i64;
    let (mut cos_a, mut sin_a) = (cos.shallow_clone(), sin.shallow_clone());
    let mut rows = Vec::with_capacity(chunk.len() * layers.len());
    for j in first..num_layers {
        if let Some(&(li, _)) = layers.iter().find(|&&(_, k)| k == j) {
            let joining = full.layer_inputs[j]
                .squeeze_dim(0)
                .index_select(0, &flat)
                .reshape([n, suffix, -1]);
            h = Some(match h {
                None => joining,
                Some(h) => Tensor::cat(&[h, joining], 0),
            });
            entered += 1;
            if entered > 1 {
                cos_a = cos.repeat([entered, 1, 1]);
                sin_a = sin.repeat([entered, 1, 1]);
            }
            rows.extend(chunk.iter().map(|&vi| (li, vi)));
        }
        let prefix_kv = (p > 0).then(|| {
            let (k, v) = &full.keys_values[j];
            (k.narrow(2, 0, p as i64), v.narrow(2, 0, p as i64))
        });
        let prefix = prefix_kv
            .as_ref()
            .map(|(keys, values)| SharedPrefix { keys, values });
        let last = plan.last_only && j + 1 == num_layers;
        let x = h.take().expect("the first cut layer enters first");
        h = Some(decoder.layers[j].forward_after_prefix(&x, &cos_a, &sin_a, prefix.as_ref(), last));
    }
    let h = h.expect("at least one layer runs");
    let last_hidden = decoder.norm.forward(&h.select(1, h.size()[1] - 1));
    let logp = next_token_log_probs(model, &last_hidden);
    let finite = logp.isfinite().all();
    let (logp, kl) = score_on_device(&logp, &full.log_probs, target);
    Ok(BatchScores {
        rows,
        logp,
        kl,
        finite,
        first_layer: first,
    })
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
