//! LLaVA-NeXT's part in pruning ([`PruneFamily`]). The methods that read CLIP's CLS attention or
//! zip CLIP tokens (VisionZip, ToDRE's pivot) are not ported to anyres tiles yet: they refuse.

use anyhow::{bail, Result};
use tch::Tensor;

use super::LlavaNextForConditionalGeneration;
use crate::intervention::{PositionPolicy, VisualTokens};
use crate::model::ModelInputs;
use crate::prune::{PruneFamily, VisionZipSource};

impl PruneFamily for LlavaNextForConditionalGeneration {
    fn pre_llm_positions(&self) -> PositionPolicy {
        PositionPolicy::Renumbered
    }

    fn visionzip_source(
        &self,
        _inputs: &ModelInputs,
        _pixels: &Tensor,
        _embeds: &Tensor,
        _visual: &VisualTokens,
    ) -> Result<VisionZipSource> {
        bail!("visionzip is not implemented for LLaVA-NeXT's anyres tiles")
    }

    fn project_zipped(&self, block: &Tensor) -> Tensor {
        self.llava.project(block)
    }

    fn has_cls(&self) -> bool {
        false
    }

    fn cls_attention(&self, _pixels: &Tensor) -> Result<Vec<f32>> {
        bail!("CLS attention is not implemented for LLaVA-NeXT's anyres tiles")
    }
}
