//! Training the bundled small LLaVA-format models from scratch on the synthetic benchmark.
//!
//! No special-cased model code: the trainer builds the same [`LlavaForConditionalGeneration`] the
//! runner loads, makes every tensor it read from the [`Weights`] a trainable parameter, and exports a
//! llava-hf checkpoint directory (legacy weight names, sparse `config.json`, `tokenizer.json`,
//! `preprocessor_config.json`) that the public loader and HF `LlavaForConditionalGeneration` read.
//!
//! Long runs checkpoint atomically (weights, AdamW moments, step) and resume exactly where they stopped.

pub mod attend;
pub mod aux;
pub mod tokenizer;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_data::atomic::{recover_dir, write_atomic, write_dir_atomic};
use horizon_data::imageproc::{clip_preprocess, ClipImageProcessorConfig, ResampleOrder};
use horizon_data::synthetic::{self, Category, GenConfig, SynthSample};

use horizon_runner::models::llava::{
    LlavaConfig, LlavaForConditionalGeneration, LLAVA_LAYOUTS, LLAVA_PUBLISHED,
};
use horizon_runner::weights::Weights;
use horizon_runner::{Intervention, VisualTokens};

/// Architecture of a small model (CLIP-style ViT + 2-layer GELU projector + Llama decoder).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmallModelSpec {
    pub image_size: i64,
    pub patch_size: i64,
    pub vision_hidden: i64,
    pub vision_layers: i64,
    pub vision_heads: i64,
    pub vision_intermediate: i64,
    pub text_hidden: i64,
    pub text_layers: i64,
    pub text_heads: i64,
    pub text_kv_heads: i64,
    pub text_intermediate: i64,
}

impl SmallModelSpec {
    /// The larger bundled model.
    pub fn large() -> Self {
        Self {
            image_size: 64,
            patch_size: 8,
            vision_hidden: 128,
            vision_layers: 4,
            vision_heads: 4,
            vision_intermediate: 384,
            text_hidden: 160,
            text_layers: 12,
            text_heads: 5,
            text_kv_heads: 5,
            text_intermediate: 384,
        }
    }

    /// The smaller bundled model (the weaker row of model-versus-model comparisons).
    pub fn small() -> Self {
        Self {
            vision_hidden: 96,
            vision_layers: 3,
            vision_heads: 4,
            vision_intermediate: 256,
            text_hidden: 96,
            text_layers: 8,
            text_heads: 4,
            text_kv_heads: 2,
            text_intermediate: 256,
            ..Self::large()
        }
    }

    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "large" => Ok(Self::large()),
            "small" => Ok(Self::small()),
            other => bail!("--size: '{other}' is not one of small, large"),
        }
    }

    /// `config.json` in the llava-hf layout. The vision feature layer is the last CLIP layer (-1):
    /// a from-scratch tower has no reason to keep an unused final layer.
    pub fn config_json(&self, vocab_size: i64) -> serde_json::Value {
        json!({
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": tokenizer::IMAGE.1,
            "pad_token_id": tokenizer::PAD.1,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
            "image_seq_length": (self.image_size / self.patch_size).pow(2),
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
            "vocab_size": vocab_size,
            "text_config": {
                "model_type": "llama",
                "hidden_size": self.text_hidden,
                "intermediate_size": self.text_intermediate,
                "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_heads,
                "num_key_value_heads": self.text_kv_heads,
                "max_position_embeddings": 512,
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "vocab_size": vocab_size,
                "bos_token_id": tokenizer::BOS.1,
                "eos_token_id": tokenizer::EOS.1,
                "pad_token_id": tokenizer::PAD.1,
                "tie_word_embeddings": false,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": self.vision_hidden,
                "intermediate_size": self.vision_intermediate,
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.vision_heads,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "projection_dim": self.vision_hidden,
                "hidden_act": "quick_gelu",
            },
        })
    }
}

/// Settings of one training run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub spec: SmallModelSpec,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub seed: u64,
    /// Glyph count of the text-reading tasks ramps from 1 to `max_glyphs` over this fraction of steps.
    pub curriculum_fraction: f64,
    pub max_glyphs: usize,
    /// Sampling weight of the fine (text-reading) categories relative to the coarse ones.
    pub fine_weight: f64,
    pub checkpoint_every: usize,
    /// Fraction of the steps trained on the coarse categories only, before the text-reading ones enter
    /// (measured: the decoder learns to look at the image much sooner without the reading tasks).
    #[serde(default)]
    pub coarse_only_fraction: f64,
    /// Standard deviation of the initial token embeddings (HF's 0.02 when 0). Projected image tokens
    /// reach norms of ~10-70 early in training while 0.02-embeddings have ~0.3: the question's tokens
    /// are then drowned in the residual stream by the first attention output and the decoder cannot
    /// condition on the question (measured: answers track the image but not the question).
    #[serde(default)]
    pub embed_init_std: f64,
    /// The per-patch head reads RMS-normalized visual tokens, so that sharpening its logits cannot
    /// inflate their scale.
    #[serde(default)]
    pub aux_normalized: bool,
    /// Further questions about the same image appended as later chat turns ([`extra_turns`]).
    #[serde(default)]
    pub extra_turns: usize,
    /// Weight of the dense per-patch loss on the projected visual tokens ([`aux`]; 0 turns it off).
    #[serde(default)]
    pub aux_weight: f64,
    /// Weight of the attention supervision of the answer tokens ([`attend`]; 0 turns it off).
    #[serde(default)]
    pub attend_weight: f64,
    /// Fraction of the coarse samples whose image is replaced by a text description of the same scene
    /// ([`scene_text`]), so that the answer can only be found by reading the question.
    #[serde(default)]
    pub text_scene_fraction: f64,
    /// Weight of the question probe ([`question_probe_layer`]): a linear head on the last prompt
    /// token's hidden state, a quarter of the way up the decoder, must name the shape kind the
    /// question asks about (training only; 0 turns it off).
    #[serde(default)]
    pub question_weight: f64,
    /// The per-patch head scores a patch's shape kind and colour against the decoder's own input
    /// embeddings of those words (`▁circle`, `▁red`) instead of free weights ([`aux::word_logits`]), so
    /// that a patch showing a red circle is pulled toward the words the questions and answers use.
    #[serde(default)]
    pub aux_word_aligned: bool,
    /// Weight of the early answer at the question's shape word ([`early_answer_layer`]): a linear
    /// head on the hidden state of the word that names the shape (`circle` in "What color is the
    /// circle?") halfway up the decoder must already predict the answer's first token (training only;
    /// 0 turns it off).
    #[serde(default)]
    pub early_answer_weight: f64,
    /// The attention supervision of the coarse questions is split in two hops: the question's shape
    /// word must look at the patches of its shape (a head below [`early_answer_layer`]), and the answer
    /// must look at the shape word (a head from that layer up). Measured without the second hop: the
    /// word finds its patches (69% of a head's mass) but the answer never reads the word.
    #[serde(default)]
    pub attend_via_shape_word: bool,
    /// Standard deviation of the decoder's initial query and key projections (HF's 0.02 when 0).
    /// A head that selects patches by the question's word needs the product W_q^T W_k, which grows
    /// from a saddle at zero as slowly as its factors are small.
    #[serde(default)]
    pub qk_init_std: f64,
    /// The attention supervision takes the best head for each query on its own instead of one head
    /// for the whole batch ([`attend::attention_loss_with`]).
    #[serde(default)]
    pub attend_per_query: bool,
    /// Experiment: train with the question before the image (`USER: {question}\n<image> ASSISTANT:`),
    /// so that each patch can read the question. Evaluated with `--template raw`.
    #[serde(default)]
    pub question_first: bool,
    /// Weight of a penalty on the mean square of the decoder's residual stream (every layer's input,
    /// every position). Measured without it (`docs/diagnostics/word_identity.py`): the first layer writes a
    /// vector of norm ~400 on the question's words, whose embeddings have norm ~0.7, so the word that
    /// names the asked shape is a 0.2% perturbation of a common vector in every later layer.
    #[serde(default)]
    pub activation_penalty: f64,
    /// The head the attention supervision trains (index into the supervised layers' heads, layer-major)
    /// instead of the best one of each step, which can change from step to step while several heads
    /// have about the same mass.
    #[serde(default)]
    pub attend_head: Option<usize>,
    /// Steps at the start that train the vision tower, the projector and the per-patch head alone, on
    /// the per-patch loss only (no decoder forward): staged training of the vision side.
    #[serde(default)]
    pub vision_stage_steps: usize,
    /// The vision tower starts at HF `CLIPPreTrainedModel._init_weights`' standard deviations (e.g.
    /// 0.1 for the class embedding and the attention output, 0.04 for q/k/v at width 96) instead of
    /// 0.02 everywhere: with 0.02 the attention logits start ~25x flatter and a patch is slow to learn
    /// anything about its neighbours (shape kind, glyphs that straddle patches).
    #[serde(default)]
    pub vision_init_hf: bool,
    /// The per-patch loss weighs "nothing here" and the other classes half and half in each group
    /// ([`aux::aux_loss_balanced`]) instead of "nothing here" at 0.2 per target ([`aux::aux_loss`]).
    #[serde(default)]
    pub aux_balanced: bool,
    /// A second training-only per-patch head names, for each quadrant of each patch, the glyph whose
    /// box holds the quadrant's centre ([`aux::cover_targets`]): every piece of a glyph is supervised,
    /// not only its centre (balanced loss, added to the per-patch loss).
    #[serde(default)]
    pub aux_glyph_cover: bool,
    /// Weight of a third training-only per-patch head that names, for each quadrant whose centre lies
    /// in a glyph's box, that glyph's place in the reading order ([`aux::order_cover_targets`];
    /// images with a red box are left out, their glyphs have no order). Balanced loss, added to the
    /// per-patch loss; 0 turns it off.
    #[serde(default)]
    pub aux_order_cover_weight: f64,
    /// Sampling weight of the reading categories during the vision stage (default: `fine_weight`).
    /// Glyphs are the slow part of the tower's learning and need many glyph images; the decoder
    /// phase keeps `fine_weight`.
    #[serde(default)]
    pub vision_stage_fine_weight: Option<f64>,
    /// Learning-rate multiplier of the vision tower and the projector after the vision stage (1: the
    /// decoder's rate; 0: frozen). Measured: at the decoder's fresh 2e-3 the untrained decoder's
    /// gradients undo the stage's glyph features (docs/training.md, `large-glyph`).
    #[serde(default = "one")]
    pub decoder_phase_vision_lr: f64,
    /// Sampling weights of the categories after the vision stage, in `Category::ALL` order, instead
    /// of 1 for each coarse category and `fine_weight` for each reading one. Measured
    /// (docs/training.md): colour and presence are learned long before counting and reading, so an even mix
    /// spends most of a fixed budget on tasks already solved.
    #[serde(default)]
    pub decoder_category_weights: Option<Vec<f64>>,
    /// Image samples of the other coarse categories whose image has circles also get the circle count
    /// asked as a second chat turn ([`circle_count_turn`]): counting gets supervision from most shape
    /// images for a dozen tokens each instead of a new 64-token image. Measured on `large`: the
    /// padded batch grows with it and a decoder step takes ~30% longer, so it is not in the bundled
    /// recipe.
    #[serde(default)]
    pub count_turn: bool,
    /// Weight of the pooled count loss ([`aux::pooled_count_loss`]): a training-only linear head on
    /// the mean of each image's normalized visual tokens names how many shapes of each kind it has,
    /// so that counting objects, not covered area, is what an even look over the image returns
    /// (0 turns it off).
    #[serde(default)]
    pub pooled_count_weight: f64,
}

