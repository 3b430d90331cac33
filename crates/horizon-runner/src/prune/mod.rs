//! Visual-token pruning: any method at any layer, in stages, through the one decoder loop.
//!
//! A [`PruneSpec`] (`divprune@0:284,random@20:38`) becomes a [`TokenSelector`] that, before each
//! decoder layer holding a stage, scores the visual tokens left from what the previous layer produced
//! (its attention rows, keys or outputs, which the decoder computes for that layer only) and keeps the
//! chosen ones. Methods that build new tokens before the decoder (pooling, VisionZip) rebuild the
//! input embeddings first. Every run records the visual tokens each layer processed, from which the
//! three budget conventions of the literature follow ([`VisualCounts`]).
//!
//! Positions: a stage at K ≥ 1 keeps the original position ids (FastV, DART, VTW, SparseVLM v2 do;
//! it makes removal equal to key masking); a stage at K = 0 renumbers for LLaVA (the LLM sees a shorter
//! sequence, as DivPrune and every pre-LLM method there) and keeps the M-RoPE ids for Qwen2.5-VL
//! (slicing the 3-D ids, as the Qwen ports of these methods do; `docs/pruning.md`). [`PruneOptions::positions`] overrides both.

pub mod methods;
pub mod oracle_rows;
pub mod runs;
pub mod spec;

use anyhow::{anyhow, bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use horizon_data::window::WindowGrid;

use crate::decoder::{DecoderOutput, KvCache};
use crate::info::{full_run, sweep_sample, InfoMode, SweepConfig, Variant};
use crate::intervention::{CutContext, PositionPolicy, TokenSelector, VisualTokens};
use crate::model::{ModelInputs, VlModel};
pub use spec::{Keep, Method, PruneSpec, Stage};

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
            info_scores: None,
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

/// The decoder's inputs after any pre-LLM token-building stage.
struct DecoderInputs {
    embeds: Tensor,
    positions: Tensor,
    rope_deltas: i64,
    visual: VisualTokens,
}

fn is_qwen(model: &VlModel) -> bool {
    matches!(model, VlModel::Qwen2_5Vl(_))
}

/// The convention of a stage at `layer` (see the module docs).
fn default_policy(model: &VlModel, layer: usize) -> PositionPolicy {
    if layer == 0 && !is_qwen(model) {
        PositionPolicy::Renumbered
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
    let _guard = tch::no_grad_guard();
    let num_layers = model.num_layers();
    spec.check(num_layers)?;
    let policy = |layer: usize| options.positions.unwrap_or(default_policy(model, layer));
    let embeds = model.input_embeds(inputs)?;
    let mut dec = DecoderInputs {
        embeds,
        positions: inputs.position_ids.shallow_clone(),
        rope_deltas: inputs.rope_deltas,
        visual: inputs.visual.clone(),
    };
    let mut records = Vec::new();
    let mut stages: Vec<(usize, Stage)> = spec.stages.iter().cloned().enumerate().collect();
    if let Some((_, first)) = stages.first() {
        if first.method.creates_tokens() {
            let (_, stage) = stages.remove(0);
            let label = stage_label(spec, 0);
            let built = build_tokens(model, inputs, &dec, &stage).with_context(|| label.clone())?;
            dec = rebuild(model, inputs, dec, &built, policy(0)).with_context(|| label.clone())?;
            records.push(StageRecord {
                stage: stage.to_string(),
                kept_visual: dec.visual.positions.clone(),
                note: built.note,
            });
        }
    }
    let mut selector = PruneSelector {
        spec,
        stages,
        options,
        policy: (0..num_layers).map(policy).collect(),
        rng: ChaCha8Rng::seed_from_u64(seed),
        raters: None,
        fixed: Vec::new(),
        todre_pivot: None,
        records,
    };
    selector.prepare(model, inputs, target)?;
    let output = model.decoder().prefill(
        &dec.embeds,
        &dec.positions,
        dec.rope_deltas,
        &dec.visual,
        &mut selector,
        cache,
        None,
    )?;
    let counts = VisualCounts {
        prompt: inputs.visual.positions.len(),
        per_layer: output.visual_per_layer.clone(),
    };
    Ok(PrunedPrefill {
        prompt_len: dec.embeds.size()[1] as usize,
        output,
        counts,
        stages: selector.records,
    })
}

fn stage_label(spec: &PruneSpec, index: usize) -> String {
    format!(
        "--prune {spec}: stage {} `{}`",
        index + 1,
        spec.stages[index]
    )
}

/// `rows` as an index tensor on `device` (for `index_select`).
fn index_tensor(rows: &[usize], device: tch::Device) -> Tensor {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_slice(&idx).to_device(device)
}

/// Rows `[n, D]` of `hidden` `[1, S, D]` at `rows`, as f32.
fn rows_f32(hidden: &Tensor, rows: &[usize]) -> Tensor {
    hidden
        .select(0, 0)
        .index_select(0, &index_tensor(rows, hidden.device()))
        .to_kind(Kind::Float)
}

fn unit_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}

fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(
        t.to_kind(Kind::Float)
            .reshape([-1])
            .to_device(tch::Device::Cpu),
    )
    .expect("f32 tensor")
}

