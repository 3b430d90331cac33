//! What a training run is: the model's architecture and the settings of the run, in groups that are
//! both the `horizon train` options (`clap::Args`) and the persisted run settings (`state.json`,
//! each group flattened into one object, so the keys are the field names).

use anyhow::{bail, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;

use horizon_data::synthetic::{Category, TaskKind};

use crate::tokenizer;

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

/// The model to train: a bundled size, optionally with another vision tower.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model size: small or large.
    #[arg(long, default_value = "large")]
    pub size: String,
    /// Vision tower depth instead of the size's (large: 4, small: 3).
    #[arg(long)]
    pub vision_layers: Option<i64>,
    /// Vision tower width instead of the size's (large: 128, small: 96): a multiple of 32, with one
    /// head per 32 channels and an MLP three times as wide.
    #[arg(long)]
    pub vision_width: Option<i64>,
}

impl ModelArgs {
    /// The architecture these options name, checked.
    pub fn spec(&self) -> Result<SmallModelSpec> {
        let mut spec = SmallModelSpec::by_name(&self.size)?;
        if let Some(n) = self.vision_layers {
            if !(1..=24).contains(&n) {
                bail!("--vision-layers: {n} is not in 1..=24");
            }
            spec.vision_layers = n;
        }
        if let Some(w) = self.vision_width {
            if !(32..=1024).contains(&w) || w % 32 != 0 {
                bail!("--vision-width: {w} is not a multiple of 32 in 32..=1024");
            }
            spec.vision_hidden = w;
            spec.vision_heads = w / 32;
            spec.vision_intermediate = 3 * w;
        }
        Ok(spec)
    }
}

/// Length, batch, learning rate and checkpoints of a run.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    /// Optimizer steps.
    #[arg(long, default_value_t = 6000)]
    pub steps: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (warm-up, then cosine decay to 5%).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 200)]
    pub warmup_steps: usize,
    #[arg(skip = 0.01)]
    pub weight_decay: f64,
    #[arg(skip = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.steps == 0 {
            bail!("--max-glyphs, --batch-size and --steps must be at least 1");
        }
        if self.checkpoint_every == 0 {
            bail!("--checkpoint-every: must be at least 1 (steps between checkpoints)");
        }
        Ok(())
    }
}

/// Which samples the batches hold: the category mix, the glyph curriculum and the prompt layout.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Samples {
    /// Fraction of the steps by which the glyph count has ramped from 1 to --max-glyphs.
    #[arg(long, default_value_t = 0.8)]
    pub curriculum_fraction: f64,
    /// Most glyphs of text-reading samples (reached after --curriculum-fraction of the steps).
    #[arg(long, default_value_t = 3)]
    pub max_glyphs: usize,
    /// Sampling weight of the text-reading categories relative to the coarse ones.
    #[arg(long, default_value_t = 1.0)]
    pub fine_weight: f64,
    // Measured: the decoder learns to look at the image much sooner without the reading tasks.
    /// Fraction of the steps trained on the coarse categories only (the reading tasks enter after it).
    #[arg(long, default_value_t = 0.5)]
    #[serde(default)]
    pub coarse_only_fraction: f64,
    // Asking several questions about one image gives the decoder the contrast it needs to condition
    // on the question (same image, different question, different answer) for a few tokens.
    /// Further questions about the same image per sample, as later chat turns (shape presence, colour,
    /// circle count from the generator's ground truth).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub extra_turns: usize,
    /// Fraction of the coarse training samples shown as a text description of the scene ("red circle,
    /// blue square") instead of the image, so that the decoder learns to look up the question's shape
    /// in its context. Measured: no help, the decoder does not learn the lookup in text either
    /// (docs/training.md). 0: off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub text_scene_fraction: f64,
    /// Experiment: the question before the image in the training prompt (evaluate with --template raw
    /// and the same layout).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub question_first: bool,
    // Measured on `large`: the padded batch grows and a decoder step takes ~30% longer, so it is not in
    // the bundled recipe.
    /// Colour and presence samples whose image has circles also get the circle count asked, as a
    /// second chat turn (a dozen tokens, against a new image for a count sample). Measured on
    /// --size large: a decoder step takes ~30% longer (the padded batch grows).
    #[arg(long)]
    #[serde(default)]
    pub count_turn: bool,
    // Measured (docs/training.md): colour and presence are learned long before counting and reading,
    // so an even mix spends most of a fixed budget on tasks already solved. Set from
    // `--category-weights` ([`Samples::set_category_weights`]), whose defaults depend on
    // `fine_weight`.
    /// Sampling weights of the categories after the vision stage, in `Category::ALL` order, instead
    /// of 1 for each coarse category and `fine_weight` for each reading one.
    #[arg(skip)]
    #[serde(default)]
    pub decoder_category_weights: Option<Vec<f64>>,
}

