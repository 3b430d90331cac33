//! The information sweep over a benchmark, as `horizon info` runs it: for every selected sample the
//! engine's variants ([`crate::info::sweep_sample`]), written as long-format Parquet part files
//! (schema in `horizon_data::info_rows`) that each hold whole samples and are written atomically.
//!
//! The part files, shards, stop rule, resume and merge are the driver that `horizon eval` shares
//! ([`crate::parts`]); every part file carries the sweep's [`RunMetadata`] with fingerprints of the
//! checkpoint and of the selected samples, and a resumed run must have the same. A notebook or
//! another program runs a sweep with exactly this code.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use horizon_data::bench::prompts::{question_prompt, PromptStyle};
use horizon_data::bench::Sample;
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::info_rows::{
    write_info_rows, Estimate, InfoMode, InfoRow, KlEstimate, RowVariant, Target,
};
use horizon_data::run_meta::{InfoSettings, RunKind, RunMetadata};
use horizon_data::window::WindowGrid;
use tch::Tensor;

use crate::gradient::{
    estimate_leave_out_batch, estimate_sample, leave_out_batches, LeaveOutPoint,
};
use crate::info::{full_run, sweep_sample, SweepConfig, Variant, VariantResult};
use crate::model::{ModelInputs, VlModel};
use crate::parts::{PartRun, RunIdentity, RunPlan};
use crate::processor::{Processor, PromptTemplate};

pub use crate::parts::{
    check_selection, check_writable_dir, merge_shards, selection_fingerprint, MergeReport,
    Positioned, Shard, StopRule,
};
pub use horizon_data::run_meta::{DoneMarker, DONE_FILE};

/// Everything that decides a sweep's rows, and how it is cut into part files.
#[derive(Debug, Clone)]
pub struct InfoSweep {
    /// Label of the model in the rows.
    pub model_name: String,
    /// The checkpoint directory (recorded; not compared on resume, a copy may move).
    pub model_path: PathBuf,
    /// The benchmark path (recorded; not compared on resume).
    pub bench: PathBuf,
    /// Cut layers K, 0-based, sorted.
    pub layers: Vec<usize>,
    pub window: usize,
    pub mode: InfoMode,
    pub target: Target,
    /// Exact cuts, or one-pass estimates ([`crate::gradient`]).
    pub estimate: Estimate,
    /// How leave-out's gradient estimate scores the KL (`None`: [`KlEstimate::default`]); any
    /// other sweep is given none ([`kl_estimate_of`]).
    pub kl_estimate: Option<KlEstimate>,
    pub template: PromptTemplate,
    /// Which harness's benchmark prompt to build (LLaVA's evaluation scripts or lmms-eval's).
    pub prompt_style: PromptStyle,
    /// Processor settings that change the inputs, recorded (e.g. Qwen2.5-VL's pixel bounds).
    pub processor_settings: BTreeMap<String, String>,
    /// Variants per batch; `None` picks one from `memory_budget_bytes`.
    pub batch_size: Option<usize>,
    pub memory_budget_bytes: usize,
    /// Samples per Parquet part file.
    pub samples_per_part: usize,
    /// This run's share of the selection.
    pub shard: Shard,
    /// Samples computed at once, each on its own thread with one libtorch thread
    /// ([`SweepPlan::run`]); 1 computes one sample at a time with libtorch's own thread count.
    pub workers: usize,
}

/// The KL estimate a sweep runs with: `kl`, or the default where none is given. Only leave-out's
/// gradient estimate has a choice of KL estimate ([`KlEstimate`]): any other sweep given one is
/// refused, not silently run without it.
pub fn kl_estimate_of(
    estimate: Estimate,
    mode: InfoMode,
    kl: Option<KlEstimate>,
) -> Result<KlEstimate> {
    match kl {
        Some(kl) if (estimate, mode) != (Estimate::Gradient, InfoMode::LeaveOut) => bail!(
            "--estimate-kl {kl}: only leave-out's gradient estimate has a choice of KL \
             (--mode leave-out --estimate gradient)"
        ),
        kl => Ok(kl.unwrap_or_default()),
    }
}

/// Samples per call of leave-out's gradient estimate at most (fewer where the memory budget or
/// a part's share per worker says so).
pub const LEAVE_OUT_SAMPLES_PER_BATCH: usize = 8;

