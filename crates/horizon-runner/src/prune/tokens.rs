//! Stages that build new visual tokens before the decoder (`avg-pooling@0`, `visionzip@0`), and the
//! rebuild of the prompt around them.

use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};

use super::methods;
use super::spec::StageInput;
use super::tensor_rows::{index_tensor, rows_f32, unit_rows};
use super::{Method, PruneOptions, Stage, VisionZipCrops};
use crate::intervention::{PositionPolicy, VisualTokens};
use crate::model::{ModelInputs, VlModel};

/// The decoder's inputs after any pre-LLM token-building stage.
pub(super) struct DecoderInputs {
    pub embeds: Tensor,
    pub positions: Tensor,
    pub rope_deltas: i64,
    pub visual: VisualTokens,
}

/// What a token-building stage made: the new visual block `[k, D]`, for each new token the prompt
/// index whose position ids it takes when positions are kept, its grid, and a note.
pub(super) struct BuiltTokens {
    pub block: Tensor,
    pub representatives: Vec<usize>,
    pub grid: (usize, usize),
    pub note: String,
}

/// A token-building stage (`avg-pooling@0`, `visionzip@0`): the new visual block `[k, D]`, for each new
/// token the prompt index whose position ids it takes when positions are kept, its grid, a note.
pub(super) fn build_tokens(
    model: &VlModel,
    inputs: &ModelInputs,
    dec: &DecoderInputs,
    stage: &Stage,
    options: &PruneOptions,
) -> Result<BuiltTokens> {
    let visual = &dec.visual;
    let n = visual.positions.len();
    let grids = model.window_grid(inputs, 1)?.grids;
    let plan = stage.check_at(
        &StageInput {
            sample: options.sample_key.as_deref(),
            prompt_visual: n,
            left: n,
            grids: &grids,
            present: None,
        },
        options,
    )?;
    let k = plan.keep;
    match stage.method {
        Method::AvgPooling if plan.pool_side.is_some() => {
            // Several grids (LLaVA-NeXT): each window's mean, each band closed by its newline.
            let s = plan.pool_side.unwrap_or(1);
            let x = rows_f32(&dec.embeds, &visual.positions).to_kind(dec.embeds.kind());
            let mut tokens = Vec::with_capacity(k);
            let mut representatives = Vec::with_capacity(k);
            for token in methods::per_grid_pool_layout(&grids, s) {
                let (row, first) = match token {
                    methods::PooledToken::Window(members) => (
                        x.index_select(0, &index_tensor(&members, x.device()))
                            .mean_dim(0, false, x.kind()),
                        members[0],
                    ),
                    methods::PooledToken::Closer(t) => (x.get(t as i64), t),
                };
                tokens.push(row);
                representatives.push(visual.positions[first]);
            }
            Ok(BuiltTokens {
                block: Tensor::stack(&tokens, 0),
                representatives,
                grid: (1, k),
                note: format!("{s}x{s} windows per grid"),
            })
        }
        Method::AvgPooling => {
            let (rows, cols) = visual.grid;
            let (r, c) = plan.pooled.ok_or_else(|| anyhow!("no pooled grid"))?;
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
        Method::Visionzip => visionzip(model, inputs, dec, k),
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

/// VisionZip on the family's vision material ([`super::family::PruneFamily::visionzip_source`]):
/// dominant tokens (a class token, then the tokens receiving the most attention), then contextual
/// tokens merged onto evenly spaced targets by key similarity; in the decoder's input space.
fn visionzip(
    model: &VlModel,
    inputs: &ModelInputs,
    dec: &DecoderInputs,
    k: usize,
) -> Result<BuiltTokens> {
    let pixels = inputs
        .pixel_values
        .as_ref()
        .ok_or_else(|| anyhow!("visionzip needs an image"))?;
    let family = model.prune_family();
    if let Some(crops) = family.visionzip_crops(inputs, pixels)? {
        let (block, representatives, note) = visionzip_crops(&crops, k)?;
        let block = family.project_zipped(&block);
        let count = block.size()[0] as usize;
        return Ok(BuiltTokens {
            block,
            representatives: representatives
                .iter()
                .map(|&i| dec.visual.positions[i])
                .collect(),
            grid: (1, count),
            note,
        });
    }
    let source = family.visionzip_source(inputs, pixels, &dec.embeds, &dec.visual)?;
    let (dominant, contextual) = visionzip_split(k);
    let mut chosen = Vec::with_capacity(dominant);
    let ranked = dominant - usize::from(source.cls.is_some());
    let candidates: Vec<usize> = (0..source.scores.len())
        .filter(|&t| Some(t) != source.cls)
        .collect();
    let candidate_scores: Vec<f32> = candidates.iter().map(|&t| source.scores[t]).collect();
    chosen.extend(source.cls);
    chosen.extend(
        methods::top_k(&candidate_scores, ranked)
            .into_iter()
            .map(|i| candidates[i]),
    );
    let (block, sources) = zip_tokens(&source.tokens, &source.keys, &chosen, contextual);
    let block = family.project_zipped(&block);
    let count = block.size()[0] as usize;
    let visual = &dec.visual;
    Ok(BuiltTokens {
        block,
        representatives: sources
            .iter()
            .map(|&t| visual.positions[source.visual_index[t]])
            .collect(),
        grid: (1, count),
        note: format!(
            "dominant {dominant}{}, contextual {} on {} {:?}",
            if source.cls.is_some() {
                " (CLS included)"
            } else {
                ""
            },
            count - dominant,
            source.token_kind,
            &sources[dominant..]
        ),
    })
}

/// VisionZip on an image of several crops, as dvlab-research/VisionZip runs LLaVA-NeXT
/// (`visionzip/llava_arch.py`, `prepare_inputs_labels_for_multimodal_visionzip` and
/// `restore_image_features_sorted`): each crop zipped on its own (its CLS, its most CLS-attended
/// patches, its contextual tokens; `k` split evenly over the crops, the remainder one each to the
/// first), then the base crop's tokens as they come, the tiles' dominant patches in raster order of
/// the padded tile grid, the tiles' CLS tokens, the tiles' contextual tokens. Returns the block in
/// the vision tower's space `[k, D_v]`, for each token the visual index whose position ids it takes
/// when positions are kept (its place on the packed grids, clamped into the unpadded grid; a CLS its
/// crop's first patch; a contextual token its target's), and a note.
fn visionzip_crops(crops: &VisionZipCrops, k: usize) -> Result<(Tensor, Vec<usize>, String)> {
    let n = crops.crops.len();
    if k < n {
        bail!("visionzip keeps tokens of each of the image's {n} crops (base image and tiles): keep ≥ {n}");
    }
    let (th, tw) = crops.tile_grid;
    if n != 1 + th * tw {
        bail!("{n} crops for a {th}×{tw} tile grid");
    }
    let side = crops.side;
    let (top, left) = crops.highres_offset;
    let (rows, cols) = crops.highres_grid;
    // The packed index of cell (y, x) of the padded high-resolution grid, clamped into the unpadded one.
    let packed = |y: usize, x: usize| {
        let y = y.clamp(top, top + rows - 1) - top;
        let x = x.clamp(left, left + cols - 1) - left;
        crops.base_tokens + y * (cols + 1) + x
    };
    let mut base = Vec::new();
    let mut dominant: Vec<((usize, usize), Tensor)> = Vec::new();
    let (mut cls, mut contextual) = (Vec::new(), Vec::new());
    let (mut base_rep, mut cls_rep, mut ctx_rep) = (Vec::new(), Vec::new(), Vec::new());
    let mut splits = Vec::new();
    for (c, src) in crops.crops.iter().enumerate() {
        let budget = k / n + usize::from(c < k % n);
        let (d, ctx) = visionzip_split(budget);
        splits.push((d, ctx));
        let patches: Vec<usize> = (1..src.scores.len()).collect();
        let scores: Vec<f32> = patches.iter().map(|&t| src.scores[t]).collect();
        let mut chosen = vec![0];
        chosen.extend(
            methods::top_k(&scores, d - 1)
                .into_iter()
                .map(|i| patches[i]),
        );
        let (block, sources) = zip_tokens(&src.tokens, &src.keys, &chosen, ctx);
        // Where CLIP token t of this crop sits: the base grid, or the padded high-resolution grid.
        let place = |t: usize| {
            let p = t.saturating_sub(1);
            if c == 0 {
                p
            } else {
                let tile = c - 1;
                packed((tile / tw) * side + p / side, (tile % tw) * side + p % side)
            }
        };
        if c == 0 {
            base.push(block);
            base_rep.extend(sources.iter().map(|&t| place(t)));
            continue;
        }
        let tile = c - 1;
        for (row, &t) in chosen.iter().enumerate().skip(1) {
            let p = t - 1;
            let at = ((tile / tw) * side + p / side, (tile % tw) * side + p % side);
            dominant.push((at, block.get(row as i64)));
        }
        cls.push(block.get(0));
        cls_rep.push(place(0));
        let kept = chosen.len() as i64;
        let merged = block.size()[0] - kept;
        contextual.push(block.narrow(0, kept, merged));
        ctx_rep.extend(sources[chosen.len()..].iter().map(|&t| place(t)));
    }
    dominant.sort_by_key(|(at, _)| *at);
    let dom_rep: Vec<usize> = dominant.iter().map(|(at, _)| packed(at.0, at.1)).collect();
    let mut parts = base;
    if !dominant.is_empty() {
        let rows: Vec<Tensor> = dominant.into_iter().map(|(_, t)| t).collect();
        parts.push(Tensor::stack(&rows, 0));
    }
    parts.push(Tensor::stack(&cls, 0));
    parts.extend(contextual);
    let representatives = base_rep
        .into_iter()
        .chain(dom_rep)
        .chain(cls_rep)
        .chain(ctx_rep)
        .collect();
    let note = format!(
        "{n} crops (base image, {th}×{tw} tiles), dominant + contextual per crop {:?}",
        splits
    );
    Ok((Tensor::cat(&parts, 0), representatives, note))
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

/// The prompt with its visual span replaced by `block`; positions renumbered (M-RoPE: the block as
/// an image of its grid) or taken from `representatives`.
pub(super) fn rebuild(
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
        PositionPolicy::Renumbered => {
            // The built block is an image of its own grid (M-RoPE renumbering reads it).
            let cols = grid.1.max(1);
            let tokens: Vec<Option<[i64; 3]>> = (0..new_len)
                .map(|p| {
                    (first..first + k)
                        .contains(&p)
                        .then(|| [0, ((p - first) / cols) as i64, ((p - first) % cols) as i64])
                })
                .collect();
            let (positions, next) = rotary.renumbered_positions(&tokens, device);
            (positions, next - new_len as i64)
        }
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
