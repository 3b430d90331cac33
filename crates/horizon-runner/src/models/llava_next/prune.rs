//! LLaVA-NeXT's part in pruning ([`PruneFamily`]). The methods that read CLIP's CLS attention or
//! zip CLIP tokens (VisionZip, ToDRE's pivot) are not ported to anyres tiles (one CLIP pass and one
//! CLS token per tile) yet: they refuse (docs/pruning.md, "LLaVA-NeXT").

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
        bail!("visionzip is not implemented for LLaVA-NeXT's anyres tiles (one CLS token per tile)")
    }

    fn project_zipped(&self, block: &Tensor) -> Tensor {
        self.llava.project(block)
    }

    /// CLIP has a CLS token (one per tile), so ToDRE's pivot is CLS attention, not a grid centre.
    fn has_cls(&self) -> bool {
        true
    }

    fn cls_attention(&self, _pixels: &Tensor) -> Result<Vec<f32>> {
        bail!("todre's pivot (CLS attention) is not implemented for LLaVA-NeXT's anyres tiles (one CLS token per tile)")
    }
}
