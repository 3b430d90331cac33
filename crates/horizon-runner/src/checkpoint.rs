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

/// A content fingerprint of the checkpoint in `dir` (hex SHA-256), cheap for a 7B checkpoint: the
/// bytes of its small files (config, generation config, tokenizer, processor configs), and for every
/// safetensors shard its size, its header (tensor names, dtypes, shapes, offsets) and 16 evenly spread
/// 4 KiB samples of its data. A different model, config or retrained weights change it; `--resume`
/// refuses to continue a run with a different one.
pub fn fingerprint(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut hash = Sha256::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("{}: cannot list ({e})", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    const SMALL: [&str; 6] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "processor_config.json",
        "model.safetensors.index.json",
    ];
    for name in &names {
        let path = dir.join(name);
        let read_err = |e: std::io::Error| anyhow!("{}: cannot read ({e})", path.display());
        if SMALL.contains(&name.as_str()) {
            hash.update(name.as_bytes());
            hash.update(std::fs::read(&path).map_err(read_err)?);
        } else if name.ends_with(".safetensors") {
            let mut file = std::fs::File::open(&path).map_err(read_err)?;
            let size = file.metadata().map_err(read_err)?.len();
            let mut len = [0u8; 8];
            file.read_exact(&mut len).map_err(read_err)?;
            let header_len = u64::from_le_bytes(len).min(size.saturating_sub(8));
            let mut header = vec![0u8; header_len as usize];
            file.read_exact(&mut header).map_err(read_err)?;
            hash.update(name.as_bytes());
            hash.update(size.to_le_bytes());
            hash.update(&header);
            let data_start = 8 + header_len;
            let span = size.saturating_sub(data_start);
            let mut sample = vec![0u8; 4096];
            for i in 0..16u64 {
                let at = data_start + span * i / 16;
                file.seek(SeekFrom::Start(at)).map_err(read_err)?;
                let n = file.read(&mut sample).map_err(read_err)?;
                hash.update(&sample[..n]);
            }
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}
