//! The part-file run driver that `horizon info` ([`crate::sweep`]) and `horizon eval`
//! ([`crate::evaluate`]) share: a selection of samples cut into a shard (`--shard i/n`), computed in
//! atomic `part-NNNNNN.parquet` files of whole samples (NNNNNN: the selection position of the part's
//! first sample), stopped by a [`StopRule`] and continued by `--resume`, and a `DONE.json`
//! ([`DoneMarker`]) listing every part once the shard is finished.
//!
//! Every part file carries the run's [`RunMetadata`]. A resumed run reads every part already there
//! and refuses one whose metadata differs, or that holds a sample outside this shard or one already
//! in another part; [`merge_shards`] and [`check_finished_parts`] check the same of finished runs.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use horizon_data::bench::prompts::PromptStyle;
use horizon_data::bench::Sample;
use horizon_data::info_rows::part_files;
use horizon_data::run_meta::{DoneMarker, RunKind, RunMetadata, DONE_FILE, RUN_FORMAT};

use crate::device::dtype_name;
use crate::model::VlModel;
use crate::processor::PromptTemplate;

/// One of `count` deterministic parts of a selection: the samples at positions ≡ `index` (mod
/// `count`). `Shard::whole()` is the unsharded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn whole() -> Self {
        Self { index: 0, count: 1 }
    }

    /// `i/n` with 0 ≤ i < n (0-based, as Slurm's `SLURM_ARRAY_TASK_ID` with `--array=0-(n-1)`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || anyhow::anyhow!("'{s}' is not i/n with 0 <= i < n (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    pub fn holds(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// This shard's samples with their selection positions, and of them the ones `is_done` does not
    /// claim (what a run still has to compute).
    pub fn split<'a>(
        &self,
        samples: &'a [Sample],
        is_done: impl Fn(&Sample) -> bool,
    ) -> (Positioned<'a>, Positioned<'a>) {
        let mine: Positioned = samples
            .iter()
            .enumerate()
            .filter(|(i, _)| self.holds(*i))
            .collect();
        let todo = mine.iter().copied().filter(|(_, s)| !is_done(s)).collect();
        (mine, todo)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Samples with their positions in the selection.
pub type Positioned<'a> = Vec<(usize, &'a Sample)>;

/// When a run stops early (its parts stay complete; `--resume` continues): after this many samples,
/// or once this much time has passed (checked between parts), so a scheduler's limit loses at most
/// the part in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StopRule {
    pub max_samples: Option<usize>,
    pub max_seconds: Option<f64>,
}

/// Whether `sample` has a ground-truth answer: some reference answer that is not blank. A run
/// that needs one (`horizon info --target gt`) excludes the samples without, counts them and lists
/// them in `DONE.json`; scoring excludes them the same way
/// ([`crate::evaluate::score_predictions`]).
pub fn has_answer(answers: &[String]) -> bool {
    answers.iter().any(|a| !a.trim().is_empty())
}

/// The sample keys of the part file `path` of a run of `kind`, each once, in order: the
/// `sample_id`s of info rows, the `sample_key`s of predictions.
pub fn sample_keys(kind: &RunKind, path: &Path) -> Result<Vec<String>> {
    match kind {
        RunKind::Info(_) => horizon_data::info_rows::part_sample_ids(path),
        RunKind::Eval(_) => Ok(horizon_data::predictions::read_predictions(path)?
            .into_iter()
            .map(|p| p.sample_key)
            .collect()),
    }
}

/// The streamed `part-*.parquet` files of `dir`, sorted (not an eval run's combined
/// `predictions.parquet`, not temporary files).
pub fn part_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(part_files(dir)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What every run's metadata records besides the settings of its kind ([`RunKind`]): the model,
/// the benchmark, how prompts are built, the processor settings and the shard.
#[derive(Debug, Clone, Copy)]
pub struct RunIdentity<'a> {
    pub model_name: &'a str,
    pub model_path: &'a Path,
    pub bench: &'a Path,
    pub template: PromptTemplate,
    pub prompt_style: PromptStyle,
    /// Processor settings that change the inputs (only the pixel bounds are recorded: [`pixel_bounds`]).
    pub processor_settings: &'a BTreeMap<String, String>,
    pub shard: Shard,
}