impl Samples {
    pub fn validate(&self) -> Result<()> {
        check_weight("--fine-weight", self.fine_weight)?;
        check_fraction("--text-scene-fraction", self.text_scene_fraction)?;
        check_fraction("--curriculum-fraction", self.curriculum_fraction)?;
        if !(0.0..1.0).contains(&self.coarse_only_fraction) {
            bail!(
                "--coarse-only-fraction: {} is not in [0, 1)",
                self.coarse_only_fraction
            );
        }
        if self.max_glyphs == 0 {
            bail!("--max-glyphs, --batch-size and --steps must be at least 1");
        }
        Ok(())
    }

    /// `--category-weights`: NAME=WEIGHT pairs over the synthetic categories; the unnamed ones keep
    /// their defaults (1 coarse, `fine_weight` reading).
    pub fn set_category_weights(&mut self, text: &str) -> Result<()> {
        self.decoder_category_weights = Some(parse_category_weights(text, self.fine_weight)?);
        Ok(())
    }
}

/// Initial weights instead of HF's standard deviation of 0.02 everywhere.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Init {
    // Projected image tokens reach norms of ~10-70 early in training while 0.02-embeddings have ~0.3:
    // the question's tokens are then drowned in the residual stream by the first attention output and
    // the decoder cannot condition on the question (measured: answers track the image but not the
    // question).
    /// Standard deviation of the initial token embeddings (0: HF's 0.02).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub embed_init_std: f64,
    // A head that selects patches by the question's word needs the product W_q^T W_k, which grows from
    // a saddle at zero as slowly as its factors are small.
    /// Standard deviation of the decoder's initial query and key projections (0: HF's 0.02).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub qk_init_std: f64,
    // HF `CLIPPreTrainedModel._init_weights`' standard deviations (e.g. 0.1 for the class embedding and
    // the attention output, 0.04 for q/k/v at width 96): with 0.02 the attention logits start ~25x
    // flatter and a patch is slow to learn anything about its neighbours.
    /// Initialize the vision tower as HF CLIP does (larger attention and MLP weights than the 0.02
    /// used everywhere else), so that patches learn sooner to read their neighbours.
    #[arg(long)]
    #[serde(default)]
    pub vision_init_hf: bool,
}

impl Init {
    pub fn validate(&self) -> Result<()> {
        check_weight("--qk-init-std", self.qk_init_std)
    }
}

