//! Checkpoint weights as users have them: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Each shard's header is read through a memory map; each tensor's
//! bytes are read from the file straight into the tensor, so that a 7B checkpoint is never held twice
//! in RAM (pages of a mapping count in the resident set while mapped: reading every tensor through the
//! map left the whole checkpoint resident beside the model until loading ended).
//!
//! Tensors are looked up by the dotted name of the HF module tree (`model.language_model.layers.0...`),
//! transformers 5.17's in-memory names. Checkpoints on disk store them in one of several layouts
//! (published legacy names, what 5.x `save_pretrained` writes, the in-memory names themselves); each
//! family lists its [`CheckpointLayout`]s, the checkpoint's names choose one, and the model code uses
//! the module-tree names only. Names that fit no single layout are an error naming the first one.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The most parameters random weights hand out: 2·10^10 (80 GB in f32), far above any model the
/// benchmarks time, far below what an absurd config asks for.
pub const MAX_RANDOM_ELEMENTS: u64 = 20_000_000_000;

/// A prefix rename from the name stored on disk to the HF module-tree name.
#[derive(Debug, Clone, Copy)]
pub struct KeyRename {
    pub on_disk: &'static str,
    pub in_model: &'static str,
}

/// One way a family's tensor names are written on disk: every stored name starts with one rule's
/// `on_disk` prefix (the in-memory layout's rules are identities).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointLayout {
    /// Named in errors, e.g. "published llava-hf".
    pub name: &'static str,
    pub renames: &'static [KeyRename],
}

impl CheckpointLayout {
    /// The module-tree name of `disk_name`, if it fits this layout.
    pub fn to_model(&self, disk_name: &str) -> Option<String> {
        self.renames.iter().find_map(|r| {
            disk_name
                .strip_prefix(r.on_disk)
                .map(|rest| format!("{}{}", r.in_model, rest))
        })
    }

    /// The name this layout stores the module-tree name `model_name` under, if it has one.
    pub fn to_disk(&self, model_name: &str) -> Option<String> {
        self.renames.iter().find_map(|r| {
            model_name
                .strip_prefix(r.in_model)
                .map(|rest| format!("{}{}", r.on_disk, rest))
        })
    }
}

/// The layout all of `names` fit (the first such in `layouts`), or an error naming the first name
/// that the best-fitting layout does not take, with the layouts tried.
pub fn choose_layout<'a>(
    dir: &Path,
    names: &[String],
    layouts: &'a [CheckpointLayout],
) -> Result<&'a CheckpointLayout> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let misfits: Vec<Option<&String>> = layouts
        .iter()
        .map(|l| sorted.iter().copied().find(|n| l.to_model(n).is_none()))
        .collect();
    if let Some(i) = misfits.iter().position(Option::is_none) {
        return Ok(&layouts[i]);
    }
    let fits = |l: &CheckpointLayout| sorted.iter().filter(|n| l.to_model(n).is_some()).count();
    let (best, _) = layouts
        .iter()
        .enumerate()
        .max_by_key(|(i, l)| (fits(l), std::cmp::Reverse(*i)))
        .ok_or_else(|| anyhow!("no checkpoint layout given"))?;
    let key = misfits[best].expect("every layout has a misfit here");
    let kind = if layouts.iter().any(|l| l.to_model(key).is_some()) {
        format!(
            "mixes checkpoint layouts: it fits another layout than the {} names before it",
            layouts[best].name
        )
    } else {
        "fits no known checkpoint layout".to_string()
    };
    bail!(
        "{}: tensor {key} {kind} (layouts: {})",
        dir.display(),
        layouts
            .iter()
            .map(|l| l.name)
            .collect::<Vec<_>>()
            .join("; ")
    )
}

struct Shard {
    path: PathBuf,
    file: File,
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
    /// Random weights: elements handed out so far (a config asking for absurd sizes fails before it
    /// allocates, instead of aborting on an allocation libtorch cannot satisfy).
    random_elements: std::cell::Cell<u64>,
    /// Every tensor handed out, by module-tree name, in load order: what a model built from these
    /// weights holds (the checkpoint check compares it with what the files contain; a trainer makes
    /// these its parameters).
    loaded: std::cell::RefCell<Vec<(String, Tensor)>>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Maps the checkpoint in `dir`, whose names are in one of `layouts`; tensors are converted to
    /// floating `kind` (integer tensors keep theirs) and moved to `device` when read.
    pub fn open(
        dir: &Path,
        layouts: &[CheckpointLayout],
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
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
        let mut stored: Vec<(usize, String)> = Vec::new();
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
            stored.extend(names.into_iter().map(|n| (shard_idx, n)));
            shards.push(Shard {
                path,
                file: handle,
                mmap,
            });
        }
        let names: Vec<String> = stored.iter().map(|(_, n)| n.clone()).collect();
        let layout = choose_layout(dir, &names, layouts)?;
        let mut entries = HashMap::new();
        for (shard, disk_name) in stored {
            let model_name = layout
                .to_model(&disk_name)
                .expect("the layout fits every name");
            if let Some(prev) = entries.insert(model_name.clone(), Entry { shard, disk_name }) {
                bail!(
                    "{}: tensors {} and {model_name} name the same module ({})",
                    dir.display(),
                    prev.disk_name,
                    layout.name
                );
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            entries,
            device,
            kind,
            random: false,
            random_elements: Default::default(),
            loaded: Default::default(),
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
            random_elements: Default::default(),
            loaded: Default::default(),
        }
    }

