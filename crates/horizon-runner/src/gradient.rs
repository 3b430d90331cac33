//! `horizon info --estimate gradient`: one-pass estimates of every (layer, window) information
//! from forward and backward passes (attribution patching, Nanda 2023; Syed et al. 2023,
//! arXiv 2310.10348), instead of one run per variant.
//!
//! Each decoder layer weighs its keys by a soft mask `m` ([`crate::decoder::Decoder::forward_key_weighted`]):
//! `m = 1` is the plain model, and setting `m_{l,j} = 0` for every layer `l ≥ K` and every visual
//! token j outside the keep-set is exactly the cut at K. A variant's log p(y) is then estimated from
//! one point:
//!
//! - **leave-out**, at the unpruned run (`m = 1`): one forward over all layers and one backward per
//!   scored token give, for every layer and key group at once, the change of log p(y) when the
//!   group's keys leave that layer, with AtP*'s QK fix ([`qk_fixed_removal`]: the layer's attention
//!   renormalised exactly without the group, log p(y) following linearly); dropping window w from K
//!   on sums the layers `K..`. The summed change moves the target's log-odds, not its log p(y)
//!   (`TargetLogOdds`): at a confident unpruned run log p(y) hardly moves with the logits.
//!   KL(unpruned ‖ variant) has zero gradient there (its minimum), so it is estimated to second
//!   order with the Fisher information restricted to the unpruned run's [`KL_TOKENS`] most likely
//!   tokens: `½ Σ_y p(y) Δlog p(y)²` (one backward pass per token); or ([`KlEstimate::Answer`])
//!   as the KL between the answer-versus-rest splits `(p(y), 1 − p(y))` of the unpruned run and
//!   of the estimate, a lower bound of the KL that needs no pass beyond p's.
//! - **keep-only**, at each K's text-only run (`m_{l,j} = 0` for `l ≥ K`, j visual): layers `K..`
//!   resumed from the stored input of layer K, one backward for log p(y) and one for
//!   `Σ_y p_unpruned(y) log q(y)`, whose change is minus the change of the KL, with the QK fix
//!   ([`qk_fixed_addition`]): each layer's attention moves exactly to what it would be with the
//!   window's keys present, and log p(y) follows linearly. A key of weight 0 whose score is far
//!   above those present has an unbounded derivative in its own weight (up to e^50 here), so an
//!   estimate linear in the key weights can run to log p ≈ −1e23; one linear in the attention
//!   cannot. The visual queries attend to the text and their own window's keys whatever the key
//!   weights ([`own_window_queries`]): the visual tokens then hold, at the linearisation point
//!   already, the states they have in their own window's variant, and only the text's attention
//!   moves between the text-only run and the cut keeping a window. A visual token reaches the
//!   output only through its keys, weighed 0, so the tokens up to the image's end run forward
//!   without autograd and only the text after the image is differentiated
//!   ([`keep_only_log_probs`]). Several K run as one batch, each layer once per batch and one
//!   backward pass per scalar for all of them ([`stacked_batches`]).
//!
//! The linearisation point's own row (the unpruned `full` row; keep-only's `text_only` rows) is its
//! exact value; leave-out's `text_only` (every visual token dropped) is linearised like a window.
//! Estimates are kept in range: log p ≤ 0, p = exp(log p), KL ≥ 0.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use horizon_data::info_rows::KlEstimate;

use crate::decoder::{AttentionProbe, FixedQueries};
use crate::info::{FullRun, InfoMode, SweepConfig, Variant, VariantResult};
use crate::model::{ModelInputs, VlModel};
use crate::nn::check_finite;

/// Tokens of the unpruned distribution (most likely first) over which leave-out's KL estimate sums
/// the Fisher information.
pub const KL_TOKENS: usize = 4;

/// The soft-masked forward from layer `from`'s input `hidden` `[1, S, D]` with key weights `m`
/// `[L − from, S]` for every query but the `fixed` ones: next-token log-probabilities `[V]` of the
/// last position, differentiable in `m` (f64 in an f64 model, f32 otherwise).
pub fn soft_log_probs(
    model: &VlModel,
    inputs: &ModelInputs,
    from: usize,
    hidden: &Tensor,
    m: &Tensor,
    fixed: Option<&FixedQueries>,
) -> Tensor {
    let out = model
        .decoder()
        .forward_key_weighted(from, hidden, &inputs.position_ids, m, fixed);
    last_log_probs(model, &out)
}

