//! The stages of a spec run inside the decoder, as its [`TokenSelector`]: before each layer holding a
//! stage, the visual tokens left are scored from what the previous layer produced.

use anyhow::{anyhow, bail, Context, Result};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use horizon_data::window::{TokenGrid, WindowGrid};

use super::oracle::{info_keep, info_keep_from_rows};
use super::spec::StageInput;
use super::tensor_rows::{index_tensor, rows_f32, to_vec_f32, unit_rows};
use super::{
    methods, recycle, stage_label, DartPivotOrder, Method, PruneOptions, PruneSpec, Stage,
    StageRecord,
};
use crate::intervention::{CutContext, PositionPolicy, TokenSelector};
use crate::model::{ModelInputs, VlModel};

/// The stages of a spec as the decoder's selector.
pub(super) struct PruneSelector<'a> {
    spec: &'a PruneSpec,
    /// (index in the spec, stage) of the stages run inside the decoder.
    stages: Vec<(usize, Stage)>,
    options: &'a PruneOptions,
    policy: Vec<PositionPolicy>,
    /// The grids the visual tokens entering the decoder form ([`StageInput::grids`]).
    grids: Vec<TokenGrid>,
    rng: ChaCha8Rng,
    /// SparseVLM's text raters (sequence indices), found at layer 0.
    raters: Option<Vec<usize>>,
    /// Keep-sets decided before the prefill (the information oracle): (spec index, visual kept).
    fixed: Vec<(usize, Vec<usize>)>,
    /// ToDRE's pivot (index into the prompt's visual tokens).
    todre_pivot: Option<usize>,
    /// SparseVLM v1.5: the scores of the visual tokens at the stage being chosen, which rank the
    /// dropped ones for recycling.
    sparsevlm_scores: Option<Vec<f32>>,
    /// Ids of the tokens built so far (SparseVLM v1.5's recycled tokens), and the next id.
    built_ids: Vec<usize>,
    next_built: usize,
    /// The hidden states of the tokens the last cut built, for [`TokenSelector::built_tokens`].
    pending_built: Option<Tensor>,
    /// Whether ToDRE's relevance stage has decided (it tests every layer from its K until both
    /// ratios fall below τ, or the last layer).
    todre_decided: bool,
    records: Vec<StageRecord>,
}

