//! The information sweep over a benchmark, as `horizon info` runs it: for every selected sample the
//! engine's variants ([`crate::info::sweep_sample`]), written as long-format Parquet part files
//! (schema in `horizon_data::info_rows`) that each hold whole samples and are written atomically.
//!
//! The settings that decide the rows are recorded in every part file's metadata; a resumed run must
//! have the same ones, and skips the samples already written. A notebook or another program runs a
//! sweep with exactly this code.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Variants per batch; `None` picks one from `memory_budget_bytes`.
    pub batch_size: Option<usize>,
    pub memory_budget_bytes: usize,
    /// Samples per Parquet part file.
    pub samples_per_part: usize,
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
}

impl InfoSweep {
    /// The `horizon.*` metadata every part file carries.
    pub fn metadata(&self, model: &VlModel) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
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
        m.insert("horizon.dtype".into(), dtype_name(model.kind()).into());
        m.insert("horizon.bench".into(), self.bench.display().to_string());
        m
    }

    /// Samples of `samples` already written to `out`, after checking that a run there has the same
    /// settings. Without `resume`, an output that already holds results is an error.
    fn done_in(
        &self,
        out: &Path,
        metadata: &BTreeMap<String, String>,
        resume: bool,
    ) -> Result<std::collections::HashSet<(String, String)>> {
        match (run_metadata(out)?, resume) {
            (None, _) => Ok(Default::default()),
            (Some(_), false) => bail!(
                "{}: already holds results; pass --resume to continue that run, or choose another --out",
                out.display()
            ),
            (Some(prev), true) => {
                for (k, v) in metadata {
                    if k != "horizon.model_path" && k != "horizon.bench" && prev.get(k) != Some(v) {
                        bail!(
                            "{}: --resume with different settings: {k} was {}, now {v}",
                            out.display(),
                            prev.get(k).map_or("unset", String::as_str)
                        );
                    }
                }
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
        check_writable_dir(out)?;
        let metadata = self.metadata(model);
        let done = self.done_in(out, &metadata, resume)?;
        let todo: Vec<(usize, &Sample)> = samples
            .iter()
            .enumerate()
            .filter(|(_, s)| !done.contains(&(self.model_name.clone(), s.id.clone())))
            .collect();
        Ok(SweepPlan {
            sweep: self,
            metadata: metadata.into_iter().collect(),
            already_done: samples.len() - todo.len(),
            samples: samples.len(),
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
        let context = || format!("sample {}", sample.id);
        let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
        let inputs = processor
            .prepare_image(model, &sample.question, &image, self.template)
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
                    sample_id: sample.id.clone(),
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
    metadata: Vec<(String, String)>,
    todo: Vec<(usize, &'a Sample)>,
    out: PathBuf,
    /// Samples selected, and of them already written (a resumed run).
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
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SweepReport> {
        let sweep = self.sweep;
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
        for chunk in self.todo.chunks(sweep.samples_per_part.max(1)) {
            let mut rows = Vec::new();
            for (_, sample) in chunk {
                match sweep.sample_rows(model, processor, sample, &cfg)? {
                    Some(r) => rows.extend(r),
                    None => report.skipped_no_answer += 1,
                }
                finished += 1;
                progress(finished, self.todo.len());
            }
            if !rows.is_empty() {
                let part = self.out.join(format!("part-{:06}.parquet", chunk[0].0));
                if part.exists() {
                    bail!(
                        "{}: exists already (was the sample order changed?)",
                        part.display()
                    );
                }
                write_info_rows(&part, &rows, &self.metadata)?;
            }
        }
        report.part_files = part_files(&self.out)?.len();
        Ok(report)
    }
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