/// Keep-only's visual queries, each fixed to the keys of the text and of its own window
/// (`windows`: the prompt positions of each window's visual tokens; a visual token in no window,
/// such as LLaVA-NeXT's `image_newline`, sees the text only). No query sees a visual key in a
/// keep-only variant but the kept window's own tokens, so with key weights 1 on window w's keys (0
/// on the other visual keys) the forward is exactly the cut keeping w, and with 0 on every visual
/// key the text-only run. Where no text token stands inside the image (in every family here) the
/// visual tokens' states are their own window's variant's at every key weight, and between the
/// two points only the text's attention moves.
pub fn own_window_queries(
    inputs: &ModelInputs,
    windows: &[Vec<usize>],
    kind: Kind,
    device: Device,
) -> FixedQueries {
    let s = inputs.seq_len();
    let is_visual = inputs.visual.mask(s);
    let mut window_of = vec![usize::MAX; s];
    for (w, positions) in windows.iter().enumerate() {
        for &p in positions {
            window_of[p] = w;
        }
    }
    let mut weights = vec![0.0f64; s * s];
    for (i, row) in weights.chunks_mut(s).enumerate() {
        for (j, weight) in row.iter_mut().enumerate() {
            let own_window = window_of[i] != usize::MAX && window_of[i] == window_of[j];
            if !is_visual[j] || own_window {
                *weight = 1.0;
            }
        }
    }
    FixedQueries {
        rows: Tensor::from_slice(&is_visual).to_device(device),
        weights: Tensor::from_slice(&weights)
            .view([s as i64, s as i64])
            .to_kind(kind)
            .to_device(device),
    }
}

/// Next-token log-probabilities `[V]` of the last of the final-norm hidden states `out` `[1, S, D]`,
/// in f64 for an f64 model and f32 otherwise.
pub fn last_log_probs(model: &VlModel, out: &Tensor) -> Tensor {
    last_log_probs_per_sequence(model, out).squeeze_dim(0)
}

/// [`last_log_probs`] of each sequence of `out` `[B, S, D]`: `[B, V]`.
pub fn last_log_probs_per_sequence(model: &VlModel, out: &Tensor) -> Tensor {
    let s = out.size()[1];
    let logits = model.lm_head_differentiable(&out.select(1, s - 1));
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    logits.to_kind(kind).log_softmax(-1, kind)
}

/// [`soft_log_probs`] with the visual queries fixed to their own windows ([`own_window_queries`])
/// and the positions before the first text token after the first visual token run without
/// autograd ([`crate::decoder::Decoder::forward_key_weighted_after_context`]): the same value for
/// any `m`, and at keep-only's linearisation point (`m` 0 on every visual key of layers `from..`)
/// the same gradient on every visual key, while the visual tokens' forward is no longer
/// differentiated. Gradients on text keys are not the whole forward's. Also returns each layer's
/// attention probe of the differentiated positions' queries (none without visual tokens).
pub fn keep_only_log_probs(
    model: &VlModel,
    inputs: &ModelInputs,
    from: usize,
    hidden: &Tensor,
    m: &Tensor,
    visual_queries: &FixedQueries,
) -> (Tensor, Vec<AttentionProbe>) {
    let context = text_after_image(inputs);
    if context == 0 {
        let log_probs = soft_log_probs(model, inputs, from, hidden, m, Some(visual_queries));
        return (log_probs, Vec::new());
    }
    let (out, probes) = model.decoder().forward_key_weighted_after_context(
        from,
        hidden,
        &inputs.position_ids,
        m,
        Some(visual_queries),
        context,
    );
    (last_log_probs(model, &out), probes)
}

/// Per group of keys weighed 0 (the columns of `groups` `[S, W]`, 1 where a position belongs to the
/// group), the change of `scalar` when the group's keys join the attention of every probed layer,
/// with AtP*'s QK fix (Kramár et al. 2024, arXiv 2403.00745): each (layer, head, query)'s attention
/// moves exactly to what it would be with the group present, `ΔA = (r ⊙ 1_w − R·A) / (1 + R)` (`r`
/// the probe's ratios, `R` their sum over the group), and `scalar` follows it linearly,
/// `Σ ∂scalar/∂A · ΔA`. Without the `1 / (1 + R)` this is the first-order change in the key
/// weights, which overshoots without bound for keys whose scores exceed those present.
pub fn qk_fixed_addition(
    scalar: &Tensor,
    probes: &[AttentionProbe],
    groups: &Tensor,
) -> Result<Vec<f64>> {
    Ok(qk_fixed_addition_per_sequence(scalar, probes, groups, 1)?.swap_remove(0))
}

/// [`qk_fixed_addition`] over probes of a batch of `rows` independent sequences, where `scalar`
/// is the sum of one scalar per sequence and a layer's probe may hold only the first rows (the
/// sequences that run through that layer, as in
/// [`crate::decoder::Decoder::forward_key_weighted_after_context_stacked`]): each sequence's own
/// change summed over the layers it runs through, indexed `[sequence][group]`.
pub fn qk_fixed_addition_per_sequence(
    scalar: &Tensor,
    probes: &[AttentionProbe],
    groups: &Tensor,
    rows: i64,
) -> Result<Vec<Vec<f64>>> {
    let probs: Vec<&Tensor> = probes.iter().map(|p| &p.probs).collect();
    let grads = Tensor::run_backward(&[scalar], &probs, true, false);
    let width = groups.size()[1];
    let kind = accumulation_kind(groups.kind());
    let groups = groups.to_kind(kind);
    let mut total = Tensor::zeros([rows, width], (kind, groups.device()));
    for (g, probe) in grads.iter().zip(probes) {
        check_finite(g, "the gradient of the attention probabilities")?;
        let (g, ratios) = (g.to_kind(kind), probe.ratios.to_kind(kind));
        let along_group = (&ratios * &g).matmul(&groups);
        let share = ratios.matmul(&groups);
        let along_present =
            (probe.probs.detach().to_kind(kind) * &g).sum_dim_intlist(-1, true, kind);
        let change = (along_group - &share * along_present) / (share + 1.0);
        let layer = change.sum_dim_intlist([1i64, 2].as_slice(), false, kind);
        let present = layer.size()[0];
        total = total.index_add(
            0,
            &Tensor::arange(present, (Kind::Int64, groups.device())),
            &layer,
        );
    }
    if width == 0 {
        return Ok(vec![Vec::new(); rows as usize]);
    }
    let total = total.to_kind(Kind::Double).to_device(Device::Cpu);
    let flat = Vec::<f64>::try_from(&total.reshape([-1]))?;
    Ok(flat.chunks(width as usize).map(<[f64]>::to_vec).collect())
}

