//! Evaluation over a benchmark, as `horizon eval` runs it: greedy answers for the selected samples,
//! streamed into atomic Parquet part files of predictions (schema in `horizon_data::predictions`), then
//! scored by the benchmark's official rules (`horizon_data::score`).
//!
//! The part files, shards, stop rule and resume are the driver the information sweep shares
//! ([`crate::parts`]): every part file carries the evaluation's [`RunMetadata`] with fingerprints of
//! the checkpoint and the selection; `--resume` continues an interrupted run and refuses a changed
//! one; `--shard i/n` runs a share of the selection, and a finished run writes `DONE.json`.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use horizon_data::bench::prompts::{question_prompt, PromptStyle};
use horizon_data::bench::Sample;
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::predictions::{read_predictions, write_predictions, Prediction};
use horizon_data::run_meta::{EvalSettings, RunKind, RunMetadata, DONE_FILE};
use horizon_data::score::{score, score_detected, Benchmark, ScoreTable};

use crate::generate::GenerationConfig;
use crate::model::VlModel;
use crate::parts::{
    check_selection, has_answer, part_paths, PartRun, RunIdentity, Shard, StopRule,
};
use crate::processor::{Processor, PromptTemplate};
use crate::prune::runs::{plan_runs, summarize_run, SpecRun};
use crate::prune::{generate_pruned, sample_seed, Method, PruneOptions, PruneSpec};
use horizon_analysis::prune::{summarize_specs, summary_markdown, RunSummary, SpecSummary};

/// Everything that decides an evaluation's answers, and how it is cut into part files.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub model_name: String,
    pub model_path: PathBuf,
    pub bench: PathBuf,
    pub template: PromptTemplate,
    pub prompt_style: PromptStyle,
    pub max_new_tokens: usize,
    /// Scores every row by this benchmark's rules instead of the one each sample names.
    pub scorer: Option<Benchmark>,
    pub samples_per_part: usize,
    pub shard: Shard,
    /// Processor settings that change the inputs, recorded (e.g. Qwen2.5-VL's pixel bounds).
    pub processor_settings: BTreeMap<String, String>,
    /// Visual-token pruning of every prompt (`none` for the plain model).
    pub prune: PruneSpec,
    pub prune_options: PruneOptions,
    /// One untimed generation before the first timed sample (libtorch's first-call costs).
    pub warmup: bool,
    /// Samples answered at once, each on its own thread with one libtorch thread (for a CPU,
    /// where one sample's operators keep the cores only partly busy); 1 answers one sample at a
    /// time with libtorch's own thread count. The answers are those of one sample at a time (up
    /// to float rounding, which can flip a near-tie); the latency columns are each sample's own,
    /// on one thread beside the others.
    pub workers: usize,
    /// The information oracle's window scores read from `horizon info` rows, per sample.
    pub info_rows: Option<std::sync::Arc<InfoRowScores>>,
}

/// Window scores of `info` stages read from `horizon info` rows: per sample key, per cut layer,
/// p(answer) with only window w kept (keep-only rows, target gt).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InfoRowScores {
    /// Where they were read (recorded in the settings; named in errors).
    pub source: String,
    pub by_sample: std::collections::HashMap<String, BTreeMap<usize, Vec<f64>>>,
}

/// What a finished (or stopped) evaluation did.
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    pub samples: usize,
    pub already_done: usize,
    pub stopped_early: bool,
    /// Every prediction of this run's directory, in selection order.
    pub predictions: Vec<Prediction>,
    /// Scores of those predictions (empty when stopped early).
    pub scores: Option<ScoreTable>,
}