/// The dense per-patch loss on the projected visual tokens and its training-only heads ([`crate::aux`]).
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PatchLosses {
    /// Weight of the dense per-patch loss on the projected visual tokens (glyph, reading order, box and
    /// shape of each patch, from the generator's ground truth; the head is not exported). 0: answers only.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default)]
    pub aux_weight: f64,
    // So that sharpening its logits cannot inflate the tokens' scale.
    /// The per-patch head reads RMS-normalized visual tokens (keeps their scale set by the answers).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub aux_normalized: bool,
    // Scores against the decoder's own input embeddings of the words (`▁circle`, `▁red`) instead of
    // free weights ([`crate::aux::with_word_logits`]).
    /// The per-patch head scores each patch's shape kind and colour against the decoder's own input
    /// embeddings of those words (`circle`, `red`), pulling visual tokens toward the words the questions
    /// use.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub aux_word_aligned: bool,
    // [`crate::aux::aux_loss_balanced`] instead of [`crate::aux::aux_loss`].
    /// The per-patch loss weighs "nothing here" and the named classes (a glyph, a shape kind) half and
    /// half in each target group, instead of "nothing here" at 0.2 per target, which left the glyph
    /// groups answering "none" everywhere (measured, docs/training.md).
    #[arg(long)]
    #[serde(default)]
    pub aux_balanced: bool,
    // Targets: [`crate::aux::cover_targets`]; balanced loss, added to the per-patch loss.
    /// A second per-patch head (training only) names, for each quadrant of each patch, the glyph whose
    /// box holds the quadrant's centre: every piece of a glyph is supervised, not only the quadrant of
    /// its centre, several times the glyph signal per image.
    #[arg(long)]
    #[serde(default)]
    pub aux_glyph_cover: bool,
    // Targets: [`crate::aux::order_cover_targets`]; images with a red box are left out, their glyphs
    // have no order.
    /// Weight of a third per-patch head (training only) that names, for every quadrant covered by a
    /// glyph of a string, that glyph's place in the reading order: the centre targets give the order at
    /// one quadrant per glyph, and a tower trained on them alone placed the third glyph of a string
    /// right for 24% of the bundled split (docs/training.md, `large10`). 0: off.
    #[arg(
        long = "aux-order-cover",
        value_name = "AUX_ORDER_COVER",
        default_value_t = 0.0
    )]
    #[serde(default)]
    pub aux_order_cover_weight: f64,
    // [`crate::aux::pooled_count_loss`].
    /// Weight of the pooled count loss: a linear head (training only) on the mean of each image's
    /// normalized visual tokens must name how many circles, squares and triangles it has, so that an
    /// even look over the image returns a count of objects rather than the area they cover. 0: off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub pooled_count_weight: f64,
}

impl PatchLosses {
    pub fn validate(&self) -> Result<()> {
        check_weight("--aux-order-cover", self.aux_order_cover_weight)?;
        if self.aux_order_cover_weight > 0.0 && self.aux_weight == 0.0 {
            bail!("--aux-order-cover: the reading-order cover head is part of the per-patch loss, which --aux-weight 0 turns off");
        }
        check_weight("--pooled-count-weight", self.pooled_count_weight)?;
        if self.pooled_count_weight > 0.0 && self.aux_weight == 0.0 {
            bail!("--pooled-count-weight: the pooled count loss is part of the per-patch loss, which --aux-weight 0 turns off");
        }
        if self.aux_glyph_cover && self.aux_weight == 0.0 {
            bail!("--aux-glyph-cover: the glyph-cover head is part of the per-patch loss, which --aux-weight 0 turns off");
        }
        Ok(())
    }
}

/// Training-only terms on the decoder: attention supervision ([`crate::attend`]), probes and penalties.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecoderLosses {
    /// Weight of the attention supervision: for each answer token that a region of the image decides
    /// (the asked shape, the circles, the boxed glyph, the k-th glyph), some head of some decoder layer
    /// must attend there (-log of the mass of the head, shared by the batch, with the most; training
    /// only, the layer is not chosen). Measured on the small model: alone it does not help colour;
    /// with --question-weight it adds a little (docs/training.md, "What did not work"). 0: off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub attend_weight: f64,
    // Measured without the second hop: the word finds its patches (69% of a head's mass) but the
    // answer never reads the word.
    /// Attention supervision of the coarse questions in two hops: the question's shape word looks at
    /// its shape's patches (a head below the early-answer layer), the answer looks at the shape word
    /// (a head above).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub attend_via_shape_word: bool,
    // [`crate::attend::attention_loss_with`].
    /// Attention supervision: the best head for each query on its own (default: one head for the
    /// whole batch).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub attend_per_query: bool,
    // A fixed head instead of the best one of each step, which can change from step to step while
    // several heads have about the same mass.
    /// The head the attention supervision trains: index into the supervised layers' heads, layer-major
    /// (default: the best head of each step).
    #[arg(long)]
    #[serde(default)]
    pub attend_head: Option<usize>,
    // The layer: [`crate::question_probe_layer`].
    /// Weight of the question probe: a linear head on the last prompt token a quarter of the way up
    /// the decoder must name the shape kind the question asks about (training only). Measured: the
    /// first option that makes the answers depend on the question (docs/training.md). 0: off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub question_weight: f64,
    // The layer: [`crate::early_answer_layer`].
    /// Weight of the early answer: a linear head on the question's shape word (`circle` in "What color
    /// is the circle?") halfway up the decoder must already predict the answer (training only), so the
    /// word looks its shape up among the patches and the answer position copies it from there.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub early_answer_weight: f64,
    // Measured without it (`docs/diagnostics/word_identity.py`): the first layer writes a vector of
    // norm ~400 on the question's words, whose embeddings have norm ~0.7, so the word that names the
    // asked shape is a 0.2% perturbation of a common vector in every later layer.
    /// Weight of a penalty on the mean square of the decoder's residual stream (keeps the first layers
    /// from writing vectors hundreds of times larger than the question's word embeddings).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub activation_penalty: f64,
}