/// What a token-building stage made: the new visual block `[k, D]`, for each new token the prompt
/// index whose position ids it takes when positions are kept, its grid, and a note.
struct BuiltTokens {
    block: Tensor,
    representatives: Vec<usize>,
    grid: (usize, usize),
    note: String,
}

/// A token-building stage (`pooling@0`, `visionzip@0`): the new visual block `[k, D]`, for each new
/// token the prompt index whose position ids it takes when positions are kept, its grid, a note.
fn build_tokens(
    model: &VlModel,
    inputs: &ModelInputs,
    dec: &DecoderInputs,
    stage: &Stage,
) -> Result<BuiltTokens> {
    let visual = &dec.visual;
    let n = visual.positions.len();
    let k = stage.keep.count(n);
    if k > n {
        bail!("keeps {k} visual tokens but the prompt has {n}");
    }
    match stage.method {
        Method::Pooling => {
            let (rows, cols) = visual.grid;
            if rows * cols != n {
                bail!("the visual tokens ({n}) do not form their {rows}×{cols} grid");
            }
            let (r, c) = methods::pooled_grid(rows, cols, k)?;
            let x = rows_f32(&dec.embeds, &visual.positions).to_kind(dec.embeds.kind());
            let d = x.size()[1];
            let pooled = x
                .view([1, rows as i64, cols as i64, d])
                .permute([0, 3, 1, 2])
                .adaptive_avg_pool2d([r as i64, c as i64])
                .permute([0, 2, 3, 1])
                .reshape([(r * c) as i64, d]);
            let representatives = (0..r)
                .flat_map(|i| (0..c).map(move |j| (i * rows / r) * cols + j * cols / c))
                .map(|t| visual.positions[t])
                .collect();
            Ok(BuiltTokens {
                block: pooled,
                representatives,
                grid: (r, c),
                note: format!("grid {r}x{c}"),
            })
        }
        Method::Visionzip => match model {
            VlModel::Llava(_) => visionzip(model, inputs, visual, k),
            VlModel::Qwen2_5Vl(_) => visionzip_without_cls(model, inputs, dec, k),
        },
        other => bail!("{} does not build tokens", other.name()),
    }
}

/// Python's `round` (half to even), so that the dominant/contextual split is the one the published
/// settings imply (54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192).
fn round_half_even(x: f64) -> usize {
    let f = x.floor();
    let frac = x - f;
    let r = if (frac - 0.5).abs() < 1e-12 {
        if f % 2.0 == 0.0 {
            f
        } else {
            f + 1.0
        }
    } else {
        x.round()
    };
    r as usize
}