impl RunIdentity<'_> {
    /// The metadata every part file of a run of `model` over `samples` carries: these fields, the
    /// fingerprints of the checkpoint and of the whole selection, and `run`'s own settings.
    pub fn metadata(
        &self,
        model: &VlModel,
        samples: &[Sample],
        run: RunKind,
    ) -> Result<RunMetadata> {
        let (min_pixels, max_pixels) = pixel_bounds(self.processor_settings)?;
        Ok(RunMetadata {
            run_format: RUN_FORMAT,
            model_fingerprint: crate::checkpoint::fingerprint(self.model_path)?,
            selection_fingerprint: selection_fingerprint(samples)?,
            selected: samples.len(),
            shard: self.shard.to_string(),
            model: self.model_name.to_string(),
            model_path: self.model_path.display().to_string(),
            model_type: model.model_type().into(),
            dtype: dtype_name(model.kind()).into(),
            template: format!("{:?}", self.template),
            prompt_style: self.prompt_style.name().into(),
            bench: self.bench.display().to_string(),
            min_pixels,
            max_pixels,
            run,
        })
    }
}

/// A run over a selection: its metadata (the same in every part file) and how it is cut.
#[derive(Debug, Clone)]
pub struct PartRun {
    pub settings: RunMetadata,
    pub shard: Shard,
    /// Samples per part file.
    pub samples_per_part: usize,
    /// Exclude the samples without a ground-truth answer ([`has_answer`]) instead of computing them.
    pub needs_answer: bool,
}

/// A checked run: what `out` holds already and what is still to compute.
pub struct RunPlan<'a> {
    settings: RunMetadata,
    out: PathBuf,
    per_part: usize,
    positions: Vec<usize>,
    todo: Positioned<'a>,
    excluded: Vec<String>,
    /// Part files of `out`, by name, with their sample keys.
    parts: BTreeMap<String, Vec<String>>,
    /// Samples this run (shard) holds, and of them already written (a resumed run).
    pub samples: usize,
    pub already_done: usize,
}

impl PartRun {
    /// Checks `out` (created if needed, writable; a run already there continues only with `resume`,
    /// and each of its part files must carry these settings and hold samples of this shard once)
    /// and lists the samples still to do. Nothing is computed.
    pub fn plan<'a>(&self, samples: &'a [Sample], out: &Path, resume: bool) -> Result<RunPlan<'a>> {
        check_selection(samples)?;
        check_writable_dir(out)?;
        horizon_data::atomic::remove_orphans(out)?;
        let existing = part_paths(out)?;
        if !existing.is_empty() && !resume {
            bail!(
                "{}: already holds results; pass --resume to continue that run, or choose another --out",
                out.display()
            );
        }
        let position: HashMap<&str, usize> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.as_str(), i))
            .collect();
        let mut parts = BTreeMap::new();
        let mut holder: HashMap<String, String> = HashMap::new();
        for path in &existing {
            let theirs = RunMetadata::read_part(path)?;
            if let Some((k, was, now)) =
                theirs.first_difference(&self.settings, &["model_path", "bench"])
            {
                bail!(
                    "{}: --resume with different settings: {k} was {}, now {}{}",
                    path.display(),
                    was.as_deref().unwrap_or("unset"),
                    now.as_deref().unwrap_or("unset"),
                    horizon_data::run_meta::continue_hint(&k, was.as_deref())
                );
            }
            let keys = sample_keys(&self.settings.run, path)?;
            for key in &keys {
                match position.get(key.as_str()) {
                    Some(&p) if self.shard.holds(p) => {}
                    _ => bail!(
                        "{}: sample {key} is not in shard {} of this selection (a part of another run?)",
                        path.display(),
                        self.shard
                    ),
                }
                if let Some(other) = holder.insert(key.clone(), file_name(path)) {
                    bail!("{}: sample {key} is in {other} too", path.display());
                }
            }
            parts.insert(file_name(path), keys);
        }
        let needs_answer = self.needs_answer;
        let (mine, rest) = self.shard.split(samples, |s| holder.contains_key(&s.key));
        let (todo, excluded): (Positioned, Positioned) = rest
            .into_iter()
            .partition(|(_, s)| !needs_answer || has_answer(&s.answers));
        Ok(RunPlan {
            settings: self.settings.clone(),
            out: out.to_path_buf(),
            per_part: self.samples_per_part.max(1),
            positions: mine.iter().map(|(i, _)| *i).collect(),
            already_done: holder.len(),
            samples: mine.len(),
            excluded: excluded.iter().map(|(_, s)| s.key.clone()).collect(),
            todo,
            parts,
        })
    }
}

impl<'a> RunPlan<'a> {
    /// Samples this run computes (excluded ones aside).
    pub fn pending(&self) -> usize {
        self.todo.len()
    }

    /// The samples still to compute, in selection order.
    pub fn pending_samples(&self) -> impl Iterator<Item = &'a Sample> + '_ {
        self.todo.iter().map(|(_, s)| *s)
    }

    /// Keys of this shard's samples excluded for want of an answer.
    pub fn excluded(&self) -> &[String] {
        &self.excluded
    }

