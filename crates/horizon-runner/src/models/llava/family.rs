//! LLaVA-1.5 as a horizon model family ([`crate::models::family`]).

use anyhow::Result;
use std::path::Path;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use super::{LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, LLAVA_LAYOUTS};
use crate::decoder::Decoder;
use crate::inputs::ModelInputs;
use crate::models::{Family, FamilyModel, FamilyProcessor};
use crate::nn::Linear;
use crate::processing::PromptTemplate;
use crate::weights::{CheckpointLayout, Weights};
use horizon_data::imageproc::ResampleOrder;

impl Family for LlavaForConditionalGeneration {
    const MODEL_TYPE: &'static str = "llava";
    const LAYOUTS: &'static [CheckpointLayout] = LLAVA_LAYOUTS;
    type Config = LlavaConfig;

    fn config(path: &Path, value: serde_json::Value) -> Result<LlavaConfig> {
        LlavaConfig::from_json(path, value)
    }

    fn load(weights: &Weights, config: LlavaConfig) -> Result<Self> {
        Self::from_weights(weights, config)
    }
}

impl FamilyModel for LlavaForConditionalGeneration {
    fn decoder(&self) -> &Decoder {
        &self.language_model
    }

    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    fn image_token_id(&self) -> i64 {
        self.config.image_token_id
    }

    fn unused_by_design(&self, name: &str) -> bool {
        LlavaForConditionalGeneration::unused_by_design(self, name)
    }

    fn embed_prompt(&self, inputs: &ModelInputs) -> Result<Tensor> {
        self.input_embeds(&inputs.input_ids, inputs.pixel_values.as_ref())
    }

    fn processor(&self, dir: &Path) -> Result<Box<dyn FamilyProcessor>> {
        Ok(Box::new(LlavaProcessor::load(
            dir,
            self.config.image_token_id,
            self.config.num_image_tokens() as usize,
        )?))
    }

    fn synthetic_prompt(&self, text_tokens: usize, device: Device) -> Result<ModelInputs> {
        self.synthetic_inputs(text_tokens, device)
    }
}

/// The prompt string of a LLaVA-family template with its image (`with_image`): as it is with an
/// image or a raw prompt, without its `<image>\n` line for a text-only question.
pub(crate) fn prompt_text(with_image: String, template: PromptTemplate, has_image: bool) -> String {
    if has_image || template == PromptTemplate::Raw {
        with_image
    } else {
        with_image.replacen("<image>\n", "", 1)
    }
}

impl FamilyProcessor for LlavaProcessor {
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
        LlavaProcessor::prepare_text(self, question, template, device)
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn decode(&self, ids: &[i64]) -> Result<String> {
        LlavaProcessor::decode(self, ids)
    }

    fn eos_token_ids(&self) -> &[i64] {
        LlavaProcessor::eos_token_ids(self)
    }

    fn set_resample_order(&mut self, order: ResampleOrder) {
        self.resample_order = order;
    }

    fn set_pixel_bounds(&mut self, _min: Option<u64>, _max: Option<u64>) -> Result<()> {
        anyhow::bail!(
            "--min-pixels/--max-pixels: only Qwen2.5-VL resizes images to pixel bounds; LLaVA's tiles are fixed"
        )
    }

    fn fixed_visual_tokens(&self) -> bool {
        true
    }
}