/// VisionZip at LLaVA's feature layer: CLS plus the patches with the most CLS attention (dominant),
/// then contextual tokens merged onto evenly spaced targets by key similarity; projected.
fn visionzip(
    model: &VlModel,
    inputs: &ModelInputs,
    visual: &VisualTokens,
    k: usize,
) -> Result<BuiltTokens> {
    let VlModel::Llava(llava) = model else {
        bail!("visionzip ranks CLIP's CLS attention; Qwen2.5-VL's vision tower has no CLS token");
    };
    let pixels = inputs
        .pixel_values
        .as_ref()
        .ok_or_else(|| anyhow!("visionzip needs an image"))?;
    let (hidden, probs, metric) = llava.feature_layer_attention(pixels)?;
    let tokens = hidden.size()[1] as usize;
    let n = visual.positions.len();
    if tokens != n + 1 {
        bail!("visionzip expects the {n} visual tokens to be CLIP's patches without CLS (vision_feature_select_strategy default)");
    }
    if k == 0 {
        bail!("visionzip keeps at least the CLS token: keep ≥ 1");
    }
    let (dominant, contextual) = visionzip_split(k);
    // Σ_h A[h, CLS, patch].
    let cls = to_vec_f32(
        &probs
            .select(0, 0)
            .select(1, 0)
            .sum_dim_intlist(0, false, Kind::Float),
    );
    let mut chosen: Vec<usize> = methods::top_k(&cls[1..], dominant - 1)
        .into_iter()
        .map(|j| j + 1)
        .collect();
    chosen.insert(0, 0);
    let (block, sources) = zip_tokens(
        &hidden.select(0, 0),
        &metric.select(0, 0),
        &chosen,
        contextual,
    );
    let block = llava.project(&block);
    let count = block.size()[0] as usize;
    Ok(BuiltTokens {
        block,
        // CLIP token t is patch t - 1; CLS takes the first patch's ids.
        representatives: sources
            .iter()
            .map(|&t| visual.positions[t.saturating_sub(1)])
            .collect(),
        grid: (1, count),
        note: format!(
            "dominant {dominant} (CLS included), contextual {} on CLIP tokens {:?}",
            count - dominant,
            &sources[dominant..]
        ),
    })
}

/// VisionZip's split of `k` into dominant and contextual tokens, as the published settings (54 + 10
/// of 64, 108 + 20 of 128, 162 + 30 of 192).
fn visionzip_split(k: usize) -> (usize, usize) {
    let dominant = round_half_even(k as f64 * 27.0 / 32.0).clamp(1, k);
    (dominant, k - dominant)
}

/// VisionZip's new visual block from tokens `hidden` `[T, D]` with keys `metric` `[T, d]`: the
/// `chosen` (dominant) rows, then `contextual` tokens merged from the rest ([`merge_contextual`]).
/// Also returns, per new token, the token it stands for (itself; a contextual token's target).
fn zip_tokens(
    hidden: &Tensor,
    metric: &Tensor,
    chosen: &[usize],
    contextual: usize,
) -> (Tensor, Vec<usize>) {
    let tokens = hidden.size()[0] as usize;
    let remaining: Vec<usize> = (0..tokens).filter(|t| !chosen.contains(t)).collect();
    let pick = |idx: &[usize]| index_tensor(idx, hidden.device());
    let mut parts = vec![hidden.index_select(0, &pick(chosen))];
    let mut sources = chosen.to_vec();
    if contextual > 0 && !remaining.is_empty() {
        let (merged, target_rows) = merge_contextual(
            &hidden.index_select(0, &pick(&remaining)),
            &metric.index_select(0, &pick(&remaining)),
            contextual,
        );
        parts.push(merged);
        sources.extend(target_rows.iter().map(|&r| remaining[r]));
    }
    (Tensor::cat(&parts, 0), sources)
}

/// VisionZip's contextual tokens: `contextual` targets evenly spaced over the remaining tokens
/// (stride ⌊N'/C⌋), every other remaining token assigned to the target whose key is most similar
/// (cosine), each target's state plus the mean of its assignees'. Returns `[C', D]` and the
/// targets' rows in the remaining tokens.
fn merge_contextual(hidden: &Tensor, metric: &Tensor, contextual: usize) -> (Tensor, Vec<usize>) {
    let n = hidden.size()[0] as usize;
    let pick = |idx: &[usize]| index_tensor(idx, hidden.device());
    let step = (n / contextual).max(1);
    let target_rows: Vec<usize> = (0..n).step_by(step).take(contextual).collect();
    let others: Vec<usize> = (0..n).filter(|i| !target_rows.contains(i)).collect();
    let m = unit_rows(&metric.to_kind(Kind::Float));
    let target_h = hidden.index_select(0, &pick(&target_rows));
    if others.is_empty() {
        return (target_h, target_rows);
    }
    let sim = m
        .index_select(0, &pick(&others))
        .matmul(&m.index_select(0, &pick(&target_rows)).transpose(0, 1));
    let assign = sim.argmax(1, false);
    let one_hot = Tensor::zeros(
        [others.len() as i64, target_rows.len() as i64],
        (hidden.kind(), hidden.device()),
    )
    .scatter_value(1, &assign.unsqueeze(1), 1.0);
    let counts = one_hot
        .sum_dim_intlist(0, false, hidden.kind())
        .clamp_min(1.0);
    let summed = one_hot
        .transpose(0, 1)
        .matmul(&hidden.index_select(0, &pick(&others)));
    (target_h + summed / counts.unsqueeze(1), target_rows)
}

