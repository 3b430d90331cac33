//! The files of an HF checkpoint directory besides its weights: `config.json`,
//! `generation_config.json` and `tokenizer.json`, each read with errors that name the file.

use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// `config.json` of a checkpoint directory, parsed as JSON, with its path for error messages.
pub fn read_config(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    if !dir.is_dir() {
        bail!("{}: model directory not found", dir.display());
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow!("{}: cannot read model config ({e})", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: invalid JSON ({e})", path.display()))?;
    Ok((path, value))
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
pub fn eos_token_ids(dir: &Path) -> Result<Vec<i64>> {
    let mut sources = Vec::new();
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        let text = std::fs::read_to_string(&gen)
            .map_err(|e| anyhow!("{}: cannot read ({e})", gen.display()))?;
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
