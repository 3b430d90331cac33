//! Qwen2.5-VL as a horizon model family ([`crate::models::family`]).

use anyhow::{bail, Result};
use std::path::Path;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use super::{
    Qwen2_5VlConfig, Qwen2_5VlForConditionalGeneration, Qwen2_5VlProcessor, QWEN2_5_VL_LAYOUTS,
};
use crate::decoder::Decoder;
use crate::inputs::ModelInputs;
use crate::models::{Family, FamilyModel, FamilyProcessor};
use crate::nn::Linear;
use crate::processing::PromptTemplate;
use crate::weights::{CheckpointLayout, Weights};
use horizon_data::imageproc::ResampleOrder;

impl Family for Qwen2_5VlForConditionalGeneration {
    const MODEL_TYPE: &'static str = "qwen2_5_vl";
    const LAYOUTS: &'static [CheckpointLayout] = QWEN2_5_VL_LAYOUTS;
    type Config = Qwen2_5VlConfig;

    fn config(path: &Path, value: serde_json::Value) -> Result<Qwen2_5VlConfig> {
        Qwen2_5VlConfig::from_json(path, value)
    }

    fn load(weights: &Weights, config: Qwen2_5VlConfig) -> Result<Self> {
        Self::from_weights(weights, config)
    }
}

impl FamilyModel for Qwen2_5VlForConditionalGeneration {
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
        Qwen2_5VlForConditionalGeneration::unused_by_design(self, name)
    }

    fn embed_prompt(&self, inputs: &ModelInputs) -> Result<Tensor> {
        self.input_embeds(
            &inputs.input_ids,
            inputs.pixel_values.as_ref(),
            &inputs.image_grid_thw,
        )
    }

    fn processor(&self, dir: &Path) -> Result<Box<dyn FamilyProcessor>> {
        Ok(Box::new(Qwen2_5VlProcessor::load(dir, &self.config)?))
    }

    fn synthetic_prompt(&self, _text_tokens: usize, _device: Device) -> Result<ModelInputs> {
        bail!(
            "synthetic inputs are built for LLaVA and LLaVA-NeXT configs only so far ({} given)",
            Self::MODEL_TYPE
        )
    }
}

/// `--template` names a LLaVA template: refused.
fn llava_template(template: PromptTemplate) -> anyhow::Error {
    anyhow::anyhow!(
        "--template {template:?} is a LLaVA template; use auto, qwen or raw for Qwen2.5-VL"
    )
}

impl FamilyProcessor for Qwen2_5VlProcessor {
    fn prepare_image(
        &self,
        question: &str,
        image: &image::RgbImage,
        template: PromptTemplate,
        _image_token_id: i64,
        device: Device,
    ) -> Result<ModelInputs> {
        match template {
            PromptTemplate::Auto | PromptTemplate::Qwen => self.prepare(question, image, device),
            PromptTemplate::Raw => self.prepare_prompt(question, image, device),
            PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => Err(llava_template(template)),
        }
    }

    fn prompt_text(
        &self,
        question: &str,
        template: PromptTemplate,
        has_image: bool,
    ) -> Result<String> {
        let with_image = match template {
            PromptTemplate::Raw => question.to_string(),
            PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => {
                return Err(llava_template(template))
            }
            _ => Self::prompt(question, None),
        };
        Ok(if has_image || template == PromptTemplate::Raw {
            with_image
        } else {
            Self::text_prompt(question)
        })
    }

    fn prepare_text(
        &self,
        question: &str,
        template: PromptTemplate,
        device: Device,
    ) -> Result<ModelInputs> {
        match template {
            PromptTemplate::Auto | PromptTemplate::Qwen => {
                Qwen2_5VlProcessor::prepare_text(self, &Self::text_prompt(question), device)
            }
            PromptTemplate::Raw => Qwen2_5VlProcessor::prepare_text(self, question, device),
            PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => Err(llava_template(template)),
        }
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn decode(&self, ids: &[i64]) -> Result<String> {
        Qwen2_5VlProcessor::decode(self, ids)
    }

    fn eos_token_ids(&self) -> &[i64] {
        Qwen2_5VlProcessor::eos_token_ids(self)
    }

    fn set_resample_order(&mut self, order: ResampleOrder) {
        self.resample_order = order;
    }

    /// `min_pixels` / `max_pixels`: the resize bounds that decide the visual token count.
    fn set_pixel_bounds(&mut self, min: Option<u64>, max: Option<u64>) -> Result<()> {
        let c = &mut self.image_config;
        let (lo, hi) = (min.unwrap_or(c.min_pixels), max.unwrap_or(c.max_pixels));
        if lo > hi {
            bail!("--min-pixels {lo} is above --max-pixels {hi}");
        }
        c.min_pixels = lo;
        c.max_pixels = hi;
        Ok(())
    }
}
