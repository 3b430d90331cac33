//! What pruning needs from a model family's own vision side, implemented in each family's folder
//! (`models/<family>/prune.rs`), so that a new family adds its behaviour there and the methods here
//! stay family-agnostic.

use anyhow::Result;
use tch::Tensor;

use crate::intervention::{PositionPolicy, VisualTokens};
use crate::model::ModelInputs;

/// The vision tower's material VisionZip selects and merges from (one image).
pub struct VisionZipSource {
    /// Tokens to select and merge `[T, D]` (LLaVA: CLIP's feature-layer states with CLS; Qwen2.5-VL:
    /// the merged visual embeddings).
    pub tokens: Tensor,
    /// Their keys `[T, d]` (head mean), by which contextual tokens are assigned.
    pub keys: Tensor,
    /// The attention each token receives (`[T]`): its dominant-token score.
    pub scores: Vec<f32>,
    /// A class token kept first in any case (LLaVA's CLS), whose score is not ranked.
    pub cls: Option<usize>,
    /// For each token, the index among the prompt's visual tokens whose position ids it takes when
    /// positions are kept (CLS: the first patch).
    pub visual_index: Vec<usize>,
    /// What the tokens are, for the stage note ("CLIP tokens", "merged tokens").
    pub token_kind: &'static str,
}

/// An image that the vision tower sees as several crops (LLaVA-NeXT's anyres: the base image, then
/// the tiles row-major), which VisionZip zips one by one as its released code does for LLaVA-NeXT.
pub struct VisionZipCrops {
    /// Each crop's material, CLIP tokens with CLS first (`cls: Some(0)`).
    pub crops: Vec<VisionZipSource>,
    /// Tiles (rows, cols) of the high-resolution image.
    pub tile_grid: (usize, usize),
    /// Patches per side of a crop.
    pub side: usize,
    /// The unpadded high-resolution grid (rows, cols), and where it starts on the padded
    /// `tile_grid × side` grid (row, col).
    pub highres_grid: (usize, usize),
    pub highres_offset: (usize, usize),
    /// Visual tokens of the base image before the high-resolution grid.
    pub base_tokens: usize,
}

/// A model family's part in pruning.
pub trait PruneFamily {
    /// Position convention of a stage before the decoder (K = 0) when `--positions` does not
    /// override it: LLaVA renumbers (the LLM sees a shorter sequence), Qwen2.5-VL keeps the 3-D
    /// M-RoPE ids of the kept tokens.
    fn pre_llm_positions(&self) -> PositionPolicy;

    /// VisionZip's scores, keys and tokens for the image `pixels` whose prompt embeddings are
    /// `embeds` `[1, S, D]` with visual tokens `visual`.
    fn visionzip_source(
        &self,
        inputs: &ModelInputs,
        pixels: &Tensor,
        embeds: &Tensor,
        visual: &VisualTokens,
    ) -> Result<VisionZipSource>;

    /// The crops VisionZip zips one by one, for a family whose image is several crops; `None` (the
    /// default) where [`Self::visionzip_source`] gives one image's material.
    fn visionzip_crops(
        &self,
        _inputs: &ModelInputs,
        _pixels: &Tensor,
    ) -> Result<Option<VisionZipCrops>> {
        Ok(None)
    }

    /// VisionZip's new tokens `[k, D_tokens]` in the decoder's input space (LLaVA: the projector).
    fn project_zipped(&self, block: &Tensor) -> Tensor;

    /// Whether the vision tower has a CLS token (LLaVA's CLIP does, Qwen2.5-VL's does not).
    fn has_cls(&self) -> bool;

    /// The CLS attention (summed over heads) each of the prompt's visual tokens receives at the
    /// vision tower's feature layer for the image `pixels` (ToDRE's pivot); only when
    /// [`Self::has_cls`].
    fn cls_attention(&self, pixels: &Tensor) -> Result<Vec<f32>>;
}
