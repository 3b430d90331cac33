//! Evaluation over a benchmark, as `horizon eval` runs it: greedy answers for the selected samples,
//! streamed into atomic Parquet part files of predictions (schema in `horizon_data::predictions`), then
//! scored by the benchmark's official rules (`horizon_data::score`).
//!
//! Like the information sweep ([`crate::sweep`]), the settings that decide the answers are recorded in
//! every part file with fingerprints of the checkpoint and the selection; `--resume` continues an
//! interrupted run and refuses a changed one; `--shard i/n` runs a share of the selection, and a
//! finished run writes `DONE.json`.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use horizon_data::bench::prompts::{question_prompt, PromptStyle};
use horizon_data::bench::Sample;
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::info_rows::{part_files, run_metadata};
use horizon_data::predictions::{exact_match, read_predictions, write_predictions, Prediction};
use horizon_data::score::{score, score_detected, Benchmark, ScoreTable};

use crate::device::dtype_name;
use crate::generate::GenerationConfig;
use crate::model::VlModel;
use crate::processor::{Processor, PromptTemplate};
use crate::prune::{generate_pruned, sample_seed, Method, PruneOptions, PruneSpec};
use crate::sweep::{
    check_same_settings, check_selection, check_writable_dir, selection_fingerprint, DoneMarker,
    Shard, StopRule, DONE_FILE,
};

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
    fn metadata(&self, model: &VlModel, samples: &[Sample]) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| m.insert(format!("horizon.{k}"), v);
        put(
            "model_fingerprint",
            crate::checkpoint::fingerprint(&self.model_path)?,
        );
        put("selection_fingerprint", selection_fingerprint(samples)?);
        put("selected", samples.len().to_string());
        put("shard", self.shard.to_string());
        put("model", self.model_name.clone());
        put("model_path", self.model_path.display().to_string());
        put("model_type", model.model_type().into());
        put("dtype", dtype_name(model.kind()).into());
        put("template", format!("{:?}", self.template));
        put("prompt_style", self.prompt_style.name().into());
        put("max_new_tokens", self.max_new_tokens.to_string());
        put(
            "scorer",
            self.scorer
                .map_or("from the benchmark".into(), |b| b.name().into()),
        );
        put("bench", self.bench.display().to_string());
        put("prune", self.prune.to_string());
        let o = &self.prune_options;
        put(
            "prune_options",
            format!(
                "positions={} seed={} window_size={} tau={} info_window={} dart_pivots={}",
                o.positions.map_or("default".into(), |p| format!("{p:?}")),
                o.seed,
                o.window_size,
                o.tau,
                o.info_window,
                o.dart_pivots
            ),
        );
        if let Some(rows) = &self.info_rows {
            put("info_rows", rows.source.clone());
        }
        for (k, v) in &self.processor_settings {
            put(k, v.clone());
        }
        Ok(m)
    }

    /// Answers the samples of this shard still missing in `out`, then (when every one is there)
    /// scores all of them and writes `predictions.parquet`, `scores.json`, `scores.md` and
    /// `DONE.json`. `progress(done, pending)` is called after each sample.
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
        check_writable_dir(out)?;
        horizon_data::atomic::remove_orphans(out)?;
        let settings = self.metadata(model, samples)?;
        let done: HashSet<String> = match (run_metadata(out)?, resume) {
            (None, _) => HashSet::new(),
            (Some(_), false) => bail!(
                "{}: already holds predictions; pass --resume to continue that run, or choose another --out",
                out.display()
            ),
            (Some(prev), true) => {
                check_same_settings(out, &prev, &settings)?;
                read_parts(out)?.into_iter().map(|p| p.sample_key).collect()
            }
        };
        let (mine, todo) = self.shard.split(samples, |s| done.contains(&s.key));
        let metadata: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let gen = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            eos_token_ids: processor.eos_token_ids().to_vec(),
        };
        let mut report = EvalReport {
            samples: mine.len(),
            already_done: mine.len() - todo.len(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let mut finished = 0;
        let per_part = self.samples_per_part.max(1);
        // At most `max_samples` this run; the parts stay whole-sample files either way.
        let now = &todo[..todo.len().min(stop.max_samples.unwrap_or(usize::MAX))];
        report.stopped_early = now.len() < todo.len();
        if let (true, Some((_, first))) = (self.warmup, now.first()) {
            self.answer(model, processor, first, &gen)?;
        }
        for chunk in now.chunks(per_part) {
            let out_of_time = stop
                .max_seconds
                .is_some_and(|t| started.elapsed().as_secs_f64() >= t);
            if out_of_time {
                report.stopped_early = true;
                break;
            }
            let mut rows = Vec::with_capacity(chunk.len());
            for (_, sample) in chunk {
                rows.push(self.answer(model, processor, sample, &gen)?);
                finished += 1;
                progress(finished, now.len());
            }
            let part = out.join(format!("part-{:06}.parquet", chunk[0].0));
            if part.exists() {
                bail!(
                    "{}: exists already (was the sample order changed?)",
                    part.display()
                );
            }
            write_predictions(&part, &rows, &metadata)?;
        }
        let mut all = read_parts(out)?;
        let order: BTreeMap<&str, usize> = samples
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
        if !report.stopped_early {
            let table = match self.scorer {
                Some(b) => score(b, &all)?,
                None => score_detected(&all)?,
            };
            write_text(&out.join("scores.json"), &table.to_json())?;
            write_text(&out.join("scores.md"), &table.to_markdown())?;
            write_predictions(&out.join("predictions.parquet"), &all, &metadata)?;
            let marker = DoneMarker {
                settings,
                positions: mine.iter().map(|(i, _)| *i).collect(),
                skipped: Vec::new(),
            };
            write_text(
                &out.join(DONE_FILE),
                &serde_json::to_string_pretty(&marker)?,
            )?;
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
        let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
        let prompt = question_prompt(sample, self.prompt_style);
        let inputs = processor
            .prepare_image(model, &prompt, &image, self.template)
            .with_context(context)?;
        let needs_target = self.prune.stages.iter().any(|s| s.method == Method::Info);
        let target = match (needs_target, sample.answers.first()) {
            (true, Some(a)) => processor.first_answer_token(a).with_context(context)?,
            _ => None,
        };
        let seed = sample_seed(self.prune_options.seed, &sample.key);
        let mut options = self.prune_options.clone();
        if let Some(rows) = self.info_rows.as_ref().filter(|_| needs_target) {
            let scores = rows.by_sample.get(&sample.key).ok_or_else(|| {
                anyhow::anyhow!("{}: no info rows for sample {}", rows.source, sample.key)
            })?;
            options.info_scores = Some(scores.clone());
        }
        let run = generate_pruned(model, &inputs, &self.prune, &options, seed, target, gen)
            .with_context(context)?;
        let prediction = processor.decode(&run.tokens)?.trim().to_string();
        Ok(Prediction {
            sample_key: sample.key.clone(),
            question_id: sample.id.clone(),
            benchmark: sample.benchmark.name().into(),
            category: sample.category.clone(),
            question: sample.question.clone(),
            answers: sample.answers.clone(),
            choices: sample.choices.clone(),
            index: sample.index,
            has_image: true,
            prefill_ms: Some(run.prefill_seconds * 1e3),
            decode_ms_per_token: (run.decode_steps > 0)
                .then(|| run.decode_seconds * 1e3 / run.decode_steps as f64),
            new_tokens: Some(run.tokens.len() as i64),
            kv_cache_bytes: Some(run.kv_bytes as i64),
            visual_tokens_layer0: Some(run.counts.retained_from_layer0() as i64),
            visual_tokens_final: Some(run.counts.retained_final() as i64),
            visual_tokens_t_eq: Some(run.counts.t_eq()),
            correct: exact_match(&prediction, &sample.answers),
            prediction,
        })
    }
}

/// The predictions in the part files of `dir` (not the combined `predictions.parquet`).
fn read_parts(dir: &Path) -> Result<Vec<Prediction>> {
    let mut all = Vec::new();
    for part in part_files(dir)? {
        let is_part = part
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"));
        if is_part {
            all.extend(read_predictions(&part)?);
        }
    }
    Ok(all)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    horizon_data::atomic::write_atomic(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))
    })
}
