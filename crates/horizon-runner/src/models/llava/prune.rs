//! LLaVA's part in pruning ([`PruneFamily`]): CLIP's CLS attention at the feature layer, VisionZip
//! on CLIP's feature-layer states (CLS included), projected by the multi-modal projector.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::LlavaForConditionalGeneration;
use crate::intervention::{PositionPolicy, VisualTokens};
use crate::model::ModelInputs;
use crate::prune::{PruneFamily, VisionZipSource};

/// `Σ_h A[h, CLS, t]` over every CLIP token t (CLS first) of `probs` `[1, heads, T, T]`.
fn cls_row(probs: &Tensor) -> Vec<f32> {
    let row = probs
        .select(0, 0)
        .select(1, 0)
        .sum_dim_intlist(0, false, Kind::Float);
    Vec::<f32>::try_from(row.reshape([-1]).to_device(tch::Device::Cpu)).expect("f32 tensor")
}

impl PruneFamily for LlavaForConditionalGeneration {
    fn pre_llm_positions(&self) -> PositionPolicy {
        PositionPolicy::Renumbered
    }

    fn visionzip_source(
        &self,
        _inputs: &ModelInputs,
        pixels: &Tensor,
        _embeds: &Tensor,
        visual: &VisualTokens,
    ) -> Result<VisionZipSource> {
        let (hidden, probs, metric) = self.feature_layer_attention(pixels)?;
        let tokens = hidden.size()[1] as usize;
        let n = visual.positions.len();
        if tokens != n + 1 {
            bail!("visionzip expects the {n} visual tokens to be CLIP's patches without CLS (vision_feature_select_strategy default)");
        }
        Ok(VisionZipSource {
            tokens: hidden.select(0, 0),
            keys: metric.select(0, 0),
            scores: cls_row(&probs),
            cls: Some(0),
            // CLIP token t is patch t - 1; CLS takes the first patch's ids.
            visual_index: (0..tokens).map(|t| t.saturating_sub(1)).collect(),
            token_kind: "CLIP tokens",
        })
    }

    fn project_zipped(&self, block: &Tensor) -> Tensor {
        self.project(block)
    }

    fn has_cls(&self) -> bool {
        true
    }

    fn cls_attention(&self, pixels: &Tensor) -> Result<Vec<f32>> {
        let (_, probs, _) = self.feature_layer_attention(pixels)?;
        Ok(cls_row(&probs)[1..].to_vec())
    }
}
