//! What a model family provides to horizon (docs/model-families.md). Each family implements these
//! traits in its own folder (`models/<family>/family.rs`) and is named once, in the registry of
//! [`super`] (`families!`); [`crate::VlModel`] and [`crate::processor::Processor`] dispatch to them,
//! once per call at the model level (the decoder's layers are shared and never dispatched).

use anyhow::{bail, Result};
use std::path::Path;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::decoder::Decoder;
use crate::inputs::ModelInputs;
use crate::nn::Linear;
use crate::processing::PromptTemplate;
use crate::prune::PruneFamily;
use crate::weights::{CheckpointLayout, Weights};
use horizon_data::imageproc::ResampleOrder;
use horizon_data::window::WindowGrid;

/// How a family is built from a checkpoint: its `model_type`, its config, its weight layouts.
pub trait Family: FamilyModel + Sized {
    /// HF `model_type` of the family's `config.json`.
    const MODEL_TYPE: &'static str;
    /// The checkpoint layouts (weight names on disk → in the model) the family reads.
    const LAYOUTS: &'static [CheckpointLayout];
    /// The parsed `config.json`.
    type Config;

    /// Parses `config.json` (read from `path`, already checked to name [`Self::MODEL_TYPE`]).
    fn config(path: &Path, value: serde_json::Value) -> Result<Self::Config>;

    /// Builds the model from `weights` (a checkpoint, or random weights for benchmarks).
    fn load(weights: &Weights, config: Self::Config) -> Result<Self>;
}

/// A loaded model of a family: what every caller of [`crate::VlModel`] reaches through it.
pub trait FamilyModel: PruneFamily {
    /// The language model: the one decoder every family shares.
    fn decoder(&self) -> &Decoder;

    fn lm_head(&self) -> &Linear;

    /// Token id of the image placeholder in prompts.
    fn image_token_id(&self) -> i64;

    /// Checkpoint tensors the model leaves unread on purpose (loading refuses any other unread one).
    fn unused_by_design(&self, name: &str) -> bool;

    /// The prompt's input embeddings `[1, S, D]`: token embeddings with the image features
    /// scattered into the image-token positions.
    fn embed_prompt(&self, inputs: &ModelInputs) -> Result<Tensor>;

    /// The processor of the checkpoint in `dir` for this model.
    fn processor(&self, dir: &Path) -> Result<Box<dyn FamilyProcessor>>;

    /// The windows of `horizon info` on the visual tokens of `inputs`: `size`×`size` blocks of the
    /// prompt's one token grid unless the family lays its tokens out on several.
    fn token_windows(&self, inputs: &ModelInputs, size: usize) -> Result<WindowGrid> {
        WindowGrid::new(inputs.visual.grid, size)
    }

    /// A synthetic prompt of `text_tokens` random text tokens around a random image, shaped like
    /// the family's chat template, for timing random-weight models (`horizon bench`).
    fn synthetic_prompt(&self, _text_tokens: usize, _device: Device) -> Result<ModelInputs> {
        bail!("synthetic inputs are not built for this model family yet")
    }
}

/// A family's processor: prompt text and image to [`ModelInputs`].
pub trait FamilyProcessor: Send + Sync {
    /// Question + decoded RGB image to model inputs.
    fn prepare_image(
        &self,
        question: &str,
        image: &image::RgbImage,
        template: PromptTemplate,
        image_token_id: i64,
        device: Device,
    ) -> Result<ModelInputs>;

    /// The whole prompt string the model gets for `question` (chat template included; the image as
    /// its one placeholder token, none for a text-only question).
    fn prompt_text(
        &self,
        question: &str,
        template: PromptTemplate,
        has_image: bool,
    ) -> Result<String>;

    /// A text-only question (no image) to model inputs: the chat template without its image.
    fn prepare_text(
        &self,
        question: &str,
        template: PromptTemplate,
        device: Device,
    ) -> Result<ModelInputs>;

    fn tokenizer(&self) -> &Tokenizer;

    fn decode(&self, ids: &[i64]) -> Result<String>;

    fn eos_token_ids(&self) -> &[i64];

    /// Reproduce the bicubic resize of another Pillow release.
    fn set_resample_order(&mut self, order: ResampleOrder);

    /// Overrides the image processor's resize bounds in pixels (`--min-pixels`/`--max-pixels`),
    /// for families whose visual token count follows them.
    fn set_pixel_bounds(&mut self, _min: Option<u64>, _max: Option<u64>) -> Result<()> {
        bail!("--min-pixels/--max-pixels: this model family does not resize images to pixel bounds")
    }

    /// Every image gives the same number of visual tokens (fixed by the config), so one sample's
    /// prompt stands for all.
    fn fixed_visual_tokens(&self) -> bool {
        false
    }
}