impl Evaluation {
    /// The metadata every part file carries: the settings that decide the answers, the
    /// fingerprints of the checkpoint and of the whole selection, and the shard.
    pub fn metadata(&self, model: &VlModel, samples: &[Sample]) -> Result<RunMetadata> {
        let o = &self.prune_options;
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
            RunKind::Eval(EvalSettings {
                max_new_tokens: self.max_new_tokens,
                scorer: self
                    .scorer
                    .map_or("from the benchmark".into(), |b| b.name().into()),
                prune: self.prune.to_string(),
                prune_options: {
                    let mut options = format!(
                        "positions={} seed={} window_size={} tau={} info_window={} dart_pivots={}",
                        o.positions.map_or("default".into(), |p| format!("{p:?}")),
                        o.seed,
                        o.window_size,
                        o.tau,
                        o.info_window,
                        o.dart_pivots,
                    );
                    // Only DART reads the pivot order; leaving it out of other runs' identity keeps
                    // their directories, written before the option existed, resumable.
                    if self
                        .prune
                        .stages
                        .iter()
                        .any(|s| matches!(s.method, Method::Dart))
                    {
                        options += &format!(" dart_pivot_order={}", o.dart_pivot_order.name());
                    }
                    options
                },
                info_rows: self.info_rows.as_ref().map(|r| r.source.clone()),
            }),
        )
    }

    /// Answers the samples of this shard still missing in `out`, then (when every one is there)
    /// scores all of them ([`score_predictions`]) and writes `predictions.parquet`, `scores.json`,
    /// `scores.md` and `DONE.json`. `progress(done, pending)` is called once every check has passed
    /// (with `done` 0), then after each sample.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        model: &VlModel,
        processor: &Processor,
        samples: &[Sample],
        out: &Path,
        resume: bool,
        stop: StopRule,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<EvalReport> {
        check_selection(samples)?;
        let run = PartRun {
            settings: self.metadata(model, samples)?,
            shard: self.shard,
            samples_per_part: self.samples_per_part,
            needs_answer: false,
        };
        for name in ["scores.json", "scores.md", "predictions.parquet", DONE_FILE] {
            horizon_data::atomic::check_file_target(&out.join(name))?;
        }
        let mut plan = run.plan(samples, out, resume)?;
        let needs_target = self.prune.stages.iter().any(|s| s.method == Method::Info);
        if let Some(s) = plan
            .pending_samples()
            .find(|s| needs_target && !has_answer(&s.answers))
        {
            bail!(
                "sample {}: no reference answer, and the info stage of --prune {} ranks windows by it",
                s.key,
                self.prune
            );
        }
        // Every check has passed: the run starts.
        progress(0, plan.pending_samples().count());
        let gen = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            eos_token_ids: processor.eos_token_ids().to_vec(),
        };
        let mut report = EvalReport {
            samples: plan.samples,
            already_done: plan.already_done,
            ..Default::default()
        };
        if let (true, Some(first)) = (self.warmup, plan.pending_samples().next()) {
            self.answer(model, processor, first, &gen)?;
        }
        let complete = plan.run_on_model(
            write_predictions,
            stop,
            self.workers,
            1,
            model,
            processor,
            |model, processor, samples| {
                samples
                    .iter()
                    .map(|sample| Ok(vec![self.answer(model, processor, sample, &gen)?]))
                    .collect()
            },
            progress,
        )?;
        report.stopped_early = !complete;
        let mut all = read_parts(out)?;
        let order: HashMap<&str, usize> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i))
            .collect();
        all.sort_by_key(|p| {
            order
                .get(p.sample_key.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
        if complete {
            let table = score_predictions(&all, self.scorer)?;
            write_text(&out.join("scores.json"), &table.to_json())?;
            write_text(&out.join("scores.md"), &table.to_markdown())?;
            write_predictions(
                &out.join("predictions.parquet"),
                &all,
                &plan.settings().to_pairs(),
            )?;
            plan.write_done()?;
            report.scores = Some(table);
        }
        report.predictions = all;
        Ok(report)
    }

    /// One sample's greedy answer as a prediction row.
    fn answer(
        &self,
        model: &VlModel,
        processor: &Processor,
        sample: &Sample,
        gen: &GenerationConfig,
    ) -> Result<Prediction> {
        let context = || format!("sample {}", sample.key);
        let prompt = question_prompt(sample, self.prompt_style);
        let inputs = if sample.has_image() {
            let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
            processor.prepare_image(model, &prompt, &image, self.template)
        } else {
            // A text-only question (ScienceQA): the prompt without an image, as LLaVA's
            // model_vqa_science.py asks it; there are no visual tokens to prune.
            processor.prepare_text(model, &prompt, self.template)
        }
        .with_context(context)?;
        let needs_target = self.prune.stages.iter().any(|s| s.method == Method::Info);
        let target = match (needs_target, sample.answers.first()) {
            (true, Some(a)) => processor.first_answer_token(a).with_context(context)?,
            _ => None,
        };
        let seed = sample_seed(self.prune_options.seed, &sample.key);
        let mut options = self.prune_options.clone();
        options.sample_key = Some(sample.key.clone());
        if let Some(rows) = self.info_rows.as_ref().filter(|_| needs_target) {
            let scores = rows.by_sample.get(&sample.key).ok_or_else(|| {
                anyhow::anyhow!("{}: no info rows for sample {}", rows.source, sample.key)
            })?;
            options.info_scores = Some(scores.clone());
        }
        let unpruned = PruneSpec::none();
        let spec = if sample.has_image() {
            &self.prune
        } else {
            &unpruned
        };
        let run = generate_pruned(model, &inputs, spec, &options, seed, target, gen)
            .with_context(context)?;
        let prediction = processor.decode(&run.tokens)?.trim().to_string();
        let mut row = Prediction {
            sample_key: sample.key.clone(),
            question_id: sample.id.clone(),
            benchmark: sample.benchmark.name().into(),
            category: sample.category.clone(),
            question: sample.question.clone(),
            answers: sample.answers.clone(),
            choices: sample.choices.clone(),
            index: sample.index,
            has_image: sample.has_image(),
            prefill_ms: Some(run.prefill_seconds * 1e3),
            decode_ms_per_token: (run.decode_steps > 0)
                .then(|| run.decode_seconds * 1e3 / run.decode_steps as f64),
            new_tokens: Some(run.tokens.len() as i64),
            kv_cache_bytes: Some(run.kv_bytes as i64),
            visual_tokens_layer0: Some(run.counts.retained_from_layer0() as i64),
            visual_tokens_final: Some(run.counts.retained_final() as i64),
            visual_tokens_t_eq: Some(run.counts.t_eq()),
            correct: false,
            score: None,
            prediction,
        };
        // `correct` and `score`: what the benchmark's score counts for this row.
        horizon_data::score::fill_outcome(self.scorer, 0, &mut row).with_context(context)?;
        Ok(row)
    }
}

/// What a driver of several evaluations ([`Evaluations`]) reports as it goes; a command line prints
/// it, a notebook may ignore it ([`Quiet`]).
pub trait EvalProgress {
    /// A run of `spec` is about to be checked and started in `out`.
    fn begin(&mut self, _spec: &PruneSpec, _out: &Path) {}
    /// `done` of the `pending` samples of the current run answered: called with `done` 0 once every
    /// check of the run has passed, then after each sample.
    fn progress(&mut self, _done: usize, _pending: usize) {}
    /// The run of `spec` in `out` finished, or stopped by the stop rule.
    fn end(&mut self, _spec: &PruneSpec, _out: &Path, _report: &EvalReport) {}
}

/// An [`EvalProgress`] that reports nothing.
pub struct Quiet;

impl EvalProgress for Quiet {}

/// Evaluations of one model over one selection that differ only in their pruning spec and seed
/// (`horizon eval`, with or without `--prune`, and `horizon prune-sweep`): each run is `base` with
/// its spec and seed, in its own directory, resumable like any other.
pub struct Evaluations<'a> {
    pub model: &'a VlModel,
    pub processor: &'a Processor,
    pub samples: &'a [Sample],
    /// The settings every run shares; `prune` and `prune_options.seed` are replaced by each run's.
    pub base: Evaluation,
    /// Continue runs already in their directories.
    pub resume: bool,
    pub stop: StopRule,
}

