//! `horizon train`: trains a small LLaVA-format model from scratch on the synthetic tasks (the
//! bundled models' recipe); the trainer itself is the `horizon-train` crate.

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

use horizon_runner::device::parse_device;
use horizon_train::{extend_run, train, SmallModelSpec, StopAt, TrainConfig};

#[derive(Args)]
pub struct TrainArgs {
    /// Model size: small or large.
    #[arg(long, default_value = "large")]
    size: String,
    /// Vision tower depth instead of the size's (large: 4, small: 3).
    #[arg(long)]
    vision_layers: Option<i64>,
    /// Vision tower width instead of the size's (large: 128, small: 96): a multiple of 32, with one
    /// head per 32 channels and an MLP three times as wide.
    #[arg(long)]
    vision_width: Option<i64>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 6000)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (warm-up, then cosine decay to 5%).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: checkpoint/ (weights, training-only heads, optimizer moments and state.json,
    /// replaced whole at each checkpoint, so a killed run resumes from the last complete one), a copy
    /// of state.json beside it, and model/ at the end. A rerun with the same settings resumes.
    #[arg(long)]
    run_dir: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Intra-op threads of libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    /// Stop (after writing a checkpoint) once this many minutes have passed; rerun to resume.
    #[arg(long)]
    time_budget_minutes: Option<f64>,
    /// Stop (after writing a checkpoint) once this many of the --steps are done; rerun without it to
    /// resume. The checkpoint directory is itself a loadable llava-hf model.
    #[arg(long)]
    stop_at_step: Option<usize>,
    /// Weight of the dense per-patch loss on the projected visual tokens (glyph, reading order, box and
    /// shape of each patch, from the generator's ground truth; the head is not exported). 0: answers only.
    #[arg(long, default_value_t = 1.0)]
    aux_weight: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 200)]
    warmup_steps: usize,
    /// Sampling weight of the text-reading categories relative to the coarse ones.
    #[arg(long, default_value_t = 1.0)]
    fine_weight: f64,
    /// Most glyphs of text-reading samples (reached after --curriculum-fraction of the steps).
    #[arg(long, default_value_t = 3)]
    max_glyphs: usize,
    /// Standard deviation of the initial token embeddings (0: HF's 0.02).
    #[arg(long, default_value_t = 0.0)]
    embed_init_std: f64,
    /// The per-patch head reads RMS-normalized visual tokens (keeps their scale set by the answers).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    aux_normalized: bool,
    /// The per-patch head scores each patch's shape kind and colour against the decoder's own input
    /// embeddings of those words (`circle`, `red`), pulling visual tokens toward the words the questions
    /// use.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    aux_word_aligned: bool,
    /// Further questions about the same image per sample, as later chat turns (shape presence, colour,
    /// circle count from the generator's ground truth).
    #[arg(long, default_value_t = 0)]
    extra_turns: usize,
    /// Fraction of the steps trained on the coarse categories only (the reading tasks enter after it).
    #[arg(long, default_value_t = 0.5)]
    coarse_only_fraction: f64,
    /// Fraction of the steps by which the glyph count has ramped from 1 to --max-glyphs.
    #[arg(long, default_value_t = 0.8)]
    curriculum_fraction: f64,
    /// Weight of the attention supervision: for each answer token that a region of the image decides
    /// (the asked shape, the circles, the boxed glyph, the k-th glyph), some head of some decoder layer
    /// must attend there (-log of the mass of the head, shared by the batch, with the most; training
    /// only, the layer is not chosen). Measured on the small model: alone it does not help colour;
    /// with --question-weight it adds a little (docs/training.md, "What did not work"). 0: off.
    #[arg(long, default_value_t = 0.0)]
    attend_weight: f64,
    /// Fraction of the coarse training samples shown as a text description of the scene ("red circle,
    /// blue square") instead of the image, so that the decoder learns to look up the question's shape
    /// in its context. Measured: no help, the decoder does not learn the lookup in text either
    /// (docs/training.md). 0: off.
    #[arg(long, default_value_t = 0.0)]
    text_scene_fraction: f64,
    /// Weight of the question probe: a linear head on the last prompt token a quarter of the way up
    /// the decoder must name the shape kind the question asks about (training only). Measured: the
    /// first option that makes the answers depend on the question (docs/training.md). 0: off.
    #[arg(long, default_value_t = 0.0)]
    question_weight: f64,
    /// Weight of the early answer: a linear head on the question's shape word (`circle` in "What color
    /// is the circle?") halfway up the decoder must already predict the answer (training only), so the
    /// word looks its shape up among the patches and the answer position copies it from there.
    #[arg(long, default_value_t = 0.0)]
    early_answer_weight: f64,
    /// Attention supervision of the coarse questions in two hops: the question's shape word looks at
    /// its shape's patches (a head below the early-answer layer), the answer looks at the shape word
    /// (a head above).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    attend_via_shape_word: bool,
    /// Standard deviation of the decoder's initial query and key projections (0: HF's 0.02).
    #[arg(long, default_value_t = 0.0)]
    qk_init_std: f64,
    /// Attention supervision: the best head for each query on its own (default: one head for the
    /// whole batch).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    attend_per_query: bool,
    /// Experiment: the question before the image in the training prompt (evaluate with --template raw
    /// and the same layout).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    question_first: bool,
    /// Weight of a penalty on the mean square of the decoder's residual stream (keeps the first layers
    /// from writing vectors hundreds of times larger than the question's word embeddings).
    #[arg(long, default_value_t = 0.0)]
    activation_penalty: f64,
    /// The head the attention supervision trains: index into the supervised layers' heads, layer-major
    /// (default: the best head of each step).
    #[arg(long)]
    attend_head: Option<usize>,
    /// Steps at the start that train only the vision tower, the projector and the per-patch head, on
    /// the per-patch loss (no decoder forward; needs --aux-weight > 0). They count toward --steps, and
    /// the category mix and glyph curriculum follow --coarse-only-fraction and --curriculum-fraction
    /// as in the rest of the run; the decoder then gets a warm-up and cosine schedule of its own.
    #[arg(long, default_value_t = 0)]
    vision_stage_steps: usize,
    /// Initialize the vision tower as HF CLIP does (larger attention and MLP weights than the 0.02
    /// used everywhere else), so that patches learn sooner to read their neighbours.
    #[arg(long)]
    vision_init_hf: bool,
    /// The per-patch loss weighs "nothing here" and the named classes (a glyph, a shape kind) half and
    /// half in each target group, instead of "nothing here" at 0.2 per target, which left the glyph
    /// groups answering "none" everywhere (measured, docs/training.md).
    #[arg(long)]
    aux_balanced: bool,
    /// A second per-patch head (training only) names, for each quadrant of each patch, the glyph whose
    /// box holds the quadrant's centre: every piece of a glyph is supervised, not only the quadrant of
    /// its centre, several times the glyph signal per image.
    #[arg(long)]
    aux_glyph_cover: bool,
    /// Weight of a third per-patch head (training only) that names, for every quadrant covered by a
    /// glyph of a string, that glyph's place in the reading order: the centre targets give the order at
    /// one quadrant per glyph, and a tower trained on them alone placed the third glyph of a string
    /// right for 24% of the bundled split (docs/training.md, `large10`). 0: off.
    #[arg(long, default_value_t = 0.0)]
    aux_order_cover: f64,
    /// Sampling weight of the reading categories during the vision stage (default: --fine-weight).
    /// Glyph recognition is the slow part of the tower's learning and needs many glyph images.
    #[arg(long)]
    vision_stage_fine_weight: Option<f64>,
    /// Learning-rate multiplier of the vision tower and the projector after the vision stage (1: the
    /// decoder's rate; 0: frozen). At the decoder's fresh peak rate the untrained decoder's gradients
    /// undo the glyph features of the stage (measured, docs/training.md).
    #[arg(long, default_value_t = 1.0)]
    decoder_phase_vision_lr: f64,
    /// Sampling weights of the categories after the vision stage, as NAME=WEIGHT pairs separated by
    /// commas (names: shape_color, shape_exists, count_circles, read_text, boxed_char); a category not
    /// named keeps its default (1 for the coarse ones, --fine-weight for the reading ones). Example:
    /// `count_circles=1.6,read_text=2`.
    #[arg(long)]
    category_weights: Option<String>,
    /// Colour and presence samples whose image has circles also get the circle count asked, as a
    /// second chat turn (a dozen tokens, against a new image for a count sample). Measured on
    /// --size large: a decoder step takes ~30% longer (the padded batch grows).
    #[arg(long)]
    count_turn: bool,
    /// Weight of the pooled count loss: a linear head (training only) on the mean of each image's
    /// normalized visual tokens must name how many circles, squares and triangles it has, so that an
    /// even look over the image returns a count of objects rather than the area they cover. 0: off.
    #[arg(long, default_value_t = 0.0)]
    pooled_count_weight: f64,
    /// Lengthen the checkpointed run in --run-dir (finished or not) to --steps and go on training;
    /// every other setting must be the run's own. The last phase's cosine schedule is stretched to the
    /// new length from the current step on (a warm restart, not the same as planning --steps from the
    /// start).
    #[arg(long)]
    extend: bool,
}