/// VisionZip for Qwen2.5-VL, whose vision tower has no CLS token: as VisionZip's own path for
/// CLS-less encoders (SigLIP), dominant tokens are the merged tokens whose patches receive the most
/// attention (mean over heads and queries) at the last full-attention block, and the contextual
/// tokens merge by that block's head-mean keys; merging acts on the merged embeddings (after the
/// PatchMerger, whose 2x2 grouping a selection of patches would break).
fn visionzip_without_cls(
    model: &VlModel,
    inputs: &ModelInputs,
    dec: &DecoderInputs,
    k: usize,
) -> Result<BuiltTokens> {
    let VlModel::Qwen2_5Vl(qwen) = model else {
        bail!("visionzip without CLS is the Qwen2.5-VL path");
    };
    let pixels = inputs
        .pixel_values
        .as_ref()
        .ok_or_else(|| anyhow!("visionzip needs an image"))?;
    let (received, metric) = qwen
        .visual
        .last_full_attention_received(pixels, &inputs.image_grid_thw)
        .map_err(|e| anyhow!("visionzip: {e}"))?;
    let visual = &dec.visual;
    let n = visual.positions.len();
    if received.size()[0] as usize != n {
        bail!(
            "visionzip: the vision tower gives {} merged tokens, the prompt has {n} visual tokens",
            received.size()[0]
        );
    }
    if k == 0 {
        bail!("visionzip keeps at least one dominant token: keep ≥ 1");
    }
    let (dominant, contextual) = visionzip_split(k);
    let chosen = methods::top_k(&to_vec_f32(&received), dominant);
    if visual.positions.windows(2).any(|w| w[1] != w[0] + 1) {
        bail!("visionzip: the visual tokens are not one contiguous block");
    }
    let hidden = dec
        .embeds
        .select(0, 0)
        .narrow(0, visual.positions[0] as i64, n as i64);
    let (block, sources) = zip_tokens(&hidden, &metric, &chosen, contextual);
    let count = block.size()[0] as usize;
    Ok(BuiltTokens {
        block,
        representatives: sources.iter().map(|&t| visual.positions[t]).collect(),
        grid: (1, count),
        note: format!(
            "dominant {dominant}, contextual {} on merged tokens {:?}",
            count - dominant,
            &sources[dominant..]
        ),
    })
}

/// The prompt with its visual span replaced by `block`; positions renumbered or taken from
/// `representatives`.
fn rebuild(
    model: &VlModel,
    inputs: &ModelInputs,
    dec: DecoderInputs,
    built: &BuiltTokens,
    policy: PositionPolicy,
) -> Result<DecoderInputs> {
    let (block, representatives, grid) = (&built.block, &built.representatives, built.grid);
    let visual = &dec.visual.positions;
    let (first, last) = match (visual.first(), visual.last()) {
        (Some(&f), Some(&l)) if l - f + 1 == visual.len() => (f, l),
        _ => bail!("the prompt's visual tokens are not one contiguous block"),
    };
    let s = inputs.seq_len();
    let k = block.size()[0] as usize;
    let embeds = Tensor::cat(
        &[
            dec.embeds.narrow(1, 0, first as i64),
            block.to_kind(dec.embeds.kind()).unsqueeze(0),
            dec.embeds.narrow(1, last as i64 + 1, (s - last - 1) as i64),
        ],
        1,
    );
    let new_len = s - visual.len() + k;
    let rotary = &model.decoder().rotary_emb;
    let device = embeds.device();
    let (positions, rope_deltas) = match policy {
        PositionPolicy::Renumbered => (rotary.contiguous_positions(new_len as i64, device), 0),
        PositionPolicy::Original => {
            let rows: Vec<i64> = (0..first)
                .chain(representatives.iter().copied())
                .chain(last + 1..s)
                .map(|p| p as i64)
                .collect();
            let rows = Tensor::from_slice(&rows).to_device(device).unsqueeze(0);
            (
                rotary.gather_positions(&dec.positions, &rows),
                dec.rope_deltas + (s - new_len) as i64,
            )
        }
    };
    Ok(DecoderInputs {
        embeds,
        positions,
        rope_deltas,
        visual: VisualTokens {
            positions: (first..first + k).collect(),
            grid,
        },
    })
}

