//! Qwen2.5-VL's part in pruning ([`PruneFamily`]). Its vision tower has no CLS token: VisionZip
//! scores the merged tokens as VisionZip's own path for CLS-less encoders (SigLIP) does, by the
//! attention their patches receive (mean over heads and queries) at the last full-attention block,
//! with that block's head-mean keys, and merges the merged embeddings (after the PatchMerger, whose
//! 2x2 grouping a selection of patches would break). Stages before the decoder keep the tokens'
//! 3-D M-RoPE ids by default, as the Qwen ports of the methods slice them.

use anyhow::{anyhow, bail, Result};
use tch::Tensor;

use super::Qwen2_5VlForConditionalGeneration;
use crate::intervention::{PositionPolicy, VisualTokens};
use crate::model::ModelInputs;
use crate::prune::{PruneFamily, VisionZipSource};

impl PruneFamily for Qwen2_5VlForConditionalGeneration {
    fn pre_llm_positions(&self) -> PositionPolicy {
        PositionPolicy::Original
    }

    fn visionzip_source(
        &self,
        inputs: &ModelInputs,
        pixels: &Tensor,
        embeds: &Tensor,
        visual: &VisualTokens,
    ) -> Result<VisionZipSource> {
        let (received, metric) = self
            .visual
            .last_full_attention_received(pixels, &inputs.image_grid_thw)
            .map_err(|e| anyhow!("visionzip: {e}"))?;
        let n = visual.positions.len();
        if received.size()[0] as usize != n {
            bail!(
                "visionzip: the vision tower gives {} merged tokens, the prompt has {n} visual tokens",
                received.size()[0]
            );
        }
        if visual.positions.windows(2).any(|w| w[1] != w[0] + 1) {
            bail!("visionzip: the visual tokens are not one contiguous block");
        }
        let scores = Vec::<f32>::try_from(
            received
                .to_kind(tch::Kind::Float)
                .reshape([-1])
                .to_device(tch::Device::Cpu),
        )
        .expect("f32 tensor");
        let tokens = match visual.positions.first() {
            Some(&first) => embeds.select(0, 0).narrow(0, first as i64, n as i64),
            None => bail!("visionzip: the prompt has no visual tokens"),
        };
        Ok(VisionZipSource {
            tokens,
            keys: metric,
            scores,
            cls: None,
            visual_index: (0..n).collect(),
            token_kind: "merged tokens",
        })
    }

    fn project_zipped(&self, block: &Tensor) -> Tensor {
        block.shallow_clone()
    }

    fn has_cls(&self) -> bool {
        false
    }

    fn cls_attention(&self, _pixels: &Tensor) -> Result<Vec<f32>> {
        bail!("Qwen2.5-VL's vision tower has no CLS token")
    }
}

/// `--positions renumber` for M-RoPE: the 3-D ids HF's `Qwen2_5_VLModel.get_rope_index` gives the
/// shortened sequence, its kept visual tokens laid out as an image of their own. `tokens[i]` is `None`
/// for a text token and the grid coordinates `(t, h, w)` of a visual token (any values ordered as the
/// grid's: the token's current M-RoPE ids, or a built block's own grid). Text tokens take consecutive
/// ids on all three axes. Each run of visual tokens (one image) is the image of its kept rows and
/// columns: a token's ids are the ranks of its t, h and w among the run's distinct values, plus the
/// run's start; the token after the run starts at start + max(rows, cols), as `get_rope_index`
/// advances past an image (`current_pos += max(grid_h, grid_w) // spatial_merge_size`). A block
/// whose tokens fill their rows × cols (a pooled grid, a built 1 × k block, a kept window) gets
/// exactly HF's ids for an image of that grid. Returns the ids and the position after the last one
/// (HF's `rope_deltas` is that minus the sequence length).
pub(crate) fn renumber_mrope(tokens: &[Option<[i64; 3]>]) -> (Vec<[i64; 3]>, i64) {
    let rank = |values: Vec<i64>| -> Vec<i64> {
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        values
            .iter()
            .map(|v| distinct.binary_search(v).expect("present") as i64)
            .collect()
    };
    let mut ids = Vec::with_capacity(tokens.len());
    let mut next = 0i64;
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i].is_none() {
            ids.push([next; 3]);
            next += 1;
            i += 1;
            continue;
        }
        let end = (i..tokens.len())
            .find(|&j| tokens[j].is_none())
            .unwrap_or(tokens.len());
        let coords: Vec<[i64; 3]> = tokens[i..end].iter().map(|c| c.expect("visual")).collect();
        let axes: Vec<Vec<i64>> = (0..3)
            .map(|a| rank(coords.iter().map(|c| c[a]).collect()))
            .collect();
        ids.extend(
            (axes[0].iter().zip(&axes[1]).zip(&axes[2]))
                .map(|((t, h), w)| [next + t, next + h, next + w]),
        );
        let extent = |a: usize| axes[a].iter().max().map_or(0, |m| m + 1);
        next += extent(1).max(extent(2));
        i = end;
    }
    (ids, next)
}

#[cfg(test)]
mod tests {
    use super::renumber_mrope;

    #[test]
    fn text_is_consecutive_and_an_image_is_the_grid_of_its_kept_rows_and_columns() {
        // Two text tokens, a kept 2 × 3 sub-grid of a larger image (rows 1, 3; columns 0, 2, 5)
        // missing one cell, then text.
        let v = |h: i64, w: i64| Some([40, 40 + h, 40 + w]);
        let tokens = [
            None,
            None,
            v(1, 0),
            v(1, 2),
            v(3, 0),
            v(3, 2),
            v(3, 5),
            None,
        ];
        let (ids, next) = renumber_mrope(&tokens);
        assert_eq!(
            ids,
            vec![
                [0, 0, 0],
                [1, 1, 1],
                [2, 2, 2],
                [2, 2, 3],
                [2, 3, 2],
                [2, 3, 3],
                [2, 3, 4],
                [5, 5, 5],
            ]
        );
        assert_eq!(next, 6);
    }
}