fn one() -> f64 {
    1.0
}

/// The decoder layer whose input the early-answer head reads: halfway up. The shape word comes after
/// the image, so it can look the shape up among the patches itself (one hop, supervised directly);
/// the answer position then only has to copy from a fixed offset back, instead of first learning to
/// carry the asked kind forward and then to select patches by it, two hops neither of which pays
/// before the other exists.
pub fn early_answer_layer(text_layers: i64) -> usize {
    (text_layers as usize / 2).max(1)
}

/// The decoder layer whose input the question probe reads: a quarter of the way up (at least 1), so
/// that the asked kind is carried to the answer position early and later layers can select patches
/// by it. Which layers read the *image* is left to training.
pub fn question_probe_layer(text_layers: i64) -> usize {
    (text_layers as usize / 4).max(1)
}

/// Class of the shape kind a question names (`ShapeKind::ALL` order), if it names one.
pub fn asked_kind(question: &str) -> Option<i64> {
    use horizon_data::synthetic::ShapeKind;
    ShapeKind::ALL
        .iter()
        .position(|k| {
            question
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == k.name() || w.strip_suffix('s') == Some(k.name()))
        })
        .map(|i| i as i64)
}

impl TrainConfig {
    pub fn new(spec: SmallModelSpec, steps: usize, seed: u64) -> Self {
        Self {
            spec,
            steps,
            batch_size: 32,
            lr: 2e-3,
            warmup_steps: 200,
            weight_decay: 0.01,
            grad_clip: 1.0,
            seed,
            curriculum_fraction: 0.5,
            max_glyphs: 3,
            fine_weight: 2.0,
            checkpoint_every: 200,
            aux_weight: 1.0,
            coarse_only_fraction: 0.0,
            extra_turns: 0,
            embed_init_std: 0.0,
            aux_normalized: false,
            attend_weight: 0.0,
            text_scene_fraction: 0.0,
            question_weight: 0.0,
            aux_word_aligned: false,
            early_answer_weight: 0.0,
            attend_via_shape_word: false,
            qk_init_std: 0.0,
            attend_per_query: false,
            question_first: false,
            activation_penalty: 0.0,
            attend_head: None,
            vision_stage_steps: 0,
            vision_init_hf: false,
            aux_balanced: false,
            aux_glyph_cover: false,
            aux_order_cover_weight: 0.0,
            vision_stage_fine_weight: None,
            decoder_phase_vision_lr: 1.0,
            decoder_category_weights: None,
            count_turn: false,
            pooled_count_weight: 0.0,
        }
    }

    /// Warm-up then cosine decay to 5% of the peak, once for the vision stage and once for the rest
    /// (the decoder starts from scratch when the stage ends, so it gets a full schedule of its own).
    pub fn lr_at(&self, step: usize) -> f64 {
        let (start, len) = if step < self.vision_stage_steps {
            (0, self.vision_stage_steps)
        } else {
            (
                self.vision_stage_steps,
                self.steps - self.vision_stage_steps,
            )
        };
        let (step, warmup) = (step - start, self.warmup_steps);
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let t = (step - warmup) as f64 / (len - warmup).max(1) as f64;
        self.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
    }

    /// First step at which the text-reading categories are sampled.
    pub fn fine_start(&self) -> usize {
        (self.steps as f64 * self.coarse_only_fraction).round() as usize
    }

    /// The curriculum: how many glyphs text-reading samples may have at `step` (1 when they enter,
    /// `max_glyphs` from `curriculum_fraction` of the steps on).
    pub fn glyphs_at(&self, step: usize) -> usize {
        let start = self.fine_start() as f64;
        let ramp = (self.steps as f64 * self.curriculum_fraction - start).max(1.0);
        let t = (step as f64 - start).max(0.0) / ramp;
        let g = 1 + ((self.max_glyphs - 1) as f64 * t).floor() as usize;
        g.min(self.max_glyphs)
    }
}

/// The prompt the bundled models are trained and evaluated with (the llava-hf chat template).
pub fn prompt_text(question: &str) -> String {
    format!("USER: <image>\n{question} ASSISTANT:")
}

/// The vocabulary covers every prompt and answer the generator can produce: questions and answers of
/// many samples per category, and each glyph as a first and as a later character; with `scenes`, also
/// the text descriptions of coarse scenes ([`scene_text`]).
fn build_vocab_tokenizer(
    gen: &GenConfig,
    seed: u64,
    scenes: bool,
) -> Result<tokenizers::Tokenizer> {
    let mut texts: Vec<String> = vec!["USER: ".into()];
    for cat in Category::ALL {
        for i in 0..400 {
            let s = synthetic::generate(gen, cat, seed ^ 0x70c, i)?;
            texts.push(format!("\n{} ASSISTANT: {}", s.question, s.answer));
            texts.push(format!("USER: {} ASSISTANT: {}", s.question, s.answer));
            texts.push(s.answer.clone());
            if scenes && cat.kind() == synthetic::TaskKind::Coarse {
                texts.push(prompt_text(&s.question).replacen("<image>", &scene_text(&s), 1));
            }
        }
    }
    for c in synthetic::font::ALPHABET.chars() {
        texts.push(format!("{c}{c}"));
    }
    tokenizer::build_tokenizer(texts.iter().map(String::as_str))
}

