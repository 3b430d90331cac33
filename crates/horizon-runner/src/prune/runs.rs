//! Several pruning specs evaluated on one benchmark (`horizon eval --prune …`, `horizon prune-sweep`):
//! one evaluation directory per (spec, seed), and a summary per spec — the official score (mean ± std
//! over seeds), relative to the unpruned model, latency, KV-cache memory and visual-token counts in the
//! three conventions.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use horizon_analysis::prune::{RunSummary, SkippedSpec, SpecSummary, SweepScore};
use horizon_data::bench::Sample;
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::predictions::Prediction;
use horizon_data::score::ScoreTable;
use horizon_data::window::TokenGrid;

use super::file_stage::KeepFile;
use super::{Keep, Method, PruneOptions, PruneSpec, Stage};
use crate::processor::{Processor, PromptTemplate};
use crate::VlModel;

/// One evaluation of a sweep or comparison: a spec under one seed, in its own directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecRun {
    pub spec: PruneSpec,
    pub seed: u64,
    pub dir: PathBuf,
}

/// Whether `spec` draws random numbers (only those get several seeds).
pub fn is_random(spec: &PruneSpec) -> bool {
    spec.stages.iter().any(|s| s.method == Method::Random)
}

/// A directory name for `spec`: `fastv@2:50%` → `fastv-at2-keep50pct`, stages joined by `+`.
pub fn spec_slug(spec: &PruneSpec) -> String {
    if spec.is_none() {
        return "unpruned".into();
    }
    spec.stages
        .iter()
        .map(|s| {
            if let Some(file) = &s.file {
                return file_slug(s.layer, file.path());
            }
            let keep = s.keep.to_string().replace('%', "pct").replace('.', "p");
            format!("{}-at{}-keep{keep}", s.method.name(), s.layer)
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// A file stage's part of a directory name: `file-at8-kept.parquet` → `file-at8-kept-1a2b3c4d`, the
/// file's stem (letters, digits, `-` and `_` only) and the start of the SHA-256 of its path as written,
/// so that two files of the same name get two directories.
fn file_slug(layer: usize, path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let stem: String = path
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = Sha256::digest(path.as_os_str().as_encoded_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("file-at{layer}-{stem}-{hex}")
}

/// The runs of `specs` under `out`: the unpruned model first (added when missing: relative scores
/// need it), then each spec once, or `repeats` times with seeds `seed, seed + 1, …` when it has a
/// random stage.
pub fn plan_runs(specs: &[PruneSpec], repeats: usize, seed: u64, out: &Path) -> Vec<SpecRun> {
    let mut all: Vec<PruneSpec> = vec![PruneSpec::none()];
    for s in specs {
        if !all.contains(s) {
            all.push(s.clone());
        }
    }
    let mut runs = Vec::new();
    for spec in all {
        let seeds = if is_random(&spec) { repeats.max(1) } else { 1 };
        for r in 0..seeds {
            let seed = seed + r as u64;
            let slug = spec_slug(&spec);
            let dir = if is_random(&spec) {
                out.join(format!("{slug}-seed{seed}"))
            } else {
                out.join(slug)
            };
            runs.push(SpecRun {
                spec: spec.clone(),
                seed,
                dir,
            });
        }
    }
    runs
}

/// The headline number of a score table: its first row (each scorer lists its main metric first).
pub fn headline(table: &ScoreTable) -> Result<(String, f64)> {
    match table.rows.first() {
        Some(r) => Ok((
            format!("{} {} ({})", r.benchmark, r.metric, r.convention),
            r.value,
        )),
        None => bail!("the score table is empty"),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// The summary of one run from its predictions and scores.
pub fn summarize_run(
    run: &SpecRun,
    predictions: &[Prediction],
    scores: &ScoreTable,
) -> Result<RunSummary> {
    let (metric, score) = headline(scores)?;
    let per_sample_e2e = predictions.iter().map(|p| {
        let decode =
            p.decode_ms_per_token.unwrap_or(0.0) * (p.new_tokens.unwrap_or(1).max(1) - 1) as f64;
        p.prefill_ms.unwrap_or(0.0) + decode
    });
    Ok(RunSummary {
        spec: run.spec.to_string(),
        label: run.spec.methods_label(),
        seed: is_random(&run.spec).then_some(run.seed),
        dir: run.dir.display().to_string(),
        metric,
        score,
        samples: predictions.len(),
        prefill_ms: mean(predictions.iter().filter_map(|p| p.prefill_ms)).unwrap_or(f64::NAN),
        decode_ms_per_token: mean(predictions.iter().filter_map(|p| p.decode_ms_per_token)),
        end_to_end_ms: mean(per_sample_e2e).unwrap_or(f64::NAN),
        kv_cache_bytes_peak: predictions
            .iter()
            .filter_map(|p| p.kv_cache_bytes)
            .max()
            .unwrap_or(0),
        kv_cache_bytes_mean: mean(
            predictions
                .iter()
                .filter_map(|p| p.kv_cache_bytes.map(|b| b as f64)),
        )
        .unwrap_or(0.0),
        visual_tokens_layer0: mean(
            predictions
                .iter()
                .filter_map(|p| p.visual_tokens_layer0.map(|v| v as f64)),
        )
        .unwrap_or(f64::NAN),
        visual_tokens_final: mean(
            predictions
                .iter()
                .filter_map(|p| p.visual_tokens_final.map(|v| v as f64)),
        )
        .unwrap_or(f64::NAN),
        visual_tokens_t_eq: mean(predictions.iter().filter_map(|p| p.visual_tokens_t_eq))
            .unwrap_or(f64::NAN),
    })
}

/// The layer-by-layer comparison of arXiv 2512.07580: each method (random among them, over several
/// seeds) prunes at each layer K to one keep, and the comparison specs of its Table 1 run beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSweep {
    /// In order; random is added when missing (the baseline every method is compared against).
    pub methods: Vec<Method>,
    pub layers: Vec<usize>,
    pub keep: Keep,
    /// Seeds of each spec with a random stage.
    pub repeats: usize,
    /// The first seed.
    pub seed: u64,
    /// Extra specs (the Table-1 comparison).
    pub compare: Vec<PruneSpec>,
    /// File curves: `file@K:PATH` at each K, each file's listed tokens whatever `keep` says.
    pub files: Vec<KeepFile>,
}

/// One point of a sweep's curves: `method` at `layer`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub method: Method,
    pub layer: usize,
    pub spec: PruneSpec,
    /// The curve's name: the method's, or `file:PATH` for a file curve.
    pub curve: String,
}

/// What a [`LayerSweep`] runs: its points, the specs it skips, and the runs (the unpruned one
/// first, then each point's, then the comparison specs' not already among them).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    pub points: Vec<SweepPoint>,
    pub skipped: Vec<SkippedSpec>,
    pub runs: Vec<SpecRun>,
}

impl LayerSweep {
    /// The methods of the sweep, random last unless given.
    pub fn methods_with_random(methods: &[Method]) -> Vec<Method> {
        let mut all: Vec<Method> = Vec::new();
        for &m in methods {
            if !all.contains(&m) {
                all.push(m);
            }
        }
        if !all.contains(&Method::Random) {
            all.push(Method::Random);
        }
        all
    }

    /// The plan for a decoder of `num_layers` layers, each run in its directory under `runs_dir`.
    /// A method that cannot run at a layer skips it (said in [`SweepPlan::skipped`]).
    pub fn plan(&self, num_layers: usize, runs_dir: &Path) -> SweepPlan {
        let mut points = Vec::new();
        let mut skipped = Vec::new();
        for &method in &self.methods {
            for &layer in &self.layers {
                let text = format!("{}@{layer}:{}", method.name(), self.keep);
                match PruneSpec::parse(&text).and_then(|s| s.check(num_layers).map(|_| s)) {
                    // `pooling@0` reads as the old name of `avg-pooling@0`; a curve is one method.
                    Ok(spec) if spec.stages[0].method != method => skipped.push(SkippedSpec {
                        spec: text.clone(),
                        why: format!(
                            "{} is the paper's Pooling, inside the decoder from K = 1 ({text} reads as {spec}; sweep {} for it)",
                            method.name(),
                            spec.stages[0].method.name()
                        ),
                    }),
                    Ok(spec) => points.push(SweepPoint {
                        method,
                        layer,
                        spec,
                        curve: method.name().into(),
                    }),
                    Err(e) => skipped.push(SkippedSpec {
                        spec: text,
                        why: e.to_string(),
                    }),
                }
            }
        }
        for file in &self.files {
            for &layer in &self.layers {
                let spec = PruneSpec {
                    stages: vec![Stage {
                        method: Method::File,
                        layer,
                        keep: Keep::Listed,
                        file: Some(file.clone()),
                    }],
                };
                match spec.check(num_layers) {
                    Ok(()) => points.push(SweepPoint {
                        method: Method::File,
                        layer,
                        curve: format!("file:{}", file.path().display()),
                        spec,
                    }),
                    Err(e) => skipped.push(SkippedSpec {
                        spec: spec.to_string(),
                        why: e.to_string(),
                    }),
                }
            }
        }
        let specs: Vec<PruneSpec> = points.iter().map(|p| p.spec.clone()).collect();
        let mut runs = plan_runs(&specs, self.repeats, self.seed, runs_dir);
        for r in plan_runs(&self.compare, self.repeats, self.seed, runs_dir) {
            if !runs.contains(&r) {
                runs.push(r);
            }
        }
        SweepPlan {
            points,
            skipped,
            runs,
        }
    }
}

impl SweepPlan {
    /// The score of each finished run that is a point of the sweep, paired by its spec; `finished`
    /// holds each run with its summary.
    pub fn scores(&self, finished: &[(&SpecRun, &RunSummary)]) -> Vec<SweepScore> {
        finished
            .iter()
            .filter_map(|(run, summary)| {
                let p = self.points.iter().find(|p| p.spec == run.spec)?;
                Some(SweepScore {
                    method: p.curve.clone(),
                    layer: p.layer,
                    seed: summary.seed,
                    score: summary.score,
                })
            })
            .collect()
    }

    /// The summaries among `summaries` (one per distinct spec of this plan's runs, in run order,
    /// as [`horizon_analysis::prune::summarize_specs`] gives them for the finished plan) of the
    /// specs in `specs`, paired by spec, in run order.
    pub fn spec_summaries_of<'s>(
        &self,
        specs: &[PruneSpec],
        summaries: &'s [SpecSummary],
    ) -> Vec<&'s SpecSummary> {
        let mut distinct: Vec<&PruneSpec> = Vec::new();
        for r in &self.runs {
            if !distinct.contains(&&r.spec) {
                distinct.push(&r.spec);
            }
        }
        distinct
            .into_iter()
            .zip(summaries)
            .filter(|(spec, _)| specs.contains(spec))
            .map(|(_, summary)| summary)
            .collect()
    }

    /// Checks every run's token counts against the fewest visual tokens a sample gives the model
    /// ([`fewest_visual_tokens`]), before anything runs.
    pub fn check_visual_tokens(&self, visual: usize) -> Result<()> {
        for r in &self.runs {
            r.spec.check_visual_tokens(visual)?;
        }
        Ok(())
    }
}

/// The fewest visual tokens a prompt of `samples` has for `model` (`None` without samples): one
/// sample for LLaVA, whose count is fixed by its image size; every sample's image for Qwen2.5-VL,
/// whose count follows each image's size.
pub fn fewest_visual_tokens(
    model: &VlModel,
    processor: &Processor,
    samples: &[Sample],
    template: PromptTemplate,
) -> Result<Option<usize>> {
    let fixed = processor.fixed_visual_tokens();
    let mut fewest: Option<usize> = None;
    for sample in samples.iter().take(if fixed { 1 } else { samples.len() }) {
        let context = || format!("sample {}", sample.key);
        let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
        let inputs = processor
            .prepare_image(model, "", &image, template)
            .with_context(context)?;
        let n = inputs.visual.positions.len();
        fewest = Some(fewest.map_or(n, |f| f.min(n)));
    }
    Ok(fewest)
}

/// The visual tokens and their grid (rows × cols) one sample's prompt gives the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisualShape {
    pub sample: String,
    pub tokens: usize,
    pub grid: (usize, usize),
    /// The grids its visual tokens form (`VlModel::window_grid`; LLaVA-NeXT: base and
    /// high-resolution).
    pub grids: Vec<TokenGrid>,
    /// This shape stands for every sample (LLaVA: the count is fixed by the image size).
    pub every_sample: bool,
    /// The keys of the other samples this shape stands for (LLaVA: every other image sample).
    pub others: Vec<String>,
}