/// The kind the QK fixes compute in: f64 in an f64 model, f32 otherwise. A bf16 model's
/// attention gradients and ratios are upcast before they are multiplied and summed over keys,
/// heads, queries and layers, where bf16's 8-bit mantissa would lose the small terms.
fn accumulation_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// `[S, G]`: column g is 1 on the positions of the g-th group (the `groups` of
/// [`qk_fixed_addition`] and [`qk_fixed_removal`]).
pub fn group_columns<'a>(
    s: usize,
    groups: impl Iterator<Item = &'a [usize]>,
    kind: Kind,
    device: Device,
) -> Tensor {
    let groups: Vec<&[usize]> = groups.collect();
    let mut membership = vec![0.0f64; s * groups.len()];
    for (g, positions) in groups.iter().enumerate() {
        for &j in positions.iter() {
            membership[j * groups.len() + g] = 1.0;
        }
    }
    Tensor::from_slice(&membership)
        .view([s as i64, groups.len() as i64])
        .to_kind(kind)
        .to_device(device)
}

/// Per layer of `probs` (attention probabilities in `scalar`'s graph, `[1, heads, queries, keys]`)
/// and key group (the columns of `groups` `[S, G]`), the change of `scalar` when the
/// group's keys leave that layer's attention, with AtP*'s QK fix: each (head, query)'s attention
/// moves exactly to its renormalisation without the group (the group's keys lose their
/// attention `A_w`, the others gain `A_{¬w}·a / (1 − a)`, `a` the group's share), and `scalar`
/// follows linearly, `Σ ∂scalar/∂A · ΔA`.
pub fn qk_fixed_removal(
    scalar: &Tensor,
    probs: &[Tensor],
    groups: &Tensor,
) -> Result<Vec<Vec<f64>>> {
    let grads = Tensor::run_backward(&[scalar], probs, true, false);
    Ok(qk_fixed_removal_batch(&grads, probs, &groups.unsqueeze(0))?.remove(0))
}

/// [`qk_fixed_removal`] of each sequence of a right-padded batch
/// ([`crate::decoder::Decoder::forward_probed_padded`]) in one pass per layer: `grads` and `probs`
/// `[B, heads, queries, S]` per layer, `groups` `[B, S, G]` (sequence b's group columns, zero on
/// its padding and in the columns past its own groups). A real query gives padded keys no
/// attention and a padded query's gradient is 0, so the padding adds exact zeros. Returns per
/// sequence, layer and group column the change.
fn qk_fixed_removal_batch(
    grads: &[Tensor],
    probs: &[Tensor],
    groups: &Tensor,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let kind = accumulation_kind(groups.kind());
    let groups = groups.to_kind(kind).unsqueeze(1);
    // The keys outside each group summed directly, not as 1 − share: a query that gives a group
    // nearly all its attention keeps its few other keys' mass without cancellation.
    let others = -&groups + 1.0;
    let layers: Vec<Tensor> = grads
        .iter()
        .zip(probs)
        .map(|(g, probs)| {
            let a = probs.detach().to_kind(kind);
            let along = &a * g.to_kind(kind);
            let share = a.matmul(&groups);
            let rest = a.matmul(&others).clamp_min(f64::from(f32::MIN_POSITIVE));
            let change = &share * along.matmul(&others) / rest - along.matmul(&groups);
            change.sum_dim_intlist([1i64, 2].as_slice(), false, kind)
        })
        .collect();
    // [B, L, G], read back once.
    let all = Tensor::stack(&layers, 1)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu);
    // A non-finite gradient reaches every sum it enters (a product with it is not finite, or NaN
    // where the attention is 0).
    check_finite(&all, "the gradient of the attention probabilities")?;
    let (b, l, g) = all.size3()?;
    let values = Vec::<f64>::try_from(&all.reshape([-1]))?;
    let (l, g) = (l as usize, g as usize);
    Ok((0..b as usize)
        .map(|s| {
            (0..l)
                .map(|k| values[(s * l + k) * g..(s * l + k + 1) * g].to_vec())
                .collect()
        })
        .collect())
}

/// The unpruned run's log-odds of the target, `log p(y) − log(1 − p(y))`, in which leave-out's
/// estimate is linear. The unpruned model is usually confident, and at p(y) ≈ 1 log p(y) is flat in
/// the logits (its derivative in the target's margin is 1 − p(y)), so an estimate linear in log p(y)
/// says that dropping a window changes nothing even where the exact cut flips the answer; the
/// log-odds moves with the margin at any p(y). To first order both give the same change of p(y)
/// (`Δlog-odds = Δlog p / (1 − p)`); they differ in how a large change extrapolates.
struct TargetLogOdds {
    log_odds: f64,
    /// `1 / (1 − p(y))`: `d log-odds / d log p(y)` at the unpruned run.
    per_log_p: f64,
}

