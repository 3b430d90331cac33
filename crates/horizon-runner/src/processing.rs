//! What every family's processor shares: the prompt templates a user chooses from and the Pillow
//! release whose resize is reproduced.

use anyhow::{anyhow, bail, Result};
use horizon_data::imageproc::ResampleOrder;
use tokenizers::Tokenizer;

/// How the question becomes a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptTemplate {
    /// The checkpoint's chat template: llava-hf's for LLaVA-1.5, the one a LLaVA-NeXT checkpoint
    /// carries or its decoder's (Vicuna, Mistral, ChatML: `models::llava_next::ChatTemplate`), Qwen
    /// chat for Qwen2.5-VL.
    #[default]
    Auto,
    /// The llava-hf chat template: `USER: <image>\n{question} ASSISTANT:`.
    LlavaHf,
    /// The Qwen2.5-VL chat template with its default system message.
    Qwen,
    /// Original LLaVA `vicuna_v1` conversation, as the reference procedure of arXiv 2512.07580 uses.
    VicunaV1,
    /// The text as given; it must contain the family's image placeholder exactly once.
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

/// The Pillow the reference fixtures were made with (12.3.0, pinned in fixtures/requirements.txt).
pub const DEFAULT_RESAMPLE_ORDER: ResampleOrder = ResampleOrder::Pillow12;

/// Token ids of `text` with the tokenizer's special tokens (BOS from its post-processor).
pub fn encode(tokenizer: &Tokenizer, text: String) -> Result<Vec<i64>> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}

/// Sequence indices of the image tokens in `ids`; the prompt must hold exactly the `expected` count
/// the image processor gave (a question that contains the image token's text would add more).
pub fn image_token_positions(
    ids: &[i64],
    image_token_id: i64,
    expected: usize,
) -> Result<Vec<usize>> {
    let positions: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == image_token_id)
        .map(|(i, _)| i)
        .collect();
    if positions.len() != expected {
        anyhow::bail!(
            "the tokenized prompt has {} image tokens, expected {expected} (does the question contain the image token text?)",
            positions.len()
        );
    }
    Ok(positions)
}

/// Text of generated token ids, special tokens skipped.
pub fn decode(tokenizer: &Tokenizer, ids: &[i64]) -> Result<String> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    tokenizer
        .decode(&ids, true)
        .map_err(|e| anyhow!("decoding tokens: {e}"))
}