/// What a finished sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub samples: usize,
    /// Samples found already written (a resumed run).
    pub already_done: usize,
    /// Samples without a ground-truth answer under `--target gt`.
    pub skipped_no_answer: usize,
    /// Part files in the output directory at the end.
    pub part_files: usize,
    /// The stop rule ended the run before every sample was done (`--resume` continues it).
    pub stopped_early: bool,
}

impl InfoSweep {
    /// The metadata every part file carries: the settings that decide the rows, the fingerprints
    /// of the checkpoint and of the whole selection, and the shard.
    pub fn metadata(&self, model: &VlModel, samples: &[Sample]) -> Result<RunMetadata> {
        let identity = RunIdentity {
            model_name: &self.model_name,
            model_path: &self.model_path,
            bench: &self.bench,
            template: self.template,
            prompt_style: self.prompt_style,
            processor_settings: &self.processor_settings,
            shard: self.shard,
        };
        identity.metadata(
            model,
            samples,
            RunKind::Info(InfoSettings {
                batch: match self.batch_size {
                    Some(b) => b.to_string(),
                    None => format!("auto, {} MiB", self.memory_budget_bytes >> 20),
                },
                num_layers: model.num_layers(),
                layers: self.layers.clone(),
                window_size: self.window,
                mode: self.mode,
                target: self.target,
                estimate: self.estimate,
                estimator: InfoSettings::estimator_of(self.estimate, self.mode, self.kl()),
            }),
        )
    }