impl Evaluations<'_> {
    /// One evaluation of `spec` under `seed` in `out`; its report's `scores` are `None` when the
    /// stop rule ended it early.
    pub fn evaluate(
        &self,
        spec: &PruneSpec,
        seed: u64,
        out: &Path,
        progress: &mut dyn EvalProgress,
    ) -> Result<EvalReport> {
        let evaluation = Evaluation {
            prune: spec.clone(),
            prune_options: PruneOptions {
                seed,
                ..self.base.prune_options.clone()
            },
            ..self.base.clone()
        };
        progress.begin(spec, out);
        let report = evaluation.run(
            self.model,
            self.processor,
            self.samples,
            out,
            self.resume,
            self.stop,
            &mut |done, pending| progress.progress(done, pending),
        )?;
        progress.end(spec, out, &report);
        Ok(report)
    }

    /// Every run of `runs`, in order: the summaries of those that finished, and whether all did.
    pub fn evaluate_all(
        &self,
        runs: &[SpecRun],
        progress: &mut dyn EvalProgress,
    ) -> Result<(Vec<RunSummary>, bool)> {
        let mut summaries = Vec::new();
        let mut complete = true;
        for run in runs {
            let report = self.evaluate(&run.spec, run.seed, &run.dir, progress)?;
            match &report.scores {
                Some(scores) => summaries.push(summarize_run(run, &report.predictions, scores)?),
                None => complete = false,
            }
        }
        Ok((summaries, complete))
    }

    /// The comparison of `specs` (`horizon eval --prune …`): the unpruned model and each spec, a
    /// spec with a random stage `repeats` times with seeds counting up from `base`'s, each in its
    /// directory under `out` ([`plan_runs`]); then `summary.json` and `summary.md` in `out`. `None`
    /// when the stop rule ended a run early (nothing summarized; `resume` continues).
    pub fn compare(
        &self,
        specs: &[PruneSpec],
        repeats: usize,
        out: &Path,
        progress: &mut dyn EvalProgress,
    ) -> Result<Option<Vec<SpecSummary>>> {
        let runs = plan_runs(specs, repeats, self.base.prune_options.seed, out);
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create", out.display()))?;
        let (summaries, complete) = self.evaluate_all(&runs, progress)?;
        if !complete {
            return Ok(None);
        }
        let specs = summarize_specs(&summaries);
        write_summary(out, &specs)?;
        Ok(Some(specs))
    }
}

