//! `Qwen2_5_VLProcessor`: the Qwen2-VL image processor, the checkpoint's tokenizer and the chat
//! template.

use anyhow::{bail, Result};
use std::path::Path;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use super::config::Qwen2_5VlConfig;
use super::model::get_rope_index;
use crate::checkpoint::{eos_token_ids, load_tokenizer};
use crate::inputs::ModelInputs;
use crate::intervention::VisualTokens;
use crate::processing::{decode, encode, image_token_positions, DEFAULT_RESAMPLE_ORDER};
use horizon_data::imageproc::{self, Qwen2VlImageProcessorConfig, ResampleOrder};

/// The Qwen2.5-VL chat template's default system message.
pub const DEFAULT_SYSTEM_MESSAGE: &str = "You are a helpful assistant.";
const IMAGE_PAD: &str = "<|image_pad|>";

/// `Qwen2_5_VLProcessor`: Qwen2-VL image processor + the checkpoint's tokenizer and chat template.
pub struct Qwen2_5VlProcessor {
    pub tokenizer: Tokenizer,
    pub image_config: Qwen2VlImageProcessorConfig,
    image_token_id: i64,
    merge_size: i64,
    eos_token_ids: Vec<i64>,
    /// Which Pillow release's bicubic resize to reproduce.
    pub resample_order: ResampleOrder,
}

impl Qwen2_5VlProcessor {
    pub fn load(dir: &Path, config: &Qwen2_5VlConfig) -> Result<Self> {
        let tokenizer = load_tokenizer(dir)?;
        let image_config = Qwen2VlImageProcessorConfig::from_checkpoint_dir(dir)?;
        match tokenizer.token_to_id(IMAGE_PAD) {
            Some(id) if id as i64 == config.image_token_id => {}
            other => bail!(
                "{}: token {IMAGE_PAD} has id {other:?}, config.json's image_token_id is {}",
                dir.join("tokenizer.json").display(),
                config.image_token_id
            ),
        }
        Ok(Self {
            tokenizer,
            image_config,
            image_token_id: config.image_token_id,
            merge_size: config.vision_config.spatial_merge_size,
            eos_token_ids: eos_token_ids(dir)?,
            resample_order: DEFAULT_RESAMPLE_ORDER,
        })
    }

    /// The chat-template prompt for one image and `question` (`add_generation_prompt=True`).
    pub fn prompt(question: &str, system: Option<&str>) -> String {
        let system = system.unwrap_or(DEFAULT_SYSTEM_MESSAGE);
        format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
        )
    }

    /// Token ids of `prompt` with its single `<|image_pad|>` expanded to `num_image_tokens` copies.
    pub fn tokenize(&self, prompt: &str, num_image_tokens: usize) -> Result<Vec<i64>> {
        if prompt.matches(IMAGE_PAD).count() != 1 {
            bail!("the prompt must contain {IMAGE_PAD} exactly once");
        }
        let expanded = prompt.replacen(IMAGE_PAD, &IMAGE_PAD.repeat(num_image_tokens), 1);
        encode(&self.tokenizer, expanded)
    }

    /// Prompt string (with one `<|image_pad|>`) and RGB image to model inputs on `device`.
    pub fn prepare_prompt(
        &self,
        prompt: &str,
        image: &image::RgbImage,
        device: Device,
    ) -> Result<ModelInputs> {
        let patches =
            imageproc::qwen2vl_preprocess(image, &self.image_config, self.resample_order)?;
        let grid = patches.grid_thw.map(i64::from);
        let (gh, gw) = (grid[1] / self.merge_size, grid[2] / self.merge_size);
        let num_image_tokens = (grid[0] * gh * gw) as usize;
        let ids = self.tokenize(prompt, num_image_tokens)?;
        let visual_positions = image_token_positions(&ids, self.image_token_id, num_image_tokens)?;
        let pixel_values = Tensor::from_slice(&patches.data)
            .view([patches.num_patches as i64, patches.patch_dim as i64])
            .to_device(device);
        let n = ids.len() as i64;
        let (positions, rope_deltas) =
            get_rope_index(&ids, &[grid], self.image_token_id, self.merge_size)?;
        // [3, 1, S], axis-major as HF lays out `position_ids`.
        let flat: Vec<i64> = (0..3)
            .flat_map(|axis| positions.iter().map(move |p| p[axis]))
            .collect();
        Ok(ModelInputs {
            input_ids: Tensor::from_slice(&ids).view([1, n]).to_device(device),
            pixel_values: Some(pixel_values),
            image_grid_thw: vec![grid],
            visual: VisualTokens {
                positions: visual_positions,
                grid: (gh as usize, gw as usize),
            },
            position_ids: Tensor::from_slice(&flat).view([3, 1, n]).to_device(device),
            rope_deltas,
        })
    }

    /// Question + RGB image to model inputs, with the default chat template.
    pub fn prepare(
        &self,
        question: &str,
        image: &image::RgbImage,
        device: Device,
    ) -> Result<ModelInputs> {
        self.prepare_prompt(&Self::prompt(question, None), image, device)
    }

    /// A text-only question (no image) to model inputs: the chat template without the vision
    /// block, position ids from `get_rope_index` without images (the sequence indices on all three
    /// axes).
    pub fn prepare_text(&self, prompt: &str, device: Device) -> Result<ModelInputs> {
        let ids = encode(&self.tokenizer, prompt.to_string())?;
        let n = ids.len() as i64;
        let (positions, rope_deltas) =
            get_rope_index(&ids, &[], self.image_token_id, self.merge_size)?;
        let flat: Vec<i64> = (0..3)
            .flat_map(|axis| positions.iter().map(move |p| p[axis]))
            .collect();
        Ok(ModelInputs {
            input_ids: Tensor::from_slice(&ids).view([1, n]).to_device(device),
            pixel_values: None,
            image_grid_thw: Vec::new(),
            visual: VisualTokens {
                positions: Vec::new(),
                grid: (0, 0),
            },
            position_ids: Tensor::from_slice(&flat).view([3, 1, n]).to_device(device),
            rope_deltas,
        })
    }

    /// The chat-template prompt of a text-only `question`.
    pub fn text_prompt(question: &str) -> String {
        Self::prompt(question, None).replacen(
            &format!("<|vision_start|>{IMAGE_PAD}<|vision_end|>"),
            "",
            1,
        )
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        decode(&self.tokenizer, ids)
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_token_ids
    }
}
