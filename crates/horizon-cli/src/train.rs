//! `horizon train`: trains a small LLaVA-format model from scratch on the synthetic tasks (the
//! bundled models' recipe); the trainer itself is the `horizon-train` crate.

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

use horizon_runner::device::parse_device;
use horizon_train::{extend_run, train, ModelArgs, StopAt, TrainConfig};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    config: TrainConfig,
    /// Sampling weights of the categories after the vision stage, as NAME=WEIGHT pairs separated by
    /// commas (names: shape_color, shape_exists, count_circles, read_text, boxed_char); a category not
    /// named keeps its default (1 for the coarse ones, --fine-weight for the reading ones). Example:
    /// `count_circles=1.6,read_text=2`.
    #[arg(long, help_heading = "Samples")]
    category_weights: Option<String>,
    /// Run directory: checkpoint/ (weights, training-only heads, optimizer moments and state.json,
    /// replaced whole at each checkpoint, so a killed run resumes from the last complete one), a copy
    /// of state.json beside it, and model/ at the end. A rerun with the same settings resumes.
    #[arg(long, help_heading = "Run")]
    run_dir: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", help_heading = "Run")]
    device: String,
    /// Intra-op threads of libtorch (default: libtorch's choice).
    #[arg(long, help_heading = "Run")]
    threads: Option<i32>,
    /// Stop (after writing a checkpoint) once this many minutes have passed; rerun to resume.
    #[arg(long, help_heading = "Run")]
    time_budget_minutes: Option<f64>,
    /// Stop (after writing a checkpoint) once this many of the --steps are done; rerun without it to
    /// resume. The checkpoint directory is itself a loadable llava-hf model.
    #[arg(long, help_heading = "Run")]
    stop_at_step: Option<usize>,
    /// Lengthen the checkpointed run in --run-dir (finished or not) to --steps and go on training;
    /// every other setting must be the run's own. The last phase's cosine schedule is stretched to the
    /// new length from the current step on (a warm restart, not the same as planning --steps from the
    /// start).
    #[arg(long, help_heading = "Run")]
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

pub fn run_train(args: &TrainArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let mut cfg = TrainConfig {
        spec: args.model.spec()?,
        ..args.config.clone()
    };
    if let Some(text) = &args.category_weights {
        cfg.samples.set_category_weights(text)?;
    }
    cfg.validate()?;
    if args.extend {
        let at = extend_run(&cfg, &args.run_dir)?;
        eprintln!(
            "extended {} to {} steps; resuming at step {at} (lr {:.2e})",
            args.run_dir.display(),
            cfg.schedule.steps,
            cfg.lr_at(at)
        );
    }
    let bar = ProgressBar::new(cfg.schedule.steps as u64);
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
        let mut mass = if cfg.decoder.attend_weight > 0.0 && decoder_phase {
            format!(" evidence mass {m:.3}")
        } else {
            String::new()
        };
        if cfg.decoder.early_answer_weight > 0.0 && decoder_phase {
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