/// `summary.json` and `summary.md` of compared specs in `out` (each written atomically).
pub fn write_summary(out: &Path, specs: &[SpecSummary]) -> Result<()> {
    write_text(
        &out.join("summary.json"),
        &serde_json::to_string_pretty(specs)?,
    )?;
    write_text(&out.join("summary.md"), &summary_markdown(specs))
}

/// The predictions in the part files of `dir` (not the combined `predictions.parquet`).
fn read_parts(dir: &Path) -> Result<Vec<Prediction>> {
    let mut all = Vec::new();
    for part in part_paths(dir)? {
        all.extend(read_predictions(&part)?);
    }
    Ok(all)
}

/// The score table of `predictions`, as `horizon eval` and `horizon score` both compute it: a
/// sample key present twice is refused; each row's `correct` is recomputed from its prediction and
/// answers (a stored value is not trusted); rows without an answer ([`has_answer`]) are excluded
/// and counted in a note; the rest are scored by `scorer`'s rules, or each by its `benchmark`'s.
pub fn score_predictions(
    predictions: &[Prediction],
    scorer: Option<Benchmark>,
) -> Result<ScoreTable> {
    let mut seen = HashMap::new();
    for (i, p) in predictions.iter().enumerate() {
        if let Some(first) = seen.insert(p.sample_key.as_str(), i) {
            bail!(
                "sample {} is in the predictions twice (rows {first} and {i})",
                p.sample_key
            );
        }
    }
    let (mut answered, unanswered): (Vec<Prediction>, Vec<Prediction>) = predictions
        .iter()
        .cloned()
        .partition(|p| has_answer(&p.answers));
    for (i, p) in answered.iter_mut().enumerate() {
        horizon_data::score::fill_outcome(scorer, i, p)?;
    }
    let mut table = match (scorer, answered.is_empty()) {
        (_, true) => ScoreTable::default(),
        (Some(b), false) => score(b, &answered)?,
        (None, false) => score_detected(&answered)?,
    };
    if !unanswered.is_empty() {
        table.notes.push(format!(
            "{} of {} samples have no reference answer and are not scored (e.g. {})",
            unanswered.len(),
            predictions.len(),
            unanswered[0].sample_key
        ));
    }
    Ok(table)
}

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    horizon_data::atomic::write_atomic(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))
    })
}