/// Bound on the estimated log-odds: only a model with 1 − p(y) below ~1e-308 at the unpruned run
/// reaches it, where `1 / (1 − p(y))` overflows; the rows stay finite.
const LOG_ODDS_LIMIT: f64 = 1e300;

impl TargetLogOdds {
    /// From the unpruned next-token log-probabilities `[V]` (f64): `log(1 − p(y))` is the
    /// log-sum-exp of the other tokens, exact where `1 − p(y)` would round to 0.
    fn at(log_probs: &Tensor, target: i64) -> Self {
        let others = log_probs.copy();
        let _ = others.get(target).fill_(f64::NEG_INFINITY);
        let log_rest = scalar(&others.logsumexp([0i64].as_slice(), false));
        let log_p = scalar(&log_probs.get(target));
        Self {
            log_odds: log_p - log_rest,
            per_log_p: (-log_rest).exp(),
        }
    }

    /// log p(y) when log p(y) changes by `change` to first order, extrapolated along the log-odds:
    /// `log σ(log-odds + change / (1 − p(y)))`.
    fn log_p_after(&self, change: f64) -> f64 {
        log_sigmoid(self.log_odds_after(change))
    }

    /// `log-odds + change / (1 − p(y))`, bounded.
    fn log_odds_after(&self, change: f64) -> f64 {
        let moved = if change == 0.0 {
            0.0
        } else {
            change * self.per_log_p
        };
        (self.log_odds + moved).clamp(-LOG_ODDS_LIMIT, LOG_ODDS_LIMIT)
    }

    /// KL(unpruned ‖ variant) of the answer-versus-rest split after the same move:
    /// `p ln(p / p') + (1 − p) ln((1 − p) / (1 − p'))`, each term from log-sigmoids of the
    /// log-odds (`1 − p = σ(−log-odds)`), so neither side rounds to 0.
    fn answer_kl_after(&self, change: f64) -> f64 {
        let (x0, x) = (self.log_odds, self.log_odds_after(change));
        let (log_p0, log_rest0) = (log_sigmoid(x0), log_sigmoid(-x0));
        log_p0.exp() * (log_p0 - log_sigmoid(x)) + log_rest0.exp() * (log_rest0 - log_sigmoid(-x))
    }
}

/// log σ(x) = −softplus(−x), without overflow for |x| large.
fn log_sigmoid(x: f64) -> f64 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

fn row(layer: usize, variant: Variant, logp: f64, kl: f64) -> VariantResult {
    let logp = logp.min(0.0);
    VariantResult {
        layer: Some(layer),
        variant,
        p: logp.exp(),
        logp,
        kl: kl.max(0.0),
    }
}

/// Leave-out's linearisation point: the unpruned run, each layer's attention an explicit softmax
/// whose probabilities are part of the autograd graph ([`crate::decoder::Decoder::forward_probed`],
/// the soft-masked forward at key weight 1 on every key). It is the unpruned model (up to rounding:
/// the attention is an explicit softmax, not the fused kernel of the plain prefill), so a leave-out
/// estimate needs no other unpruned forward: its `full` row, its greedy target and the distribution
/// its KL starts from are this run's. It holds one sample or a batch of several, run as one
/// right-padded batch ([`crate::decoder::Decoder::forward_probed_padded`]).
pub struct LeaveOutPoint {
    /// Each sample's next-token log-probabilities `[B, V]` inside autograd (f64 in an f64 model,
    /// f32 otherwise).
    log_probs: Tensor,
    /// Each layer's attention probabilities `[B, heads, S, S]` (the last layer's
    /// `[B, heads, 1, S]`), tensors of the graph; a sample's are its row, cut to its length.
    probs: Vec<Tensor>,
    /// Each sample's prompt length.
    lengths: Vec<i64>,
}

impl LeaveOutPoint {
    /// The forward from the prompt's input embeddings `[1, S, D]` ([`VlModel::input_embeds`],
    /// the input of layer 0).
    pub fn from_embeds(model: &VlModel, inputs: &ModelInputs, embeds: &Tensor) -> Result<Self> {
        Self::from_embeds_batch(model, &[(inputs, embeds)])
    }

