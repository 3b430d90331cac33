//! The information sweep over a benchmark, as `horizon info` runs it: for every selected sample the
//! engine's variants ([`crate::info::sweep_sample`]), written as long-format Parquet part files
//! (schema in `horizon_data::info_rows`) that each hold whole samples and are written atomically.
//!
//! The settings that decide the rows are recorded in every part file's metadata, with fingerprints of
//! the checkpoint and of the selected samples; a resumed run must have the same ones, and skips the
//! samples already written. A run can be one shard of a selection (`--shard i/n`: the samples at
//! selection positions ≡ i mod n); a finished run writes `DONE.json`, and [`merge_shards`] checks that
//! shards cover a selection exactly once with equal settings before combining them. A notebook or
//! another program runs a sweep with exactly this code.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use horizon_data::bench::prompts::{question_prompt, PromptStyle};
use horizon_data::bench::Sample;
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::info_rows::{
    completed_samples, part_files, run_metadata, write_info_rows, InfoMode, InfoRow, Target,
};
use horizon_data::window::WindowGrid;

use crate::device::dtype_name;
use crate::info::{full_run, sweep_sample, SweepConfig, Variant};
use crate::model::VlModel;
use crate::processor::{Processor, PromptTemplate};

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
}

/// Samples with their positions in the selection.
pub type Positioned<'a> = Vec<(usize, &'a Sample)>;

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

/// When a run stops early (its parts stay complete; `--resume` continues): after this many samples,
/// or once this much time has passed (checked between parts), so a scheduler's limit loses at most
/// the part in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StopRule {
    pub max_samples: Option<usize>,
    pub max_seconds: Option<f64>,
}