impl<'a> PruneSelector<'a> {
    /// The selector of `stages` (those of `spec` run inside the decoder, with their index in it),
    /// after the pre-LLM stages that wrote `records`, on visual tokens that form `grids`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        spec: &'a PruneSpec,
        stages: Vec<(usize, Stage)>,
        options: &'a PruneOptions,
        policy: Vec<PositionPolicy>,
        grids: Vec<TokenGrid>,
        rng: ChaCha8Rng,
        records: Vec<StageRecord>,
    ) -> Self {
        Self {
            spec,
            stages,
            options,
            policy,
            grids,
            rng,
            raters: None,
            fixed: Vec::new(),
            todre_pivot: None,
            sparsevlm_scores: None,
            built_ids: Vec::new(),
            next_built: 0,
            pending_built: None,
            todre_decided: false,
            records,
        }
    }

    /// What every stage chose, in order.
    pub(super) fn into_records(self) -> Vec<StageRecord> {
        self.records
    }

    /// The stage run before `layer`: the one at that layer, else ToDRE's relevance stage while it
    /// has not decided (from its K on).
    fn stage_at(&self, layer: usize) -> Option<&(usize, Stage)> {
        self.stages
            .iter()
            .find(|(_, s)| s.layer == layer)
            .or_else(|| {
                self.stages.iter().find(|(_, s)| {
                    s.method == Method::Todre
                        && s.layer > 0
                        && layer > s.layer
                        && !self.todre_decided
                })
            })
    }

    /// Work done once before the prefill: the information oracle's windows, ToDRE's pivot.
    pub(super) fn prepare(
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
        // The prompt's visual tokens still here, as indices into them (a file stage's numbering).
        let present: Vec<usize> = vis_rows
            .iter()
            .filter_map(|&r| ctx.visual.positions.binary_search(&ctx.kept[r]).ok())
            .collect();
        let plan = stage.check_at(
            &StageInput {
                sample: self.options.sample_key.as_deref(),
                prompt_visual: ctx.visual.positions.len(),
                left: n,
                grids: &self.grids,
                present: Some(&present),
            },
            self.options,
        )?;
        let k = plan.keep;
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
                    // Windows of each grid (LLaVA-NeXT: base and high-resolution); the newline
                    // tokens lie in no window and compete only for what the quotas leave.
                    let grid = WindowGrid::of_grids(self.grids.clone(), self.options.window_size)?;
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
            Method::Sparsevlm | Method::SparsevlmV2 => {
                let att = ctx
                    .attention
                    .ok_or_else(|| anyhow!("no attention from layer K - 1"))?;
                let a = to_vec_f32(&att.mean_dim([0i64, 1].as_slice(), false, Kind::Float));
                let scores: Vec<f32> = vis_rows.iter().map(|&r| a[r]).collect();
                if stage.method == Method::SparsevlmV2 {
                    (methods::top_k(&scores, k), String::new())
                } else {
                    // `attn_postprocess_topk` keeps `min(count, v_token_num - 1)`.
                    let chosen = methods::top_k(&scores, k.min(n.saturating_sub(1)));
                    self.sparsevlm_scores = Some(scores);
                    (chosen, String::new())
                }
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
                let drop = methods::todre_withdraws(tv, vt, tau);
                if !drop && ctx.layer + 1 < ctx.num_layers {
                    // Not this layer: the next one tests again.
                    return Ok((Vec::new(), String::new()));
                }
                self.todre_decided = true;
                let chosen = if drop { Vec::new() } else { (0..n).collect() };
                (
                    chosen,
                    format!(
                        "alpha_tv {tv:.4}, alpha_vt {vt:.4}, tau {tau}: {} before layer {}",
                        if drop { "withdrawn" } else { "kept to the end" },
                        ctx.layer
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
                let image_pivots = methods::top_k_ranked(&vis_l1, p.min(n));
                let text_rows: Vec<usize> = match vis_rows.last() {
                    Some(&l) => (l + 1..ctx.kept.len()).collect(),
                    None => Vec::new(),
                };
                let text_l1: Vec<f32> = text_rows.iter().map(|&r| l1[r]).collect();
                let text_pivots =
                    methods::top_k_ranked(&text_l1, p.min(text_rows.len())).into_iter();
                // `image_indices + query_indices` of the released code: rows of the sequence this
                // layer sees, each list largest L1 norm first.
                let mut pivot_rows: Vec<usize> = image_pivots
                    .iter()
                    .map(|&i| vis_rows[i])
                    .chain(text_pivots.map(|i| text_rows[i]))
                    .collect();
                match self.options.dart_pivot_order {
                    DartPivotOrder::Set => pivot_rows = methods::python_set_order(&pivot_rows),
                    DartPivotOrder::Sequence => pivot_rows.sort_unstable(),
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
            Method::Pooling => {
                // ‖x‖₁ of each visual token's layer-K input.
                let l1 = to_vec_f32(&rows_f32(hidden, vis_rows).abs().sum_dim_intlist(
                    1,
                    false,
                    Kind::Float,
                ));
                match (plan.pooled, plan.pool_side) {
                    (Some((r, c)), _) => (
                        methods::window_max(&l1, ctx.visual.grid, (r, c)),
                        format!("grid {r}x{c}"),
                    ),
                    // Several grids (LLaVA-NeXT): each pooled on its own, the stage being first
                    // so that the visual rows are the prompt's visual tokens in order.
                    (None, Some(s)) => (
                        methods::window_max_per_grid(&l1, &self.grids, s),
                        format!("{s}x{s} windows per grid"),
                    ),
                    (None, None) => bail!("no pooled grid"),
                }
            }
            Method::File => {
                // Ascending indices into the prompt's visual tokens, each one still present.
                let listed = plan.listed.unwrap_or_default();
                let chosen = present
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| listed.binary_search(i).is_ok())
                    .map(|(row, _)| row)
                    .collect();
                (chosen, format!("{} listed", listed.len()))
            }
            Method::AvgPooling | Method::Visionzip => {
                bail!("builds tokens; only before the decoder")
            }
        })
    }
}