/// The stages of a spec as the decoder's selector.
struct PruneSelector<'a> {
    spec: &'a PruneSpec,
    /// (index in the spec, stage) of the stages run inside the decoder.
    stages: Vec<(usize, Stage)>,
    options: &'a PruneOptions,
    policy: Vec<PositionPolicy>,
    rng: ChaCha8Rng,
    /// SparseVLM's text raters (sequence indices), found at layer 0.
    raters: Option<Vec<usize>>,
    /// Keep-sets decided before the prefill (the information oracle): (spec index, visual kept).
    fixed: Vec<(usize, Vec<usize>)>,
    /// ToDRE's pivot (index into the prompt's visual tokens).
    todre_pivot: Option<usize>,
    records: Vec<StageRecord>,
}

impl PruneSelector<'_> {
    fn stage_at(&self, layer: usize) -> Option<&(usize, Stage)> {
        self.stages.iter().find(|(_, s)| s.layer == layer)
    }

    /// Work done once before the prefill: the information oracle's windows, ToDRE's pivot.
    fn prepare(
        &mut self,
        model: &VlModel,
        inputs: &ModelInputs,
        target: Option<i64>,
    ) -> Result<()> {
        let stages = self.stages.clone();
        for (index, stage) in &stages {
            let label = stage_label(self.spec, *index);
            match stage.method {
                Method::Info if self.options.info_scores.is_some() => {
                    let scores = self.options.info_scores.as_ref().expect("checked");
                    let kept = info_keep_from_rows(inputs, stage, self.options.info_window, scores)
                        .with_context(|| label.clone())?;
                    self.fixed.push((*index, kept));
                }
                Method::Info => {
                    let target = target.ok_or_else(|| {
                        anyhow!("{label}: the information oracle scores the ground-truth answer, and this run has none")
                    })?;
                    let kept = info_keep(model, inputs, stage, self.options.info_window, target)
                        .with_context(|| label.clone())?;
                    self.fixed.push((*index, kept));
                }
                Method::Todre if stage.layer == 0 => {
                    self.todre_pivot =
                        Some(todre_pivot(model, inputs).with_context(|| label.clone())?);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn choose(
        &mut self,
        index: usize,
        stage: &Stage,
        ctx: &CutContext,
        vis_rows: &[usize],
    ) -> Result<(Vec<usize>, String)> {
        let n = vis_rows.len();
        let k = stage.keep.count(n);
        if k > n {
            bail!("keeps {k} visual tokens but only {n} are left");
        }
        let hidden = ctx.hidden;
        Ok(match stage.method {
            Method::Random => {
                let mut chosen = rand::seq::index::sample(&mut self.rng, n, k).into_vec();
                chosen.sort_unstable();
                (chosen, String::new())
            }
            Method::Vtw => (Vec::new(), String::new()),
            Method::Fastv | Method::WindowFastv => {
                let att = ctx
                    .attention
                    .ok_or_else(|| anyhow!("no attention from layer K - 1"))?;
                // [heads, 1, S'] → head mean of the last query row.
                let a = to_vec_f32(&att.mean_dim(0, false, Kind::Float));
                let scores: Vec<f32> = vis_rows.iter().map(|&r| a[r]).collect();
                if stage.method == Method::Fastv {
                    (methods::top_k(&scores, k), String::new())
                } else {
                    let (rows, cols) = ctx.visual.grid;
                    if rows * cols != n {
                        bail!("window-fastv needs the full {rows}×{cols} visual grid, {n} tokens are left");
                    }
                    let grid = WindowGrid::new(ctx.visual.grid, self.options.window_size)?;
                    (
                        methods::window_top_k(&scores, &grid, k),
                        format!(
                            "{} windows of {}",
                            grid.num_windows(),
                            self.options.window_size
                        ),
                    )
                }
            }
            Method::Sparsevlm => {
                let att = ctx
                    .attention
                    .ok_or_else(|| anyhow!("no attention from layer K - 1"))?;
                let a = to_vec_f32(&att.mean_dim([0i64, 1].as_slice(), false, Kind::Float));
                let scores: Vec<f32> = vis_rows.iter().map(|&r| a[r]).collect();
                (methods::top_k(&scores, k), String::new())
            }
            Method::Divprune => {
                let x = unit_rows(&rows_f32(hidden, vis_rows));
                let dist = to_vec_f32(&(1.0 - x.matmul(&x.transpose(0, 1))));
                (methods::divprune(&dist, n, k), String::new())
            }
            Method::Todre if stage.layer == 0 => {
                let pivot = self.todre_pivot.ok_or_else(|| anyhow!("no pivot"))?;
                if pivot >= n {
                    bail!("pivot {pivot} outside the {n} visual tokens");
                }
                let x = unit_rows(&rows_f32(hidden, vis_rows));
                let sim = to_vec_f32(&x.matmul(&x.transpose(0, 1)));
                (
                    methods::max_sum_diversity(&sim, n, pivot, k),
                    format!("pivot {pivot}"),
                )
            }
            Method::Todre => {
                let att = ctx
                    .attention
                    .ok_or_else(|| anyhow!("no attention from layer K - 1"))?;
                let s = ctx.kept.len();
                let a = to_vec_f32(&att.mean_dim(0, false, Kind::Float));
                let text: Vec<usize> = match vis_rows.last() {
                    Some(&l) => (l + 1..s).collect(),
                    None => Vec::new(),
                };
                let (tv, vt) = methods::cross_modal_ratios(&a, s, vis_rows, &text);
                let tau = self.options.tau;
                let drop = tv < tau && vt < tau;
                let chosen = if drop { Vec::new() } else { (0..n).collect() };
                (
                    chosen,
                    format!(
                        "alpha_tv {tv:.4}, alpha_vt {vt:.4}, tau {tau}: {}",
                        if drop { "withdrawn" } else { "kept" }
                    ),
                )
            }
            Method::Dart => {
                let keys = ctx
                    .keys
                    .ok_or_else(|| anyhow!("no keys from layer K - 1"))?;
                let l1 = to_vec_f32(&keys.to_kind(Kind::Float).abs().sum_dim_intlist(
                    1,
                    false,
                    Kind::Float,
                ));
                let p = self.options.dart_pivots;
                let vis_l1: Vec<f32> = vis_rows.iter().map(|&r| l1[r]).collect();
                let image_pivots = methods::top_k(&vis_l1, p.min(n));
                let text_rows: Vec<usize> = match vis_rows.last() {
                    Some(&l) => (l + 1..ctx.kept.len()).collect(),
                    None => Vec::new(),
                };
                let text_l1: Vec<f32> = text_rows.iter().map(|&r| l1[r]).collect();
                let text_pivots: Vec<usize> = methods::top_k(&text_l1, p.min(text_rows.len()))
                    .into_iter()
                    .map(|i| text_rows[i])
                    .collect();
                let mut pivot_rows: Vec<usize> = image_pivots
                    .iter()
                    .map(|&i| vis_rows[i])
                    .chain(text_pivots)
                    .collect();
                pivot_rows.sort_unstable();
                if k < image_pivots.len() {
                    bail!(
                        "dart keeps its {} image pivots: keep ≥ {}",
                        image_pivots.len(),
                        image_pivots.len()
                    );
                }
                let x = unit_rows(&rows_f32(
                    &ctx.final_norm.forward(hidden),
                    &(0..ctx.kept.len()).collect::<Vec<_>>(),
                ));
                let pick = |rows: &[usize]| index_tensor(rows, x.device());
                let sims = x
                    .index_select(0, &pick(&pivot_rows))
                    .matmul(&x.index_select(0, &pick(vis_rows)).transpose(0, 1));
                let sims: Vec<Vec<f32>> = (0..pivot_rows.len())
                    .map(|i| to_vec_f32(&sims.get(i as i64)))
                    .collect();
                let pivots_seq: Vec<usize> = pivot_rows.iter().map(|&r| ctx.kept[r]).collect();
                (
                    methods::dart(&image_pivots, &sims, n, k),
                    format!("pivots {pivots_seq:?}"),
                )
            }
            Method::Info => {
                let kept = self
                    .fixed
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, k)| k.clone())
                    .ok_or_else(|| anyhow!("information not computed"))?;
                let chosen = vis_rows
                    .iter()
                    .enumerate()
                    .filter(|(_, &r)| kept.contains(&ctx.kept[r]))
                    .map(|(i, _)| i)
                    .collect();
                (chosen, String::new())
            }
            Method::Pooling | Method::Visionzip => bail!("builds tokens; only before the decoder"),
        })
    }
}

impl TokenSelector for PruneSelector<'_> {
    fn select(&mut self, ctx: &CutContext) -> Result<Option<Vec<usize>>> {
        let is_visual = ctx.visual.mask(ctx.kept.iter().max().map_or(0, |m| m + 1));
        if ctx.layer == 0
            && self
                .stages
                .iter()
                .any(|(_, s)| s.method == Method::Sparsevlm)
        {
            self.raters = Some(sparsevlm_raters(ctx.hidden, ctx.kept, &is_visual));
        }
        let Some((index, stage)) = self.stage_at(ctx.layer).cloned() else {
            return Ok(None);
        };
        let vis_rows: Vec<usize> = (0..ctx.kept.len())
            .filter(|&r| is_visual[ctx.kept[r]])
            .collect();
        let label = stage_label(self.spec, index);
        let (chosen, note) = self
            .choose(index, &stage, ctx, &vis_rows)
            .map_err(|e| anyhow!("{label}: {e:#}"))?;
        let mut keep_row = vec![true; ctx.kept.len()];
        for &r in &vis_rows {
            keep_row[r] = false;
        }
        for &c in &chosen {
            keep_row[vis_rows[c]] = true;
        }
        let keep: Vec<usize> = (0..ctx.kept.len())
            .filter(|&r| keep_row[r])
            .map(|r| ctx.kept[r])
            .collect();
        self.records.push(StageRecord {
            stage: stage.to_string(),
            kept_visual: chosen.iter().map(|&c| ctx.kept[vis_rows[c]]).collect(),
            note,
        });
        Ok(Some(keep))
    }

    fn attention_rows(&self, layer: usize, kept: &[usize]) -> Option<Vec<usize>> {
        let (_, next) = self.stage_at(layer + 1)?;
        match next.method {
            Method::Fastv | Method::WindowFastv => kept.last().map(|&l| vec![l]),
            Method::Sparsevlm => self.raters.clone(),
            Method::Todre if next.layer > 0 => Some(kept.to_vec()),
            _ => None,
        }
    }

    fn keys_at(&self, layer: usize) -> bool {
        self.stage_at(layer + 1)
            .is_some_and(|(_, s)| s.method == Method::Dart)
    }

    fn positions_at(&self, layer: usize) -> PositionPolicy {
        self.policy[layer]
    }
}