    pub fn settings(&self) -> &RunMetadata {
        &self.settings
    }

    /// Computes the pending samples, `rows_of(sample)` each, into one atomic part file per
    /// `samples_per_part` of them, until done or `stop` says so; `progress(done, pending)` after
    /// each sample. Returns whether every sample of the shard is now written.
    pub fn run<R>(
        &mut self,
        write_part: impl Fn(&Path, &[R], &[(String, String)]) -> Result<()>,
        stop: StopRule,
        mut rows_of: impl FnMut(&Sample) -> Result<Vec<R>>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<bool> {
        self.run_parts(write_part, stop, progress, |chunk, done| {
            let mut rows = Vec::new();
            for (_, sample) in chunk {
                rows.extend(rows_of(sample)?);
                done();
            }
            Ok(rows)
        })
    }

    /// [`Self::run_batched`] over `model` and `processor`, shared by the workers
    /// ([`SharedAcrossWorkers`]), with libtorch on one thread each while more than one runs (one
    /// worker keeps libtorch's own thread count): `rows_of(model, processor, samples)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_on_model<R: Send>(
        &mut self,
        write_part: impl Fn(&Path, &[R], &[(String, String)]) -> Result<()>,
        stop: StopRule,
        workers: usize,
        batch: usize,
        model: &VlModel,
        processor: &crate::processor::Processor,
        rows_of: impl Fn(&VlModel, &crate::processor::Processor, &[&Sample]) -> Vec<Result<Vec<R>>>
            + Sync,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<bool> {
        let shared = SharedAcrossWorkers { model, processor };
        let _threads = (workers > 1).then(OneLibtorchThreadEach::new);
        self.run_batched(
            write_part,
            stop,
            workers,
            batch,
            |samples| {
                let SharedAcrossWorkers { model, processor } = &shared;
                rows_of(model, processor, samples)
            },
            progress,
        )
    }

    /// [`Self::run`] with up to `workers` samples of each part computed at once, each worker on its
    /// own thread computing up to `batch` consecutive samples in one call, `rows_of(samples)`
    /// giving each sample's rows or error in order. A part's batches are no larger than its share
    /// per worker (so that every worker has one), and with one worker they are computed in turn on
    /// the caller's thread. The part files are those [`Self::run`] writes: each part's rows in
    /// sample order, written once all its samples are done. After a sample's error no worker
    /// starts another batch; the parts written before stay, and the error returned is that of the
    /// first failing sample in selection order.
    pub fn run_batched<R: Send>(
        &mut self,
        write_part: impl Fn(&Path, &[R], &[(String, String)]) -> Result<()>,
        stop: StopRule,
        workers: usize,
        batch: usize,
        rows_of: impl Fn(&[&Sample]) -> Vec<Result<Vec<R>>> + Sync,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<bool> {
        let workers = workers.max(1);
        self.run_parts(write_part, stop, progress, |chunk, done| {
            use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
            let batch = batch.min(chunk.len().div_ceil(workers)).max(1);
            // Each sample of the batch from `start`, its rows or error.
            let batch_of = |start: usize| -> Vec<Result<Vec<R>>> {
                let samples: Vec<&Sample> = chunk[start..(start + batch).min(chunk.len())]
                    .iter()
                    .map(|(_, s)| *s)
                    .collect();
                let out = rows_of(&samples);
                if out.len() == samples.len() {
                    return out;
                }
                let n = out.len();
                samples
                    .iter()
                    .map(|s| {
                        Err(anyhow::anyhow!(
                            "sample {}: a batch of {} samples gave {n} results",
                            s.key,
                            samples.len()
                        ))
                    })
                    .collect()
            };
            if workers == 1 {
                let mut rows = Vec::new();
                for start in (0..chunk.len()).step_by(batch) {
                    for result in batch_of(start) {
                        rows.extend(result?);
                        done();
                    }
                }
                return Ok(rows);
            }
            let next = AtomicUsize::new(0);
            let failed = AtomicBool::new(false);
            let mut results: Vec<Option<Result<Vec<R>>>> = chunk.iter().map(|_| None).collect();
            std::thread::scope(|scope| {
                let (send, receive) = std::sync::mpsc::channel();
                for _ in 0..workers.min(chunk.len().div_ceil(batch)) {
                    let send = send.clone();
                    let (next, failed, batch_of) = (&next, &failed, &batch_of);
                    scope.spawn(move || loop {
                        let start = next.fetch_add(batch, Ordering::SeqCst);
                        if start >= chunk.len() || failed.load(Ordering::SeqCst) {
                            break;
                        }
                        for (i, rows) in batch_of(start).into_iter().enumerate() {
                            if rows.is_err() {
                                failed.store(true, Ordering::SeqCst);
                            }
                            if send.send((start + i, rows)).is_err() {
                                return;
                            }
                        }
                    });
                }
                drop(send);
                // Progress is reported here, on the caller's thread, as samples finish.
                for (i, rows) in receive {
                    if rows.is_ok() {
                        done();
                    }
                    results[i] = Some(rows);
                }
            });
            // A sample without a result was not started after another's error, which a sample
            // before it reported or one after it will.
            let mut rows = Vec::new();
            for result in results.into_iter().flatten() {
                rows.extend(result?);
            }
            Ok(rows)
        })
    }

    /// The part loop of [`Self::run`]: `compute(chunk, done)` computes one part's samples (calling
    /// `done` after each) into its rows.
    fn run_parts<R>(
        &mut self,
        write_part: impl Fn(&Path, &[R], &[(String, String)]) -> Result<()>,
        stop: StopRule,
        progress: &mut dyn FnMut(usize, usize),
        mut compute: impl FnMut(&[(usize, &'a Sample)], &mut dyn FnMut()) -> Result<Vec<R>>,
    ) -> Result<bool> {
        let started = std::time::Instant::now();
        let metadata = self.settings.to_pairs();
        // At most `max_samples` this run; the parts stay whole-sample files either way.
        let n = self.todo.len().min(stop.max_samples.unwrap_or(usize::MAX));
        let mut complete = n == self.todo.len();
        let now: Positioned = self.todo.drain(..n).collect();
        let mut finished = 0;
        for (i, chunk) in now.chunks(self.per_part).enumerate() {
            let out_of_time = stop
                .max_seconds
                .is_some_and(|t| started.elapsed().as_secs_f64() >= t);
            if out_of_time {
                complete = false;
                // What is not computed stays to do.
                let rest: Positioned = now[i * self.per_part..].to_vec();
                self.todo.splice(0..0, rest);
                break;
            }
            let rows = compute(chunk, &mut || {
                finished += 1;
                progress(finished, now.len());
            })?;
            let name = format!("part-{:06}.parquet", chunk[0].0);
            let part = self.out.join(&name);
            if part.exists() {
                bail!(
                    "{}: exists already (was the sample order changed?)",
                    part.display()
                );
            }
            write_part(&part, &rows, &metadata)?;
            self.parts
                .insert(name, chunk.iter().map(|(_, s)| s.key.clone()).collect());
        }
        Ok(complete)
    }

    /// Part files in the output directory.
    pub fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// Writes `DONE.json` (atomically): the settings, the positions covered, the samples excluded
    /// and every part with its samples.
    pub fn write_done(&self) -> Result<()> {
        let mut skipped = self.excluded.clone();
        skipped.sort();
        DoneMarker {
            settings: self.settings.clone(),
            positions: self.positions.clone(),
            skipped,
            parts: self.parts.clone(),
        }
        .write(&self.out)
    }
}

/// The finished run in `dir` checked against its `DONE.json`: exactly the part files it lists, each
/// with the run's metadata and the samples listed. Returns the marker and the part paths.
pub fn check_finished_parts(dir: &Path) -> Result<(DoneMarker, Vec<PathBuf>)> {
    let marker = DoneMarker::read(dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no {DONE_FILE}: this run has not finished (rerun it with --resume)",
            dir.display()
        )
    })?;
    let paths = part_paths(dir)?;
    let present: std::collections::BTreeSet<String> = paths.iter().map(|p| file_name(p)).collect();
    if let Some(missing) = marker.parts.keys().find(|n| !present.contains(*n)) {
        bail!(
            "{}: {missing} is missing ({DONE_FILE} lists it)",
            dir.display()
        );
    }
    for path in &paths {
        let name = file_name(path);
        let Some(listed) = marker.parts.get(&name) else {
            bail!(
                "{}: not a part of this finished run ({DONE_FILE} does not list it)",
                path.display()
            );
        };
        let theirs = RunMetadata::read_part(path)?;
        theirs.check_same_run(&marker.settings, path, DONE_FILE)?;
        if theirs.shard != marker.settings.shard && !marker.settings.shard.ends_with("merged") {
            bail!(
                "{}: part of shard {}, {DONE_FILE} is shard {}",
                path.display(),
                theirs.shard,
                marker.settings.shard
            );
        }
        let keys = sample_keys(&marker.settings.run, path)?;
        if &keys != listed {
            bail!(
                "{}: holds other samples than {DONE_FILE} lists ({} against {})",
                path.display(),
                keys.len(),
                listed.len()
            );
        }
    }
    Ok((marker, paths))
}

/// What [`merge_shards`] combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub shards: usize,
    pub samples: usize,
    pub part_files: usize,
}

/// Checks that the finished runs in `dirs` are the shards of one run (each exactly the parts its
/// `DONE.json` lists, with its metadata; equal settings and fingerprints; shards `0..n` each once;
/// every selected position covered once; no sample twice) and writes their part files, with one
/// `DONE.json`, into the new directory `out` (atomically). Works for `horizon info` and
/// `horizon eval` shards (score merged predictions with `horizon score`).
pub fn merge_shards(dirs: &[PathBuf], out: &Path) -> Result<MergeReport> {
    if dirs.is_empty() {
        bail!("merge: no shard directory given");
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("--out {}: exists and is not empty", out.display());
    }
    let mut shards = Vec::new();
    for dir in dirs {
        shards.push(check_finished_parts(dir)?);
    }
    let first = &shards[0].0.settings;
    for (dir, (m, _)) in dirs.iter().zip(&shards).skip(1) {
        m.settings.check_same_run(
            first,
            dir,
            &format!("{} (not a shard of the same run)", dirs[0].display()),
        )?;
    }
    let shard_of = |dir: &Path, m: &DoneMarker| -> Result<Shard> {
        Shard::parse(&m.settings.shard)
            .map_err(|e| anyhow::anyhow!("{}: horizon.shard: {e}", dir.display()))
    };
    let count = shard_of(&dirs[0], &shards[0].0)?.count;
    let mut seen = vec![None::<&Path>; count];
    for (dir, (m, _)) in dirs.iter().zip(&shards) {
        let shard = shard_of(dir, m)?;
        if shard.count != count {
            bail!(
                "{}: shard {shard}, but {} is one of {count}",
                dir.display(),
                dirs[0].display()
            );
        }
        if let Some(other) = seen[shard.index] {
            bail!(
                "{}: shard {shard} is given twice (also {})",
                dir.display(),
                other.display()
            );
        }
        seen[shard.index] = Some(dir);
    }
    if let Some(missing) = seen.iter().position(Option::is_none) {
        bail!("merge: shard {missing}/{count} is missing");
    }
    let selected = first.selected;
    let mut covered = vec![false; selected];
    for (dir, (m, _)) in dirs.iter().zip(&shards) {
        for &p in &m.positions {
            if p >= selected || std::mem::replace(&mut covered[p], true) {
                bail!(
                    "{}: selection position {p} out of range or covered twice",
                    dir.display()
                );
            }
        }
    }
    if let Some(p) = covered.iter().position(|c| !c) {
        bail!("merge: selection position {p} is in no shard");
    }
    let mut samples: HashMap<&str, &Path> = HashMap::new();
    let mut parts = BTreeMap::new();
    let mut paths = Vec::new();
    for (dir, (m, shard_paths)) in dirs.iter().zip(&shards) {
        for (name, keys) in &m.parts {
            for key in keys {
                if let Some(other) = samples.insert(key, dir) {
                    bail!(
                        "{}: sample {key} is in {} too",
                        dir.display(),
                        other.display()
                    );
                }
            }
            if parts.insert(name.clone(), keys.clone()).is_some() {
                bail!("merge: two shards hold a part file named {name}");
            }
        }
        paths.extend(shard_paths.iter().cloned());
    }
    let mut settings = first.clone();
    settings.shard = format!("0-{}/{count} merged", count - 1);
    let mut skipped: Vec<String> = shards.iter().flat_map(|(m, _)| m.skipped.clone()).collect();
    skipped.sort();
    let merged = DoneMarker {
        settings,
        positions: (0..selected).collect(),
        skipped,
        parts,
    };
    horizon_data::atomic::write_dir_atomic(out, |tmp| {
        for part in &paths {
            let to = tmp.join(part.file_name().expect("a part file name"));
            std::fs::copy(part, &to)
                .with_context(|| format!("{}: cannot copy to {}", part.display(), to.display()))?;
        }
        std::fs::write(tmp.join(DONE_FILE), serde_json::to_string_pretty(&merged)?)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })?;
    Ok(MergeReport {
        shards: count,
        samples: samples.len(),
        part_files: paths.len(),
    })
}

/// A hex SHA-256 over the selected samples, in order: every field that shapes a prompt, a target or
/// a score (key, id, benchmark kind, question and whether it is laid out as a prompt, answers,
/// choices, hint, OCR tokens, MMBench index, categories) and the image bytes. The same file and
/// selection give the same fingerprint; a change of any of those changes it.
pub fn selection_fingerprint(samples: &[Sample]) -> Result<String> {
    use sha2::{Digest, Sha256};
    fn text(hash: &mut Sha256, s: &str) {
        hash.update((s.len() as u64).to_le_bytes());
        hash.update(s.as_bytes());
    }
    fn list(hash: &mut Sha256, items: &[String]) {
        hash.update((items.len() as u64).to_le_bytes());
        for item in items {
            text(hash, item);
        }
    }
    fn optional(hash: &mut Sha256, value: Option<&str>) {
        hash.update([value.is_some() as u8]);
        if let Some(v) = value {
            text(hash, v);
        }
    }
    let mut hash = Sha256::new();
    for s in samples {
        for field in [&s.key, &s.id, &s.question, &s.category] {
            text(&mut hash, field);
        }
        text(&mut hash, s.benchmark.name());
        hash.update([s.question_is_prompt as u8]);
        list(&mut hash, &s.answers);
        list(&mut hash, &s.choices);
        list(&mut hash, &s.ocr_tokens);
        optional(&mut hash, s.hint.as_deref());
        optional(&mut hash, s.l2_category.as_deref());
        hash.update([s.index.is_some() as u8]);
        hash.update(s.index.unwrap_or(0).to_le_bytes());
        let image = s
            .image
            .bytes()
            .with_context(|| format!("sample {}", s.key))?;
        hash.update((image.len() as u64).to_le_bytes());
        hash.update(&image);
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// `--min-pixels` / `--max-pixels` of a model's processor settings, the only ones run metadata
/// records; any other setting is an error, as it would change the inputs unrecorded.
pub fn pixel_bounds(
    settings: &BTreeMap<String, String>,
) -> Result<(Option<String>, Option<String>)> {
    if let Some(k) = settings
        .keys()
        .find(|k| *k != "min_pixels" && *k != "max_pixels")
    {
        bail!("processor setting {k} is not recorded in run metadata");
    }
    Ok((
        settings.get("min_pixels").cloned(),
        settings.get("max_pixels").cloned(),
    ))
}

/// An empty selection is an error: a run over it would write nothing and look finished.
pub fn check_selection(samples: &[Sample]) -> Result<()> {
    if samples.is_empty() {
        bail!("the selection holds no sample (check --limit, --per-category and the benchmark)");
    }
    Ok(())
}

/// Creates `dir` if needed and checks that a file can be written there, so that an unwritable
/// `--out` is found before any work, not after the first part.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out {}: cannot create the directory", dir.display()))?;
    let probe = dir.join(".horizon-write-check");
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: cannot write there", dir.display()))?;
    std::fs::remove_file(&probe)
        .with_context(|| format!("--out {}: cannot remove {}", dir.display(), probe.display()))?;
    Ok(())
}

/// The model and processor that sample workers share ([`RunPlan::run_on_model`]).
///
/// `tch::Tensor` is `Send` but not `Sync`, as any handle to a C++ object whose methods might
/// mutate it, so neither is shareable by type. Sharing them is sound here: after loading, no
/// method of the model or the processor changes a tensor, a flag or any other state they hold
/// (no interior mutability; the weights do not require grad, so no backward pass accumulates into
/// them), and libtorch's operators only read their inputs, its reference counts are atomic, and
/// autograd's grad mode and the backward passes of independent graphs are per thread (how
/// PyTorch serves one module from several threads).
struct SharedAcrossWorkers<'a> {
    model: &'a VlModel,
    processor: &'a crate::processor::Processor,
}

// SAFETY: see the type's documentation: the workers only read the shared model and processor.
unsafe impl Sync for SharedAcrossWorkers<'_> {}

/// libtorch's intra-op thread count set to 1 while sample workers run (each worker then uses
/// one core, instead of every worker's operators splitting across all of them), restored after.
struct OneLibtorchThreadEach {
    before: i32,
}

impl OneLibtorchThreadEach {
    fn new() -> Self {
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        Self { before }
    }
}

impl Drop for OneLibtorchThreadEach {
    fn drop(&mut self) {
        tch::set_num_threads(self.before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use horizon_data::bench::{BenchmarkKind, ImageSource};
    use horizon_data::run_meta::EvalSettings;

    fn keyed_samples(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                Sample::new(
                    BenchmarkKind::Generic,
                    format!("s{i}"),
                    "Which one?",
                    vec!["A".into()],
                    "c",
                    ImageSource::Bytes(vec![i as u8]),
                )
            })
            .collect()
    }

    fn test_run(samples: &[Sample]) -> PartRun {
        PartRun {
            settings: RunMetadata {
                run_format: RUN_FORMAT,
                model_fingerprint: "m".into(),
                selection_fingerprint: selection_fingerprint(samples).unwrap(),
                selected: samples.len(),
                shard: Shard::whole().to_string(),
                model: "m".into(),
                model_path: "m".into(),
                model_type: "llava".into(),
                dtype: "f32".into(),
                template: "Auto".into(),
                prompt_style: "llava".into(),
                bench: "b".into(),
                min_pixels: None,
                max_pixels: None,
                run: RunKind::Eval(EvalSettings {
                    max_new_tokens: 1,
                    scorer: "s".into(),
                    prune: "none".into(),
                    prune_options: String::new(),
                    info_rows: None,
                }),
            },
            shard: Shard::whole(),
            samples_per_part: 2,
            needs_answer: false,
        }
    }

    /// Each part written as its rows, one per line.
    fn write_lines(path: &Path, rows: &[String], _: &[(String, String)]) -> Result<()> {
        Ok(std::fs::write(path, rows.join("\n"))?)
    }

    /// Every file of `dir` with its text.
    fn files(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (file_name(&p), std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn concurrent_workers_write_the_parts_one_at_a_time_writes() {
        let samples = keyed_samples(6);
        let run = test_run(&samples);
        let rows_of = |s: &Sample| Ok(vec![format!("{} a", s.key), format!("{} b", s.key)]);
        let tmp = tempfile::tempdir().unwrap();
        let (one, many) = (tmp.path().join("one"), tmp.path().join("many"));
        let mut plan = run.plan(&samples, &one, false).unwrap();
        let mut done_one = Vec::new();
        let complete = plan
            .run(write_lines, StopRule::default(), rows_of, &mut |d, n| {
                done_one.push((d, n))
            })
            .unwrap();
        assert!(complete);
        // Both samples of a part wait (up to 10 s) for each other: one worker alone would wait in
        // vain for the other sample, so `met` stays true only with two samples in flight at once.
        let arrived = (std::sync::Mutex::new(0usize), std::sync::Condvar::new());
        let met = std::sync::atomic::AtomicBool::new(true);
        let meet = || {
            let (count, cv) = &arrived;
            let mut n = count.lock().unwrap();
            *n += 1;
            let pair_complete = n.div_ceil(2) * 2;
            cv.notify_all();
            let (_count, waited) = cv
                .wait_timeout_while(n, std::time::Duration::from_secs(10), |n| {
                    *n < pair_complete
                })
                .unwrap();
            if waited.timed_out() {
                met.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        };
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let mut plan = run.plan(&samples, &many, false).unwrap();
        let mut done_many = Vec::new();
        let complete = plan
            .run_batched(
                write_lines,
                StopRule::default(),
                3,
                1,
                |batch: &[&Sample]| {
                    meet();
                    threads.lock().unwrap().insert(std::thread::current().id());
                    batch.iter().map(|s| rows_of(s)).collect()
                },
                &mut |d, n| done_many.push((d, n)),
            )
            .unwrap();
        assert!(complete);
        assert!(met.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!threads
            .lock()
            .unwrap()
            .contains(&std::thread::current().id()));
        assert!(threads.lock().unwrap().len() >= 2);
        assert_eq!(files(&one), files(&many));
        assert_eq!(files(&one).len(), 3);
        assert_eq!(done_one, done_many);
        assert_eq!(done_many.last(), Some(&(6, 6)));
    }

    #[test]
    fn concurrent_workers_stop_at_an_error_and_keep_the_parts_before_it() {
        let samples = keyed_samples(8);
        let run = test_run(&samples);
        let tmp = tempfile::tempdir().unwrap();
        for workers in [1, 2, 4] {
            let out = tmp.path().join(format!("w{workers}"));
            let mut plan = run.plan(&samples, &out, false).unwrap();
            // Samples 2, 3 (part 1) and 4 fail: the error is the first in selection order,
            // sample 2's, whichever worker reports first, and only part 0 (samples 0 and 1) is
            // written.
            let result = plan.run_batched(
                write_lines,
                StopRule::default(),
                workers,
                1,
                |batch: &[&Sample]| {
                    batch
                        .iter()
                        .map(|s| match s.key.as_str() {
                            "s2" | "s3" | "s4" => bail!("sample {}: bad", s.key),
                            key => Ok(vec![key.to_string()]),
                        })
                        .collect()
                },
                &mut |_, _| {},
            );
            let err = result.unwrap_err().to_string();
            assert_eq!(err, "sample s2: bad", "{workers} workers");
            let written = files(&out);
            assert_eq!(
                written,
                vec![("part-000000.parquet".to_string(), "s0\ns1".to_string())],
                "{workers} workers"
            );
        }
    }

    #[test]
    fn batched_workers_write_the_parts_one_at_a_time_writes_and_stop_at_the_first_error() {
        let samples = keyed_samples(12);
        let mut run = test_run(&samples);
        run.samples_per_part = 5;
        let rows_of = |s: &Sample| -> Result<Vec<String>> {
            match s.key.as_str() {
                "s7" | "s8" => bail!("sample {}: bad", s.key),
                key => Ok(vec![format!("{key} a"), format!("{key} b")]),
            }
        };
        let tmp = tempfile::tempdir().unwrap();
        let one = tmp.path().join("one");
        let mut plan = run.plan(&samples, &one, false).unwrap();
        let mut done_one = Vec::new();
        let err = plan
            .run(write_lines, StopRule::default(), rows_of, &mut |d, n| {
                done_one.push((d, n))
            })
            .unwrap_err()
            .to_string();
        assert_eq!(err, "sample s7: bad");
        for (workers, batch) in [(1, 3), (2, 2), (2, 8), (3, 4)] {
            let out = tmp.path().join(format!("w{workers}b{batch}"));
            let mut plan = run.plan(&samples, &out, false).unwrap();
            let sizes = std::sync::Mutex::new(Vec::new());
            let mut done = Vec::new();
            let err = plan
                .run_batched(
                    write_lines,
                    StopRule::default(),
                    workers,
                    batch,
                    |batch: &[&Sample]| {
                        sizes.lock().unwrap().push(batch.len());
                        batch.iter().map(|s| rows_of(s)).collect()
                    },
                    &mut |d, n| done.push((d, n)),
                )
                .unwrap_err()
                .to_string();
            let label = format!("{workers} workers, batch {batch}");
            assert_eq!(err, "sample s7: bad", "{label}");
            // Part 0 (samples 0-4) written as one sample at a time writes it; part 1 not.
            assert_eq!(files(&out), files(&one), "{label}");
            assert_eq!(files(&out).len(), 1, "{label}");
            // No batch is larger than asked or than a part's share per worker.
            let share = 5usize.div_ceil(workers);
            let sizes = sizes.into_inner().unwrap();
            assert!(
                sizes.iter().all(|&n| n <= batch.min(share)),
                "{label}: {sizes:?}"
            );
            assert!(sizes.iter().any(|&n| n > 1), "{label}: {sizes:?}");
            // Progress counts the first part's samples, as one at a time does.
            assert_eq!(done[..5], done_one[..5], "{label}");
        }
        // A batch that returns too few results fails its samples instead of dropping them.
        let out = tmp.path().join("short");
        let mut plan = run.plan(&samples, &out, false).unwrap();
        let err = plan
            .run_batched(
                write_lines,
                StopRule::default(),
                1,
                4,
                |batch: &[&Sample]| vec![rows_of(batch[0])],
                &mut |_, _| {},
            )
            .unwrap_err()
            .to_string();
        assert_eq!(err, "sample s0: a batch of 4 samples gave 1 results");
        assert!(files(&out).is_empty());
    }

    /// Each field that shapes a prompt, a target or a score changes the selection fingerprint.
    #[test]
    fn selection_fingerprint_sees_every_field_that_shapes_a_prompt_or_score() {
        let base = Sample::new(
            BenchmarkKind::MmBench,
            "7",
            "Which one?",
            vec!["A".into()],
            "c",
            ImageSource::Bytes(vec![1, 2, 3]),
        );
        let base = Sample {
            choices: vec!["cat".into(), "dog".into()],
            hint: Some("a hint".into()),
            index: Some(7),
            ..base
        };
        type Edit = Box<dyn Fn(&mut Sample)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("option text", Box::new(|s| s.choices[1] = "wolf".into())),
            ("hint", Box::new(|s| s.hint = Some("another hint".into()))),
            ("no hint", Box::new(|s| s.hint = None)),
            (
                "ocr tokens",
                Box::new(|s| s.ocr_tokens = vec!["STOP".into()]),
            ),
            (
                "benchmark kind",
                Box::new(|s| s.benchmark = BenchmarkKind::Generic),
            ),
            ("prompt layout", Box::new(|s| s.question_is_prompt = true)),
            ("index", Box::new(|s| s.index = Some(1_000_007))),
            (
                "l2 category",
                Box::new(|s| s.l2_category = Some("l2".into())),
            ),
            ("answers", Box::new(|s| s.answers = vec!["B".into()])),
            ("question", Box::new(|s| s.question = "Which two?".into())),
            (
                "image",
                Box::new(|s| s.image = ImageSource::Bytes(vec![1, 2, 4])),
            ),
        ];
        let reference = selection_fingerprint(std::slice::from_ref(&base)).unwrap();
        assert_eq!(
            reference,
            selection_fingerprint(std::slice::from_ref(&base.clone())).unwrap()
        );
        for (what, edit) in edits {
            let mut s = base.clone();
            edit(&mut s);
            let fp = selection_fingerprint(std::slice::from_ref(&s)).unwrap();
            assert_ne!(fp, reference, "{what} does not change the fingerprint");
        }
    }
}