/// (right, total) counts of a training-only head over its last 50 batches.
struct HitWindow(std::collections::VecDeque<(i64, i64)>);

impl HitWindow {
    fn new() -> Self {
        Self(std::collections::VecDeque::new())
    }

    /// Adds a batch's counts; returns the window's accuracy in percent, if it has any target.
    fn push(&mut self, hits: (i64, i64)) -> Option<f64> {
        self.0.push_back(hits);
        if self.0.len() > 50 {
            self.0.pop_front();
        }
        let (right, total) = self
            .0
            .iter()
            .fold((0, 0), |(r, t), &(r2, t2)| (r + r2, t + t2));
        (total > 0).then(|| 100.0 * right as f64 / total as f64)
    }
}

/// A loss weight must be finite and >= 0.
fn check_weight(flag: &str, value: f64) -> Result<()> {
    if !(value >= 0.0 && value.is_finite()) {
        anyhow::bail!("{flag}: {value} is not a finite weight >= 0");
    }
    Ok(())
}

/// `--category-weights`: NAME=WEIGHT pairs over the synthetic categories, in `Category::ALL` order,
/// the unnamed ones at their defaults (1 coarse, `fine_weight` reading).
fn parse_category_weights(text: &str, fine_weight: f64) -> Result<Vec<f64>> {
    use horizon_data::synthetic::{Category, TaskKind};
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
        anyhow::bail!("--category-weights: every category has weight 0");
    }
    Ok(weights)
}

