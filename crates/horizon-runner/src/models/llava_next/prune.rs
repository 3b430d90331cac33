//! LLaVA-NeXT's part in pruning ([`PruneFamily`]): VisionZip per crop (the base image and each
//! tile, one CLIP pass each, as dvlab-research/VisionZip runs LLaVA-NeXT); ToDRE's pivot, which
//! reads one CLS token, is not ported to tiles and refuses (docs/pruning.md, "LLaVA-NeXT").

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::LlavaNextForConditionalGeneration;
use crate::intervention::{PositionPolicy, VisualTokens};
use crate::model::ModelInputs;
use crate::prune::{PruneFamily, VisionZipCrops, VisionZipSource};

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
        bail!("visionzip zips LLaVA-NeXT crop by crop (visionzip_crops), not as one image")
    }

    /// Each crop's CLIP tokens at the feature layer (CLS first), their head-mean keys and the CLS
    /// attention (summed over heads) each receives.
    fn visionzip_crops(
        &self,
        inputs: &ModelInputs,
        pixels: &Tensor,
    ) -> Result<Option<VisionZipCrops>> {
        let [[_, h, w]] = inputs.image_grid_thw[..] else {
            bail!("visionzip needs one image");
        };
        let layout = self.layout(h as u32, w as u32)?;
        let tiles = pixels.size()[0] as usize;
        if tiles != layout.num_tiles() {
            bail!(
                "pixel values hold {tiles} tiles, the image needs {}",
                layout.num_tiles()
            );
        }
        let mut crops = Vec::with_capacity(tiles);
        for t in 0..tiles {
            let (hidden, probs, metric) = self
                .llava
                .feature_layer_attention(&pixels.narrow(0, t as i64, 1))?;
            let row = probs
                .select(0, 0)
                .select(1, 0)
                .sum_dim_intlist(0, false, Kind::Float);
            let scores = Vec::<f32>::try_from(row.reshape([-1]).to_device(tch::Device::Cpu))?;
            let n = scores.len();
            crops.push(VisionZipSource {
                tokens: hidden.select(0, 0),
                keys: metric.select(0, 0),
                scores,
                cls: Some(0),
                visual_index: (0..n).map(|t| t.saturating_sub(1)).collect(),
                token_kind: "CLIP tokens",
            });
        }
        let (side, _) = layout.base_grid;
        Ok(Some(VisionZipCrops {
            crops,
            tile_grid: (layout.tile_grid.0 as usize, layout.tile_grid.1 as usize),
            side: side as usize,
            highres_grid: (
                layout.highres_grid.0 as usize,
                layout.highres_grid.1 as usize,
            ),
            highres_offset: (
                layout.highres_offset.0 as usize,
                layout.highres_offset.1 as usize,
            ),
            base_tokens: layout.base_tokens(),
        }))
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