impl TokenSelector for PruneSelector<'_> {
    fn select(&mut self, ctx: &CutContext) -> Result<Option<Vec<usize>>> {
        if ctx.layer == 0 {
            self.next_built = ctx.kept.len();
        }
        let mut is_visual = ctx.visual.mask(ctx.kept.iter().max().map_or(0, |m| m + 1));
        for &b in &self.built_ids {
            is_visual[b] = true;
        }
        if ctx.layer == 0
            && self
                .stages
                .iter()
                .any(|(_, s)| matches!(s.method, Method::Sparsevlm | Method::SparsevlmV2))
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
        if stage.method == Method::Todre && stage.layer > 0 && !self.todre_decided {
            return Ok(None);
        }
        let mut keep_row = vec![true; ctx.kept.len()];
        for &r in &vis_rows {
            keep_row[r] = false;
        }
        for &c in &chosen {
            keep_row[vis_rows[c]] = true;
        }
        let mut keep: Vec<usize> = (0..ctx.kept.len())
            .filter(|&r| keep_row[r])
            .map(|r| ctx.kept[r])
            .collect();
        let mut note = note;
        if let Some(scores) = self.sparsevlm_scores.take() {
            let built = self
                .recycle(ctx, &vis_rows, &chosen, &scores)
                .map_err(|e| anyhow!("{label}: {e:#}"))?;
            if let Some(Recycled {
                after,
                ids,
                dropped,
            }) = built
            {
                // After the last visual token kept, or where the visual tokens began.
                // (The tokens before the first visual row are text, all kept.)
                let at = match after {
                    Some(id) => keep.iter().position(|&p| p == id).expect("kept") + 1,
                    None => vis_rows[0],
                };
                note = format!("{dropped} dropped, {} recycled into {:?}", ids.len(), ids);
                keep.splice(at..at, ids);
            }
        }
        self.records.push(StageRecord {
            stage: stage.to_string(),
            kept_visual: chosen.iter().map(|&c| ctx.kept[vis_rows[c]]).collect(),
            note,
        });
        Ok(Some(keep))
    }

    fn built_tokens(&mut self) -> Option<Tensor> {
        self.pending_built.take()
    }

    fn attention_rows(&self, layer: usize, kept: &[usize]) -> Option<Vec<usize>> {
        let (_, next) = self.stage_at(layer + 1)?;
        match next.method {
            Method::Fastv | Method::WindowFastv => kept.last().map(|&l| vec![l]),
            Method::Sparsevlm | Method::SparsevlmV2 => self.raters.clone(),
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

/// The tokens a SparseVLM v1.5 stage recycled.
struct Recycled {
    /// The id of the last visual token kept, after which the merged tokens go (`None`: none kept).
    after: Option<usize>,
    /// The merged tokens' ids.
    ids: Vec<usize>,
    /// How many visual tokens the stage dropped.
    dropped: usize,
}

impl PruneSelector<'_> {
    /// SparseVLM v1.5's recycling at a stage that kept `chosen` of `vis_rows` by `scores`: the
    /// dropped tokens' top `int(0.3 · dropped) + 1` by score, clustered and merged
    /// ([`recycle::dpc_knn_merge`]) from this layer's input, are left in `pending_built`; `None` when
    /// nothing was dropped.
    fn recycle(
        &mut self,
        ctx: &CutContext,
        vis_rows: &[usize],
        chosen: &[usize],
        scores: &[f32],
    ) -> Result<Option<Recycled>> {
        let dropped: Vec<usize> = (0..vis_rows.len())
            .filter(|i| chosen.binary_search(i).is_err())
            .collect();
        let Some((_, clusters)) = recycle::recycle_counts(dropped.len()) else {
            return Ok(None);
        };
        let relation: Vec<f32> = dropped.iter().map(|&i| scores[i]).collect();
        let rows: Vec<usize> = recycle::recycled_tokens(&relation)
            .into_iter()
            .map(|j| vis_rows[dropped[j]])
            .collect();
        let merged = recycle::dpc_knn_merge(&rows_f32(ctx.hidden, &rows), clusters)?;
        self.pending_built = Some(merged.tokens.unsqueeze(0));
        let ids: Vec<usize> = (self.next_built..self.next_built + clusters).collect();
        self.next_built += clusters;
        self.built_ids.extend(&ids);
        let after = chosen.last().map(|&c| ctx.kept[vis_rows[c]]);
        Ok(Some(Recycled {
            after,
            ids,
            dropped: dropped.len(),
        }))
    }
}

/// SparseVLM's raters: text tokens after the image whose mean relevance to the visual tokens
/// (softmax over the text of `E_v · E_tᵀ`, averaged over visual rows) is above the mean, strictly,
/// as Gumpest/SparseVLMs' `LlamaDynamicvitModel.forward` selects them (`m_v_t > m_v_t.mean()`).
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
        .filter(|(_, &v)| v as f64 > mean)
        .map(|(&row, _)| kept[row])
        .collect()
}

/// ToDRE's pivot among the prompt's visual tokens: the patch with the most CLS attention at the
/// vision tower's feature layer; without a CLS token (Qwen2.5-VL) the centre token of the grid.
fn todre_pivot(model: &VlModel, inputs: &ModelInputs) -> Result<usize> {
    let family = model.prune_family();
    if !family.has_cls() {
        let (rows, cols) = inputs.visual.grid;
        return Ok((rows / 2) * cols + cols / 2);
    }
    let pixels = inputs
        .pixel_values
        .as_ref()
        .ok_or_else(|| anyhow!("todre needs an image"))?;
    let cls = family.cls_attention(pixels)?;
    Ok(methods::top_k(&cls, 1).first().copied().unwrap_or(0))
}