    /// Checks `out` (writable; a run already there must have the same settings in every part file,
    /// and `resume` must be given to continue it) and lists the samples of `samples` still to do.
    /// Under `--target gt` the samples without a ground-truth answer are excluded and counted.
    /// Nothing is computed yet.
    pub fn plan<'a>(
        &'a self,
        model: &VlModel,
        samples: &'a [Sample],
        out: &Path,
        resume: bool,
    ) -> Result<SweepPlan<'a>> {
        check_selection(samples)?;
        kl_estimate_of(self.estimate, self.mode, self.kl_estimate)?;
        let run = PartRun {
            settings: self.metadata(model, samples)?,
            shard: self.shard,
            samples_per_part: self.samples_per_part,
            needs_answer: self.target == Target::Gt,
        };
        let plan = run.plan(samples, out, resume)?;
        Ok(SweepPlan {
            sweep: self,
            samples: plan.samples,
            already_done: plan.already_done,
            plan,
        })
    }

    /// The token a sample's rows score: the unpruned model's own (`greedy`, from `greedy`) or the
    /// first token of the ground-truth answer.
    fn target_token(
        &self,
        processor: &Processor,
        sample: &Sample,
        greedy: impl FnOnce() -> i64,
    ) -> Result<i64> {
        match self.target {
            Target::Greedy => Ok(greedy()),
            Target::Gt => {
                // Samples without an answer are excluded by the plan; an answer that tokenizes to
                // nothing has no first token to score.
                let answer = sample.answer().unwrap_or_default();
                processor
                    .first_answer_token(&answer)
                    .with_context(|| format!("sample {}", sample.key))?
                    .ok_or_else(|| {
                        anyhow::anyhow!("sample {}: the answer {answer:?} has no token", sample.key)
                    })
            }
        }
    }

    /// One sample's rows (leave-out's estimate computes its samples in batches instead:
    /// [`Self::leave_out_estimate_rows`]).
    fn sample_rows(
        &self,
        model: &VlModel,
        processor: &Processor,
        sample: &Sample,
        cfg: &SweepConfig,
    ) -> Result<Vec<InfoRow>> {
        let context = || format!("sample {}", sample.key);
        let inputs = self.prepare(model, processor, sample)?;
        let grid = model.window_grid(&inputs, cfg.window_size)?;
        let full = full_run(model, &inputs).with_context(context)?;
        let target = self.target_token(processor, sample, || full.greedy_token())?;
        let results = match self.estimate {
            Estimate::Exact => sweep_sample(model, &inputs, &full, target, cfg),
            Estimate::Gradient => estimate_sample(model, &inputs, &full, target, cfg, self.kl()),
        };
        let results = results.with_context(context)?;
        Ok(self.rows_of(sample, &grid, target, &results))
    }

    /// The KL estimate this sweep runs with ([`Self::kl_estimate`], or the default).
    fn kl(&self) -> KlEstimate {
        self.kl_estimate.unwrap_or_default()
    }

    /// A sample's prompt inputs: its image decoded and processed with its question.
    fn prepare(
        &self,
        model: &VlModel,
        processor: &Processor,
        sample: &Sample,
    ) -> Result<ModelInputs> {
        let context = || format!("sample {}", sample.key);
        let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
        let prompt = question_prompt(sample, self.prompt_style);
        processor
            .prepare_image(model, &prompt, &image, self.template)
            .with_context(context)
    }

    /// The info rows of a sample's results.
    fn rows_of(
        &self,
        sample: &Sample,
        grid: &WindowGrid,
        target: i64,
        results: &[VariantResult],
    ) -> Vec<InfoRow> {
        let keys = SampleRowKeys {
            model: &self.model_name,
            task: &sample.category,
            sample_id: &sample.key,
            mode: self.mode,
            target: self.target,
            target_token: target,
        };
        variant_rows(results, grid, &keys)
    }

    /// Leave-out's gradient estimate of several samples, each sample's rows or error in order.
    /// The estimate is linearised at the unpruned run itself (no other prefill), and the prepared
    /// samples run as padded batches within the memory budget ([`leave_out_batches`]): each
    /// sample's rows are those of its own run up to float rounding. A batch that fails is run
    /// again one sample at a time, so that an error is the failing sample's own.
    fn leave_out_estimate_rows(
        &self,
        model: &VlModel,
        processor: &Processor,
        samples: &[&Sample],
        cfg: &SweepConfig,
    ) -> Vec<Result<Vec<InfoRow>>> {
        let prepared: Vec<Result<(ModelInputs, Tensor, WindowGrid)>> = samples
            .iter()
            .map(|sample| {
                let inputs = self.prepare(model, processor, sample)?;
                let grid = model.window_grid(&inputs, cfg.window_size)?;
                let embeds = model
                    .input_embeds(&inputs)
                    .with_context(|| format!("sample {}", sample.key))?;
                Ok((inputs, embeds, grid))
            })
            .collect();
        let ready: Vec<usize> = (0..samples.len())
            .filter(|&i| prepared[i].is_ok())
            .collect();
        let ready_at = |i: usize| prepared[i].as_ref().expect("a prepared sample");
        let lengths: Vec<usize> = ready.iter().map(|&i| ready_at(i).0.seq_len()).collect();
        let batches = leave_out_batches(model, &lengths, cfg.memory_budget_bytes)
            .into_iter()
            .map(|batch| batch.iter().map(|&b| ready[b]).collect());
        let out = run_batches_or_singly(samples.len(), batches, |batch: &[usize]| {
            // A batch's own failure is rerun one sample at a time, which names the sample.
            let named = |e: anyhow::Error| match batch {
                [i] => e.context(format!("sample {}", samples[*i].key)),
                _ => e,
            };
            let points: Vec<(&ModelInputs, &Tensor)> = batch
                .iter()
                .map(|&i| (&ready_at(i).0, &ready_at(i).1))
                .collect();
            let point = LeaveOutPoint::from_embeds_batch(model, &points).map_err(named)?;
            let greedy = point.greedy_tokens();
            let targets: Vec<(&ModelInputs, i64)> = batch
                .iter()
                .zip(&greedy)
                .map(|(&i, &g)| {
                    let target = self.target_token(processor, samples[i], || g)?;
                    Ok((&ready_at(i).0, target))
                })
                .collect::<Result<_>>()?;
            let results =
                estimate_leave_out_batch(model, &targets, &point, cfg, self.kl()).map_err(named)?;
            Ok(batch
                .iter()
                .zip(&targets)
                .zip(&results)
                .map(|((&i, (_, target)), results)| {
                    self.rows_of(samples[i], &ready_at(i).2, *target, results)
                })
                .collect())
        });
        out.into_iter()
            .zip(prepared)
            .map(|(rows, prepared)| match (rows, prepared) {
                (Some(rows), _) => rows,
                (None, Err(e)) => Err(e),
                (None, Ok(_)) => unreachable!("every prepared sample is in a batch"),
            })
            .collect()
    }
}