    /// The forward of several samples at once, each from its prompt's input embeddings `[1, S_b,
    /// D]`: the same point as each sample's own up to float rounding (the rows never mix), for
    /// fewer and larger operations.
    pub fn from_embeds_batch(model: &VlModel, samples: &[(&ModelInputs, &Tensor)]) -> Result<Self> {
        if samples.is_empty() {
            bail!("LeaveOutPoint::from_embeds_batch: no sample");
        }
        let lengths: Vec<i64> = samples.iter().map(|(_, e)| e.size()[1]).collect();
        let (embeds, position_ids) = if samples.len() == 1 {
            (
                samples[0].1.detach(),
                samples[0].0.position_ids.shallow_clone(),
            )
        } else {
            let _guard = tch::no_grad_guard();
            let s = *lengths.iter().max().expect("a sample");
            // Zeros after the sequence along `dim` up to `s` positions.
            let padded = |t: &Tensor, dim: usize| {
                let mut shape = t.size();
                shape[dim] = s - shape[dim];
                let padding = Tensor::zeros(shape.as_slice(), (t.kind(), t.device()));
                Tensor::cat(&[t.shallow_clone(), padding], dim as i64)
            };
            let embeds: Vec<Tensor> = samples
                .iter()
                .map(|(_, e)| padded(&e.detach(), 1))
                .collect();
            let positions: Vec<Tensor> = samples
                .iter()
                .map(|(i, _)| padded(&i.position_ids, i.position_ids.dim() - 1))
                .collect();
            // Position ids `[1, S]` stack on dimension 0, M-RoPE's `[3, 1, S]` on dimension 1.
            let batch_dim = positions[0].dim() as i64 - 2;
            (Tensor::cat(&embeds, 0), Tensor::cat(&positions, batch_dim))
        };
        // Requires grad so that the attention probabilities are part of a graph; no gradient
        // reaches it (the backward passes stop at the probabilities).
        let embeds = embeds.set_requires_grad(true);
        let (out, probs) = model
            .decoder()
            .forward_probed_padded(&embeds, &position_ids, &lengths);
        let log_probs = last_log_probs_per_sequence(model, &out);
        check_finite(&log_probs, "the unpruned model's next-token distribution")?;
        Ok(Self {
            log_probs,
            probs,
            lengths,
        })
    }

    /// Samples in the point.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The unpruned model's most likely next token (the `greedy` target) of the first sample.
    pub fn greedy_token(&self) -> i64 {
        self.greedy_tokens()[0]
    }

    /// Each sample's most likely next token.
    pub fn greedy_tokens(&self) -> Vec<i64> {
        Vec::<i64>::try_from(&self.log_probs.argmax(1, false)).expect("int64 tokens")
    }
}

/// Every row [`crate::info::sweep_sample`] writes for one sample, estimated in one pass: the
/// `full` row, then for each K the text-only baseline and every window, in window order.
/// Leave-out starts from `full`'s layer-0 input ([`estimate_leave_out`]); `kl` is leave-out's.
pub fn estimate_sample(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    cfg: &SweepConfig,
    kl: KlEstimate,
) -> Result<Vec<VariantResult>> {
    match cfg.mode {
        InfoMode::LeaveOut => {
            let point = LeaveOutPoint::from_embeds(model, inputs, &full.layer_inputs[0])?;
            estimate_leave_out(model, inputs, &point, target, cfg, kl)
        }
        InfoMode::KeepOnly => estimate_keep_only(model, inputs, full, target, cfg),
    }
}

/// The prompt positions of each window's visual tokens, after checking the cut layers.
fn window_positions(
    model: &VlModel,
    inputs: &ModelInputs,
    cfg: &SweepConfig,
) -> Result<Vec<Vec<usize>>> {
    let num_layers = model.num_layers();
    if let Some(&k) = cfg.layers.iter().find(|&&k| k >= num_layers) {
        bail!("--layers: layer {k} does not exist (the decoder has {num_layers} layers, 0-based)");
    }
    let grid = model.window_grid(inputs, cfg.window_size)?;
    let visual = &inputs.visual.positions;
    Ok((0..grid.num_windows())
        .map(|w| grid.window_tokens(w).iter().map(|&t| visual[t]).collect())
        .collect())
}

/// The unpruned row, exact, from the unpruned log-probabilities `[V]` (f64).
fn full_row(unpruned: &Tensor, target: i64) -> VariantResult {
    let logp = scalar(&unpruned.get(target));
    VariantResult {
        layer: None,
        variant: Variant::Full,
        p: logp.exp(),
        logp,
        kl: 0.0,
    }
}

/// Leave-out's rows ([`estimate_sample`]) at the linearisation point `point` of one sample.
pub fn estimate_leave_out(
    model: &VlModel,
    inputs: &ModelInputs,
    point: &LeaveOutPoint,
    target: i64,
    cfg: &SweepConfig,
    kl: KlEstimate,
) -> Result<Vec<VariantResult>> {
    let mut rows = estimate_leave_out_batch(model, &[(inputs, target)], point, cfg, kl)?;
    Ok(rows.remove(0))
}