/// A fraction of steps or samples must lie in [0, 1].
fn check_fraction(flag: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        anyhow::bail!("{flag}: {value} is not in [0, 1]");
    }
    Ok(())
}

pub fn run_train(args: &TrainArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let mut spec = SmallModelSpec::by_name(&args.size)?;
    if let Some(n) = args.vision_layers {
        if !(1..=24).contains(&n) {
            anyhow::bail!("--vision-layers: {n} is not in 1..=24");
        }
        spec.vision_layers = n;
    }
    if let Some(w) = args.vision_width {
        if !(32..=1024).contains(&w) || w % 32 != 0 {
            anyhow::bail!("--vision-width: {w} is not a multiple of 32 in 32..=1024");
        }
        spec.vision_hidden = w;
        spec.vision_heads = w / 32;
        spec.vision_intermediate = 3 * w;
    }
    let mut cfg = TrainConfig::new(spec, args.steps, args.seed);
    cfg.batch_size = args.batch_size;
    cfg.lr = args.lr;
    cfg.checkpoint_every = args.checkpoint_every;
    cfg.aux_weight = args.aux_weight;
    cfg.vision_stage_steps = args.vision_stage_steps;
    cfg.vision_init_hf = args.vision_init_hf;
    cfg.aux_balanced = args.aux_balanced;
    cfg.aux_glyph_cover = args.aux_glyph_cover;
    check_weight("--aux-order-cover", args.aux_order_cover)?;
    if args.aux_order_cover > 0.0 && args.aux_weight == 0.0 {
        anyhow::bail!("--aux-order-cover: the reading-order cover head is part of the per-patch loss, which --aux-weight 0 turns off");
    }
    cfg.aux_order_cover_weight = args.aux_order_cover;
    if let Some(w) = args.vision_stage_fine_weight {
        check_weight("--vision-stage-fine-weight", w)?;
    }
    cfg.vision_stage_fine_weight = args.vision_stage_fine_weight;
    check_weight("--decoder-phase-vision-lr", args.decoder_phase_vision_lr)?;
    cfg.decoder_phase_vision_lr = args.decoder_phase_vision_lr;
    cfg.decoder_category_weights = args
        .category_weights
        .as_deref()
        .map(|t| parse_category_weights(t, args.fine_weight))
        .transpose()?;
    cfg.count_turn = args.count_turn;
    check_weight("--pooled-count-weight", args.pooled_count_weight)?;
    if args.pooled_count_weight > 0.0 && args.aux_weight == 0.0 {
        anyhow::bail!("--pooled-count-weight: the pooled count loss is part of the per-patch loss, which --aux-weight 0 turns off");
    }
    cfg.pooled_count_weight = args.pooled_count_weight;
    if cfg.aux_glyph_cover && cfg.aux_weight == 0.0 {
        anyhow::bail!("--aux-glyph-cover: the glyph-cover head is part of the per-patch loss, which --aux-weight 0 turns off");
    }
    if cfg.vision_stage_steps > 0 && cfg.aux_weight == 0.0 {
        anyhow::bail!("--vision-stage-steps: the vision stage trains on the per-patch loss, which --aux-weight 0 turns off");
    }
    if cfg.vision_stage_steps >= cfg.steps {
        anyhow::bail!(
            "--vision-stage-steps: {} leaves none of the {} --steps for the decoder",
            cfg.vision_stage_steps,
            cfg.steps
        );
    }
    cfg.warmup_steps = args.warmup_steps;
    check_weight("--fine-weight", args.fine_weight)?;
    cfg.fine_weight = args.fine_weight;
    cfg.max_glyphs = args.max_glyphs;
    cfg.curriculum_fraction = args.curriculum_fraction;
    cfg.coarse_only_fraction = args.coarse_only_fraction;
    cfg.extra_turns = args.extra_turns;
    cfg.embed_init_std = args.embed_init_std;
    cfg.aux_normalized = args.aux_normalized;
    cfg.aux_word_aligned = args.aux_word_aligned;
    cfg.attend_weight = args.attend_weight;
    cfg.text_scene_fraction = args.text_scene_fraction;
    cfg.question_weight = args.question_weight;
    cfg.early_answer_weight = args.early_answer_weight;
    cfg.attend_via_shape_word = args.attend_via_shape_word;
    cfg.qk_init_std = args.qk_init_std;
    cfg.attend_per_query = args.attend_per_query;
    cfg.question_first = args.question_first;
    cfg.activation_penalty = args.activation_penalty;
    cfg.attend_head = args.attend_head;
    check_weight("--activation-penalty", args.activation_penalty)?;
    check_weight("--qk-init-std", args.qk_init_std)?;
    check_weight("--early-answer-weight", args.early_answer_weight)?;
    check_weight("--question-weight", args.question_weight)?;
    check_weight("--attend-weight", args.attend_weight)?;
    check_fraction("--text-scene-fraction", args.text_scene_fraction)?;
    check_fraction("--curriculum-fraction", args.curriculum_fraction)?;
    if !(0.0..1.0).contains(&args.coarse_only_fraction) {
        anyhow::bail!(
            "--coarse-only-fraction: {} is not in [0, 1)",
            args.coarse_only_fraction
        );
    }
    if args.max_glyphs == 0 || args.batch_size == 0 || args.steps == 0 {
        anyhow::bail!("--max-glyphs, --batch-size and --steps must be at least 1");
    }
    if args.extend {
        let at = extend_run(&cfg, &args.run_dir)?;
        eprintln!(
            "extended {} to {} steps; resuming at step {at} (lr {:.2e})",
            args.run_dir.display(),
            cfg.steps,
            cfg.lr_at(at)
        );
    }
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps  {elapsed} elapsed, eta {eta}  {msg}",
        )
        .expect("valid template"),
    );
    let mut avg = None::<(f64, f64, f64, f64)>;
    let (mut glyphs, mut orders, mut counts) =
        (HitWindow::new(), HitWindow::new(), HitWindow::new());
    let stop = StopAt {
        step: args.stop_at_step,
        seconds: args.time_budget_minutes.map(|m| m * 60.0),
    };
    let dir = train(&cfg, &args.run_dir, device, stop, |step, loss, lr| {
        let now = (loss.lm, loss.aux, loss.attend, loss.early_answer);
        // The answer loss is NaN during the vision stage: its average starts afresh after it.
        let ema = |old: f64, new: f64| {
            if old.is_nan() {
                new
            } else {
                0.98 * old + 0.02 * new
            }
        };
        let (a, x, m, e) = avg.map_or(now, |(a, x, m, e)| {
            (ema(a, now.0), ema(x, now.1), ema(m, now.2), ema(e, now.3))
        });
        avg = Some((a, x, m, e));
        bar.set_position(step as u64 + 1);
        // The evidence mass is the attention supervision's progress; shown only when it is on, and
        // (like the early-answer loss) only after the vision stage, which runs no decoder.
        let decoder_phase = !a.is_nan();
        let mut mass = if cfg.attend_weight > 0.0 && decoder_phase {
            format!(" evidence mass {m:.3}")
        } else {
            String::new()
        };
        if cfg.early_answer_weight > 0.0 && decoder_phase {
            mass += &format!(" early answer loss {e:.3}");
        }
        // Accuracies of the training-only heads on the last 50 fresh batches (before their update).
        for (label, window, hits) in [
            ("glyph", &mut glyphs, loss.glyph_hits),
            ("order", &mut orders, loss.order_hits),
            ("count", &mut counts, loss.count_hits),
        ] {
            if let Some(pct) = window.push(hits) {
                mass += &format!(" {label} acc {pct:.1}%");
            }
        }
        // The vision stage has no answer tokens, so no answer loss yet: shown as "-", not NaN.
        let answer_loss = if decoder_phase {
            format!("{a:.4}")
        } else {
            "-".to_string()
        };
        bar.set_message(format!(
            "loss {answer_loss}  patch loss {x:.4}{mass}  lr {lr:.2e}"
        ));
        // Logs of background runs (no terminal, so no bar) still show progress.
        if bar.is_hidden() && (step + 1) % 50 == 0 {
            eprintln!(
                "step {} loss {answer_loss} patch loss {x:.4}{mass} lr {lr:.2e} elapsed {:.0}s",
                step + 1,
                bar.elapsed().as_secs_f64()
            );
        }
    })?;
    bar.finish();
    match dir {
        Some(dir) => eprintln!("model written to {}", dir.display()),
        None => eprintln!(
            "stopped early (--stop-at-step or --time-budget-minutes); checkpoint in {} (rerun without the stop to resume)",
            args.run_dir.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_category_weights;

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