impl DecoderLosses {
    pub fn validate(&self) -> Result<()> {
        check_weight("--activation-penalty", self.activation_penalty)?;
        check_weight("--early-answer-weight", self.early_answer_weight)?;
        check_weight("--question-weight", self.question_weight)?;
        check_weight("--attend-weight", self.attend_weight)
    }

    /// Whether any term needs the decoder layers' inputs.
    pub(crate) fn wants_layer_inputs(&self) -> bool {
        self.attend_weight > 0.0
            || self.question_weight > 0.0
            || self.early_answer_weight > 0.0
            || self.activation_penalty > 0.0
    }
}

/// Staged training of the vision side: the tower, the projector and the per-patch head first, alone.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionStage {
    /// Steps at the start that train only the vision tower, the projector and the per-patch head, on
    /// the per-patch loss (no decoder forward; needs --aux-weight > 0). They count toward --steps, and
    /// the category mix and glyph curriculum follow --coarse-only-fraction and --curriculum-fraction
    /// as in the rest of the run; the decoder then gets a warm-up and cosine schedule of its own.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub vision_stage_steps: usize,
    // The decoder phase keeps `fine_weight`.
    /// Sampling weight of the reading categories during the vision stage (default: --fine-weight).
    /// Glyph recognition is the slow part of the tower's learning and needs many glyph images.
    #[arg(long)]
    #[serde(default)]
    pub vision_stage_fine_weight: Option<f64>,
    // Measured: at the decoder's fresh 2e-3 the untrained decoder's gradients undo the stage's glyph
    // features (docs/training.md, `large-glyph`).
    /// Learning-rate multiplier of the vision tower and the projector after the vision stage (1: the
    /// decoder's rate; 0: frozen). At the decoder's fresh peak rate the untrained decoder's gradients
    /// undo the glyph features of the stage (measured, docs/training.md).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "one")]
    pub decoder_phase_vision_lr: f64,
}

impl VisionStage {
    pub fn validate(&self) -> Result<()> {
        if let Some(w) = self.vision_stage_fine_weight {
            check_weight("--vision-stage-fine-weight", w)?;
        }
        check_weight("--decoder-phase-vision-lr", self.decoder_phase_vision_lr)
    }
}

fn one() -> f64 {
    1.0
}

/// Settings of one training run. The groups are flattened: as options, each is a block of
/// `horizon train`'s; in `state.json`, their fields are the keys of one object.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    #[arg(skip = SmallModelSpec::large())]
    pub spec: SmallModelSpec,
    #[command(flatten, next_help_heading = "Schedule")]
    #[serde(flatten)]
    pub schedule: Schedule,
    #[command(flatten, next_help_heading = "Samples")]
    #[serde(flatten)]
    pub samples: Samples,
    #[command(flatten, next_help_heading = "Initial weights")]
    #[serde(flatten)]
    pub init: Init,
    #[command(flatten, next_help_heading = "Per-patch losses")]
    #[serde(flatten)]
    pub patch: PatchLosses,
    #[command(flatten, next_help_heading = "Decoder losses")]
    #[serde(flatten)]
    pub decoder: DecoderLosses,
    #[command(flatten, next_help_heading = "Vision stage")]
    #[serde(flatten)]
    pub stage: VisionStage,
}

/// A loss weight must be finite and >= 0.
pub fn check_weight(flag: &str, value: f64) -> Result<()> {
    if !(value >= 0.0 && value.is_finite()) {
        bail!("{flag}: {value} is not a finite weight >= 0");
    }
    Ok(())
}

/// A fraction of steps or samples must lie in [0, 1].
fn check_fraction(flag: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        bail!("{flag}: {value} is not in [0, 1]");
    }
    Ok(())
}