/// Leave-out's rows of each sample of a batch `point` ([`LeaveOutPoint::from_embeds_batch`]),
/// `samples` its inputs and targets in the point's order: each sample's rows are those of its own
/// point up to float rounding, from one backward pass per scored token for the whole batch (a
/// sample's gradients are its own: the rows never mix).
pub fn estimate_leave_out_batch(
    model: &VlModel,
    samples: &[(&ModelInputs, i64)],
    point: &LeaveOutPoint,
    cfg: &SweepConfig,
    kl: KlEstimate,
) -> Result<Vec<Vec<VariantResult>>> {
    if cfg.mode != InfoMode::LeaveOut {
        bail!("estimate_leave_out: a {} sweep", cfg.mode);
    }
    if samples.len() != point.len() {
        bail!(
            "estimate_leave_out: {} samples for a point of {}",
            samples.len(),
            point.len()
        );
    }
    let logp = &point.log_probs;
    let kind = logp.kind();
    let unpruned = logp.detach().to_kind(Kind::Double);
    let unpruned_p = unpruned.exp();
    let mut windows = Vec::with_capacity(samples.len());
    let mut groups = Vec::with_capacity(samples.len());
    for (inputs, _) in samples {
        let w = window_positions(model, inputs, cfg)?;
        let visual = &inputs.visual.positions;
        // Column 0 every visual token (the text-only row), then each window.
        groups.push(group_columns(
            inputs.seq_len(),
            std::iter::once(visual.as_slice()).chain(w.iter().map(|w| w.as_slice())),
            kind,
            model.device(),
        ));
        windows.push(w);
    }
    let probs = &point.probs;
    // Every sample's group columns `[B, S, G]`, zero past its length and its own groups.
    let batch_groups = {
        let s = *point.lengths.iter().max().expect("a sample");
        let g = groups.iter().map(|t| t.size()[1]).max().unwrap_or(0);
        let padded: Vec<Tensor> = groups
            .iter()
            .map(|t| {
                let (rows, cols) = (t.size()[0], t.size()[1]);
                t.pad([0, g - cols, 0, s - rows], "constant", Some(0.0))
            })
            .collect();
        Tensor::stack(&padded, 0)
    };
    // Per sample, layer and group, the change of the scored token's log-probability when the
    // group's keys leave that layer: one backward pass of the batch's sum (`tokens[b]` sample b's
    // token, none for a sample that scores nothing in this pass).
    let changes = |tokens: &[Option<i64>]| -> Result<Vec<Option<Vec<Vec<f64>>>>> {
        let terms: Vec<Tensor> = tokens
            .iter()
            .enumerate()
            .filter_map(|(b, y)| y.map(|y| logp.get(b as i64).get(y)))
            .collect();
        let grads = Tensor::run_backward(&[Tensor::stack(&terms, 0).sum(kind)], probs, true, false);
        let all = qk_fixed_removal_batch(&grads, probs, &batch_groups)?;
        Ok(all
            .into_iter()
            .zip(tokens)
            .zip(&groups)
            .map(|((mut layers, y), groups)| {
                y.map(|_| {
                    // The sample's own group columns.
                    let own = groups.size()[1] as usize;
                    for layer in &mut layers {
                        layer.truncate(own);
                    }
                    layers
                })
            })
            .collect())
    };
    let targets: Vec<Option<i64>> = samples.iter().map(|(_, y)| Some(*y)).collect();
    let d_target: Vec<Vec<Vec<f64>>> = changes(&targets)?.into_iter().flatten().collect();
    // The Fisher sum's tokens: each sample's KL_TOKENS most likely, the target's change reused;
    // pass j scores each sample's j-th token that is not its target.
    let mut fisher: Vec<Vec<(f64, Vec<Vec<f64>>)>> = vec![Vec::new(); samples.len()];
    if kl == KlEstimate::Fisher {
        let top: Vec<Vec<i64>> = (0..samples.len())
            .map(|b| {
                let u = unpruned.get(b as i64);
                Vec::<i64>::try_from(&u.topk(KL_TOKENS as i64, 0, true, true).1)
            })
            .collect::<std::result::Result<_, _>>()?;
        let others: Vec<Vec<i64>> = top
            .iter()
            .zip(samples)
            .map(|(t, (_, y))| t.iter().copied().filter(|v| v != y).collect())
            .collect();
        let passes = others.iter().map(Vec::len).max().unwrap_or(0);
        let mut other_changes: Vec<Vec<Vec<Vec<f64>>>> = vec![Vec::new(); samples.len()];
        for j in 0..passes {
            let tokens: Vec<Option<i64>> = others.iter().map(|o| o.get(j).copied()).collect();
            for (b, d) in changes(&tokens)?.into_iter().enumerate() {
                other_changes[b].extend(d);
            }
        }
        for (b, top) in top.iter().enumerate() {
            let mut rest = other_changes[b].drain(..);
            for &y in top {
                let p = scalar(&unpruned_p.get(b as i64).get(y));
                let d = if y == samples[b].1 {
                    d_target[b].clone()
                } else {
                    rest.next().expect("one change per other token")
                };
                fisher[b].push((p, d));
            }
        }
    }
    // From layer K on: the sum over layers K.. of each layer's change.
    let from_layer =
        |d: &[Vec<f64>], k: usize, g: usize| -> f64 { d[k..].iter().map(|layer| layer[g]).sum() };
    let mut all = Vec::with_capacity(samples.len());
    for (b, (_, target)) in samples.iter().enumerate() {
        let unpruned = unpruned.get(b as i64);
        let mut results = vec![full_row(&unpruned, *target)];
        let odds = TargetLogOdds::at(&unpruned, *target);
        let (d_target, fisher) = (&d_target[b], &fisher[b]);
        for &k in &cfg.layers {
            for g in 0..=windows[b].len() {
                let variant = if g == 0 {
                    Variant::TextOnly
                } else {
                    Variant::Window(g - 1)
                };
                let change = from_layer(d_target, k, g);
                let kl = match kl {
                    KlEstimate::Fisher => {
                        0.5 * fisher
                            .iter()
                            .map(|(p, d)| p * from_layer(d, k, g).powi(2))
                            .sum::<f64>()
                    }
                    KlEstimate::Answer => odds.answer_kl_after(change),
                };
                results.push(row(k, variant, odds.log_p_after(change), kl));
            }
        }
        all.push(results);
    }
    Ok(all)
}