/// SparseVLM's raters: text tokens after the image whose mean relevance to the visual tokens
/// (softmax over the text of `E_v · E_tᵀ`, averaged over visual rows) is at least the mean.
fn sparsevlm_raters(hidden: &Tensor, kept: &[usize], is_visual: &[bool]) -> Vec<usize> {
    let vis: Vec<usize> = (0..kept.len()).filter(|&r| is_visual[kept[r]]).collect();
    let Some(&last) = vis.last() else {
        return kept.last().map(|&l| vec![l]).unwrap_or_default();
    };
    let text: Vec<usize> = (last + 1..kept.len()).collect();
    if text.is_empty() {
        return vec![*kept.last().expect("non-empty")];
    }
    let ev = rows_f32(hidden, &vis);
    let et = rows_f32(hidden, &text);
    let r = to_vec_f32(
        &ev.matmul(&et.transpose(0, 1))
            .softmax(-1, Kind::Float)
            .mean_dim(0, false, Kind::Float),
    );
    let mean = r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64;
    text.iter()
        .zip(&r)
        .filter(|(_, &v)| v as f64 >= mean)
        .map(|(&row, _)| kept[row])
        .collect()
}

/// ToDRE's pivot among the prompt's visual tokens: LLaVA the patch with the most CLS attention at the
/// CLIP feature layer; Qwen2.5-VL (no CLS) the centre token of the merged grid.
fn todre_pivot(model: &VlModel, inputs: &ModelInputs) -> Result<usize> {
    match model {
        VlModel::Llava(llava) => {
            let pixels = inputs
                .pixel_values
                .as_ref()
                .ok_or_else(|| anyhow!("todre needs an image"))?;
            let (_, probs, _) = llava.feature_layer_attention(pixels)?;
            let cls = to_vec_f32(&probs.select(0, 0).select(1, 0).sum_dim_intlist(
                0,
                false,
                Kind::Float,
            ));
            Ok(methods::top_k(&cls[1..], 1).first().copied().unwrap_or(0))
        }
        VlModel::Qwen2_5Vl(_) => {
            let (rows, cols) = inputs.visual.grid;
            Ok((rows / 2) * cols + cols / 2)
        }
    }
}