/// `--category-weights`: NAME=WEIGHT pairs over the synthetic categories, in `Category::ALL` order,
/// the unnamed ones at their defaults (1 coarse, `fine_weight` reading).
pub fn parse_category_weights(text: &str, fine_weight: f64) -> Result<Vec<f64>> {
    let mut weights: Vec<f64> = Category::ALL
        .iter()
        .map(|c| match c.kind() {
            TaskKind::Coarse => 1.0,
            TaskKind::Fine => fine_weight,
        })
        .collect();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--category-weights: '{pair}' is not NAME=WEIGHT"))?;
        let i = Category::ALL
            .iter()
            .position(|c| c.name() == name.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
                anyhow::anyhow!(
                    "--category-weights: '{}' is not one of {}",
                    name.trim(),
                    names.join(", ")
                )
            })?;
        let w: f64 = value.trim().parse().map_err(|_| {
            anyhow::anyhow!("--category-weights: {name}: '{value}' is not a number")
        })?;
        check_weight(&format!("--category-weights: {name}"), w)?;
        weights[i] = w;
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        bail!("--category-weights: every category has weight 0");
    }
    Ok(weights)
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

impl TrainConfig {
    /// The library's starting point (not `horizon train`'s defaults, which are the bundled recipe's):
    /// the per-patch loss on, reading tasks from the start at weight 2, every other term off.
    pub fn new(spec: SmallModelSpec, steps: usize, seed: u64) -> Self {
        Self {
            spec,
            schedule: Schedule {
                steps,
                batch_size: 32,
                lr: 2e-3,
                warmup_steps: 200,
                weight_decay: 0.01,
                grad_clip: 1.0,
                seed,
                checkpoint_every: 200,
            },
            samples: Samples {
                curriculum_fraction: 0.5,
                max_glyphs: 3,
                fine_weight: 2.0,
                coarse_only_fraction: 0.0,
                extra_turns: 0,
                text_scene_fraction: 0.0,
                question_first: false,
                count_turn: false,
                decoder_category_weights: None,
            },
            init: Init {
                embed_init_std: 0.0,
                qk_init_std: 0.0,
                vision_init_hf: false,
            },
            patch: PatchLosses {
                aux_weight: 1.0,
                aux_normalized: false,
                aux_word_aligned: false,
                aux_balanced: false,
                aux_glyph_cover: false,
                aux_order_cover_weight: 0.0,
                pooled_count_weight: 0.0,
            },
            decoder: DecoderLosses {
                attend_weight: 0.0,
                attend_via_shape_word: false,
                attend_per_query: false,
                attend_head: None,
                question_weight: 0.0,
                early_answer_weight: 0.0,
                activation_penalty: 0.0,
            },
            stage: VisionStage {
                vision_stage_steps: 0,
                vision_stage_fine_weight: None,
                decoder_phase_vision_lr: 1.0,
            },
        }
    }

    /// Every group's checks, then the ones across groups; errors name the `horizon train` option.
    pub fn validate(&self) -> Result<()> {
        self.patch.validate()?;
        self.stage.validate()?;
        if self.stage.vision_stage_steps > 0 && self.patch.aux_weight == 0.0 {
            bail!("--vision-stage-steps: the vision stage trains on the per-patch loss, which --aux-weight 0 turns off");
        }
        if self.stage.vision_stage_steps >= self.schedule.steps {
            bail!(
                "--vision-stage-steps: {} leaves none of the {} --steps for the decoder",
                self.stage.vision_stage_steps,
                self.schedule.steps
            );
        }
        self.decoder.validate()?;
        self.init.validate()?;
        self.samples.validate()?;
        self.schedule.validate()
    }

    /// Warm-up then cosine decay to 5% of the peak, once for the vision stage and once for the rest
    /// (the decoder starts from scratch when the stage ends, so it gets a full schedule of its own).
    pub fn lr_at(&self, step: usize) -> f64 {
        let (stage_steps, steps) = (self.stage.vision_stage_steps, self.schedule.steps);
        let (start, len) = if step < stage_steps {
            (0, stage_steps)
        } else {
            (stage_steps, steps - stage_steps)
        };
        let (step, warmup) = (step - start, self.schedule.warmup_steps);
        let lr = self.schedule.lr;
        if step < warmup {
            return lr * (step + 1) as f64 / warmup as f64;
        }
        let t = (step - warmup) as f64 / (len - warmup).max(1) as f64;
        lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
    }

