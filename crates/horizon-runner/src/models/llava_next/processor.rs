//! `LlavaNextProcessor`: the anyres image processor and the checkpoint's tokenizer. The `<image>`
//! placeholder is expanded in the string to the image's token count (base grid, unpadded
//! high-resolution grid, one newline per row: [`AnyresLayout`]) before tokenizing, as HF does.
//!
//! `--template auto` is the chat template llava-hf publishes with each LLaVA-NeXT checkpoint
//! (`chat_template.json`), rendered for one user turn (the image, then the question) with
//! `add_generation_prompt=True` ([`ChatTemplate`]). Which one a checkpoint uses is read from the
//! chat template it carries, or, when it carries none, from its decoder and tokenizer
//! ([`ChatTemplate::detect`]).

use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
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

/// The chat templates of llava-hf's LLaVA-NeXT checkpoints, as each renders one user turn holding
/// the image and the question, with `add_generation_prompt=True`. The templates' text, as llava-hf
/// ships it, is quoted in fixtures/make_llava_next_fixtures.py (from openvinotoolkit/openvino.genai,
/// src/cpp/src/tokenizer.cpp, `chat_template_fallback_map`, and huggingface/transformers,
/// src/transformers/models/llava_next_video/convert_llava_next_video_weights_to_hf.py,
/// `chat_vicuna` / `chat_mistral` / `chat_yi`); tests/llava_next_parity.rs holds each to HF's
/// `apply_chat_template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// llava-v1.6-vicuna-7b-hf / -13b-hf: `USER: <image>\n{q} ASSISTANT:`. llava-1.5's template: no
    /// system prompt (the original repository's `vicuna_v1` one is `--template vicuna-v1`).
    Vicuna,
    /// llava-v1.6-mistral-7b-hf: `[INST] <image>\n{q} [/INST]`.
    Mistral,
    /// llava-v1.6-34b-hf (Nous-Hermes-2-Yi-34B):
    /// `<|im_start|>user\n<image>\n{q}<|im_end|>\n<|im_start|>assistant\n`, no system turn.
    ChatMl,
}

/// ChatML's turn delimiters; a chat template or tokenizer that has them is ChatML's.
const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

