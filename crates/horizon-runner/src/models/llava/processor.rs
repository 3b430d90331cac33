//! `LlavaProcessor`: the CLIP image processor and the checkpoint's Llama tokenizer.
//!
//! The prompt is built with exactly one `<image>` placeholder, expanded in the *string* to one
//! placeholder per visual token before tokenizing (as the HF processors do), then tokenized with the
//! checkpoint's `tokenizer.json` (BOS added by its post-processor).

use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::checkpoint::{eos_token_ids, load_tokenizer};
use crate::inputs::ModelInputs;
use crate::intervention::VisualTokens;
use crate::processing::{
    decode, encode, image_token_positions, PromptTemplate, DEFAULT_RESAMPLE_ORDER,
};
use horizon_data::imageproc::{self, ClipImageProcessorConfig, ResampleOrder};

pub(crate) const IMAGE_PLACEHOLDER: &str = "<image>";
pub(crate) const VICUNA_V1_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// LLaVA-1.5: CLIP image processor + Llama tokenizer.
pub struct LlavaProcessor {
    pub(crate) tokenizer: Tokenizer,
    pub image_config: ClipImageProcessorConfig,
    image_token: String,
    num_image_tokens: usize,
    grid: (usize, usize),
    eos_token_ids: Vec<i64>,
    /// Which Pillow release's bicubic resize to reproduce (HF's PIL backend calls Pillow).
    pub resample_order: ResampleOrder,
}

impl LlavaProcessor {
    pub fn load(dir: &Path, image_token_id: i64, num_image_tokens: usize) -> Result<Self> {
        let tokenizer = load_tokenizer(dir)?;
        let image_config = ClipImageProcessorConfig::from_checkpoint_dir(dir)?;
        let image_token = tokenizer
            .id_to_token(image_token_id as u32)
            .ok_or_else(|| {
                anyhow!(
                "{}: the image token id {image_token_id} from config.json is not in the vocabulary",
                dir.join("tokenizer.json").display()
            )
            })?;
        let side = (num_image_tokens as f64).sqrt() as usize;
        if side * side != num_image_tokens {
            bail!("{num_image_tokens} visual tokens do not form a square grid");
        }
        let eos_token_ids = eos_token_ids(dir)?;
        Ok(Self {
            tokenizer,
            image_config,
            image_token,
            num_image_tokens,
            grid: (side, side),
            eos_token_ids,
            resample_order: DEFAULT_RESAMPLE_ORDER,
        })
    }

    /// The prompt string with one `<image>` placeholder.
    pub fn prompt(&self, question: &str, template: PromptTemplate) -> Result<String> {
        Ok(match template {
            PromptTemplate::Auto | PromptTemplate::LlavaHf => {
                format!("USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:")
            }
            PromptTemplate::Qwen => {
                bail!("--template qwen is for Qwen2.5-VL checkpoints, this one is LLaVA")
            }
            PromptTemplate::VicunaV1 => {
                format!("{VICUNA_V1_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:")
            }
            PromptTemplate::Raw => {
                if question.matches(IMAGE_PLACEHOLDER).count() != 1 {
                    bail!("--prompt: a raw prompt must contain {IMAGE_PLACEHOLDER} exactly once");
                }
                question.to_string()
            }
        })
    }

    /// Token ids of `prompt` with its single placeholder expanded to one image token per visual token.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<i64>> {
        let expanded = prompt.replacen(
            IMAGE_PLACEHOLDER,
            &self.image_token.repeat(self.num_image_tokens),
            1,
        );
        encode(&self.tokenizer, expanded)
    }

    /// Tokenized prompt and preprocessed image on `device`.
    pub fn prepare(
        &self,
        question: &str,
        image: &image::RgbImage,
        template: PromptTemplate,
        image_token_id: i64,
        device: Device,
    ) -> Result<ModelInputs> {
        let ids = self.tokenize(&self.prompt(question, template)?)?;
        let visual_positions = image_token_positions(&ids, image_token_id, self.num_image_tokens)?;
        let pv = imageproc::clip_preprocess(image, &self.image_config, self.resample_order)?;
        let pixel_values = Tensor::from_slice(&pv.data)
            .reshape([1, pv.channels as i64, pv.height as i64, pv.width as i64])
            .to_device(device);
        let n = ids.len() as i64;
        Ok(ModelInputs {
            input_ids: Tensor::from_slice(&ids).reshape([1, n]).to_device(device),
            pixel_values: Some(pixel_values.to_kind(Kind::Float)),
            image_grid_thw: Vec::new(),
            visual: VisualTokens {
                positions: visual_positions,
                grid: self.grid,
            },
            // 1-D rotary: the position ids are the sequence indices.
            position_ids: Tensor::arange(n, (Kind::Int64, device)).unsqueeze(0),
            rope_deltas: 0,
        })
    }

    /// Tokenized prompt of a text-only question (no image): the template without the `<image>\n`
    /// line, as LLaVA's `model_vqa_science.py` builds it for questions without an image.
    pub fn prepare_text(
        &self,
        question: &str,
        template: PromptTemplate,
        device: Device,
    ) -> Result<ModelInputs> {
        let prompt = text_only_prompt(question, template, |q, t| self.prompt(q, t))?;
        text_only_inputs(&self.tokenizer, prompt, device)
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        decode(&self.tokenizer, ids)
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_token_ids
    }
}

/// A LLaVA-family template's prompt for a question without an image: `prompt`'s template with its
/// `<image>\n` line removed; a raw prompt as given, which must not hold the placeholder.
pub(crate) fn text_only_prompt(
    question: &str,
    template: PromptTemplate,
    prompt: impl FnOnce(&str, PromptTemplate) -> Result<String>,
) -> Result<String> {
    Ok(match template {
        PromptTemplate::Raw => {
            if question.contains(IMAGE_PLACEHOLDER) {
                bail!("--prompt: a text-only raw prompt must not contain {IMAGE_PLACEHOLDER}");
            }
            question.to_string()
        }
        _ => prompt(question, template)?.replacen(&format!("{IMAGE_PLACEHOLDER}\n"), "", 1),
    })
}

/// Inputs of a text-only prompt for a 1-D rotary decoder: the position ids are the sequence indices.
pub(crate) fn text_only_inputs(
    tokenizer: &Tokenizer,
    prompt: String,
    device: Device,
) -> Result<ModelInputs> {
    let ids = encode(tokenizer, prompt)?;
    let n = ids.len() as i64;
    Ok(ModelInputs {
        input_ids: Tensor::from_slice(&ids).reshape([1, n]).to_device(device),
        pixel_values: None,
        image_grid_thw: Vec::new(),
        visual: VisualTokens {
            positions: Vec::new(),
            grid: (0, 0),
        },
        position_ids: Tensor::arange(n, (Kind::Int64, device)).unsqueeze(0),
        rope_deltas: 0,
    })
}