    /// First step at which the text-reading categories are sampled.
    pub fn fine_start(&self) -> usize {
        (self.schedule.steps as f64 * self.samples.coarse_only_fraction).round() as usize
    }

    /// The curriculum: how many glyphs text-reading samples may have at `step` (1 when they enter,
    /// `max_glyphs` from `curriculum_fraction` of the steps on).
    pub fn glyphs_at(&self, step: usize) -> usize {
        let max_glyphs = self.samples.max_glyphs;
        let start = self.fine_start() as f64;
        let ramp = (self.schedule.steps as f64 * self.samples.curriculum_fraction - start).max(1.0);
        let t = (step as f64 - start).max(0.0) / ramp;
        let g = 1 + ((max_glyphs - 1) as f64 * t).floor() as usize;
        g.min(max_glyphs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The groups are flattened in `state.json`: one object whose keys are the fields' names (those of
    /// the flat settings object runs have always written), read back equal; settings added later
    /// default when a file lacks them.
    #[test]
    fn settings_persist_as_one_flat_object() {
        let mut cfg = TrainConfig::new(SmallModelSpec::small(), 10, 3);
        cfg.decoder.attend_head = Some(2);
        cfg.samples.decoder_category_weights = Some(vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let value = serde_json::to_value(&cfg).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        let mut expected = vec![
            "spec",
            "steps",
            "batch_size",
            "lr",
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "seed",
            "curriculum_fraction",
            "max_glyphs",
            "fine_weight",
            "checkpoint_every",
            "coarse_only_fraction",
            "embed_init_std",
            "aux_normalized",
            "extra_turns",
            "aux_weight",
            "attend_weight",
            "text_scene_fraction",
            "question_weight",
            "aux_word_aligned",
            "early_answer_weight",
            "attend_via_shape_word",
            "qk_init_std",
            "attend_per_query",
            "question_first",
            "activation_penalty",
            "attend_head",
            "vision_stage_steps",
            "vision_init_hf",
            "aux_balanced",
            "aux_glyph_cover",
            "aux_order_cover_weight",
            "vision_stage_fine_weight",
            "decoder_phase_vision_lr",
            "decoder_category_weights",
            "count_turn",
            "pooled_count_weight",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        let back: TrainConfig = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, cfg);
        // A file of a run started before the later settings existed: only the first twelve keys.
        let mut old = serde_json::Map::new();
        for k in [
            "spec",
            "steps",
            "batch_size",
            "lr",
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "seed",
            "curriculum_fraction",
            "max_glyphs",
            "fine_weight",
            "checkpoint_every",
        ] {
            old.insert(k.into(), value[k].clone());
        }
        let old: TrainConfig = serde_json::from_value(old.into()).unwrap();
        assert_eq!(old.stage.decoder_phase_vision_lr, 1.0);
        assert_eq!(old.decoder.attend_head, None);
        assert_eq!(old.schedule, cfg.schedule);
    }

    /// A zero checkpoint interval is refused by validation (the training loop divides by it).
    #[test]
    fn zero_checkpoint_interval_is_refused() {
        let mut cfg = TrainConfig::new(SmallModelSpec::small(), 10, 3);
        assert!(cfg.schedule.validate().is_ok());
        cfg.schedule.checkpoint_every = 0;
        let e = cfg.schedule.validate().unwrap_err().to_string();
        assert!(e.contains("--checkpoint-every"), "{e}");
    }

    #[test]
    fn category_weights_name_categories_and_keep_defaults() {
        let w = parse_category_weights("count_circles=1.6, read_text=2", 1.5).unwrap();
        assert_eq!(w, vec![1.0, 1.0, 1.6, 2.0, 1.5]);
        for (text, needle) in [
            ("count=2", "'count' is not one of shape_color"),
            ("read_text", "'read_text' is not NAME=WEIGHT"),
            ("read_text=x", "read_text: 'x' is not a number"),
            ("boxed_char=-1", "-1 is not a finite weight"),
            (
                "shape_color=0,shape_exists=0,count_circles=0,read_text=0,boxed_char=0",
                "every category has weight 0",
            ),
        ] {
            let e = parse_category_weights(text, 1.0).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
