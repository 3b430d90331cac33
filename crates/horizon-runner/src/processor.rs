//! The processor of the loaded model's family behind one type: prompt text and image to
//! [`ModelInputs`].

use anyhow::{anyhow, Result};
use std::path::Path;

use horizon_data::imageproc::{self, ResampleOrder};

use crate::inputs::ModelInputs;
use crate::model::VlModel;
use crate::models::FamilyProcessor;
pub use crate::processing::{PromptTemplate, DEFAULT_RESAMPLE_ORDER};

/// The processor matching a loaded model.
pub struct Processor {
    family: Box<dyn FamilyProcessor>,
}

impl Processor {
    pub fn load(dir: &Path, model: &VlModel) -> Result<Self> {
        Ok(Self {
            family: model.family().processor(dir)?,
        })
    }

    /// Question + image file to model inputs.
    pub fn prepare(
        &self,
        model: &VlModel,
        question: &str,
        image_path: &Path,
        template: PromptTemplate,
    ) -> Result<ModelInputs> {
        let image = imageproc::load_rgb(image_path)?;
        self.prepare_image(model, question, &image, template)
    }

    /// Question + decoded RGB image to model inputs.
    pub fn prepare_image(
        &self,
        model: &VlModel,
        question: &str,
        image: &image::RgbImage,
        template: PromptTemplate,
    ) -> Result<ModelInputs> {
        self.family.prepare_image(
            question,
            image,
            template,
            model.image_token_id(),
            model.device(),
        )
    }

    /// The whole prompt string the model gets for `question` (chat template included; the image as
    /// its one placeholder token, none for a text-only question).
    pub fn prompt_text(
        &self,
        question: &str,
        template: PromptTemplate,
        has_image: bool,
    ) -> Result<String> {
        self.family.prompt_text(question, template, has_image)
    }

    /// A text-only question (no image) to model inputs: the chat template without its image,
    /// no visual tokens.
    pub fn prepare_text(
        &self,
        model: &VlModel,
        question: &str,
        template: PromptTemplate,
    ) -> Result<ModelInputs> {
        self.family.prepare_text(question, template, model.device())
    }

    /// Reproduce the bicubic resize of another Pillow release.
    pub fn set_resample_order(&mut self, order: ResampleOrder) {
        self.family.set_resample_order(order)
    }

    /// Qwen2.5-VL: overrides the image processor's `min_pixels` / `max_pixels` (the resize bounds
    /// that decide the visual token count). Other families have fixed-size inputs: an error.
    pub fn set_pixel_bounds(&mut self, min: Option<u64>, max: Option<u64>) -> Result<()> {
        self.family.set_pixel_bounds(min, max)
    }

    /// Every image gives the same number of visual tokens (LLaVA-1.5: fixed by its image size), so
    /// one sample's prompt stands for all.
    pub fn fixed_visual_tokens(&self) -> bool {
        self.family.fixed_visual_tokens()
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        self.family.decode(ids)
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        self.family.eos_token_ids()
    }

    /// First token of `answer` tokenized without special tokens: the reference procedure's target y.
    pub fn first_answer_token(&self, answer: &str) -> Result<Option<i64>> {
        let enc = self
            .family
            .tokenizer()
            .encode(answer, false)
            .map_err(|e| anyhow!("tokenizing the answer {answer:?}: {e}"))?;
        Ok(enc.get_ids().first().map(|&i| i as i64))
    }
}