/// What keep-only's linearisation at every K shares: the windows' prompt positions, the unpruned
/// distribution (f64), the key weights of the text-only runs (1 on text keys, 0 on visual ones), the
/// windows as key groups and the visual queries fixed to their own windows.
struct KeepOnlyPoint {
    windows: Vec<Vec<usize>>,
    full_logp: Tensor,
    full_p: Tensor,
    text_keys: Tensor,
    groups: Tensor,
    visual_queries: FixedQueries,
}

impl KeepOnlyPoint {
    fn new(
        model: &VlModel,
        inputs: &ModelInputs,
        full: &FullRun,
        cfg: &SweepConfig,
    ) -> Result<Self> {
        let windows = window_positions(model, inputs, cfg)?;
        let s = inputs.seq_len();
        let (device, kind) = (model.device(), full.layer_inputs[0].kind());
        let full_logp = full.log_probs.squeeze_dim(0).to_kind(Kind::Double);
        let text_keys: Vec<f64> = inputs
            .visual
            .mask(s)
            .iter()
            .map(|&v| if v { 0.0 } else { 1.0 })
            .collect();
        Ok(Self {
            full_p: full_logp.exp(),
            full_logp,
            text_keys: Tensor::from_slice(&text_keys)
                .to_kind(kind)
                .to_device(device),
            groups: group_columns(s, windows.iter().map(|w| w.as_slice()), kind, device),
            visual_queries: own_window_queries(inputs, &windows, kind, device),
            windows,
        })
    }

    /// Key weights `[L − from, S]` of the text-only run from layer `from` on, requiring grad so
    /// that the attention probabilities are part of a graph.
    fn key_weights(&self, from: usize, num_layers: usize) -> Tensor {
        self.text_keys
            .unsqueeze(0)
            .repeat([(num_layers - from) as i64, 1])
            .set_requires_grad(true)
    }

    /// The rows of cut layer `k`: the text-only run, its linearisation point, exact (log p `lp`,
    /// KL `kl`), then each window moved by its QK-fixed changes of log p(y) (`d_target`) and of
    /// the cross-entropy with the unpruned distribution (`d_cross`, minus the KL's change).
    fn rows(
        &self,
        k: usize,
        lp: f64,
        kl: f64,
        d_target: &[f64],
        d_cross: &[f64],
    ) -> Vec<VariantResult> {
        let kl = kl.max(0.0);
        std::iter::once(row(k, Variant::TextOnly, lp, kl))
            .chain(
                (0..self.windows.len())
                    .map(|w| row(k, Variant::Window(w), lp + d_target[w], kl - d_cross[w])),
            )
            .collect()
    }
}

/// Keep-only's rows ([`estimate_sample`]), each K linearised at its text-only run, several K in
/// one batch ([`crate::decoder::Decoder::forward_key_weighted_after_context_stacked`]): each layer
/// runs once per batch instead of once per K, and one backward pass per batch gives every K's
/// gradients. The batches hold as many K as `cfg.memory_budget_bytes` allows (at least one,
/// [`stacked_batches`]). The same rows as [`estimate_keep_only_per_cut`], up to rounding.
fn estimate_keep_only(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    cfg: &SweepConfig,
) -> Result<Vec<VariantResult>> {
    let context = text_after_image(inputs);
    if context == 0 || cfg.layers.is_empty() {
        return estimate_keep_only_per_cut(model, inputs, full, target, cfg);
    }
    let point = KeepOnlyPoint::new(model, inputs, full, cfg)?;
    let (s, num_layers) = (inputs.seq_len(), model.num_layers());
    let mut layers = cfg.layers.clone();
    layers.sort_unstable();
    let mut by_layer = std::collections::BTreeMap::new();
    for batch in stacked_batches(model, s, context as usize, &layers, cfg.memory_budget_bytes) {
        let first = batch[0];
        let starts: Vec<(usize, &Tensor)> =
            batch.iter().map(|&k| (k, &full.layer_inputs[k])).collect();
        let (out, probes) = model.decoder().forward_key_weighted_after_context_stacked(
            &starts,
            &inputs.position_ids,
            &point.key_weights(first, num_layers),
            Some(&point.visual_queries),
            context,
        );
        let logq = last_log_probs_per_sequence(model, &out);
        for (b, &k) in batch.iter().enumerate() {
            check_finite(
                &logq.get(b as i64),
                &format!("the next-token distribution after a cut at layer {k}"),
            )?;
        }
        let rows = batch.len() as i64;
        let (full_logp, full_p) = (&point.full_logp, &point.full_p);
        let cross = (&full_p.to_kind(logq.kind()).unsqueeze(0) * &logq).sum(logq.kind());
        let target_logq = logq.select(1, target);
        let lp_text: Vec<f64> = Vec::try_from(target_logq.to_kind(Kind::Double))?;
        let kl_text: Vec<f64> = Vec::try_from(
            (full_p * (full_logp - logq.to_kind(Kind::Double))).sum_dim_intlist(
                [1i64].as_slice(),
                false,
                Kind::Double,
            ),
        )?;
        let target_sum = target_logq.sum(logq.kind());
        let d_target = qk_fixed_addition_per_sequence(&target_sum, &probes, &point.groups, rows)?;
        let d_cross = qk_fixed_addition_per_sequence(&cross, &probes, &point.groups, rows)?;
        for (b, &k) in batch.iter().enumerate() {
            let rows = point.rows(k, lp_text[b], kl_text[b], &d_target[b], &d_cross[b]);
            by_layer.insert(k, rows);
        }
    }
    let mut results = vec![full_row(&point.full_logp, target)];
    for k in &cfg.layers {
        results.extend(by_layer[k].iter().cloned());
    }
    Ok(results)
}