    /// The tensors handed out so far, by module-tree name, in load order. Each shares storage with
    /// the tensor the model holds.
    pub fn loaded(&self) -> Vec<(String, Tensor)> {
        self.loaded
            .borrow()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// Fails naming the first tensor of the checkpoint no module read, unless `known_unused` says the
    /// family leaves it unread on purpose: a leftover tensor means config.json and the weights
    /// disagree (e.g. fewer layers in the config than in the checkpoint), which would otherwise run a
    /// different model silently.
    pub fn check_all_used(&self, known_unused: impl Fn(&str) -> bool) -> Result<()> {
        if let Some(name) = self.unused().into_iter().find(|n| !known_unused(n)) {
            let entry = &self.entries[&name];
            bail!(
                "{}: tensor {} is not used by the model config.json describes (does config.json match the checkpoint, e.g. its number of layers?)",
                self.shards[entry.shard].path.display(),
                entry.disk_name
            );
        }
        Ok(())
    }

    /// Module-tree names of the checkpoint's tensors that no module read, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used: std::collections::HashSet<String> = self
            .loaded
            .borrow()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let mut names: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect();
        names.sort();
        names
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
        self.loaded
            .borrow_mut()
            .push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    fn read(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        if self.random {
            let n = shape
                .iter()
                .try_fold(1u64, |acc, &d| {
                    u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
                })
                .ok_or_else(|| anyhow!("random weights: tensor {name} has shape {shape:?}"))?;
            let total = self.random_elements.get().saturating_add(n);
            if total > MAX_RANDOM_ELEMENTS {
                bail!(
                    "random weights: the config asks for more than {MAX_RANDOM_ELEMENTS} parameters (tensor {name} has shape {shape:?}); check its sizes"
                );
            }
            self.random_elements.set(total);
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
        let entry = &self.entries[name];
        let file = self.shards[entry.shard].path.display();
        if !is_floating(t.kind()) {
            bail!(
                "{file}: tensor {} is stored as {:?}, expected a floating-point dtype",
                entry.disk_name,
                t.kind()
            );
        }
        if t.size() != shape {
            bail!(
                "{file}: tensor {} has shape {:?}, expected {:?} from config.json (fields it omits take HF's defaults for this family)",
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
        // The tensor's place in the file, from where the header puts it in the map (no page of the
        // data is touched through the map).
        let offset = view.data().as_ptr() as usize - shard.mmap.as_ptr() as usize;
        let cpu = read_tensor(shard, offset as u64, view.data(), &shape, disk_kind)
            .with_context(|| format!("{}: tensor {}", shard.path.display(), entry.disk_name))?;
        let target_kind = if is_floating(disk_kind) {
            self.kind
        } else {
            disk_kind
        };
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

/// One tensor's `bytes` (at `offset` in the shard file) as a new CPU tensor of `shape` and `kind`:
/// read from the file straight into the tensor's storage, the one copy of it this process holds.
#[cfg(unix)]
fn read_tensor(
    shard: &Shard,
    offset: u64,
    bytes: &[u8],
    shape: &[i64],
    kind: Kind,
) -> Result<Tensor> {
    use std::os::unix::fs::FileExt;
    let t = Tensor::f_empty(shape, (kind, Device::Cpu))?;
    let len = t.numel() * kind.elt_size_in_bytes();
    if len != bytes.len() {
        bail!(
            "{} bytes stored for {len} bytes of {kind:?} of shape {shape:?}",
            bytes.len()
        );
    }
    if len > 0 {
        // SAFETY: `t` is a new contiguous CPU tensor of exactly `len` bytes that nothing else
        // refers to yet.
        let storage = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) };
        shard
            .file
            .read_exact_at(storage, offset)
            .map_err(|e| anyhow!("cannot read {len} bytes at offset {offset} ({e})"))?;
    }
    Ok(t)
}

/// Elsewhere the bytes are copied from the map (its pages stay resident until the map is dropped).
#[cfg(not(unix))]
fn read_tensor(
    _shard: &Shard,
    _offset: u64,
    bytes: &[u8],
    shape: &[i64],
    kind: Kind,
) -> Result<Tensor> {
    Ok(Tensor::f_from_data_size(bytes, shape, kind)?)
}

fn is_floating(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
    )
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
