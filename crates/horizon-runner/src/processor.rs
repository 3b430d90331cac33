//! The processor of each family behind one enum: prompt text and image to [`ModelInputs`].

use anyhow::{anyhow, bail, Result};
use std::path::Path;

use horizon_data::imageproc::{self, ResampleOrder};

use crate::inputs::ModelInputs;
use crate::model::VlModel;
use crate::models::llava::LlavaProcessor;
use crate::models::llava_next::LlavaNextProcessor;
use crate::models::qwen2_5_vl::Qwen2_5VlProcessor;
pub use crate::processing::{PromptTemplate, DEFAULT_RESAMPLE_ORDER};

/// The processor matching a loaded model.
pub enum Processor {
    Llava(LlavaProcessor),
    LlavaNext(LlavaNextProcessor),
    Qwen2_5Vl(Qwen2_5VlProcessor),
}

impl Processor {
    pub fn load(dir: &Path, model: &VlModel) -> Result<Self> {
        match model {
            VlModel::Llava(m) => Ok(Self::Llava(LlavaProcessor::load(
                dir,
                m.config.image_token_id,
                m.config.num_image_tokens() as usize,
            )?)),
            VlModel::LlavaNext(m) => Ok(Self::LlavaNext(LlavaNextProcessor::load(dir, &m.config)?)),
            VlModel::Qwen2_5Vl(m) => Ok(Self::Qwen2_5Vl(Qwen2_5VlProcessor::load(dir, &m.config)?)),
        }
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
        match self {
            Self::Llava(p) => p.prepare(
                question,
                image,
                template,
                model.image_token_id(),
                model.device(),
            ),
            Self::LlavaNext(p) => p.prepare(
                question,
                image,
                template,
                model.image_token_id(),
                model.device(),
            ),
            Self::Qwen2_5Vl(p) => match template {
                PromptTemplate::Auto | PromptTemplate::Qwen => {
                    p.prepare(question, image, model.device())
                }
                PromptTemplate::Raw => p.prepare_prompt(question, image, model.device()),
                PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => {
                    bail!("--template {template:?} is a LLaVA template; use auto, qwen or raw for Qwen2.5-VL")
                }
            },
        }
    }

    /// The whole prompt string the model gets for `question` (chat template included; the image as
    /// its one placeholder token, none for a text-only question).
    pub fn prompt_text(
        &self,
        question: &str,
        template: PromptTemplate,
        has_image: bool,
    ) -> Result<String> {
        let with_image = match self {
            Self::Llava(p) => p.prompt(question, template)?,
            Self::LlavaNext(p) => p.prompt(question, template)?,
            Self::Qwen2_5Vl(_) => match template {
                PromptTemplate::Raw => question.to_string(),
                PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => {
                    bail!("--template {template:?} is a LLaVA template; use auto, qwen or raw for Qwen2.5-VL")
                }
                _ => Qwen2_5VlProcessor::prompt(question, None),
            },
        };
        Ok(match (self, has_image, template) {
            (_, true, _) | (_, false, PromptTemplate::Raw) => with_image,
            (Self::Llava(_) | Self::LlavaNext(_), false, _) => {
                with_image.replacen("<image>\n", "", 1)
            }
            (Self::Qwen2_5Vl(_), false, _) => Qwen2_5VlProcessor::text_prompt(question),
        })
    }

    /// A text-only question (no image) to model inputs: the chat template without its image,
    /// no visual tokens.
    pub fn prepare_text(
        &self,
        model: &VlModel,
        question: &str,
        template: PromptTemplate,
    ) -> Result<ModelInputs> {
        match self {
            Self::Llava(p) => p.prepare_text(question, template, model.device()),
            Self::LlavaNext(p) => p.prepare_text(question, template, model.device()),
            Self::Qwen2_5Vl(p) => match template {
                PromptTemplate::Auto | PromptTemplate::Qwen => {
                    p.prepare_text(&Qwen2_5VlProcessor::text_prompt(question), model.device())
                }
                PromptTemplate::Raw => p.prepare_text(question, model.device()),
                PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => {
                    bail!("--template {template:?} is a LLaVA template; use auto, qwen or raw for Qwen2.5-VL")
                }
            },
        }
    }

    /// Reproduce the bicubic resize of another Pillow release.
    pub fn set_resample_order(&mut self, order: ResampleOrder) {
        match self {
            Self::Llava(p) => p.resample_order = order,
            Self::LlavaNext(p) => p.resample_order = order,
            Self::Qwen2_5Vl(p) => p.resample_order = order,
        }
    }

    /// Qwen2.5-VL: overrides the image processor's `min_pixels` / `max_pixels` (the resize bounds
    /// that decide the visual token count). Other families have fixed-size inputs: an error.
    pub fn set_pixel_bounds(&mut self, min: Option<u64>, max: Option<u64>) -> Result<()> {
        match self {
            Self::Qwen2_5Vl(p) => {
                let c = &mut p.image_config;
                let (lo, hi) = (min.unwrap_or(c.min_pixels), max.unwrap_or(c.max_pixels));
                if lo > hi {
                    bail!("--min-pixels {lo} is above --max-pixels {hi}");
                }
                c.min_pixels = lo;
                c.max_pixels = hi;
                Ok(())
            }
            Self::Llava(_) | Self::LlavaNext(_) => bail!(
                "--min-pixels/--max-pixels: only Qwen2.5-VL resizes images to pixel bounds; LLaVA's tiles are fixed"
            ),
        }
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        match self {
            Self::Llava(p) => p.decode(ids),
            Self::LlavaNext(p) => p.decode(ids),
            Self::Qwen2_5Vl(p) => p.decode(ids),
        }
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        match self {
            Self::Llava(p) => p.eos_token_ids(),
            Self::LlavaNext(p) => p.eos_token_ids(),
            Self::Qwen2_5Vl(p) => p.eos_token_ids(),
        }
    }

    /// First token of `answer` tokenized without special tokens: the reference procedure's target y.
    pub fn first_answer_token(&self, answer: &str) -> Result<Option<i64>> {
        let tokenizer = match self {
            Self::Llava(p) => &p.tokenizer,
            Self::LlavaNext(p) => &p.tokenizer,
            Self::Qwen2_5Vl(p) => &p.tokenizer,
        };
        let enc = tokenizer
            .encode(answer, false)
            .map_err(|e| anyhow!("tokenizing the answer {answer:?}: {e}"))?;
        Ok(enc.get_ids().first().map(|&i| i as i64))
    }
}