/// The visual shapes of the prompts of `samples` on `model`: one sample's for LLaVA, whose count
/// is fixed by its image size, standing for every image sample; every image sample's for
/// Qwen2.5-VL, whose count follows each image's size. Text-only samples have no visual tokens to
/// prune and are left out.
pub fn visual_shapes(
    model: &VlModel,
    processor: &Processor,
    samples: &[Sample],
    template: PromptTemplate,
) -> Result<Vec<VisualShape>> {
    let fixed = processor.fixed_visual_tokens();
    let mut shapes = Vec::new();
    let with_image: Vec<&Sample> = samples.iter().filter(|s| s.has_image()).collect();
    for sample in &with_image {
        let context = || format!("sample {}", sample.key);
        let image = to_rgb_like_pil(sample.image.decode().with_context(context)?);
        let inputs = processor
            .prepare_image(model, "", &image, template)
            .with_context(context)?;
        shapes.push(VisualShape {
            sample: sample.key.clone(),
            tokens: inputs.visual.positions.len(),
            grid: inputs.visual.grid,
            grids: model.window_grid(&inputs, 1).with_context(context)?.grids,
            every_sample: fixed,
            others: if fixed {
                with_image[1..].iter().map(|s| s.key.clone()).collect()
            } else {
                Vec::new()
            },
        });
        if fixed {
            break;
        }
    }
    Ok(shapes)
}