/// The scene of a coarse sample in words, shapes in drawing order: `red circle, blue square`. Samples
/// that show the scene this way instead of as an image teach the decoder to look the question's shape
/// up in its context: measured, image-only training never does (the answers of every model trained so
/// far are exactly invariant to the asked shape: `docs/diagnostics/question_sensitivity.py`), because carrying
/// the asked kind to the answer only pays once a later head selects patches by it, and vice versa.
pub fn scene_text(s: &SynthSample) -> String {
    s.meta
        .shapes
        .iter()
        .map(|x| format!("{} {}", x.color.name(), x.kind.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One training example, tokenized.
struct Example {
    ids: Vec<i64>,
    /// Whether position t's next token (t + 1) is supervised: the answer tokens and EOS of every turn.
    supervised: Vec<bool>,
    /// Empty for a text-scene example.
    pixels: Vec<f32>,
    /// Position of the first image token (0 and unused for a text-scene example).
    image_start: usize,
    /// (query position, evidence patches) for the first turn's answer tokens that have evidence
    /// ([`attend::answer_token_evidence`]).
    evidence: Vec<(usize, Vec<usize>)>,
    /// (last prompt position, class of the shape kind the question names), for the question probe.
    asked: Option<(usize, i64)>,
    /// (position of the question's shape word, the answer's first token), for the early answer.
    early_answer: Option<(usize, i64)>,
    /// (answer query position, position of the question's shape word), the second hop of
    /// [`TrainConfig::attend_via_shape_word`].
    reads_shape_word: Option<(usize, usize)>,
}

/// Further questions about the same image, answered from the generator's ground truth, phrased exactly
/// as the generator phrases them: presence of each shape kind, the colour of each kind drawn once, the
/// number of circles when there are some. Asking several questions about one image gives the decoder
/// the contrast it needs to condition on the question (same image, different question, different
/// answer) at the cost of a few tokens instead of a new image.
fn extra_turns(s: &SynthSample, max: usize) -> Vec<(String, String)> {
    use horizon_data::synthetic::ShapeKind;
    let m = &s.meta;
    let mut turns = Vec::new();
    for kind in ShapeKind::ALL {
        let of_kind: Vec<_> = m.shapes.iter().filter(|x| x.kind == kind).collect();
        turns.push((
            format!("Is there a {} in the image?", kind.name()),
            if of_kind.is_empty() { "no" } else { "yes" }.to_string(),
        ));
        if of_kind.len() == 1 {
            turns.push((
                format!("What color is the {}?", kind.name()),
                of_kind[0].color.name().to_string(),
            ));
        }
    }
    turns.extend(circle_count_turn(s));
    turns.retain(|(q, _)| *q != s.question);
    // A fixed, sample-dependent order so that every kind of question lands in the first `max` turns.
    let h =
        s.id.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let n = turns.len().max(1);
    turns.rotate_left((h as usize) % n);
    turns.truncate(max);
    turns
}

/// The count_circles question about this image, as the generator phrases it, with its answer; `None`
/// when the image has no circle (the generator never asks for a count of zero).
fn circle_count_turn(s: &SynthSample) -> Option<(String, String)> {
    let circles = s
        .meta
        .shapes
        .iter()
        .filter(|x| x.kind == horizon_data::synthetic::ShapeKind::Circle)
        .count();
    (circles > 0).then(|| {
        (
            "How many circles are there in the image?".to_string(),
            circles.to_string(),
        )
    })
}

fn encode_example(
    tok: &tokenizers::Tokenizer,
    image_proc: &ClipImageProcessorConfig,
    num_image_tokens: usize,
    s: &SynthSample,
    cfg: &TrainConfig,
    text_scene: bool,
) -> Result<Example> {
    let (extra, patch_size) = (cfg.extra_turns, cfg.spec.patch_size as u32);
    let visual = if text_scene {
        scene_text(s)
    } else {
        "<image>".repeat(num_image_tokens)
    };
    let prompt = if cfg.question_first {
        format!("USER: {}\n<image> ASSISTANT:", s.question)
    } else {
        prompt_text(&s.question)
    }
    .replacen("<image>", &visual, 1);
    let mut ids: Vec<i64> = tok
        .encode(prompt, true)
        .map_err(|e| anyhow!("tokenizing a prompt: {e}"))?
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    let mut supervised = vec![false; ids.len()];
    let image_start = match ids.iter().position(|&i| i == tokenizer::IMAGE.1 as i64) {
        Some(p) => p,
        None if text_scene => 0,
        None => bail!("the prompt has no image token"),
    };
    if text_scene && ids.contains(&(tokenizer::UNK.1 as i64)) {
        bail!(
            "the scene text of {} has a token outside the vocabulary",
            s.id
        );
    }
    // The question's shape word: the last prompt token that names a shape kind (singular or plural).
    let shape_word_ids: Vec<i64> = horizon_data::synthetic::ShapeKind::ALL
        .iter()
        .flat_map(|k| {
            [
                format!("\u{2581}{}", k.name()),
                format!("\u{2581}{}s", k.name()),
            ]
        })
        .filter_map(|w| tok.token_to_id(&w).map(|i| i as i64))
        .collect();
    let shape_word = ids.iter().rposition(|i| shape_word_ids.contains(i));
    let encode = |text: &str| -> Result<Vec<i64>> {
        let enc = tok
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        if enc.get_ids().contains(&tokenizer::UNK.1) {
            bail!("{text:?} has a token outside the vocabulary");
        }
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    };
    let mut push_answer = |ids: &mut Vec<i64>, answer: &str| -> Result<()> {
        // Position t predicts t + 1: the position before the answer predicts its first token.
        let start = ids.len();
        ids.extend(encode(answer)?);
        ids.push(tokenizer::EOS.1 as i64);
        supervised.resize(ids.len(), false);
        for flag in &mut supervised[start - 1..ids.len() - 1] {
            *flag = true;
        }
        Ok(())
    };
    let answer_start = ids.len();
    push_answer(&mut ids, &s.answer)?;
    let early_answer = shape_word
        .filter(|&p| p >= image_start && !text_scene)
        .map(|p| (p, ids[answer_start]));
    // Answer token k is predicted at position answer_start - 1 + k (EOS has no evidence).
    let n_answer = ids.len() - 1 - answer_start;
    let evidence = if text_scene {
        Vec::new()
    } else {
        attend::answer_token_evidence(s, n_answer, patch_size)
    };
    let from_word = cfg.attend_via_shape_word && s.category.kind() == synthetic::TaskKind::Coarse;
    let evidence = evidence
        .into_iter()
        .enumerate()
        .filter_map(|(k, e)| {
            let query = if from_word {
                shape_word.filter(|&p| p > image_start)?
            } else {
                answer_start - 1 + k
            };
            e.map(|e| (query, e))
        })
        .collect();
    // Later turns follow the llava-hf multi-turn layout: `... ASSISTANT: {a}</s>USER: {q} ASSISTANT:`.
    let count_turn = (cfg.count_turn
        && !text_scene
        && s.category.kind() == synthetic::TaskKind::Coarse
        && s.category != Category::CountCircles)
        .then(|| circle_count_turn(s))
        .flatten();
    for (q, a) in extra_turns(s, extra).into_iter().chain(count_turn) {
        ids.extend(encode(&format!("USER: {q} ASSISTANT:"))?);
        push_answer(&mut ids, &a)?;
    }
    supervised.resize(ids.len(), false);
    let pixels = if text_scene {
        Vec::new()
    } else {
        clip_preprocess(&s.image, image_proc, ResampleOrder::Pillow12)?.data
    };
    Ok(Example {
        ids,
        supervised,
        pixels,
        image_start,
        evidence,
        asked: asked_kind(&s.question).map(|k| (answer_start - 1, k)),
        early_answer,
        reads_shape_word: shape_word
            .filter(|&p| from_word && p > image_start)
            .map(|p| (answer_start - 1, p)),
    })
}

fn image_processor_json(spec: &SmallModelSpec) -> serde_json::Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true, "size": {"shortest_edge": spec.image_size},
        "resample": 3, "do_center_crop": true,
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true,
    })
}

/// Progress of a run, persisted with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub config: TrainConfig,
    pub losses: Vec<(usize, f64)>,
    pub elapsed_s: f64,
}

/// File names inside a run directory and its checkpoint, shared by the writer and the resume path.
const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
const AUX_HEAD_FILE: &str = "aux_head.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Writes the files of a llava-hf checkpoint for `params` (module-tree names) into the existing
/// directory `tmp` (a staging directory of [`write_dir_atomic`]).
fn write_model_files(
    tmp: &Path,
    config: &serde_json::Value,
    tok: &tokenizers::Tokenizer,
    spec: &SmallModelSpec,
    params: &[(String, Tensor)],
    extra: &[(&str, &Tensor)],
) -> Result<()> {
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        std::fs::write(tmp.join(name), serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("{}: cannot write", tmp.join(name).display()))
    };
    write_json("config.json", config)?;
    write_json("preprocessor_config.json", &image_processor_json(spec))?;
    write_json(
        "generation_config.json",
        &json!({"bos_token_id": tokenizer::BOS.1, "eos_token_id": tokenizer::EOS.1,
                "pad_token_id": tokenizer::PAD.1, "do_sample": false}),
    )?;
    write_json(
        "tokenizer_config.json",
        &json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512,
                "clean_up_tokenization_spaces": false}),
    )?;
    // What llava-hf ships, so that HF's AutoProcessor builds a LlavaProcessor for the directory.
    write_json(
        "processor_config.json",
        &json!({"processor_class": "LlavaProcessor", "image_token": "<image>",
                "patch_size": spec.patch_size, "num_additional_image_tokens": 1,
                "vision_feature_select_strategy": "default"}),
    )?;
    tok.save(tmp.join("tokenizer.json"), true)
        .map_err(|e| anyhow!("writing tokenizer.json: {e}"))?;
    // Published llava-hf names on disk, as the loader and HF expect.
    let mut named: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, t)| {
            (
                to_disk_name(n),
                t.detach().to_kind(Kind::Float).to_device(Device::Cpu),
            )
        })
        .collect();
    named.extend(
        extra
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_device(Device::Cpu))),
    );
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, tmp.join("model.safetensors"))?;
    Ok(())
}

