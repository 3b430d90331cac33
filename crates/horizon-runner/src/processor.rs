//! Processors: prompt text and image to [`ModelInputs`], as HF's `LlavaProcessor` does it.
//!
//! The prompt is built with exactly one `<image>` placeholder, expanded in the *string* to one
//! placeholder per visual token before tokenizing (as the HF processors do), then tokenized with the
//! checkpoint's `tokenizer.json` (BOS added by its post-processor).

use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use horizon_data::imageproc::{self, ClipImageProcessorConfig, ResampleOrder};

use crate::model::{read_config, ModelInputs, VlModel};
use crate::models::qwen2_5_vl::Qwen2_5VlProcessor;

/// How the question becomes a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptTemplate {
    /// The chat template of the checkpoint's family (llava-hf for LLaVA, Qwen chat for Qwen2.5-VL).
    #[default]
    Auto,
    /// The llava-hf chat template: `USER: <image>\n{question} ASSISTANT:`.
    LlavaHf,
    /// The Qwen2.5-VL chat template with its default system message.
    Qwen,
    /// Original LLaVA `vicuna_v1` conversation, as the reference procedure of arXiv 2512.07580 uses.
    VicunaV1,
    /// The text as given; it must contain `<image>` exactly once.
    Raw,
}

impl PromptTemplate {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "auto" => Self::Auto,
            "llava-hf" => Self::LlavaHf,
            "vicuna-v1" => Self::VicunaV1,
            "qwen" => Self::Qwen,
            "raw" => Self::Raw,
            other => {
                bail!("--template: '{other}' is not one of auto, llava-hf, vicuna-v1, qwen, raw")
            }
        })
    }
}

const IMAGE_PLACEHOLDER: &str = "<image>";

/// The Pillow the reference fixtures were made with (12.3.0, pinned in fixtures/requirements.txt).
pub const DEFAULT_RESAMPLE_ORDER: ResampleOrder = ResampleOrder::Pillow12;
const VICUNA_V1_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// LLaVA-1.5: CLIP image processor + Llama tokenizer.
pub struct LlavaProcessor {
    tokenizer: Tokenizer,
    pub image_config: ClipImageProcessorConfig,
    image_token: String,
    num_image_tokens: usize,
    grid: (usize, usize),
    eos_token_ids: Vec<i64>,
    /// Which Pillow release's bicubic resize to reproduce (HF's PIL backend calls Pillow).
    pub resample_order: ResampleOrder,
}

/// Reads `tokenizer.json` of a checkpoint directory, used exactly as stored.
///
/// transformers 5.17 loads the tokenizer of a `llava` checkpoint through `AutoTokenizer` as a
/// `TokenizersBackend`, i.e. the stored `tokenizer.json` with its own normalizer and pre-tokenizer (only
/// an explicit `LlamaTokenizer` would rebuild them); the `tokenizers` crate does the same. The fixture
/// `fixtures/llava/reference/legacy_tokenizer` pins this on an older-style Llama `tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        bail!("{}: tokenizer file not found", path.display());
    }
    Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer ({e})", path.display()))
}

/// EOS ids for generation: `generation_config.json`, else `config.json` (top level or text_config).
fn eos_token_ids(dir: &Path) -> Result<Vec<i64>> {
    let mut sources = Vec::new();
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        let text = std::fs::read_to_string(&gen)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: invalid JSON ({e})", gen.display()))?;
        sources.push(v.get("eos_token_id").cloned());
    }
    let (_, cfg) = read_config(dir)?;
    sources.push(cfg.get("eos_token_id").cloned());
    sources.push(
        cfg.get("text_config")
            .and_then(|t| t.get("eos_token_id"))
            .cloned(),
    );
    for v in sources.into_iter().flatten() {
        match v {
            serde_json::Value::Number(n) => return Ok(n.as_i64().into_iter().collect()),
            serde_json::Value::Array(a) => {
                return Ok(a.iter().filter_map(|x| x.as_i64()).collect())
            }
            _ => {}
        }
    }
    Ok(Vec::new())
}