/// Each of `n` items' result from `run` over `batches` (disjoint lists of item indices; an item in
/// none stays `None`). A batch whose run fails, or returns other than one result per item, is run
/// again one item at a time, so that each item gets its own result and an error names the item
/// that fails alone; a batch of one keeps its error.
fn run_batches_or_singly<T>(
    n: usize,
    batches: impl IntoIterator<Item = Vec<usize>>,
    run: impl Fn(&[usize]) -> Result<Vec<T>>,
) -> Vec<Option<Result<T>>> {
    let one = |i: usize| -> Result<T> {
        let mut results = run(&[i])?;
        match results.len() {
            1 => Ok(results.remove(0)),
            n => bail!("a batch of one gave {n} results"),
        }
    };
    let mut out: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
    for batch in batches {
        match run(&batch) {
            Ok(results) if results.len() == batch.len() => {
                for (&i, r) in batch.iter().zip(results) {
                    out[i] = Some(Ok(r));
                }
            }
            Err(e) if batch.len() == 1 => out[batch[0]] = Some(Err(e)),
            _ => {
                for &i in &batch {
                    out[i] = Some(one(i));
                }
            }
        }
    }
    out
}

/// The columns every info row of one sample shares.
pub struct SampleRowKeys<'a> {
    pub model: &'a str,
    pub task: &'a str,
    pub sample_id: &'a str,
    pub mode: InfoMode,
    pub target: Target,
    pub target_token: i64,
}

/// One sample's variant results as info rows, each window placed on `grid` (its row, column and
/// grid; -1 for the full run and the text-only baseline).
pub fn variant_rows(
    results: &[VariantResult],
    grid: &WindowGrid,
    keys: &SampleRowKeys,
) -> Vec<InfoRow> {
    results
        .iter()
        .map(|r| {
            let (variant, window) = match r.variant {
                Variant::Full => (RowVariant::Full, None),
                Variant::TextOnly => (RowVariant::TextOnly, None),
                Variant::Window(w) => (RowVariant::Window, Some(w)),
            };
            let (wr, wc, wg) = window.map_or((-1, -1, -1), |w| {
                let (r, c) = grid.window_position(w);
                (r as i32, c as i32, grid.window_grid(w) as i32)
            });
            InfoRow {
                model: keys.model.to_string(),
                task: keys.task.to_string(),
                sample_id: keys.sample_id.to_string(),
                layer: r.layer.map_or(-1, |k| k as i32),
                variant,
                window: window.map_or(-1, |w| w as i32),
                window_row: wr,
                window_col: wc,
                grid: wg,
                mode: keys.mode,
                target: keys.target,
                target_token: keys.target_token,
                p: r.p,
                logp: r.logp,
                kl: r.kl,
            }
        })
        .collect()
}

/// A checked sweep: the samples still to do and where their rows go.
pub struct SweepPlan<'a> {
    sweep: &'a InfoSweep,
    plan: RunPlan<'a>,
    /// Samples this run (shard) holds, and of them already written (a resumed run).
    pub samples: usize,
    pub already_done: usize,
}

impl SweepPlan<'_> {
    /// Samples this run computes.
    pub fn pending(&self) -> usize {
        self.plan.pending()
    }

    /// Samples of this shard excluded for want of a ground-truth answer (`--target gt`).
    pub fn excluded(&self) -> usize {
        self.plan.excluded().len()
    }

    /// Computes the pending samples, one atomic part file per `samples_per_part` of them;
    /// `progress(done, pending)` is called after each sample.
    pub fn run(
        mut self,
        model: &VlModel,
        processor: &Processor,
        stop: StopRule,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SweepReport> {
        let sweep = self.sweep;
        let workers = sweep.workers.max(1);
        let cfg = SweepConfig {
            layers: sweep.layers.clone(),
            window_size: sweep.window,
            mode: sweep.mode,
            batch_size: sweep.batch_size,
            // The budget is the whole run's: each worker's batches get their share.
            memory_budget_bytes: sweep.memory_budget_bytes / workers,
        };
        // Leave-out's estimate is one forward and one backward pass per sample, whose small
        // operators cost per call: several samples per call, within the memory budget.
        let batched = (sweep.estimate, sweep.mode) == (Estimate::Gradient, InfoMode::LeaveOut);
        let batch = if batched {
            LEAVE_OUT_SAMPLES_PER_BATCH
        } else {
            1
        };
        let complete = self.plan.run_on_model(
            write_info_rows,
            stop,
            workers,
            batch,
            model,
            processor,
            |model, processor, samples| {
                if batched {
                    sweep.leave_out_estimate_rows(model, processor, samples, &cfg)
                } else {
                    samples
                        .iter()
                        .map(|sample| sweep.sample_rows(model, processor, sample, &cfg))
                        .collect()
                }
            },
            progress,
        )?;
        if complete {
            self.plan.write_done()?;
        }
        Ok(SweepReport {
            samples: self.samples,
            already_done: self.already_done,
            skipped_no_answer: self.plan.excluded().len(),
            part_files: self.plan.part_count(),
            stopped_early: !complete,
        })
    }
}