/// The information oracle's keep-set (sequence indices of visual tokens): windows ranked by the
/// probability of the answer when only that window's visual tokens remain from layer K.
fn info_keep(
    model: &VlModel,
    inputs: &ModelInputs,
    stage: &Stage,
    window: usize,
    target: i64,
) -> Result<Vec<usize>> {
    let grid = WindowGrid::new(inputs.visual.grid, window)?;
    let n = inputs.visual.positions.len();
    let k = stage.keep.count(n);
    if k > n {
        bail!("keeps {k} visual tokens but only {n} are left");
    }
    let full = full_run(model, inputs)?;
    let cfg = SweepConfig {
        layers: vec![stage.layer],
        window_size: window,
        mode: InfoMode::KeepOnly,
        batch_size: None,
        memory_budget_bytes: 1 << 30,
    };
    let results = sweep_sample(model, inputs, &full, target, &cfg)?;
    let mut scores = vec![f32::NEG_INFINITY; grid.num_windows()];
    for r in results {
        if let Variant::Window(w) = r.variant {
            scores[w] = r.p as f32;
        }
    }
    Ok(keep_best_windows(inputs, &grid, &scores, k))
}

/// The information oracle's keep-set from scores read from `horizon info` rows (the same p values
/// the engine computes, ranked the same way).
fn info_keep_from_rows(
    inputs: &ModelInputs,
    stage: &Stage,
    window: usize,
    rows: &std::collections::BTreeMap<usize, Vec<f64>>,
) -> Result<Vec<usize>> {
    let grid = WindowGrid::new(inputs.visual.grid, window)?;
    let n = inputs.visual.positions.len();
    let k = stage.keep.count(n);
    if k > n {
        bail!("keeps {k} visual tokens but only {n} are left");
    }
    let Some(p) = rows.get(&stage.layer) else {
        bail!(
            "the info rows of this sample have no layer {} (they have {:?})",
            stage.layer,
            rows.keys().collect::<Vec<_>>()
        );
    };
    if p.len() != grid.num_windows() || p.iter().any(|v| !v.is_finite()) {
        bail!(
            "the info rows of this sample at layer {} hold {} finite window values, the {}x{} windows need {}",
            stage.layer,
            p.iter().filter(|v| v.is_finite()).count(),
            window,
            window,
            grid.num_windows()
        );
    }
    let scores: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    Ok(keep_best_windows(inputs, &grid, &scores, k))
}

