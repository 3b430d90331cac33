//! The training-only heads: linear heads on visual tokens or hidden states that the losses read and
//! the checkpoint keeps, never exported with the model.

use anyhow::{anyhow, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use horizon_data::synthetic::{NamedColor, ShapeKind};

use crate::aux;
use crate::config::TrainConfig;

/// A training-only head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The dense per-patch head on the projected visual tokens ([`aux::patch_targets`]).
    Patch,
    /// The question probe ([`crate::question_probe_layer`]): the shape kind the question asks about.
    Question,
    /// The early answer at the question's shape word ([`crate::early_answer_layer`]).
    EarlyAnswer,
    /// The glyph under each quadrant of each patch ([`aux::cover_targets`]).
    GlyphCover,
    /// The reading-order place of the glyph under each quadrant ([`aux::order_cover_targets`]).
    OrderCover,
    /// How many shapes of each kind an image has, from the mean of its tokens
    /// ([`aux::pooled_count_loss`]).
    PooledCount,
}

/// What a head is: its tensors' name prefix, its seed (xor the run's), whether a run has it, and
/// its number of outputs (`vocab`: the tokenizer's size).
struct HeadSpec {
    head: Head,
    name: &'static str,
    seed: i64,
    on: fn(&TrainConfig) -> bool,
    width: fn(vocab: i64) -> i64,
}

/// Every training-only head, in the order their parameters follow the model's.
const HEADS: [HeadSpec; 6] = [
    HeadSpec {
        head: Head::Patch,
        name: "aux_head",
        seed: 0x0a0e,
        on: |c| c.patch.aux_weight > 0.0,
        width: |_| aux::head_width(),
    },
    HeadSpec {
        head: Head::Question,
        name: "question_head",
        seed: 0x9e57,
        on: |c| c.decoder.question_weight > 0.0,
        width: |_| ShapeKind::ALL.len() as i64,
    },
    HeadSpec {
        head: Head::EarlyAnswer,
        name: "early_answer_head",
        seed: 0xea71,
        on: |c| c.decoder.early_answer_weight > 0.0,
        width: |vocab| vocab,
    },
    HeadSpec {
        head: Head::GlyphCover,
        name: "glyph_cover_head",
        seed: 0xc0fe,
        on: |c| c.patch.aux_glyph_cover,
        width: |_| aux::cover_width(),
    },
    HeadSpec {
        head: Head::OrderCover,
        name: "order_cover_head",
        seed: 0x04de,
        on: |c| c.patch.aux_order_cover_weight > 0.0,
        width: |_| aux::order_cover_width(),
    },
    HeadSpec {
        head: Head::PooledCount,
        name: "pooled_count_head",
        seed: 0xc0de,
        on: |c| c.patch.pooled_count_weight > 0.0,
        width: |_| aux::pooled_count_width(),
    },
];

/// Where the run's heads sit in the parameter list (after the model's own parameters).
pub(crate) struct Heads {
    index: [Option<usize>; HEADS.len()],
}

impl Heads {
    /// Appends the heads `cfg` asks for to `params` (`{name}.weight`, `{name}.bias`): fresh and
    /// seeded, or when `resuming`, as saved in the checkpoint's head file `file`.
    pub(crate) fn add(
        params: &mut Vec<(String, Tensor)>,
        cfg: &TrainConfig,
        vocab: i64,
        file: &Path,
        resuming: bool,
        device: Device,
    ) -> Result<Self> {
        let mut index = [None; HEADS.len()];
        for (slot, spec) in index.iter_mut().zip(&HEADS) {
            if !(spec.on)(cfg) {
                continue;
            }
            let seed = cfg.schedule.seed as i64 ^ spec.seed;
            let width = (spec.width)(vocab);
            let (w, b) = linear_head(file, resuming, spec.name, width, cfg, seed, device)?;
            *slot = Some(params.len());
            params.push((format!("{}.weight", spec.name), w));
            params.push((format!("{}.bias", spec.name), b));
        }
        Ok(Self { index })
    }

    /// The weight and bias of `head`, if the run has it.
    pub(crate) fn get<'a>(
        &self,
        params: &'a [(String, Tensor)],
        head: Head,
    ) -> Option<(&'a Tensor, &'a Tensor)> {
        let slot = HEADS.iter().position(|h| h.head == head)?;
        self.index[slot].map(|i| (&params[i].1, &params[i + 1].1))
    }
}