/// A hex SHA-256 over the selected samples, in order: id, question, category, answers and image bytes.
/// The same file and selection give the same fingerprint; any change of the data changes it.
pub fn selection_fingerprint(samples: &[Sample]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for s in samples {
        for field in [&s.key, &s.id, &s.question, &s.category] {
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        for a in &s.answers {
            hash.update((a.len() as u64).to_le_bytes());
            hash.update(a.as_bytes());
        }
        let image = s
            .image
            .bytes()
            .with_context(|| format!("sample {}", s.id))?;
        hash.update((image.len() as u64).to_le_bytes());
        hash.update(&image);
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// The name of the marker a finished run writes into its output directory.
pub const DONE_FILE: &str = "DONE.json";

/// What `DONE.json` records: the run's settings (as in its part files) and what it covered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DoneMarker {
    pub settings: BTreeMap<String, String>,
    /// Selection positions this run (shard) held.
    pub positions: Vec<usize>,
    /// Of those, the ids skipped for want of a ground-truth answer.
    pub skipped: Vec<String>,
}

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
    /// The `horizon.*` metadata every part file carries: the settings that decide the rows, the
    /// fingerprints of the checkpoint and of the whole selection, and the shard.
    pub fn metadata(
        &self,
        model: &VlModel,
        samples: &[Sample],
    ) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        m.insert(
            "horizon.model_fingerprint".into(),
            crate::checkpoint::fingerprint(&self.model_path)?,
        );
        m.insert(
            "horizon.selection_fingerprint".into(),
            selection_fingerprint(samples)?,
        );
        m.insert("horizon.selected".into(), samples.len().to_string());
        m.insert("horizon.shard".into(), self.shard.to_string());
        // Batched GEMMs round differently with the batch shape, so the batch rule decides the bits.
        m.insert(
            "horizon.batch".into(),
            match self.batch_size {
                Some(b) => b.to_string(),
                None => format!("auto, {} MiB", self.memory_budget_bytes >> 20),
            },
        );
        m.insert("horizon.model".into(), self.model_name.clone());
        m.insert(
            "horizon.model_path".into(),
            self.model_path.display().to_string(),
        );
        m.insert("horizon.model_type".into(), model.model_type().into());
        m.insert("horizon.num_layers".into(), model.num_layers().to_string());
        m.insert("horizon.layers".into(), format!("{:?}", self.layers));
        m.insert("horizon.window_size".into(), self.window.to_string());
        m.insert("horizon.mode".into(), self.mode.as_str().into());
        m.insert("horizon.target".into(), self.target.as_str().into());
        m.insert("horizon.template".into(), format!("{:?}", self.template));
        m.insert(
            "horizon.prompt_style".into(),
            self.prompt_style.name().into(),
        );
        for (k, v) in &self.processor_settings {
            m.insert(format!("horizon.{k}"), v.clone());
        }
        m.insert("horizon.dtype".into(), dtype_name(model.kind()).into());
        m.insert("horizon.bench".into(), self.bench.display().to_string());
        Ok(m)
    }

    /// Samples of `samples` already written to `out`, after checking that a run there has the same
    /// settings. Without `resume`, an output that already holds results is an error.
    fn done_in(
        &self,
        out: &Path,
        metadata: &BTreeMap<String, String>,
        resume: bool,
    ) -> Result<std::collections::HashSet<(String, String)>> {
        horizon_data::atomic::remove_orphans(out)?;
        match (run_metadata(out)?, resume) {
            (None, _) => Ok(Default::default()),
            (Some(_), false) => bail!(
                "{}: already holds results; pass --resume to continue that run, or choose another --out",
                out.display()
            ),
            (Some(prev), true) => {
                check_same_settings(out, &prev, metadata)?;
                completed_samples(out)
            }
        }
    }

    /// Checks `out` (writable; a run already there must have the same settings, and `resume` must be
    /// given to continue it) and lists the samples of `samples` still to do. Nothing is computed yet.
    pub fn plan<'a>(
        &'a self,
        model: &VlModel,
        samples: &'a [Sample],
        out: &Path,
        resume: bool,
    ) -> Result<SweepPlan<'a>> {
        check_selection(samples)?;
        check_writable_dir(out)?;
        let metadata = self.metadata(model, samples)?;
        let done = self.done_in(out, &metadata, resume)?;
        let (mine, todo) = self.shard.split(samples, |s| {
            done.contains(&(self.model_name.clone(), s.key.clone()))
        });
        Ok(SweepPlan {
            sweep: self,
            settings: metadata,
            already_done: mine.len() - todo.len(),
            samples: mine.len(),
            positions: mine.iter().map(|(i, _)| *i).collect(),
            todo,
            out: out.to_path_buf(),
        })
    }

    /// One sample's rows, or `None` when `--target gt` has no answer to score.
    fn sample_rows(
        &self,
        model: &VlModel,
        processor: &Processor,
        sample: &Sample,
        cfg: &SweepConfig,
    ) -> Result<Option<Vec<InfoRow>>> {
        let context = || format!("sample {}", sample.key);
        let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
        let prompt = question_prompt(sample, self.prompt_style);
        let inputs = processor
            .prepare_image(model, &prompt, &image, self.template)
            .with_context(context)?;
        let full = full_run(model, &inputs).with_context(context)?;
        let target = match self.target {
            Target::Greedy => full.greedy_token(),
            Target::Gt => match sample
                .answer()
                .map(|a| processor.first_answer_token(&a))
                .transpose()?
                .flatten()
            {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        let grid = WindowGrid::new(inputs.visual.grid, cfg.window_size)?;
        let rows = sweep_sample(model, &inputs, &full, target, cfg)
            .with_context(context)?
            .into_iter()
            .map(|r| {
                let (variant, window) = match r.variant {
                    Variant::Full => ("full", None),
                    Variant::TextOnly => ("text_only", None),
                    Variant::Window(w) => ("window", Some(w)),
                };
                let (wr, wc) = window.map_or((-1, -1), |w| {
                    let (r, c) = grid.window_position(w);
                    (r as i32, c as i32)
                });
                InfoRow {
                    model: self.model_name.clone(),
                    task: sample.category.clone(),
                    sample_id: sample.key.clone(),
                    layer: r.layer.map_or(-1, |k| k as i32),
                    variant,
                    window: window.map_or(-1, |w| w as i32),
                    window_row: wr,
                    window_col: wc,
                    mode: self.mode.as_str(),
                    target: self.target.as_str(),
                    target_token: target,
                    p: r.p,
                    logp: r.logp,
                    kl: r.kl,
                }
            })
            .collect();
        Ok(Some(rows))
    }
}

/// A checked sweep: the samples still to do and where their rows go.
pub struct SweepPlan<'a> {
    sweep: &'a InfoSweep,
    settings: BTreeMap<String, String>,
    todo: Vec<(usize, &'a Sample)>,
    /// Selection positions this run holds.
    positions: Vec<usize>,
    out: PathBuf,
    /// Samples this run (shard) holds, and of them already written (a resumed run).
    pub samples: usize,
    pub already_done: usize,
}

impl SweepPlan<'_> {
    /// Samples this run computes.
    pub fn pending(&self) -> usize {
        self.todo.len()
    }

    /// Computes the pending samples, one atomic part file per `samples_per_part` of them;
    /// `progress(done, pending)` is called after each sample.
    pub fn run(
        &self,
        model: &VlModel,
        processor: &Processor,
        stop: StopRule,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SweepReport> {
        let sweep = self.sweep;
        let started = std::time::Instant::now();
        let metadata: Vec<(String, String)> = self
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut skipped = Vec::new();
        let cfg = SweepConfig {
            layers: sweep.layers.clone(),
            window_size: sweep.window,
            mode: sweep.mode,
            batch_size: sweep.batch_size,
            memory_budget_bytes: sweep.memory_budget_bytes,
        };
        let mut report = SweepReport {
            samples: self.samples,
            already_done: self.already_done,
            ..Default::default()
        };
        let mut finished = 0;
        let per_part = sweep.samples_per_part.max(1);
        // At most `max_samples` this run; the parts stay whole-sample files either way.
        let now = &self.todo[..self.todo.len().min(stop.max_samples.unwrap_or(usize::MAX))];
        report.stopped_early = now.len() < self.todo.len();
        for chunk in now.chunks(per_part) {
            let out_of_time = stop
                .max_seconds
                .is_some_and(|t| started.elapsed().as_secs_f64() >= t);
            if out_of_time {
                report.stopped_early = true;
                break;
            }
            let mut rows = Vec::new();
            for (_, sample) in chunk {
                match sweep.sample_rows(model, processor, sample, &cfg)? {
                    Some(r) => rows.extend(r),
                    None => {
                        report.skipped_no_answer += 1;
                        skipped.push(sample.key.clone());
                    }
                }
                finished += 1;
                progress(finished, now.len());
            }
            if !rows.is_empty() {
                let part = self.out.join(format!("part-{:06}.parquet", chunk[0].0));
                if part.exists() {
                    bail!(
                        "{}: exists already (was the sample order changed?)",
                        part.display()
                    );
                }
                write_info_rows(&part, &rows, &metadata)?;
            }
        }
        report.part_files = part_files(&self.out)?.len();
        if !report.stopped_early {
            self.write_done(skipped)?;
        }
        Ok(report)
    }

    /// Writes `DONE.json` (atomically): the settings and the positions covered. A resumed run's
    /// skipped samples are found again from the samples without rows.
    fn write_done(&self, mut skipped: Vec<String>) -> Result<()> {
        let path = self.out.join(DONE_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(prev) = serde_json::from_str::<DoneMarker>(&text) {
                skipped.extend(prev.skipped);
            }
        }
        skipped.sort();
        skipped.dedup();
        let marker = DoneMarker {
            settings: self.settings.clone(),
            positions: self.positions.clone(),
            skipped,
        };
        horizon_data::atomic::write_atomic(&path, |tmp| {
            std::fs::write(tmp, serde_json::to_string_pretty(&marker)?)
                .with_context(|| format!("{}: cannot write", tmp.display()))
        })
    }
}

/// What [`merge_shards`] combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub shards: usize,
    pub samples: usize,
    pub part_files: usize,
}

