//! Checkpoint weights as users have them: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped so that a 7B checkpoint is never held twice in RAM.
//!
//! Tensors are looked up by the dotted name of the HF module tree (`model.language_model.layers.0...`).
//! Published checkpoints often store older names (`language_model.model.layers.0...`); each model family
//! supplies the same prefix renames HF applies on load ([`KeyRename`]), so the model code can use the
//! module-tree names only.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A prefix rename from the name stored on disk to the HF module-tree name.
#[derive(Debug, Clone, Copy)]
pub struct KeyRename {
    pub on_disk: &'static str,
    pub in_model: &'static str,
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// Where one tensor lives: shard index and its name inside the shard.
struct Entry {
    shard: usize,
    disk_name: String,
}

/// All tensors of a checkpoint directory, mapped but not yet read — or, for benchmarks of
/// configurations nobody has weights for here (e.g. llava-1.5-7b), random tensors of the requested shapes.
pub struct Weights {
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    device: Device,
    kind: Kind,
    random: bool,
    /// When set, every tensor handed out requires grad and is recorded here: the trainable parameters
    /// of a model built from these weights, in load order.
    parameters: Option<std::cell::RefCell<Vec<(String, Tensor)>>>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Maps the checkpoint in `dir`. `renames` turn on-disk names into module-tree names; tensors are
    /// converted to floating `kind` (integer tensors keep theirs) and moved to `device` when read.
    pub fn open(dir: &Path, renames: &[KeyRename], device: Device, kind: Kind) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single_path = dir.join("model.safetensors");
        let files: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("{}: cannot read", index_path.display()))?;
            let index: ShardIndex = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: invalid shard index (field weight_map)",
                    index_path.display()
                )
            })?;
            let mut files: Vec<String> = index.weight_map.values().cloned().collect();
            files.sort();
            files.dedup();
            files
        } else if single_path.exists() {
            vec!["model.safetensors".to_string()]
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json found",
                dir.display()
            );
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (shard_idx, file) in files.iter().enumerate() {
            let path = dir.join(file);
            let handle = File::open(&path).map_err(|e| {
                anyhow!(
                    "{}: missing or unreadable checkpoint shard ({e})",
                    path.display()
                )
            })?;
            // SAFETY: the file is opened read-only; a checkpoint modified while we run is user error,
            // as in every mmap-based loader (safetensors, candle, HF).
            let mmap = unsafe { Mmap::map(&handle) }
                .with_context(|| format!("{}: cannot memory-map", path.display()))?;
            let names: Vec<String> = {
                let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                    anyhow!("{}: not a valid safetensors file ({e})", path.display())
                })?;
                st.names().into_iter().map(|s| s.to_string()).collect()
            };
            for disk_name in names {
                let model_name = rename(&disk_name, renames);
                entries.insert(
                    model_name,
                    Entry {
                        shard: shard_idx,
                        disk_name,
                    },
                );
            }
            shards.push(Shard { path, mmap });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            entries,
            device,
            kind,
            random: false,
            parameters: None,
        })
    }

    /// Random weights: every requested tensor exists; matrices and embeddings are drawn from
    /// N(0, 0.02²) (HF's `initializer_range`), norm weights are ones and biases zeros, seeded by `seed`
    /// and the order of requests. For speed benchmarks and as the initialisation of training.
    pub fn random(device: Device, kind: Kind, seed: i64) -> Self {
        tch::manual_seed(seed);
        Self {
            dir: PathBuf::from("<random weights>"),
            shards: Vec::new(),
            entries: HashMap::new(),
            device,
            kind,
            random: true,
            parameters: None,
        }
    }

    /// Makes every tensor read from now on a trainable parameter (see [`Weights::take_parameters`]).
    pub fn record_parameters(mut self) -> Self {
        self.parameters = Some(Default::default());
        self
    }

    /// The trainable parameters recorded so far, by module-tree name. Each shares storage (and grad)
    /// with the tensor the model holds.
    pub fn take_parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters
            .as_ref()
            .map(|p| std::mem::take(&mut *p.borrow_mut()))
            .unwrap_or_default()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn contains(&self, name: &str) -> bool {
        self.random || self.entries.contains_key(name)
    }

    /// Reads tensor `name` (module-tree name), checks its shape and returns it on the target device/kind.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.read(name, shape)?;
        Ok(match &self.parameters {
            Some(params) => {
                let t = t.set_requires_grad(true);
                params
                    .borrow_mut()
                    .push((name.to_string(), t.shallow_clone()));
                t
            }
            None => t,
        })
    }

    fn read(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        if self.random {
            let is_norm = name.ends_with("norm.weight")
                || name.contains("layernorm")
                || name.contains("layer_norm")
                || name.contains("layrnorm");
            let t = if is_norm && name.ends_with(".weight") {
                Tensor::ones(shape, (self.kind, self.device))
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape, (self.kind, self.device))
            } else {
                Tensor::randn(shape, (Kind::Float, self.device))
                    .g_mul_scalar(0.02)
                    .to_kind(self.kind)
            };
            return Ok(t);
        }
        let t = self.get_any_shape(name)?;
        if t.size() != shape {
            let entry = &self.entries[name];
            bail!(
                "{}: tensor {} has shape {:?}, expected {:?} from config.json",
                self.shards[entry.shard].path.display(),
                entry.disk_name,
                t.size(),
                shape
            );
        }
        Ok(t)
    }

    /// Reads tensor `name` without a shape check (for shapes the config does not determine).
    pub fn get_any_shape(&self, name: &str) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            anyhow!(
                "{}: tensor {name} not found in the checkpoint",
                self.dir.display()
            )
        })?;
        let shard = &self.shards[entry.shard];
        let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| {
            anyhow!(
                "{}: not a valid safetensors file ({e})",
                shard.path.display()
            )
        })?;
        let view = st
            .tensor(&entry.disk_name)
            .map_err(|e| anyhow!("{}: tensor {}: {e}", shard.path.display(), entry.disk_name))?;
        let disk_kind = kind_of(view.dtype()).ok_or_else(|| {
            anyhow!(
                "{}: tensor {} has unsupported dtype {:?}",
                shard.path.display(),
                entry.disk_name,
                view.dtype()
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        // One owned CPU copy of this tensor only (the mmap is page cache, not a second copy).
        let cpu = Tensor::f_from_data_size(view.data(), &shape, disk_kind)
            .with_context(|| format!("{}: tensor {}", shard.path.display(), entry.disk_name))?;
        let is_float = matches!(
            disk_kind,
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
        );
        let target_kind = if is_float { self.kind } else { disk_kind };
        Ok(cpu.to_device(self.device).to_kind(target_kind))
    }

    /// Reads an optional tensor (e.g. a bias that some configs omit).
    pub fn get_opt(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn rename(disk_name: &str, renames: &[KeyRename]) -> String {
    for r in renames {
        if let Some(rest) = disk_name.strip_prefix(r.on_disk) {
            return format!("{}{}", r.in_model, rest);
        }
    }
    disk_name.to_string()
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}