/// The first text position after the first visual token (0 without one): keep-only's
/// differentiated positions start there.
fn text_after_image(inputs: &ModelInputs) -> i64 {
    let s = inputs.seq_len();
    let is_visual = inputs.visual.mask(s);
    is_visual
        .iter()
        .position(|&v| v)
        .and_then(|first| (first..s).find(|&j| !is_visual[j]))
        .unwrap_or(0) as i64
}

/// Samples of prompt lengths `lengths` in consecutive batches for leave-out's estimate
/// ([`LeaveOutPoint::from_embeds_batch`]), each within `budget` bytes of autograd memory: a batch
/// padded to its longest prompt S keeps per sample and layer roughly the activations of S rows
/// (`S · (8 · hidden + 4 · intermediate + 3 · heads · S)`). Every batch holds at least one sample.
pub fn leave_out_batches(model: &VlModel, lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let (hidden, intermediate, heads) = model.text_dims();
    let (hidden, intermediate, heads) = (hidden as usize, intermediate as usize, heads as usize);
    let per_row = model.num_layers() * model.kind().elt_size_in_bytes();
    let cost =
        |n: usize, s: usize| n * per_row * s * (8 * hidden + 4 * intermediate + 3 * heads * s);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut longest = 0;
    for (i, &len) in lengths.iter().enumerate() {
        match batches.last_mut() {
            Some(batch) if cost(batch.len() + 1, longest.max(len)) <= budget => {
                batch.push(i);
                longest = longest.max(len);
            }
            _ => {
                batches.push(vec![i]);
                longest = len;
            }
        }
    }
    batches
}

/// The cut layers (sorted) in consecutive batches for keep-only's estimate, each within `budget`
/// bytes of autograd memory: per K, its layers `K..` keep roughly the context's keys and values
/// (`2 · context · hidden`) and the differentiated rows' activations
/// (`rows · (8 · hidden + 4 · intermediate + 3 · heads · S)`).
pub fn stacked_batches(
    model: &VlModel,
    s: usize,
    context: usize,
    layers: &[usize],
    budget: usize,
) -> Vec<Vec<usize>> {
    let (hidden, intermediate, heads) = model.text_dims();
    let (hidden, intermediate, heads) = (hidden as usize, intermediate as usize, heads as usize);
    let elem = model.kind().elt_size_in_bytes();
    let differentiated = s - context;
    let per_layer =
        2 * context * hidden + differentiated * (8 * hidden + 4 * intermediate + 3 * heads * s);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut used = 0usize;
    for &k in layers {
        let cost = (model.num_layers() - k) * per_layer * elem;
        match batches.last_mut() {
            Some(batch) if used + cost <= budget => {
                batch.push(k);
                used += cost;
            }
            _ => {
                batches.push(vec![k]);
                used = cost;
            }
        }
    }
    batches
}

/// Keep-only's rows ([`estimate_sample`]), each K linearised at its text-only run, one K at a
/// time: the reference that the batched [`estimate_keep_only`] equals.
pub fn estimate_keep_only_per_cut(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    target: i64,
    cfg: &SweepConfig,
) -> Result<Vec<VariantResult>> {
    let point = KeepOnlyPoint::new(model, inputs, full, cfg)?;
    let (full_logp, full_p, groups) = (&point.full_logp, &point.full_p, &point.groups);
    let num_layers = model.num_layers();
    let mut results = vec![full_row(full_logp, target)];
    for &k in &cfg.layers {
        let m = point.key_weights(k, num_layers);
        let (logq, probes) = keep_only_log_probs(
            model,
            inputs,
            k,
            &full.layer_inputs[k],
            &m,
            &point.visual_queries,
        );
        check_finite(
            &logq,
            &format!("the next-token distribution after a cut at layer {k}"),
        )?;
        let cross = (&full_p.to_kind(logq.kind()) * &logq).sum(logq.kind());
        let lp_text = scalar(&logq.get(target));
        let kl_text =
            scalar(&(full_p * (full_logp - logq.to_kind(Kind::Double))).sum(Kind::Double));
        let d_target = qk_fixed_addition(&logq.get(target), &probes, groups)?;
        let d_cross = qk_fixed_addition(&cross, &probes, groups)?;
        results.extend(point.rows(k, lp_text, kl_text, &d_target, &d_cross));
    }
    Ok(results)
}