/// The published llava-hf name of a module-tree name: exported models look like the llava-hf ones.
fn to_disk_name(model_name: &str) -> String {
    LLAVA_PUBLISHED
        .to_disk(model_name)
        .unwrap_or_else(|| model_name.to_string())
}

/// AdamW with decoupled weight decay (no decay on norms and biases), moments kept for checkpoints.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
}

impl AdamW {
    fn new(params: &[(String, Tensor)]) -> Self {
        Self {
            m: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            v: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            decay: params
                .iter()
                .map(|(n, p)| p.dim() >= 2 && !n.contains("norm") && !n.contains("embedding"))
                .collect(),
        }
    }

    /// `lr_scale(i)`: multiplier of the learning rate of parameter `i` (0 skips it).
    fn step(
        &mut self,
        params: &[(String, Tensor)],
        lr: f64,
        wd: f64,
        step: usize,
        lr_scale: impl Fn(usize) -> f64,
    ) {
        let _guard = tch::no_grad_guard();
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, (_, p)) in params.iter().enumerate() {
            let g = p.grad();
            let lr = lr * lr_scale(i);
            if !g.defined() || lr == 0.0 {
                continue;
            }
            let _ = self.m[i].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
            let _ = self.v[i].g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
            let update = (&self.m[i] / c1) / ((&self.v[i] / c2).sqrt() + eps);
            let mut p = p.shallow_clone();
            if self.decay[i] {
                let _ = p.g_mul_scalar_(1.0 - lr * wd);
            }
            let _ = p.g_sub_(&(update * lr));
        }
    }
}

fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .collect();
    let total = grads
        .iter()
        .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    if total > max_norm {
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_scalar_(max_norm / (total + 1e-6));
        }
    }
    total
}

/// Samples for step `step`: categories drawn with the fine tasks weighted, indices unique per step.
fn batch_samples(cfg: &TrainConfig, step: usize) -> Result<Vec<SynthSample>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let gen = GenConfig::default()
        .with_image_size(cfg.spec.image_size as u32)
        .with_glyphs(1, cfg.glyphs_at(step));
    let decoder_phase = step >= cfg.vision_stage_steps;
    let weights: Vec<f64> = Category::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let fine = c.kind() == synthetic::TaskKind::Fine;
            match (&cfg.decoder_category_weights, decoder_phase) {
                _ if fine && step < cfg.fine_start() => 0.0,
                (Some(w), true) => w[i],
                _ if !fine => 1.0,
                (_, false) => cfg.vision_stage_fine_weight.unwrap_or(cfg.fine_weight),
                (_, true) => cfg.fine_weight,
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    (0..cfg.batch_size)
        .map(|i| {
            let mut x = rng.gen::<f64>() * total;
            let mut cat = Category::ALL[0];
            for (c, w) in Category::ALL.iter().zip(&weights) {
                if x < *w {
                    cat = *c;
                    break;
                }
                x -= w;
            }
            // Training indices live far from the bundled test split's (which start at 0).
            let index = 1_000_000_000 + (step * cfg.batch_size + i) as u64;
            synthetic::generate(&gen, cat, cfg.seed, index)
        })
        .collect()
}

/// `t` divided by its root mean square over the last dimension: what the training-only heads read, so
/// that sharpening their logits cannot be done by inflating the hidden states' scale.
fn rms_normalized(t: &Tensor) -> Tensor {
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
fn position_head_loss(
    x: &Tensor,
    max_len: usize,
    targets: &[(usize, usize, i64)],
    head: &[(String, Tensor)],
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
    let logits = rms_normalized(&h).linear(&head[0].1, Some(&head[1].1));
    let classes: Vec<i64> = targets.iter().map(|&(_, _, k)| k).collect();
    logits.cross_entropy_for_logits(&Tensor::from_slice(&classes).to_device(device))
}

/// Multiplies the freshly initialised parameters whose name `matches` by `std / 0.02`, so that they
/// start at standard deviation `std` instead of HF's 0.02 (nothing when `std` is 0).
fn rescale_initial(params: &[(String, Tensor)], std: f64, matches: impl Fn(&str) -> bool) {
    if std <= 0.0 {
        return;
    }
    let _guard = tch::no_grad_guard();
    for (name, p) in params {
        if matches(name) {
            let mut p = p.shallow_clone();
            let _ = p.g_mul_scalar_(std / 0.02);
        }
    }
}

/// Rescales the vision tower's initial (std 0.02) weights to the standard deviations of HF
/// `CLIPPreTrainedModel._init_weights` (initializer factor 1): class embedding `h^-0.5`; q/k/v
/// `h^-0.5 (2L)^-0.5`; attention output `h^-0.5`; fc1 `(2h)^-0.5`; fc2 `h^-0.5 (2L)^-0.5`. The patch
/// and position embeddings keep 0.02, as in HF.
fn clip_hf_init(params: &[(String, Tensor)], spec: &SmallModelSpec) {
    let h = spec.vision_hidden as f64;
    let in_proj = h.powf(-0.5) * (2.0 * spec.vision_layers as f64).powf(-0.5);
    let rules: [(&str, f64); 7] = [
        ("embeddings.class_embedding", h.powf(-0.5)),
        ("self_attn.q_proj.weight", in_proj),
        ("self_attn.k_proj.weight", in_proj),
        ("self_attn.v_proj.weight", in_proj),
        ("self_attn.out_proj.weight", h.powf(-0.5)),
        ("mlp.fc1.weight", (2.0 * h).powf(-0.5)),
        ("mlp.fc2.weight", in_proj),
    ];
    for (suffix, std) in rules {
        rescale_initial(params, std, |name| {
            name.contains("vision_tower.") && name.ends_with(suffix)
        });
    }
}

/// Which samples of step `step` are shown as a text scene instead of an image: coarse ones, each with
/// probability `text_scene_fraction` (seeded by the run's seed and the step).
fn text_scene_flags(cfg: &TrainConfig, step: usize, samples: &[SynthSample]) -> Vec<bool> {
    use rand::{Rng, SeedableRng};
    if cfg.text_scene_fraction <= 0.0 {
        return vec![false; samples.len()];
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        cfg.seed ^ 0x5ce9e ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    samples
        .iter()
        .map(|s| {
            let draw = rng.gen::<f64>();
            s.category.kind() == synthetic::TaskKind::Coarse && draw < cfg.text_scene_fraction
        })
        .collect()
}

/// Losses of one step: the answer (language-model) loss and the dense per-patch loss ([`aux`]).
#[derive(Debug, Clone, Copy)]
pub struct StepLosses {
    pub lm: f64,
    pub aux: f64,
    /// Mean over supervised answer tokens of the largest attention mass on their evidence
    /// ([`attend`]; 0 when off).
    pub attend: f64,
    /// Cross-entropy of the early answer at the question's shape word (0 when off).
    pub early_answer: f64,
    /// Glyph centres of this (fresh) batch that the per-patch head named right, and all of them
    /// ([`aux::glyph_hits`]; (0, 0) without the per-patch loss or glyphs).
    pub glyph_hits: (i64, i64),
    /// Images of this batch with circles whose circle count the pooled count head named right, and
    /// all images with circles ((0, 0) when the pooled count loss is off).
    pub count_hits: (i64, i64),
    /// Glyph centres of this batch's images without a red box whose reading-order place the per-patch
    /// head named right, and all of them ([`aux::order_hits`]).
    pub order_hits: (i64, i64),
}

/// When a call to [`train`] returns before the run is finished (a checkpoint is written first), so
/// that a long run can be split into several jobs and resumed.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopAt {
    /// Stop once this many steps of the run are done.
    pub step: Option<usize>,
    /// Stop at the first step boundary after this many seconds of this call.
    pub seconds: Option<f64>,
}

/// Lengthens a checkpointed run in `run_dir` to `cfg.steps`, so that the next [`train`] with `cfg`
/// resumes it and goes on (also after the run has finished). Every other setting must equal the
/// checkpoint's. The last phase's cosine schedule is recomputed for the new length, so from the
/// current step on the learning rate jumps to where the longer schedule would be (a warm restart), and
/// the result differs from a run planned with `cfg.steps` from the start. The coarse-only phase and the
/// glyph curriculum are fractions of the steps too and move with them (nothing changes for a run
/// already past both). Returns the checkpoint's step.
pub fn extend_run(cfg: &TrainConfig, run_dir: &Path) -> Result<usize> {
    let Some((mut state, state_path)) = checkpointed_state(run_dir)? else {
        bail!("{}: no run to extend", run_dir.join(STATE_FILE).display());
    };
    let old = state.config.steps;
    if cfg.steps <= old {
        bail!(
            "{}: steps: the run already has {old} steps; extending needs more than that (got {})",
            state_path.display(),
            cfg.steps
        );
    }
    let mut same_but_steps = cfg.clone();
    same_but_steps.steps = old;
    if same_but_steps != state.config {
        bail!(
            "{}: config: only --steps may change when extending a run; another setting differs from the checkpoint's",
            state_path.display()
        );
    }
    state.config.steps = cfg.steps;
    write_state(&state_path, &state)?;
    // The run's copy for readers (the same file for a checkpoint written before the copy existed).
    write_state(&run_dir.join(STATE_FILE), &state)?;
    Ok(state.step)
}

/// The state of the run in `run_dir` and the file it was read from: the checkpoint's own
/// `checkpoint/state.json`, written in one atomic group with the weights, heads and moments, or for a
/// checkpoint written before that file existed, the run's `state.json`. First mends a checkpoint
/// write that a kill interrupted ([`recover_dir`]). `None` when the run has no checkpoint yet.
fn checkpointed_state(run_dir: &Path) -> Result<Option<(TrainerState, PathBuf)>> {
    let ckpt = run_dir.join(CHECKPOINT_DIR);
    recover_dir(&ckpt)?;
    if !ckpt.join("model.safetensors").exists() {
        return Ok(None);
    }
    let path = [ckpt.join(STATE_FILE), run_dir.join(STATE_FILE)]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: a checkpoint without state.json", ckpt.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let state = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid trainer state", path.display()))?;
    Ok(Some((state, path)))
}