/// Windows by score (ties: lower index first), their tokens until `k` (a last window partly, in
/// raster order); sequence indices, sorted.
fn keep_best_windows(
    inputs: &ModelInputs,
    grid: &WindowGrid,
    scores: &[f32],
    k: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = Vec::with_capacity(k);
    for w in order {
        for t in grid.window_tokens(w) {
            if kept.len() < k {
                kept.push(inputs.visual.positions[t]);
            }
        }
    }
    kept.sort_unstable();
    kept
}

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
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let mut cache = KvCache::new(model.num_layers());
    synchronize(device);
    let started = std::time::Instant::now();
    let prefill = prefill_pruned(model, inputs, spec, options, seed, target, Some(&mut cache))?;
    synchronize(device);
    let prefill_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let tokens = crate::generate::continue_greedy(
        model,
        &prefill.output.hidden,
        prefill.prompt_len,
        &mut cache,
        config,
    )?;
    synchronize(device);
    Ok(PrunedGeneration {
        decode_steps: tokens.len().saturating_sub(1),
        tokens,
        counts: prefill.counts,
        stages: prefill.stages,
        prefill_seconds,
        decode_seconds: started.elapsed().as_secs_f64(),
        kv_bytes: cache.bytes(),
        tokens_per_layer: prefill.output.tokens_per_layer,
    })
}