/// Checks every spec of `specs` on every sample of `shapes` ([`PruneSpec::check_sample`]) before
/// anything runs, so that a sweep or comparison is refused whole instead of stopping at the first
/// sample a spec cannot run on. The error names the spec's stage, the reason, how many samples
/// fail and the first of them.
pub fn check_specs_on_samples<'a>(
    specs: impl IntoIterator<Item = &'a PruneSpec>,
    shapes: &[VisualShape],
    options: &PruneOptions,
) -> Result<()> {
    let samples: Vec<(&str, &VisualShape)> = shapes
        .iter()
        .flat_map(|s| {
            std::iter::once(s.sample.as_str())
                .chain(s.others.iter().map(String::as_str))
                .map(move |key| (key, s))
        })
        .collect();
    let every_sample = shapes.iter().all(|s| s.every_sample);
    let mut checked: Vec<&PruneSpec> = Vec::new();
    for spec in specs {
        if checked.contains(&spec) {
            continue;
        }
        checked.push(spec);
        let mut failing = samples.iter().filter_map(|&(key, s)| {
            spec.check_sample(key, s.tokens, &s.grids, options)
                .err()
                .map(|e| (key, s, e))
        });
        if let Some((key, first, e)) = failing.next() {
            let count = failing.count() + 1;
            let which = if every_sample && count == samples.len() {
                format!(
                    "at every sample (e.g. {key}: {} visual tokens, {})",
                    first.tokens,
                    grids_label(&first.grids)
                )
            } else {
                format!(
                    "at {count} of the {} samples with an image (first: {key}, {} visual tokens, {})",
                    samples.len(),
                    first.tokens,
                    grids_label(&first.grids)
                )
            };
            bail!("{e} {which}; nothing was run");
        }
    }
    Ok(())
}

/// `24×24 grid`, or `6×6 + 14×6 grids` for LLaVA-NeXT's base and high-resolution grids.
fn grids_label(grids: &[TokenGrid]) -> String {
    let sides: Vec<String> = grids
        .iter()
        .map(|g| format!("{}×{}", g.rows, g.cols))
        .collect();
    let noun = if grids.len() == 1 { "grid" } else { "grids" };
    format!("{} {noun}", sides.join(" + "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_slugs() {
        let specs = vec![
            PruneSpec::parse("fastv@2:50%").unwrap(),
            PruneSpec::parse("divprune@0:284,random@20:38").unwrap(),
        ];
        let runs = plan_runs(&specs, 3, 7, Path::new("out"));
        let dirs: Vec<String> = runs.iter().map(|r| r.dir.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "out/unpruned",
                "out/fastv-at2-keep50pct",
                "out/divprune-at0-keep284+random-at20-keep38-seed7",
                "out/divprune-at0-keep284+random-at20-keep38-seed8",
                "out/divprune-at0-keep284+random-at20-keep38-seed9",
            ]
        );
    }
}