fn write_state(path: &Path, state: &TrainerState) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, serde_json::to_string(state)?)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })
}

/// Trains (or resumes) a model into `run_dir` and exports the final llava-hf directory to
/// `run_dir/model`, returned as `Some`; `None` when `stop` ended the call first. Each checkpoint is one
/// directory, `run_dir/checkpoint` (the model files, the training-only heads, the AdamW moments and
/// `state.json`), replaced whole ([`write_dir_atomic`]), so a kill at any moment resumes from the last
/// complete checkpoint. `run_dir/state.json` is a copy of the checkpoint's state for readers.
/// `on_step(step, losses, lr)` reports progress.
pub fn train(
    cfg: &TrainConfig,
    run_dir: &Path,
    device: Device,
    stop: StopAt,
    mut on_step: impl FnMut(usize, StepLosses, f64),
) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(run_dir)?;
    let gen = GenConfig::default().with_image_size(cfg.spec.image_size as u32);
    let tok = build_vocab_tokenizer(&gen, cfg.seed, cfg.text_scene_fraction > 0.0)?;
    let vocab = tok.get_vocab_size(true) as i64;
    let config_json = cfg.spec.config_json(vocab);
    let llava_cfg = LlavaConfig::from_json(Path::new("config.json"), config_json.clone())?;
    let num_image_tokens = llava_cfg.num_image_tokens() as usize;
    let image_proc = ClipImageProcessorConfig::from_json_str(
        &image_processor_json(&cfg.spec).to_string(),
        "preprocessor_config.json",
    )?;

    let ckpt = run_dir.join(CHECKPOINT_DIR);
    let state_path = run_dir.join(STATE_FILE);
    let (weights, mut state) = if let Some((state, path)) = checkpointed_state(run_dir)? {
        if state.config != *cfg {
            bail!(
                "{}: resuming with different settings than the checkpoint",
                path.display()
            );
        }
        // A kill after the checkpoint went into place but before its copy was written leaves the
        // copy a checkpoint behind.
        write_state(&state_path, &state)?;
        (
            Weights::open(&ckpt, LLAVA_LAYOUTS, device, Kind::Float)?,
            state,
        )
    } else {
        let state = TrainerState {
            step: 0,
            config: cfg.clone(),
            losses: Vec::new(),
            elapsed_s: 0.0,
        };
        (Weights::random(device, Kind::Float, cfg.seed as i64), state)
    };
    let model = LlavaForConditionalGeneration::from_weights(&weights, llava_cfg)?;
    // Every tensor the model holds is a trainable parameter (each shares its storage with the model).
    let mut params: Vec<(String, Tensor)> = weights
        .loaded()
        .into_iter()
        .map(|(name, t)| (name, t.set_requires_grad(true)))
        .collect();
    if state.step == 0 {
        rescale_initial(&params, cfg.embed_init_std, |name| {
            name.ends_with("embed_tokens.weight")
        });
        if cfg.vision_init_hf {
            clip_hf_init(&params, &cfg.spec);
        }
        rescale_initial(&params, cfg.qk_init_std, |name| {
            name.starts_with("model.language_model.")
                && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"))
        });
    }
    // The dense per-patch head (training only): kept in its own file, never in the exported model.
    let aux_file = ckpt.join(AUX_HEAD_FILE);
    let n_model_params = params.len();
    if cfg.aux_weight > 0.0 {
        let (w, b) = if state.step > 0 && aux_file.exists() {
            saved_head(&aux_file, "aux_head", device)?
        } else {
            aux::new_head(cfg.spec.text_hidden, device, cfg.seed as i64)
        };
        params.push(("aux_head.weight".into(), w));
        params.push(("aux_head.bias".into(), b));
    }
    // The question probe (training only), in the same file as the per-patch head.
    let resuming = state.step > 0 && aux_file.exists();
    let question_idx = params.len();
    if cfg.question_weight > 0.0 {
        let kinds = horizon_data::synthetic::ShapeKind::ALL.len() as i64;
        let seed = cfg.seed as i64 ^ 0x9e57;
        let (w, b) = linear_head(
            &aux_file,
            resuming,
            "question_head",
            kinds,
            cfg,
            seed,
            device,
        )?;
        params.push(("question_head.weight".into(), w));
        params.push(("question_head.bias".into(), b));
    }
    // (decoder embedding index, kind word ids, colour word ids) for the word-aligned per-patch head.
    let aligned_words = if cfg.aux_word_aligned {
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
        let kinds = horizon_data::synthetic::ShapeKind::ALL.map(|k| k.name());
        let colors = horizon_data::synthetic::NamedColor::ALL.map(|c| c.name());
        Some((
            embed_idx,
            word_ids(kinds.to_vec())?,
            word_ids(colors.to_vec())?,
        ))
    } else {
        None
    };
    // The early-answer head (training only), in the same file as the per-patch head.
    let early_idx = params.len();
    if cfg.early_answer_weight > 0.0 {
        let name = "early_answer_head";
        let seed = cfg.seed as i64 ^ 0xea71;
        let (w, b) = linear_head(&aux_file, resuming, name, vocab, cfg, seed, device)?;
        params.push(("early_answer_head.weight".into(), w));
        params.push(("early_answer_head.bias".into(), b));
    }
    // The glyph-cover head (training only), in the same file as the per-patch head.
    let cover_idx = params.len();
    if cfg.aux_glyph_cover {
        let seed = cfg.seed as i64 ^ 0xc0fe;
        let name = "glyph_cover_head";
        let width = aux::cover_width();
        let (w, b) = linear_head(&aux_file, resuming, name, width, cfg, seed, device)?;
        params.push(("glyph_cover_head.weight".into(), w));
        params.push(("glyph_cover_head.bias".into(), b));
    }
    // The reading-order cover head (training only), in the same file as the per-patch head.
    let order_cover_idx = params.len();
    if cfg.aux_order_cover_weight > 0.0 {
        let seed = cfg.seed as i64 ^ 0x04de;
        let name = "order_cover_head";
        let width = aux::order_cover_width();
        let (w, b) = linear_head(&aux_file, resuming, name, width, cfg, seed, device)?;
        params.push(("order_cover_head.weight".into(), w));
        params.push(("order_cover_head.bias".into(), b));
    }
    // The pooled count head (training only), in the same file as the per-patch head.
    let count_idx = params.len();
    if cfg.pooled_count_weight > 0.0 {
        let seed = cfg.seed as i64 ^ 0xc0de;
        let name = "pooled_count_head";
        let width = aux::pooled_count_width();
        let (w, b) = linear_head(&aux_file, resuming, name, width, cfg, seed, device)?;
        params.push(("pooled_count_head.weight".into(), w));
        params.push(("pooled_count_head.bias".into(), b));
    }
    let mut opt = AdamW::new(&params);
    // The tower and the projector, whose rate --decoder-phase-vision-lr scales after the stage.
    let is_vision_side: Vec<bool> = params
        .iter()
        .map(|(n, _)| n.contains("vision_tower.") || n.contains("multi_modal_projector."))
        .collect();
    let moments = ckpt.join(OPTIMIZER_FILE);
    if state.step > 0 && moments.exists() {
        let saved: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&moments)?.into_iter().collect();
        for (i, (name, _)) in params.iter().enumerate() {
            let (m, v) = (
                saved.get(&format!("m.{name}")),
                saved.get(&format!("v.{name}")),
            );
            let (Some(m), Some(v)) = (m, v) else {
                bail!("{}: no moments for {name}", moments.display());
            };
            opt.m[i] = m.to_device(device);
            opt.v[i] = v.to_device(device);
        }
    }
    // HF's CLIP has a post_layernorm that LLaVA never uses; export an identity one.
    let h = cfg.spec.vision_hidden;
    let post_w = Tensor::ones([h], (Kind::Float, Device::Cpu));
    let post_b = Tensor::zeros([h], (Kind::Float, Device::Cpu));
    let extra = [
        ("vision_tower.vision_model.post_layernorm.weight", &post_w),
        ("vision_tower.vision_model.post_layernorm.bias", &post_b),
    ];
    // The model's own parameters as llava-hf files (checkpoints and the final export).
    let model_files = |dir: &Path, params: &[(String, Tensor)]| {
        write_model_files(
            dir,
            &config_json,
            &tok,
            &cfg.spec,
            &params[..n_model_params],
            &extra,
        )
    };

    let started = std::time::Instant::now();
    let elapsed_before = state.elapsed_s;
    while state.step < cfg.steps {
        let step = state.step;
        let samples = batch_samples(cfg, step)?;
        let text_scenes = text_scene_flags(cfg, step, &samples);
        let examples: Vec<Example> = samples
            .iter()
            .zip(&text_scenes)
            .map(|(s, &text_scene)| {
                encode_example(&tok, &image_proc, num_image_tokens, s, cfg, text_scene)
            })
            .collect::<Result<_>>()?;
        // Samples shown as an image (text scenes have no pixels and no per-patch targets).
        let with_image: Vec<usize> = (0..samples.len()).filter(|&i| !text_scenes[i]).collect();
        let max_len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let b = examples.len() as i64;
        let mut ids = vec![tokenizer::PAD.1 as i64; examples.len() * max_len];
        let mut labels = vec![-100i64; examples.len() * max_len];
        for (r, e) in examples.iter().enumerate() {
            ids[r * max_len..r * max_len + e.ids.len()].copy_from_slice(&e.ids);
            // Position t predicts token t + 1: supervise the answer tokens and EOS of every turn.
            for t in 0..e.ids.len() - 1 {
                if e.supervised[t] {
                    labels[r * max_len + t] = e.ids[t + 1];
                }
            }
        }
        let ids = Tensor::from_slice(&ids)
            .reshape([b, max_len as i64])
            .to_device(device);
        let labels = Tensor::from_slice(&labels).reshape([-1]).to_device(device);
        let side = cfg.spec.image_size;
        let pixels: Vec<f32> = examples
            .iter()
            .flat_map(|e| e.pixels.iter().copied())
            .collect();
        let n_img = with_image.len() as i64;
        let features = if n_img > 0 {
            let pixels = Tensor::from_slice(&pixels)
                .reshape([n_img, 3, side, side])
                .to_device(device);
            Some(model.image_features(&pixels)?)
        } else {
            None
        };
        let mut aux_l = None;
        let mut glyph_hits = (0, 0);
        let mut count_hits = (0, 0);
        let mut order_hits = (0, 0);
        if let (true, Some(features)) = (cfg.aux_weight > 0.0, &features) {
            let (w, bias) = (&params[n_model_params].1, &params[n_model_params + 1].1);
            let aux_in = if cfg.aux_normalized {
                rms_normalized(features)
            } else {
                features.shallow_clone()
            };
            let mut aux_logits = aux_in.linear(w, Some(bias));
            if let Some((embed_idx, kind_word_ids, color_word_ids)) = &aligned_words {
                let embed = &params[*embed_idx].1;
                aux_logits = aux::with_word_logits(
                    &aux_logits,
                    &rms_normalized(features),
                    &embed.index_select(0, kind_word_ids),
                    &embed.index_select(0, color_word_ids),
                );
            }
            // `[images, patches, groups]` targets of the image samples, from one of aux's target fns.
            let batch_targets = |targets_of: fn(&synthetic::SampleMeta, u32) -> Vec<i64>| {
                let t: Vec<i64> = with_image
                    .iter()
                    .flat_map(|&i| targets_of(&samples[i].meta, cfg.spec.patch_size as u32))
                    .collect();
                Tensor::from_slice(&t)
                    .reshape([n_img, features.size()[1], -1])
                    .to_device(device)
            };
            let targets = batch_targets(aux::patch_targets);
            glyph_hits = aux::glyph_hits(&aux_logits, &targets);
            order_hits = aux::order_hits(&aux_logits, &targets);
            let mut l = if cfg.aux_balanced {
                aux::aux_loss_balanced(&aux_logits, &targets)
            } else {
                aux::aux_loss(&aux_logits, &targets)
            };
            if cfg.aux_glyph_cover {
                let (w, bias) = (&params[cover_idx].1, &params[cover_idx + 1].1);
                let cover = batch_targets(aux::cover_targets);
                l += aux::cover_loss(&aux_in.linear(w, Some(bias)), &cover);
            }
            // Only images without a red box: a boxed image's glyphs have no reading order.
            if cfg.aux_order_cover_weight > 0.0 {
                let (rows, targets): (Vec<i64>, Vec<Vec<i64>>) = with_image
                    .iter()
                    .enumerate()
                    .filter_map(|(row, &i)| {
                        aux::order_cover_targets(&samples[i].meta, cfg.spec.patch_size as u32)
                            .map(|t| (row as i64, t))
                    })
                    .unzip();
                if !rows.is_empty() {
                    let (w, bias) = (&params[order_cover_idx].1, &params[order_cover_idx + 1].1);
                    let t = Tensor::from_slice(&targets.concat())
                        .reshape([rows.len() as i64, features.size()[1], -1])
                        .to_device(device);
                    let rows = Tensor::from_slice(&rows).to_device(device);
                    let logits = aux_in.index_select(0, &rows).linear(w, Some(bias));
                    l += aux::order_cover_loss(&logits, &t) * cfg.aux_order_cover_weight;
                }
            }
            if cfg.pooled_count_weight > 0.0 {
                let (w, bias) = (&params[count_idx].1, &params[count_idx + 1].1);
                let counts: Vec<i64> = with_image
                    .iter()
                    .flat_map(|&i| aux::kind_counts(&samples[i].meta))
                    .collect();
                let counts = Tensor::from_slice(&counts)
                    .reshape([n_img, -1])
                    .to_device(device);
                let (count_l, hits) =
                    aux::pooled_count_loss(&rms_normalized(features), w, bias, &counts);
                count_hits = hits;
                l += count_l * cfg.pooled_count_weight;
            }
            aux_l = Some(l);
        }
        let aux_loss_v = aux_l.as_ref().map_or(0.0, |l| l.double_value(&[]));
        // The answer loss and every decoder-side term; none of them in the vision stage.
        let vision_stage = step < cfg.vision_stage_steps;
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        if let Some(aux_l) = &aux_l {
            loss += aux_l * cfg.aux_weight;
        }
        let (mut lm_loss_v, mut early_v, mut attend_v) = (f64::NAN, 0.0, 0.0);
        if !vision_stage {
            // Right padding with a causal mask: real tokens never attend to the padding after them.
            let mut layer_inputs = Vec::new();
            let want_inputs = (cfg.attend_weight > 0.0
                || cfg.question_weight > 0.0
                || cfg.early_answer_weight > 0.0
                || cfg.activation_penalty > 0.0)
                .then_some(&mut layer_inputs);
            let embeds = match &features {
                Some(features) => model.input_embeds_with_features(&ids, features)?,
                None => model.language_model.embed(&ids),
            };
            // Positions 0..S broadcast over the batch; no cut, so no visual layout is needed.
            let lm = &model.language_model;
            let positions = lm.rotary_emb.contiguous_positions(max_len as i64, device);
            let out = lm.prefill(
                &embeds,
                &positions,
                0,
                &VisualTokens::default(),
                &mut Intervention::none(),
                None,
                want_inputs,
            )?;
            let logits = model
                .lm_head
                .forward(&out.hidden)
                .reshape([b * max_len as i64, -1]);
            let lm_loss =
                logits.cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Mean, -100, 0.0);
            lm_loss_v = lm_loss.double_value(&[]);
            loss += lm_loss;
            let asked: Vec<(usize, usize, i64)> = examples
                .iter()
                .enumerate()
                .filter_map(|(r, e)| e.asked.map(|(t, k)| (r, t, k)))
                .collect();
            if cfg.question_weight > 0.0 && !asked.is_empty() {
                let x = &layer_inputs[question_probe_layer(cfg.spec.text_layers)];
                let head = &params[question_idx..question_idx + 2];
                loss += position_head_loss(x, max_len, &asked, head) * cfg.question_weight;
            }
            if cfg.activation_penalty > 0.0 {
                let squares: Vec<Tensor> = layer_inputs
                    .iter()
                    .map(|x| x.pow_tensor_scalar(2).mean(Kind::Float))
                    .collect();
                let mean_square = Tensor::stack(&squares, 0).mean(Kind::Float);
                loss += mean_square * cfg.activation_penalty;
            }
            let early: Vec<(usize, usize, i64)> = examples
                .iter()
                .enumerate()
                .filter_map(|(r, e)| e.early_answer.map(|(t, y)| (r, t, y)))
                .collect();
            if cfg.early_answer_weight > 0.0 && !early.is_empty() {
                let x = &layer_inputs[early_answer_layer(cfg.spec.text_layers)];
                let head = &params[early_idx..early_idx + 2];
                let early_loss = position_head_loss(x, max_len, &early, head);
                early_v = early_loss.double_value(&[]);
                loss += early_loss * cfg.early_answer_weight;
            }
            if cfg.attend_weight > 0.0 {
                let lm = &model.language_model;
                let s = max_len as i64;
                let positions = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
                let (cos, sin) = lm.rotary_emb.cos_sin(&positions, Kind::Float);
                // The triples (row, query position, key position) of both hops.
                let to_evidence = || {
                    examples.iter().enumerate().flat_map(|(r, e)| {
                        e.evidence.iter().flat_map(move |(t, patches)| {
                            patches.iter().map(move |p| (r, *t, e.image_start + p))
                        })
                    })
                };
                let to_shape_word = || {
                    examples
                        .iter()
                        .enumerate()
                        .filter_map(|(r, e)| e.reads_shape_word.map(|(t, word)| (r, t, word)))
                };
                let mut positions = vec![Vec::new(); examples.len()];
                for (r, t, _) in to_evidence().chain(to_shape_word()) {
                    positions[r].push(t);
                }
                let rows = attend::QueryRows::new(positions);
                let row_positions = rows.tensor(device);
                let weights: Vec<Tensor> = lm
                    .layers
                    .iter()
                    .zip(&layer_inputs)
                    .map(|(layer, x)| {
                        layer.self_attn.attention_weights_at(
                            &layer.input_layernorm.forward(x),
                            &cos,
                            &sin,
                            &row_positions,
                        )
                    })
                    .collect();
                let (ev, queries) = attend::evidence_tensors(to_evidence(), &rows, max_len, device);
                // From the shape word, only the layers below the early answer can serve it.
                let layers = if cfg.attend_via_shape_word {
                    early_answer_layer(cfg.spec.text_layers)
                } else {
                    weights.len()
                };
                let (l, best) = attend::attention_loss_with(
                    &weights[..layers],
                    &ev,
                    &queries,
                    cfg.attend_per_query,
                    cfg.attend_head,
                );
                if cfg.attend_via_shape_word {
                    // Second hop: the answer reads the shape word, in a head from the early-answer layer up.
                    let (ev, queries) =
                        attend::evidence_tensors(to_shape_word(), &rows, max_len, device);
                    let (l2, _) = attend::attention_loss(&weights[layers..], &ev, &queries);
                    loss += l2 * cfg.attend_weight;
                }
                attend_v = best;
                loss += l * cfg.attend_weight;
            }
        }
        for (_, p) in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        clip_grad_norm(&params, cfg.grad_clip);
        let lr = cfg.lr_at(step);
        let after_stage = !vision_stage && cfg.vision_stage_steps > 0;
        opt.step(&params, lr, cfg.weight_decay, step, |i| {
            if after_stage && is_vision_side[i] {
                cfg.decoder_phase_vision_lr
            } else {
                1.0
            }
        });
        let loss_v = loss.double_value(&[]);
        if !loss_v.is_finite() {
            bail!("training diverged at step {step} (loss {loss_v})");
        }
        state.step += 1;
        // The recorded loss is the answer (language-model) loss; the per-patch loss is reported apart.
        if !vision_stage {
            state.losses.push((step, lm_loss_v));
        }
        on_step(
            step,
            StepLosses {
                lm: lm_loss_v,
                aux: aux_loss_v,
                attend: attend_v,
                early_answer: early_v,
                glyph_hits,
                count_hits,
                order_hits,
            },
            lr,
        );
        let stopping = stop.step.is_some_and(|s| state.step >= s)
            || stop
                .seconds
                .is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        if state.step % cfg.checkpoint_every == 0 || state.step == cfg.steps || stopping {
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            write_dir_atomic(&ckpt, |tmp| {
                model_files(tmp, &params)?;
                if params.len() > n_model_params {
                    let aux_cpu: Vec<(&str, Tensor)> = params[n_model_params..]
                        .iter()
                        .map(|(n, t)| (n.as_str(), t.detach().to_device(Device::Cpu)))
                        .collect();
                    let refs: Vec<(&str, &Tensor)> = aux_cpu.iter().map(|(n, t)| (*n, t)).collect();
                    Tensor::write_safetensors(&refs, tmp.join(AUX_HEAD_FILE))?;
                }
                let mut moments_named: Vec<(String, Tensor)> = Vec::new();
                for (i, (name, _)) in params.iter().enumerate() {
                    moments_named.push((format!("m.{name}"), opt.m[i].to_device(Device::Cpu)));
                    moments_named.push((format!("v.{name}"), opt.v[i].to_device(Device::Cpu)));
                }
                let refs: Vec<(&str, &Tensor)> =
                    moments_named.iter().map(|(n, t)| (n.as_str(), t)).collect();
                Tensor::write_safetensors(&refs, tmp.join(OPTIMIZER_FILE))?;
                write_state(&tmp.join(STATE_FILE), &state)
            })?;
            write_state(&state_path, &state)?;
        }
        if stopping && state.step < cfg.steps {
            return Ok(None);
        }
    }
    let final_dir = run_dir.join("model");
    write_dir_atomic(&final_dir, |tmp| model_files(tmp, &params))?;
    Ok(Some(final_dir))
}