/// For the word-aligned per-patch head ([`aux::with_word_logits`]): where the decoder's input
/// embeddings are among the parameters, and the token ids of the shape-kind and colour words.
pub(crate) struct AlignedWords {
    pub(crate) embed_idx: usize,
    pub(crate) kinds: Tensor,
    pub(crate) colors: Tensor,
}

impl AlignedWords {
    pub(crate) fn new(
        params: &[(String, Tensor)],
        tok: &tokenizers::Tokenizer,
        device: Device,
    ) -> Result<Self> {
        let embed_idx = params
            .iter()
            .position(|(n, _)| n.ends_with("embed_tokens.weight"))
            .ok_or_else(|| anyhow!("the decoder has no embed_tokens"))?;
        let word_ids = |words: Vec<&str>| -> Result<Tensor> {
            let ids = words
                .iter()
                .map(|w| {
                    tok.token_to_id(&format!("\u{2581}{w}"))
                        .map(|i| i as i64)
                        .ok_or_else(|| anyhow!("the vocabulary has no word {w:?}"))
                })
                .collect::<Result<Vec<i64>>>()?;
            Ok(Tensor::from_slice(&ids).to_device(device))
        };
        Ok(Self {
            embed_idx,
            kinds: word_ids(ShapeKind::ALL.map(|k| k.name()).to_vec())?,
            colors: word_ids(NamedColor::ALL.map(|c| c.name()).to_vec())?,
        })
    }
}

/// `t` divided by its root mean square over the last dimension: what the training-only heads read, so
/// that sharpening their logits cannot be done by inflating the hidden states' scale.
pub(crate) fn rms_normalized(t: &Tensor) -> Tensor {
    let rms = t
        .pow_tensor_scalar(2)
        .mean_dim(-1, true, Kind::Float)
        .g_add_scalar(1e-6)
        .sqrt();
    t / rms
}

/// A training-only head (`{name}.weight`, `{name}.bias`) from the checkpoint's head file, trainable.
fn saved_head(file: &Path, name: &str, device: Device) -> Result<(Tensor, Tensor)> {
    let saved: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(file)?.into_iter().collect();
    let get = |n: String| -> Result<Tensor> {
        Ok(saved
            .get(&n)
            .ok_or_else(|| anyhow!("{}: no tensor {n}", file.display()))?
            .to_device(device)
            .set_requires_grad(true))
    };
    Ok((get(format!("{name}.weight"))?, get(format!("{name}.bias"))?))
}

/// A training-only linear head `[classes, text_hidden]` (small init, seeded) or, when resuming, the
/// one saved in the checkpoint's head file.
fn linear_head(
    file: &Path,
    resuming: bool,
    name: &str,
    classes: i64,
    cfg: &TrainConfig,
    seed: i64,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    if resuming {
        return saved_head(file, name, device);
    }
    tch::manual_seed(seed);
    let w = Tensor::randn([classes, cfg.spec.text_hidden], (Kind::Float, device)) * 0.02;
    let b = Tensor::zeros([classes], (Kind::Float, device));
    Ok((w.set_requires_grad(true), b.set_requires_grad(true)))
}

/// Cross-entropy of a training-only linear head (`head`: weight, bias) on the RMS-normalized hidden
/// states `x` `[B, S, D]` at the given `(row, position, class)` targets.
pub(crate) fn position_head_loss(
    x: &Tensor,
    max_len: usize,
    targets: &[(usize, usize, i64)],
    head: (&Tensor, &Tensor),
) -> Tensor {
    let device = x.device();
    let rows: Vec<i64> = targets
        .iter()
        .map(|&(r, t, _)| (r * max_len + t) as i64)
        .collect();
    let d = x.size()[2];
    let h = x
        .reshape([-1, d])
        .index_select(0, &Tensor::from_slice(&rows).to_device(device));
    let logits = rms_normalized(&h).linear(head.0, Some(head.1));
    let classes: Vec<i64> = targets.iter().map(|&(_, _, k)| k).collect();
    logits.cross_entropy_for_logits(&Tensor::from_slice(&classes).to_device(device))
}