/// Settings that may differ between the shards of one run.
const PER_SHARD: [&str; 3] = ["horizon.shard", "horizon.model_path", "horizon.bench"];

/// Checks that the finished runs in `dirs` are the shards of one run (equal settings and fingerprints,
/// shards `0..n` each once, every selected position covered exactly once, no sample twice) and writes
/// their part files, with one `DONE.json`, into the new directory `out` (atomically). Works for
/// `horizon info` and `horizon eval` shards (score merged predictions with `horizon score`).
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
    let mut markers = Vec::new();
    for dir in dirs {
        let path = dir.join(DONE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow::anyhow!(
                "{}: no {DONE_FILE}: this shard has not finished (rerun it with --resume)",
                dir.display()
            )
        })?;
        let marker: DoneMarker = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a valid {DONE_FILE} ({e})", path.display()))?;
        markers.push(marker);
    }
    let shared = |m: &DoneMarker| -> BTreeMap<String, String> {
        m.settings
            .iter()
            .filter(|(k, _)| !PER_SHARD.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let first = shared(&markers[0]);
    for (dir, m) in dirs.iter().zip(&markers).skip(1) {
        let these = shared(m);
        if let Some((k, v)) = first.iter().find(|(k, v)| these.get(*k) != Some(*v)) {
            bail!(
                "{}: not a shard of the same run as {}: {k} is {}, there {v}",
                dir.display(),
                dirs[0].display(),
                these.get(k).map_or("unset", String::as_str)
            );
        }
    }
    let shard_of = |dir: &Path, m: &DoneMarker| -> Result<Shard> {
        Shard::parse(m.settings.get("horizon.shard").map_or("", String::as_str))
            .map_err(|e| anyhow::anyhow!("{}: horizon.shard: {e}", dir.display()))
    };
    let count = shard_of(&dirs[0], &markers[0])?.count;
    let mut seen = vec![None::<&Path>; count];
    for (dir, m) in dirs.iter().zip(&markers) {
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
    let selected: usize = first
        .get("horizon.selected")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{}: horizon.selected missing", dirs[0].display()))?;
    let mut covered = vec![false; selected];
    for (dir, m) in dirs.iter().zip(&markers) {
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
    let mut samples = std::collections::HashSet::new();
    let mut parts = Vec::new();
    // `horizon eval` shards hold predictions (one row per sample), `horizon info` shards info rows.
    let is_eval = first.contains_key("horizon.max_new_tokens");
    for dir in dirs {
        let keys: std::collections::HashSet<(String, String)> = if is_eval {
            let model = first.get("horizon.model").cloned().unwrap_or_default();
            let mut keys = std::collections::HashSet::new();
            for part in part_files(dir)? {
                if part
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
                {
                    for p in horizon_data::predictions::read_predictions(&part)? {
                        keys.insert((model.clone(), p.sample_key));
                    }
                }
            }
            keys
        } else {
            completed_samples(dir)?
        };
        for key in keys {
            if !samples.insert(key.clone()) {
                bail!(
                    "{}: sample {} of model {} is in another shard too",
                    dir.display(),
                    key.1,
                    key.0
                );
            }
        }
        // Only the streamed parts: an eval shard's own predictions.parquet is recomputed by `score`.
        parts.extend(part_files(dir)?.into_iter().filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        }));
    }
    let names: std::collections::HashSet<_> = parts.iter().filter_map(|p| p.file_name()).collect();
    if names.len() != parts.len() {
        bail!("merge: two shards hold part files of the same name");
    }
    let mut settings = first.clone();
    settings.insert(
        "horizon.shard".into(),
        format!("0-{}/{count} merged", count - 1),
    );
    let merged = DoneMarker {
        settings,
        positions: (0..selected).collect(),
        skipped: markers.iter().flat_map(|m| m.skipped.clone()).collect(),
    };
    horizon_data::atomic::write_dir_atomic(out, |tmp| {
        for part in &parts {
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
        part_files: parts.len(),
    })
}

/// Fails naming the first setting of `now` that differs from `prev`, a run already in `out` (paths
/// excepted: a copy may move).
pub fn check_same_settings(
    out: &Path,
    prev: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Result<()> {
    for (k, v) in now {
        if k != "horizon.model_path" && k != "horizon.bench" && prev.get(k) != Some(v) {
            bail!(
                "{}: --resume with different settings: {k} was {}, now {v}",
                out.display(),
                prev.get(k).map_or("unset", String::as_str)
            );
        }
    }
    Ok(())
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
