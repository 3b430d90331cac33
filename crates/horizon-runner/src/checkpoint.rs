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

/// A content fingerprint of the checkpoint in `dir` (hex SHA-256): the bytes of its small files
/// (config, generation config, tokenizer, processor configs, shard index) and, for every
/// `*.safetensors` shard, its name, size and an XXH3-128 digest of every byte of it (header and
/// data, read in blocks; shards are hashed in parallel). Any edited byte of a weight, a
/// config or the tokenizer changes it, whether or not the file's size or header changed; files
/// horizon does not load (a README, `.bin` weights) are not seen. `--resume`, merge and
/// `eval --info-rows` refuse runs whose fingerprints differ. The cost, measured on a 7B-size
/// checkpoint, is in BENCHMARKS.md; within one process each shard's digest is kept by path, size
/// and modification time, so several runs over one checkpoint hash it once.
pub fn fingerprint(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
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
    let shards: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| dir.join(n))
        .collect();
    let digests: Vec<Result<(u64, u128)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .map(|path| scope.spawn(move || shard_digest(path)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("hashing a shard panicked")))
            })
            .collect()
    });
    let mut digests = shards.iter().zip(digests);
    let mut hash = Sha256::new();
    for name in &names {
        let path = dir.join(name);
        if SMALL.contains(&name.as_str()) {
            hash.update(name.as_bytes());
            hash.update(
                std::fs::read(&path)
                    .map_err(|e| anyhow!("{}: cannot read ({e})", path.display()))?,
            );
        } else if name.ends_with(".safetensors") {
            let (_, digest) = digests.next().expect("one digest per shard");
            let (size, xxh) = digest?;
            hash.update(name.as_bytes());
            hash.update(size.to_le_bytes());
            hash.update(xxh.to_le_bytes());
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// Size and XXH3-128 of every byte of the file `path`, kept for the process by path, size and
/// modification time.
///
/// The file is read in blocks through one buffer instead of memory-mapped: pages of a mapping
/// count in the process's resident set while it is mapped, and `horizon info` fingerprints the
/// checkpoint with the model already loaded, so hashing a mapped 7B checkpoint added its whole size
/// to the peak resident memory (BENCHMARKS.md, "Peak memory"). The digest is that of the whole file
/// either way (XXH3's streaming and one-shot forms agree).
fn shard_digest(path: &Path) -> Result<(u64, u128)> {
    use std::collections::HashMap;
    use std::io::Read;
    use std::sync::Mutex;
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static SEEN: Mutex<Option<HashMap<Key, u128>>> = Mutex::new(None);
    const BLOCK: usize = 8 << 20;
    let read_err = |e: std::io::Error| anyhow!("{}: cannot read ({e})", path.display());
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let key: Key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(d) = SEEN
        .lock()
        .ok()
        .and_then(|m| m.as_ref()?.get(&key).copied())
    {
        return Ok((meta.len(), d));
    }
    let mut hasher = twox_hash::XxHash3_128::new();
    let mut buf = vec![0u8; BLOCK.min(meta.len() as usize).max(1)];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        hasher.write(&buf[..n]);
        size += n as u64;
    }
    let digest = hasher.finish_128();
    if let Ok(mut m) = SEEN.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, digest);
    }
    Ok((size, digest))
}