#[cfg(test)]
mod scene_tests {
    use super::*;
    use horizon_data::synthetic::ShapeKind;

    /// The vision stage samples the reading categories at its own weight, the decoder phase at
    /// `fine_weight`; before `fine_start` there are none in either.
    #[test]
    fn vision_stage_samples_reading_at_its_own_weight() {
        let mut cfg = TrainConfig::new(SmallModelSpec::small(), 100, 0);
        cfg.batch_size = 64;
        cfg.coarse_only_fraction = 0.1;
        cfg.vision_stage_steps = 50;
        cfg.fine_weight = 1.0;
        let fine_share = |cfg: &TrainConfig, step: usize| {
            let batch = batch_samples(cfg, step).unwrap();
            let fine = batch
                .iter()
                .filter(|s| s.category.kind() == synthetic::TaskKind::Fine)
                .count();
            fine as f64 / batch.len() as f64
        };
        cfg.vision_stage_fine_weight = Some(0.0);
        assert_eq!(fine_share(&cfg, 5), 0.0);
        assert_eq!(fine_share(&cfg, 30), 0.0);
        assert!(fine_share(&cfg, 60) > 0.0);
        // Weight 100 against the three coarse categories at 1: reading is ~98.5% of the stage.
        cfg.vision_stage_fine_weight = Some(100.0);
        assert_eq!(fine_share(&cfg, 5), 0.0);
        assert!(fine_share(&cfg, 30) > 0.9);
        let decoder = fine_share(&cfg, 60);
        assert!(decoder > 0.0 && decoder < 0.9, "{decoder}");
        // Without it the stage uses fine_weight, as before the option existed.
        cfg.vision_stage_fine_weight = None;
        let mut plain = cfg.clone();
        plain.vision_stage_steps = 0;
        let cats = |cfg: &TrainConfig| -> Vec<Category> {
            batch_samples(cfg, 30)
                .unwrap()
                .iter()
                .map(|s| s.category)
                .collect()
        };
        assert_eq!(cats(&cfg), cats(&plain));
    }

