//! `LlavaNextProcessor`: the anyres image processor and the checkpoint's tokenizer. The `<image>`
//! placeholder is expanded in the string to the image's token count (base grid, unpadded
//! high-resolution grid, one newline per row: [`AnyresLayout`]) before tokenizing, as HF does.

use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use super::config::LlavaNextConfig;
use crate::checkpoint::{eos_token_ids, load_tokenizer};
use crate::inputs::ModelInputs;
use crate::intervention::VisualTokens;
use crate::models::llava::processor::{
    text_only_inputs, text_only_prompt, IMAGE_PLACEHOLDER, VICUNA_V1_SYSTEM,
};
use crate::processing::{
    decode, encode, image_token_positions, PromptTemplate, DEFAULT_RESAMPLE_ORDER,
};
use horizon_data::imageproc::{
    llava_next_preprocess, AnyresLayout, LlavaNextImageProcessorConfig, ResampleOrder,
};

pub struct LlavaNextProcessor {
    pub(crate) tokenizer: Tokenizer,
    pub image_config: LlavaNextImageProcessorConfig,
    image_token: String,
    patch_size: u32,
    /// `text_config.model_type`: which chat template `--template auto` means.
    text_model_type: String,
    /// The tokenizer has ChatML's `<|im_start|>` (llava-v1.6-34b-hf, Yi-34B): its chat template is
    /// not built in, so `--template auto` refuses rather than giving it another family's prompt.
    chatml: bool,
    eos_token_ids: Vec<i64>,
    pub resample_order: ResampleOrder,
}

impl LlavaNextProcessor {
    pub fn load(dir: &Path, config: &LlavaNextConfig) -> Result<Self> {
        let tokenizer = load_tokenizer(dir)?;
        let image_config = LlavaNextImageProcessorConfig::from_checkpoint_dir(dir)?;
        let id = config.llava.image_token_id;
        let image_token = tokenizer.id_to_token(id as u32).ok_or_else(|| {
            anyhow!(
                "{}: the image token id {id} from config.json is not in the vocabulary",
                dir.join("tokenizer.json").display()
            )
        })?;
        let tile = config.llava.vision_config.image_size;
        if i64::from(image_config.tile_size()) != tile {
            bail!(
                "{}: the image processor's {}-pixel tiles do not match the vision tower's {tile}-pixel input",
                dir.display(),
                image_config.tile_size()
            );
        }
        let chatml = tokenizer.token_to_id("<|im_start|>").is_some();
        Ok(Self {
            tokenizer,
            image_config,
            image_token,
            patch_size: config.llava.vision_config.patch_size as u32,
            text_model_type: config.text_model_type.clone(),
            chatml,
            eos_token_ids: eos_token_ids(dir)?,
            resample_order: DEFAULT_RESAMPLE_ORDER,
        })
    }

    /// The prompt string with one `<image>` placeholder. `auto`: llava-hf's templates of
    /// llava-v1.6-mistral-7b-hf (`[INST] <image>\n{q} [/INST]`) for a Mistral decoder, else of
    /// llava-v1.6-vicuna-7b-hf (`USER: <image>\n{q} ASSISTANT:`).
    pub fn prompt(&self, question: &str, template: PromptTemplate) -> Result<String> {
        Ok(match template {
            PromptTemplate::Auto if self.chatml => bail!(
                "--template auto: this checkpoint's tokenizer is ChatML's (llava-v1.6-34b); its chat template is not built in, pass the whole prompt with --template raw"
            ),
            PromptTemplate::Auto if self.text_model_type == "mistral" => {
                format!("[INST] {IMAGE_PLACEHOLDER}\n{question} [/INST]")
            }
            PromptTemplate::Auto | PromptTemplate::LlavaHf => {
                format!("USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:")
            }
            PromptTemplate::Qwen => {
                bail!("--template qwen is for Qwen2.5-VL checkpoints, this one is LLaVA-NeXT")
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

    /// The anyres layout of an image of `height×width` pixels.
    pub fn layout(&self, height: u32, width: u32) -> Result<AnyresLayout> {
        AnyresLayout::new(
            height,
            width,
            &self.image_config.image_grid_pinpoints,
            self.image_config.tile_size(),
            self.patch_size,
            0,
        )
    }

    /// Tokenized prompt and preprocessed image on `device`: `pixel_values` `[tiles, 3, H, W]`,
    /// `image_grid_thw` `[[1, height, width]]` (the image size `pack_image_features` needs).
    pub fn prepare(
        &self,
        question: &str,
        image: &image::RgbImage,
        template: PromptTemplate,
        image_token_id: i64,
        device: Device,
    ) -> Result<ModelInputs> {
        let (h, w) = (image.height(), image.width());
        let layout = self.layout(h, w)?;
        let n = layout.num_tokens();
        let prompt = self.prompt(question, template)?;
        let expanded = prompt.replacen(IMAGE_PLACEHOLDER, &self.image_token.repeat(n), 1);
        let ids = encode(&self.tokenizer, expanded)?;
        let positions = image_token_positions(&ids, image_token_id, n)?;
        let pv = llava_next_preprocess(image, &self.image_config, self.resample_order)?;
        let pixel_values = Tensor::from_slice(&pv.data)
            .reshape([
                pv.tiles as i64,
                pv.channels as i64,
                pv.height as i64,
                pv.width as i64,
            ])
            .to_kind(Kind::Float)
            .to_device(device);
        let s = ids.len() as i64;
        Ok(ModelInputs {
            input_ids: Tensor::from_slice(&ids).reshape([1, s]).to_device(device),
            pixel_values: Some(pixel_values),
            image_grid_thw: vec![[1, i64::from(h), i64::from(w)]],
            // The packed tokens in sequence order as one row; windows per grid are not defined
            // for anyres yet.
            visual: VisualTokens {
                positions,
                grid: (1, n),
            },
            position_ids: Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0),
            rope_deltas: 0,
        })
    }

    /// A text-only question: the template without its `<image>\n`.
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