impl ChatTemplate {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vicuna => "Vicuna (USER: ... ASSISTANT:)",
            Self::Mistral => "Mistral ([INST] ... [/INST])",
            Self::ChatMl => "ChatML (<|im_start|>)",
        }
    }

    /// The prompt of one user turn with one `<image>` placeholder before the question.
    pub fn render(self, question: &str) -> String {
        match self {
            Self::Vicuna => format!("USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:"),
            Self::Mistral => format!("[INST] {IMAGE_PLACEHOLDER}\n{question} [/INST]"),
            Self::ChatMl => format!(
                "{IM_START}user\n{IMAGE_PLACEHOLDER}\n{question}{IM_END}\n{IM_START}assistant\n"
            ),
        }
    }

    /// Which template a Jinja chat template is, by the delimiters it writes: `<|im_start|>`
    /// (ChatML), `[INST]` (Mistral), `'ASSISTANT:'` (Vicuna); none or several: not known.
    pub fn of_jinja(jinja: &str) -> Option<Self> {
        let found: Vec<Self> = [
            (IM_START, Self::ChatMl),
            ("[INST]", Self::Mistral),
            ("ASSISTANT:", Self::Vicuna),
        ]
        .into_iter()
        .filter(|(marker, _)| jinja.contains(marker))
        .map(|(_, t)| t)
        .collect();
        match found[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The checkpoint's template for `--template auto`. The rule:
    /// 1. A chat template the checkpoint carries (the first of `chat_template.jinja`,
    ///    `chat_template.json`, `processor_config.json`'s and `tokenizer_config.json`'s
    ///    `chat_template`) decides, by [`ChatTemplate::of_jinja`]; one it does not recognise is an
    ///    error, as is a ChatML template with a tokenizer that lacks `<|im_start|>`/`<|im_end|>`.
    /// 2. Without one: a `mistral` decoder is Mistral; a `llama` decoder is ChatML when the tokenizer
    ///    has `<|im_start|>` and `<|im_end|>` as tokens (Yi-34B's), Vicuna when it has neither, an
    ///    error with one; another decoder is an error.
    ///
    /// The error is kept until `--template auto` is used, so `--template raw` still runs.
    pub fn detect(
        dir: &Path,
        text_model_type: &str,
        tokenizer: &Tokenizer,
    ) -> Result<Self, String> {
        let has = |t: &str| tokenizer.token_to_id(t).is_some();
        if let Some((file, jinja)) = carried_chat_template(dir)? {
            let Some(t) = Self::of_jinja(&jinja) else {
                return Err(format!(
                    "--template auto: {}: the chat template is none of llava-hf's LLaVA-NeXT templates ({}, {}, {}); pass the whole prompt with --template raw",
                    file.display(),
                    Self::Vicuna.name(),
                    Self::Mistral.name(),
                    Self::ChatMl.name()
                ));
            };
            if t == Self::ChatMl && !(has(IM_START) && has(IM_END)) {
                return Err(format!(
                    "--template auto: {}: the chat template is ChatML's but {} has no {IM_START} / {IM_END} token",
                    file.display(),
                    dir.join("tokenizer.json").display()
                ));
            }
            return Ok(t);
        }
        match text_model_type {
            "mistral" => Ok(Self::Mistral),
            "llama" if has(IM_START) && has(IM_END) => Ok(Self::ChatMl),
            "llama" if has(IM_START) || has(IM_END) => Err(format!(
                "--template auto: {}: the tokenizer has one of ChatML's {IM_START} / {IM_END} tokens but not the other, and the checkpoint carries no chat template; pass the whole prompt with --template raw",
                dir.join("tokenizer.json").display()
            )),
            "llama" => Ok(Self::Vicuna),
            other => Err(format!(
                "--template auto: {}: no chat template in the checkpoint and a '{other}' decoder (text_config.model_type), which has no llava-hf LLaVA-NeXT template; pass the whole prompt with --template raw",
                dir.display()
            )),
        }
    }
}

/// The chat template a checkpoint directory carries, and the file it is in: `chat_template.jinja`
/// (transformers 5.x), `chat_template.json` (llava-hf's published checkpoints), or the
/// `chat_template` field of `processor_config.json` / `tokenizer_config.json` (a string, or a list
/// of `{name, template}` whose `default` is used). A file that cannot be read is an error.
fn carried_chat_template(dir: &Path) -> Result<Option<(PathBuf, String)>, String> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text =
            std::fs::read_to_string(&jinja).map_err(|e| format!("{}: {e}", jinja.display()))?;
        return Ok(Some((jinja, text)));
    }
    for name in [
        "chat_template.json",
        "processor_config.json",
        "tokenizer_config.json",
    ] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let value: serde_json::Value = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let template = match value.get("chat_template") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "{}: field chat_template: a list without a 'default' template",
                        path.display()
                    )
                })?,
            Some(_) => {
                return Err(format!(
                    "{}: field chat_template: expected a string",
                    path.display()
                ))
            }
        };
        return Ok(Some((path, template)));
    }
    Ok(None)
}

pub struct LlavaNextProcessor {
    pub(crate) tokenizer: Tokenizer,
    pub image_config: LlavaNextImageProcessorConfig,
    image_token: String,
    patch_size: u32,
    /// What `--template auto` means for this checkpoint, or why it cannot tell.
    auto_template: Result<ChatTemplate, String>,
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
        let auto_template = ChatTemplate::detect(dir, &config.text_model_type, &tokenizer);
        Ok(Self {
            tokenizer,
            image_config,
            image_token,
            patch_size: config.llava.vision_config.patch_size as u32,
            auto_template,
            eos_token_ids: eos_token_ids(dir)?,
            resample_order: DEFAULT_RESAMPLE_ORDER,
        })
    }

    /// What `--template auto` renders for this checkpoint ([`ChatTemplate::detect`]).
    pub fn auto_template(&self) -> Result<ChatTemplate> {
        self.auto_template.clone().map_err(|e| anyhow!(e))
    }

    /// The prompt string with one `<image>` placeholder. `auto`: the checkpoint's llava-hf chat
    /// template ([`ChatTemplate`]); `llava-hf`: the Vicuna one whatever the checkpoint.
    pub fn prompt(&self, question: &str, template: PromptTemplate) -> Result<String> {
        Ok(match template {
            PromptTemplate::Auto => self.auto_template()?.render(question),
            PromptTemplate::LlavaHf => ChatTemplate::Vicuna.render(question),
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