    /// `decoder_category_weights` set the mix after the vision stage only, and never bring the
    /// reading categories in before `fine_start`.
    #[test]
    fn decoder_category_weights_set_the_mix_after_the_stage() {
        let mut cfg = TrainConfig::new(SmallModelSpec::small(), 100, 0);
        cfg.batch_size = 64;
        cfg.coarse_only_fraction = 0.1;
        cfg.vision_stage_steps = 50;
        let cats = |cfg: &TrainConfig, step: usize| -> Vec<Category> {
            batch_samples(cfg, step)
                .unwrap()
                .iter()
                .map(|s| s.category)
                .collect()
        };
        let plain = cfg.clone();
        cfg.decoder_category_weights = Some(vec![0.0, 0.0, 1.0, 0.0, 0.0]);
        assert!(cats(&cfg, 60).iter().all(|&c| c == Category::CountCircles));
        // The stage keeps its own mix, sample for sample.
        assert_eq!(cats(&cfg, 30), cats(&plain, 30));
        assert!(cats(&cfg, 30).iter().any(|&c| c != Category::CountCircles));
        // Reading weighted heavily, but before fine_start (step 10) the decoder sees coarse only.
        cfg.vision_stage_steps = 5;
        cfg.decoder_category_weights = Some(vec![1.0, 0.0, 0.0, 100.0, 0.0]);
        assert!(cats(&cfg, 7).iter().all(|&c| c == Category::ShapeColor));
        let later = cats(&cfg, 20);
        let read = later.iter().filter(|&&c| c == Category::ReadText).count();
        assert!(
            read > 55
                && later
                    .iter()
                    .all(|&c| matches!(c, Category::ShapeColor | Category::ReadText))
        );
    }