/// `1-31`, `1,4,8`, `all` → sorted, unique layer indices below `num_layers`; `None` is the reference's
/// default, 1 to the last layer.
pub fn parse_layers(spec: Option<&str>, num_layers: usize) -> Result<Vec<usize>> {
    let spec = match spec {
        None => return Ok((1..num_layers).collect()),
        Some(s) => s.trim(),
    };
    if spec == "all" {
        return Ok((0..num_layers).collect());
    }
    let mut layers = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let parse = |s: &str| -> Result<usize> {
            s.trim().parse().map_err(|_| {
                anyhow::anyhow!("--layers: '{s}' is not a layer number (spec '{spec}')")
            })
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    bail!("--layers: empty range '{item}'");
                }
                layers.extend(a..=b);
            }
            None => layers.push(parse(item)?),
        }
    }
    layers.sort_unstable();
    layers.dedup();
    if let Some(&l) = layers.iter().find(|&&l| l >= num_layers) {
        bail!("--layers: layer {l} does not exist (the decoder has {num_layers} layers, 0-based)");
    }
    if layers.is_empty() {
        bail!("--layers: '{spec}' names no layer");
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing batch is rerun one item at a time: the items that succeed alone keep their
    /// results, each failing item gets its own error, and items in no batch stay `None`.
    #[test]
    fn a_failing_batch_is_rerun_one_item_at_a_time() {
        use std::cell::RefCell;
        let calls = RefCell::new(Vec::new());
        // Item 3 fails in any batch; item 6 succeeds alone but its batch returns one result short.
        let run = |batch: &[usize]| -> Result<Vec<usize>> {
            calls.borrow_mut().push(batch.to_vec());
            if let Some(i) = batch.iter().find(|&&i| i == 3) {
                bail!("item {i} fails");
            }
            let short = batch.len() > 1 && batch.contains(&6);
            Ok(batch.iter().skip(short as usize).map(|&i| i * 10).collect())
        };
        let out = run_batches_or_singly(9, [vec![0, 1], vec![2, 3, 4], vec![5, 6], vec![8]], run);
        let shown: Vec<String> = out
            .into_iter()
            .map(|r| match r {
                None => "none".to_string(),
                Some(Ok(v)) => v.to_string(),
                Some(Err(e)) => e.to_string(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "0",
                "10",
                "20",
                "item 3 fails",
                "40",
                "50",
                "60",
                "none",
                "80"
            ]
        );
        assert_eq!(
            calls.into_inner(),
            [
                vec![0, 1],
                vec![2, 3, 4],
                vec![2],
                vec![3],
                vec![4],
                vec![5, 6],
                vec![5],
                vec![6],
                vec![8]
            ]
        );
        // A batch of one keeps its error; one whose result count is off is an error too.
        let out = run_batches_or_singly(1, [vec![0]], |_: &[usize]| -> Result<Vec<u8>> {
            bail!("alone")
        });
        assert_eq!(
            out[0].as_ref().unwrap().as_ref().unwrap_err().to_string(),
            "alone"
        );
        let out = run_batches_or_singly(2, [vec![0, 1]], |_: &[usize]| Ok(vec![1u8, 2, 3]));
        assert_eq!(
            out[1].as_ref().unwrap().as_ref().unwrap_err().to_string(),
            "a batch of one gave 3 results"
        );
    }

    #[test]
    fn parse_layers_specs() {
        assert_eq!(parse_layers(None, 4).unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_layers(Some("all"), 3).unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_layers(Some(" 3, 1-2 ,2"), 8).unwrap(), vec![1, 2, 3]);
        for (bad, needle) in [
            ("8", "layer 8 does not exist"),
            ("2-1", "empty range"),
            ("x", "'x' is not a layer number"),
            ("1-", "'' is not a layer number"),
            ("-1", "'' is not a layer number"),
            ("1,,2", "'' is not a layer number"),
        ] {
            let e = parse_layers(Some(bad), 8).unwrap_err().to_string();
            assert!(e.starts_with("--layers: "), "{bad}: {e}");
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
