//! LLaVA-NeXT as a horizon model family ([`crate::models::family`]).

use anyhow::Result;
use std::path::Path;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use super::{
    LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor, LLAVA_NEXT_LAYOUTS,
};
use crate::decoder::Decoder;
use crate::inputs::ModelInputs;
use crate::models::llava::family::prompt_text;
use crate::models::{Family, FamilyModel, FamilyProcessor};
use crate::nn::Linear;
use crate::processing::PromptTemplate;
use crate::weights::{CheckpointLayout, Weights};
use horizon_data::imageproc::ResampleOrder;
use horizon_data::window::WindowGrid;

impl Family for LlavaNextForConditionalGeneration {
    const MODEL_TYPE: &'static str = "llava_next";
    const LAYOUTS: &'static [CheckpointLayout] = LLAVA_NEXT_LAYOUTS;
    type Config = LlavaNextConfig;

    fn config(path: &Path, value: serde_json::Value) -> Result<LlavaNextConfig> {
        LlavaNextConfig::from_json(path, value)
    }

    fn load(weights: &Weights, config: LlavaNextConfig) -> Result<Self> {
        Self::from_weights(weights, config)
    }
}

impl FamilyModel for LlavaNextForConditionalGeneration {
    fn decoder(&self) -> &Decoder {
        &self.llava.language_model
    }

    fn lm_head(&self) -> &Linear {
        &self.llava.lm_head
    }

    fn image_token_id(&self) -> i64 {
        self.config.llava.image_token_id
    }

    fn unused_by_design(&self, name: &str) -> bool {
        LlavaNextForConditionalGeneration::unused_by_design(self, name)
    }

    fn embed_prompt(&self, inputs: &ModelInputs) -> Result<Tensor> {
        self.input_embeds(
            &inputs.input_ids,
            inputs.pixel_values.as_ref(),
            &inputs.image_grid_thw,
        )
    }

    fn processor(&self, dir: &Path) -> Result<Box<dyn FamilyProcessor>> {
        Ok(Box::new(LlavaNextProcessor::load(dir, &self.config)?))
    }

    /// The base grid and the high-resolution grid of the prompt's one image.
    fn token_windows(&self, inputs: &ModelInputs, size: usize) -> Result<WindowGrid> {
        match inputs.image_grid_thw[..] {
            [[_, h, w]] => {
                self.window_grid(h as u32, w as u32, inputs.visual.positions.len(), size)
            }
            _ => WindowGrid::new(inputs.visual.grid, size),
        }
    }

    fn synthetic_prompt(&self, text_tokens: usize, device: Device) -> Result<ModelInputs> {
        self.synthetic_inputs(text_tokens, device)
    }
}

impl FamilyProcessor for LlavaNextProcessor {
    fn prepare_image(
        &self,
        question: &str,
        image: &image::RgbImage,
        template: PromptTemplate,
        image_token_id: i64,
        device: Device,
    ) -> Result<ModelInputs> {
        self.prepare(question, image, template, image_token_id, device)
    }

    fn prompt_text(
        &self,
        question: &str,
        template: PromptTemplate,
        has_image: bool,
    ) -> Result<String> {
        Ok(prompt_text(
            self.prompt(question, template)?,
            template,
            has_image,
        ))
    }

    fn prepare_text(
        &self,
        question: &str,
        template: PromptTemplate,
        device: Device,
    ) -> Result<ModelInputs> {
        LlavaNextProcessor::prepare_text(self, question, template, device)
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn decode(&self, ids: &[i64]) -> Result<String> {
        LlavaNextProcessor::decode(self, ids)
    }

    fn eos_token_ids(&self) -> &[i64] {
        LlavaNextProcessor::eos_token_ids(self)
    }

    fn set_resample_order(&mut self, order: ResampleOrder) {
        self.resample_order = order;
    }

    fn set_pixel_bounds(&mut self, _min: Option<u64>, _max: Option<u64>) -> Result<()> {
        anyhow::bail!(
            "--min-pixels/--max-pixels: only Qwen2.5-VL resizes images to pixel bounds; LLaVA's tiles are fixed"
        )
    }
}