    /// With `count_turn`, a colour or presence sample whose image has circles gets the circle count as
    /// a second supervised turn, answered right; count and reading samples and circle-free images
    /// are encoded exactly as without it.
    #[test]
    fn count_turn_asks_the_circle_count_of_shape_images() {
        let gen = GenConfig::default();
        let tok = build_vocab_tokenizer(&gen, 0, false).unwrap();
        let spec = SmallModelSpec::small();
        let proc = ClipImageProcessorConfig::from_json_str(
            &image_processor_json(&spec).to_string(),
            "preprocessor_config.json",
        )
        .unwrap();
        let plain = TrainConfig::new(spec, 10, 0);
        let mut with_turn = plain.clone();
        with_turn.count_turn = true;
        let (mut asked, mut unasked) = (0, 0);
        for cat in Category::ALL {
            for i in 0..20 {
                let s = synthetic::generate(&gen, cat, 5, i).unwrap();
                let a = encode_example(&tok, &proc, 64, &s, &plain, false).unwrap();
                let b = encode_example(&tok, &proc, 64, &s, &with_turn, false).unwrap();
                assert_eq!(b.ids[..a.ids.len()], a.ids[..]);
                let circles = s
                    .meta
                    .shapes
                    .iter()
                    .filter(|x| x.kind == ShapeKind::Circle)
                    .count();
                let gets_turn =
                    matches!(cat, Category::ShapeColor | Category::ShapeExists) && circles > 0;
                if !gets_turn {
                    assert_eq!((b.ids.len(), &b.supervised), (a.ids.len(), &a.supervised));
                    unasked += 1;
                    continue;
                }
                asked += 1;
                let turn_ids: Vec<u32> = b.ids[a.ids.len()..].iter().map(|&i| i as u32).collect();
                let turn = tok.decode(&turn_ids, false).unwrap();
                assert!(
                    turn.contains("How many circles are there in the image?"),
                    "{turn}"
                );
                // The supervised tokens of the new turn decode to the count and EOS.
                let supervised: Vec<u32> = (a.ids.len()..b.ids.len() - 1)
                    .filter(|&t| b.supervised[t])
                    .map(|t| b.ids[t + 1] as u32)
                    .collect();
                let answer = tok.decode(&supervised, true).unwrap();
                assert_eq!(answer.trim(), circles.to_string());
                assert_eq!(*supervised.last().unwrap(), tokenizer::EOS.1);
            }
        }
        assert!(asked > 5 && unasked > 5, "{asked} {unasked}");
    }

    #[test]
    fn asked_kind_names_the_shape_of_every_coarse_question() {
        let gen = GenConfig::default();
        for i in 0..30 {
            let s = synthetic::generate(&gen, Category::ShapeColor, 3, i).unwrap();
            let target = s.meta.shapes[s.meta.target.unwrap()].kind;
            let k = asked_kind(&s.question).unwrap() as usize;
            assert_eq!(ShapeKind::ALL[k], target, "{}", s.question);
            let s = synthetic::generate(&gen, Category::ShapeExists, 3, i).unwrap();
            let k = asked_kind(&s.question).unwrap() as usize;
            assert!(s.question.contains(ShapeKind::ALL[k].name()));
        }
        let circle = ShapeKind::ALL
            .iter()
            .position(|k| *k == ShapeKind::Circle)
            .unwrap() as i64;
        assert_eq!(
            asked_kind("How many circles are there in the image?"),
            Some(circle)
        );
        assert_eq!(asked_kind("What is the text in the image?"), None);
        assert_eq!(asked_kind("Which character is inside the red box?"), None);
        assert_eq!(question_probe_layer(8), 2);
        assert_eq!(question_probe_layer(12), 3);
        assert_eq!(question_probe_layer(2), 1);
    }

    /// The scene text names every drawn shape once, as colour then kind, so a shape_color question is
    /// answered by the colour word right before the asked kind.
    #[test]
    fn scene_text_answers_the_question() {
        let gen = GenConfig::default();
        for i in 0..50 {
            let s = synthetic::generate(&gen, Category::ShapeColor, 3, i).unwrap();
            let scene = scene_text(&s);
            let items: Vec<&str> = scene.split(", ").collect();
            assert_eq!(items.len(), s.meta.shapes.len());
            let asked = s
                .question
                .trim_start_matches("What color is the ")
                .trim_end_matches('?');
            let item = items
                .iter()
                .find(|x| x.ends_with(&format!(" {asked}")))
                .expect("the asked shape is described");
            assert_eq!(item.split(' ').next().unwrap(), s.answer);
        }
    }

    /// Where the early answer and the two-hop attention supervision look, checked against the
    /// tokens themselves: the early answer sits on the question's shape word and predicts the
    /// answer's first token; with `attend_via_shape_word` the evidence query is that word and the
    /// answer's query reads it; the reading tasks keep their answer-position queries.
    #[test]
    fn shape_word_supervision_points_at_the_shape_word() {
        let gen = GenConfig::default();
        let tok = build_vocab_tokenizer(&gen, 0, false).unwrap();
        let spec = SmallModelSpec::small();
        let proc = ClipImageProcessorConfig::from_json_str(
            &image_processor_json(&spec).to_string(),
            "preprocessor_config.json",
        )
        .unwrap();
        let n_img = 64;
        let token = |id: i64| tok.id_to_token(id as u32).unwrap();
        let plain_cfg = TrainConfig::new(spec.clone(), 10, 0);
        let mut via_cfg = plain_cfg.clone();
        via_cfg.attend_via_shape_word = true;
        let mut first_cfg = plain_cfg.clone();
        first_cfg.question_first = true;
        for cat in [
            Category::ShapeColor,
            Category::ShapeExists,
            Category::CountCircles,
        ] {
            for i in 0..10 {
                let s = synthetic::generate(&gen, cat, 3, i).unwrap();
                let e = encode_example(&tok, &proc, n_img, &s, &via_cfg, false).unwrap();
                let (word, answer) = e.early_answer.expect("a shape word");
                let w = token(e.ids[word]);
                let kind = ShapeKind::ALL[asked_kind(&s.question).unwrap() as usize].name();
                assert!(w == format!("\u{2581}{kind}") || w == format!("\u{2581}{kind}s"));
                assert_eq!(token(answer).trim_start_matches('\u{2581}'), s.answer);
                let (query, read) = e.reads_shape_word.unwrap();
                assert_eq!(read, word);
                assert_eq!(token(e.ids[query + 1]), token(answer));
                assert!(e.evidence.iter().all(|(q, _)| *q == word));
                // Without the flag the evidence is asked for at the answer.
                let plain = encode_example(&tok, &proc, n_img, &s, &plain_cfg, false).unwrap();
                assert!(plain.reads_shape_word.is_none());
                assert!(plain.evidence.iter().all(|(q, _)| *q == query));
            }
        }
        let s = synthetic::generate(&gen, Category::ReadText, 3, 0).unwrap();
        let e = encode_example(&tok, &proc, n_img, &s, &via_cfg, false).unwrap();
        assert!(e.early_answer.is_none() && e.reads_shape_word.is_none());
        assert!(e.evidence.iter().all(|(q, _)| *q > e.image_start + n_img));
        // Question first: the question's tokens come before the image, the answer after it.
        let s = synthetic::generate(&gen, Category::ShapeColor, 3, 0).unwrap();
        let e = encode_example(&tok, &proc, n_img, &s, &first_cfg, false).unwrap();
        let first_word = e
            .ids
            .iter()
            .position(|&i| token(i) == "\u{2581}color")
            .unwrap();
        assert!(first_word < e.image_start);
        assert!(e.early_answer.is_none());
    }
}
