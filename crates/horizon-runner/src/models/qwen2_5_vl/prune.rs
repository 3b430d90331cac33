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