impl LlavaProcessor {
    pub fn load(dir: &Path, image_token_id: i64, num_image_tokens: usize) -> Result<Self> {
        let tokenizer = load_tokenizer(dir)?;
        let image_config =
            ClipImageProcessorConfig::from_file(dir.join("preprocessor_config.json"))?;
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
        let enc = self
            .tokenizer
            .encode(expanded, true)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
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
        let visual_positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == image_token_id)
            .map(|(i, _)| i)
            .collect();
        if visual_positions.len() != self.num_image_tokens {
            bail!(
                "the tokenized prompt has {} image tokens, expected {} (does the question contain the image token text?)",
                visual_positions.len(),
                self.num_image_tokens
            );
        }
        let pv = imageproc::clip_preprocess(image, &self.image_config, self.resample_order)?;
        let pixel_values = Tensor::from_slice(&pv.data)
            .reshape([1, pv.channels as i64, pv.height as i64, pv.width as i64])
            .to_device(device);
        let n = ids.len() as i64;
        Ok(ModelInputs {
            input_ids: Tensor::from_slice(&ids).reshape([1, n]).to_device(device),
            pixel_values: Some(pixel_values.to_kind(Kind::Float)),
            visual_positions,
            visual_grid: self.grid,
            image_grid_thw: Vec::new(),
            position_ids: None,
        })
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| anyhow!("decoding tokens: {e}"))
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_token_ids
    }
}

/// The processor matching a loaded model.
pub enum Processor {
    Llava(LlavaProcessor),
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
        match (self, model) {
            (Self::Llava(p), _) => p.prepare(
                question,
                image,
                template,
                model.image_token_id(),
                model.device(),
            ),
            (Self::Qwen2_5Vl(p), VlModel::Qwen2_5Vl(m)) => {
                let q = match template {
                    PromptTemplate::Auto | PromptTemplate::Qwen => {
                        p.prepare(question, image, model.device())?
                    }
                    PromptTemplate::Raw => p.prepare_prompt(question, image, model.device())?,
                    PromptTemplate::LlavaHf | PromptTemplate::VicunaV1 => {
                        bail!("--template {template:?} is a LLaVA template; use auto, qwen or raw for Qwen2.5-VL")
                    }
                };
                let (position_ids, _) = m.rope_index(&q.input_ids, &q.image_grid_thw)?;
                Ok(ModelInputs {
                    input_ids: q.input_ids,
                    pixel_values: q.pixel_values,
                    visual_positions: q.visual_positions,
                    visual_grid: q.visual_grid,
                    image_grid_thw: q.image_grid_thw,
                    position_ids: Some(position_ids),
                })
            }
            (Self::Qwen2_5Vl(_), _) => bail!(
                "a Qwen2.5-VL processor cannot prepare inputs for a {} model",
                model.model_type()
            ),
        }
    }

    /// Reproduce the bicubic resize of another Pillow release.
    pub fn set_resample_order(&mut self, order: ResampleOrder) {
        match self {
            Self::Llava(p) => p.resample_order = order,
            Self::Qwen2_5Vl(p) => p.resample_order = order,
        }
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        match self {
            Self::Llava(p) => p.decode(ids),
            Self::Qwen2_5Vl(p) => p.decode(ids),
        }
    }

    pub fn eos_token_ids(&self) -> &[i64] {
        match self {
            Self::Llava(p) => p.eos_token_ids(),
            Self::Qwen2_5Vl(p) => p.eos_token_ids(),
        }
    }

    /// First token of `answer` tokenized without special tokens: the reference procedure's target y.
    pub fn first_answer_token(&self, answer: &str) -> Result<Option<i64>> {
        let tokenizer = match self {
            Self::Llava(p) => &p.tokenizer,
            Self::Qwen2_5Vl(p) => &p.tokenizer,
        };
        let enc = tokenizer
            .encode(answer, false)
            .map_err(|e| anyhow!("tokenizing the answer {answer:?}: {e}"))?;
        Ok(enc.get_ids().first().map(|&i| i as i64))
    }
}
