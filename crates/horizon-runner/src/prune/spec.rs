//! Pruning specs: `method@K:keep[,method@K:keep…]`, the stages applied in order.
//!
//! `K` is the 0-based decoder layer whose input is the first to be pruned (layers `< K` see the tokens
//! the previous stage left); `@0` on a pre-LLM method means the projected visual embeddings before the
//! decoder. `keep` is a count of visual tokens kept or a percentage (`50%`) of the visual tokens left
//! at that point, rounded down; a `file@K:PATH` stage keeps, per sample, the indices its file lists
//! ([`super::file_stage`]). Parsing checks what can be checked without a model (and reads a stage's
//! file); [`PruneSpec::check`] checks the rest against one, [`Stage::check_at`] against one sample.

use anyhow::{bail, Result};
use std::fmt;
use std::path::Path;

use horizon_data::window::TokenGrid;

use super::file_stage::KeepFile;
use super::PruneOptions;

/// The pruning methods (`docs/pruning.md` describes each, with its defaults and every deviation from
/// the published code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Uniform sample of the visual tokens left, seeded per sample.
    Random,
    /// FastV: head-mean attention of the last prompt position at layer K − 1, top-k.
    Fastv,
    /// Window FastV: FastV scores, a fixed share of the budget per spatial window.
    WindowFastv,
    /// The Pooling of "Token Pruning in MLLMs: Are We Solving the Right Problem?" (Algorithm 4):
    /// inside the decoder at K ≥ 1, each window of the visual grid keeps its original token with the
    /// largest L1 norm of the layer-K input.
    Pooling,
    /// Average pooling of the projected visual grid (pre-LLM, creates tokens). `pooling@0`, its name
    /// before the paper's Pooling existed, still reads as `avg-pooling@0`.
    AvgPooling,
    /// DivPrune: greedy max–min cosine diversity of the tokens at K (the projected embeddings at 0).
    Divprune,
    /// DART: least-duplicated tokens per key-norm pivot, from layer K − 1's keys and final-normed states.
    Dart,
    /// VTW: every visual token withdrawn from layer K.
    Vtw,
    /// VisionZip: dominant (CLS attention; Qwen2.5-VL: attention received) and merged contextual
    /// tokens from the vision tower (pre-LLM).
    Visionzip,
    /// SparseVLM v1.5: attention of text raters at layer K − 1, top-k (several stages), part of the
    /// dropped tokens recycled (clustered and merged back, [`super::recycle`]), positions cut to the
    /// new length.
    Sparsevlm,
    /// SparseVLM with v2.0's conventions for merging and positions: no recycling, position ids kept.
    SparsevlmV2,
    /// ToDRE: max-sum diversity before the LLM (`@0`), and the all-or-nothing relevance test
    /// (`@K:0`) before every layer from K on until both cross-modal ratios fall below τ.
    Todre,
    /// The information oracle: the windows with the most information at K (arXiv 2512.07580, Fig. 6).
    Info,
    /// A method run elsewhere: the kept visual tokens of each sample read from a file
    /// (`file@K:PATH`, [`super::file_stage`]).
    File,
}

impl Method {
    pub const ALL: [Method; 14] = [
        Method::Random,
        Method::Fastv,
        Method::WindowFastv,
        Method::Pooling,
        Method::AvgPooling,
        Method::Divprune,
        Method::Dart,
        Method::Vtw,
        Method::Visionzip,
        Method::Sparsevlm,
        Method::SparsevlmV2,
        Method::Todre,
        Method::Info,
        Method::File,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Random => "random",
            Method::Fastv => "fastv",
            Method::WindowFastv => "window-fastv",
            Method::Pooling => "pooling",
            Method::AvgPooling => "avg-pooling",
            Method::Divprune => "divprune",
            Method::Dart => "dart",
            Method::Vtw => "vtw",
            Method::Visionzip => "visionzip",
            Method::Sparsevlm => "sparsevlm",
            Method::SparsevlmV2 => "sparsevlm-v2",
            Method::Todre => "todre",
            Method::Info => "info",
            Method::File => "file",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Methods that score from layer K − 1's attention or keys, so K must be at least 1.
    pub fn reads_previous_layer(self) -> bool {
        matches!(
            self,
            Method::Fastv
                | Method::WindowFastv
                | Method::Dart
                | Method::Sparsevlm
                | Method::SparsevlmV2
        )
    }

    /// Methods that build new visual tokens from the projected grid (only before the decoder).
    pub fn creates_tokens(self) -> bool {
        matches!(self, Method::AvgPooling | Method::Visionzip)
    }
}

/// How many visual tokens a stage keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    Count(usize),
    /// Percent (0–100] of the visual tokens left before the stage, rounded down.
    Percent(f64),
    /// What a `file@K:PATH` stage's file lists for each sample (at most all the tokens left).
    Listed,
}

impl Keep {
    /// The count kept out of `available` visual tokens.
    pub fn count(self, available: usize) -> usize {
        match self {
            Keep::Count(k) => k,
            Keep::Percent(p) => ((p / 100.0) * available as f64 + 1e-9).floor() as usize,
            Keep::Listed => available,
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Count(k) => write!(f, "{k}"),
            Keep::Percent(p) => write!(f, "{p}%"),
            Keep::Listed => write!(f, "listed"),
        }
    }
}

/// One stage: `method@layer:keep`, or `file@layer:PATH`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub method: Method,
    pub layer: usize,
    /// [`Keep::Listed`] for a file stage.
    pub keep: Keep,
    /// A file stage's kept indices.
    pub file: Option<KeepFile>,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "file@{}:{}", self.layer, file.path().display()),
            None => write!(f, "{}@{}:{}", self.method.name(), self.layer, self.keep),
        }
    }
}

/// What a stage finds at one sample before it selects: the facts its rules are checked against,
/// by the up-front check of a sweep ([`PruneSpec::check_sample`]) and by the stage's own run.
#[derive(Debug, Clone, Copy)]
pub struct StageInput<'a> {
    /// The sample's key (`None` where a run has no sample, e.g. `horizon forward`).
    pub sample: Option<&'a str>,
    /// Visual tokens of the prompt (the numbering of a file stage's indices).
    pub prompt_visual: usize,
    /// Visual tokens left before this stage.
    pub left: usize,
    /// The grids the prompt's visual tokens form (`VlModel::window_grid`): one for LLaVA-1.5 and
    /// Qwen2.5-VL (or the grid a token-building stage made), LLaVA-NeXT's base and high-resolution
    /// grids, whose `image_newline` tokens lie in neither.
    pub grids: &'a [TokenGrid],
    /// Which of the prompt's visual tokens are left (ascending indices), where known: always at the
    /// run; up front only after a file stage.
    pub present: Option<&'a [usize]>,
}

impl StageInput<'_> {
    /// `e` prefixed with the sample's key, where the run has one.
    fn name_sample(&self, e: anyhow::Error) -> anyhow::Error {
        match self.sample {
            Some(sample) => anyhow::anyhow!("sample `{sample}`: {e:#}"),
            None => e,
        }
    }
}

/// What a stage will keep at one sample, once its rules hold ([`Stage::check_at`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    /// Visual tokens kept.
    pub keep: usize,
    /// Pooling's target grid (rows × cols).
    pub pooled: Option<(usize, usize)>,
    /// Pooling's window side on each of several grids (LLaVA-NeXT's base and high-resolution grids).
    pub pool_side: Option<usize>,
    /// A file stage's kept tokens: ascending indices into the prompt's visual tokens.
    pub listed: Option<Vec<usize>>,
}

impl Stage {
    /// Visual tokens this stage keeps out of `left` (a file stage: at most `left`), or the error of
    /// keeping more than are left (part of [`Stage::check_at`]).
    pub(super) fn count_within(&self, left: usize) -> Result<usize> {
        let k = self.keep.count(left);
        if k > left {
            bail!("keeps {k} visual tokens but only {left} are left");
        }
        Ok(k)
    }

    /// The rules of this stage at one sample: the keep within the tokens left, DART's keep at least
    /// its image pivots, (window) Pooling on the full visual grid and Pooling's keep a grid inside it,
    /// VisionZip's keep at least one, a file stage's row for the sample with indices in range, none
    /// twice and none dropped before. The run of every stage calls this, and so does the up-front
    /// check of a sweep, so the two cannot disagree.
    pub fn check_at(&self, at: &StageInput, options: &PruneOptions) -> Result<StagePlan> {
        let mut plan = StagePlan {
            keep: 0,
            pooled: None,
            pool_side: None,
            listed: None,
        };
        if let Some(file) = &self.file {
            let sample = at.sample.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} lists kept tokens per sample key, and this run has no sample (run it with horizon eval or prune-sweep)",
                    file.path().display()
                )
            })?;
            let listed = file.kept(sample, at.prompt_visual, at.present)?;
            if listed.len() > at.left {
                bail!(
                    "{}: sample key `{sample}` keeps {} visual tokens but only {} are left",
                    file.path().display(),
                    listed.len(),
                    at.left
                );
            }
            plan.keep = listed.len();
            plan.listed = Some(listed);
            return Ok(plan);
        }
        let k = self.count_within(at.left)?;
        plan.keep = k;
        let tiles_grid = matches!(
            self.method,
            Method::WindowFastv | Method::Pooling | Method::AvgPooling
        );
        match (self.method, at.grids) {
            (_, [g]) if tiles_grid && g.rows * g.cols != at.left => bail!(
                "{} needs the full {}×{} visual grid, {} tokens are left",
                self.method.name(),
                g.rows,
                g.cols,
                at.left
            ),
            (_, grids) if tiles_grid && grids.len() > 1 && at.left != at.prompt_visual => bail!(
                "{} needs all {} visual tokens of the prompt's {} grids, {} are left",
                self.method.name(),
                at.prompt_visual,
                grids.len(),
                at.left
            ),
            (Method::Pooling | Method::AvgPooling, [g]) => {
                plan.pooled = Some(super::methods::pooled_grid(g.rows, g.cols, k)?);
            }
            // Several grids (LLaVA-NeXT): the refusals name the sample, whose image sets the grids.
            (Method::Pooling | Method::AvgPooling, grids) => {
                plan.pool_side = Some(
                    super::methods::per_grid_pool_side(grids, k).map_err(|e| at.name_sample(e))?,
                );
            }
            _ => {}
        }
        match self.method {
            Method::Dart if k < options.dart_pivots.min(at.left) => bail!(
                "dart keeps its {0} image pivots: keep ≥ {0}",
                options.dart_pivots.min(at.left)
            ),
            Method::Visionzip if k == 0 => {
                bail!("visionzip keeps at least one token: keep ≥ 1")
            }
            _ => {}
        }
        Ok(plan)
    }
}

/// Stages applied in order; the empty spec (`none`) is the unpruned model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PruneSpec {
    pub stages: Vec<Stage>,
}

impl fmt::Display for PruneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.stages.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.stages.iter().map(|s| s.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl PruneSpec {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_none(&self) -> bool {
        self.stages.is_empty()
    }

    /// Parses `method@K:keep[,…]` (or `none`); errors name the stage.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            bail!("--prune: empty spec (write `none` for the unpruned model)");
        }
        if text == "none" {
            return Ok(Self::none());
        }
        let mut stages: Vec<Stage> = Vec::new();
        for (i, raw) in text.split(',').enumerate() {
            let raw = raw.trim();
            let at =
                |msg: String| anyhow::anyhow!("--prune {text}: stage {} `{raw}`: {msg}", i + 1);
            let (method, rest) = raw
                .split_once('@')
                .ok_or_else(|| at("expected method@K:keep, e.g. fastv@2:50%".into()))?;
            let method = Method::from_name(method).ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                at(format!(
                    "unknown method `{method}` (known: {})",
                    names.join(", ")
                ))
            })?;
            let (layer, keep) = rest.split_once(':').ok_or_else(|| {
                at(if method == Method::File {
                    "expected file@K:PATH, e.g. file@2:kept.parquet".into()
                } else {
                    "expected method@K:keep, e.g. fastv@2:50%".into()
                })
            })?;
            let layer: usize = layer
                .parse()
                .map_err(|_| at(format!("layer `{layer}` is not a non-negative integer")))?;

            // `pooling@0` named the average pooling before the paper's Pooling (K ≥ 1) existed.
            let method = if method == Method::Pooling && layer == 0 {
                Method::AvgPooling
            } else {
                method
            };
            let mut file = None;
            let keep = match keep.strip_suffix('%') {
                _ if method == Method::File => {
                    if keep.is_empty() {
                        bail!(at("expected file@K:PATH, e.g. file@2:kept.parquet".into()));
                    }
                    file = Some(KeepFile::read(Path::new(keep)).map_err(|e| at(format!("{e:#}")))?);
                    Keep::Listed
                }
                Some(p) => {
                    let p: f64 = p
                        .parse()
                        .map_err(|_| at(format!("keep `{keep}` is not a percentage")))?;
                    if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
                        bail!(at(format!("keep {p}% is outside 0–100%")));
                    }
                    Keep::Percent(p)
                }
                None => Keep::Count(keep.parse().map_err(|_| {
                    at(format!(
                        "keep `{keep}` is neither a token count nor a percentage like 50%"
                    ))
                })?),
            };
            let stage = Stage {
                method,
                layer,
                keep,
                file,
            };
            if let Some(prev) = stages.last() {
                if layer <= prev.layer {
                    bail!(at(format!(
                        "layer {layer} must be deeper than the previous stage's layer {}",
                        prev.layer
                    )));
                }
                if let (Keep::Count(a), Keep::Count(b)) = (prev.keep, keep) {
                    if b > a {
                        bail!(at(format!(
                            "keeps {b} visual tokens, more than the {a} the previous stage left"
                        )));
                    }
                }
                if method.creates_tokens() {
                    bail!(at(format!(
                        "{} builds tokens from the whole projected grid, so it must be the first stage",
                        method.name()
                    )));
                }
                if matches!(method, Method::WindowFastv | Method::Pooling) {
                    bail!(at(format!(
                        "{} tiles the full visual grid, so it must be the first stage",
                        method.name()
                    )));
                }
                if method == Method::File && prev.method.creates_tokens() {
                    bail!(at(format!(
                        "a file lists indices into the prompt's visual tokens, which {} replaced",
                        prev.method.name()
                    )));
                }
                if method == Method::Info {
                    bail!(at(
                        "info ranks the windows of the unpruned prompt, so it must be the first stage"
                            .into()
                    ));
                }
            }
            if method.reads_previous_layer() && layer == 0 {
                bail!(at(format!(
                    "{} scores tokens from layer K - 1's attention or keys, so K must be at least 1",
                    method.name()
                )));
            }
            if method.creates_tokens() && layer != 0 {
                bail!(at(format!(
                    "{} acts on the projected visual embeddings before the decoder: write {}@0:…",
                    method.name(),
                    method.name()
                )));
            }
            if method == Method::Vtw && keep.count(usize::MAX / 200) != 0 {
                bail!(at("vtw withdraws every visual token: write vtw@K:0".into()));
            }
            if method == Method::Todre && layer > 0 && keep.count(usize::MAX / 200) != 0 {
                bail!(at(
                    "todre at K > 0 is the all-or-nothing relevance test: write todre@K:0".into()
                ));
            }
            if matches!(method, Method::Pooling | Method::AvgPooling)
                && keep.count(usize::MAX / 200) == 0
            {
                bail!(at("pooling to no token: keep at least 1".into()));
            }
            stages.push(stage);
        }
        Ok(Self { stages })
    }

    /// Checks the spec against a decoder of `num_layers` layers; errors name the stage.
    pub fn check(&self, num_layers: usize) -> Result<()> {
        for (i, s) in self.stages.iter().enumerate() {
            if s.layer >= num_layers {
                bail!(
                    "--prune {self}: stage {} `{s}`: layer {} does not exist (the decoder has {num_layers} layers, 0-based)",
                    i + 1,
                    s.layer
                );
            }
        }
        Ok(())
    }

    /// Checks the token counts against a prompt of `visual` visual tokens: no stage may keep more
    /// than the stage before it left (errors name the spec and the stage, like [`PruneSpec::check`]).
    pub fn check_visual_tokens(&self, visual: usize) -> Result<()> {
        let mut left = visual;
        for (i, s) in self.stages.iter().enumerate() {
            left = s
                .count_within(left)
                .map_err(|e| anyhow::anyhow!("--prune {self}: stage {} `{s}`: {e}", i + 1))?;
        }
        Ok(())
    }

    /// Checks that every stage can run on sample `sample`, whose prompt has `visual` visual tokens
    /// on `grids` (`VlModel::window_grid`'s), under `options`: each stage's [`Stage::check_at`], the rules its
    /// run obeys, on the tokens the stages before it leave. The error names the stage.
    pub fn check_sample(
        &self,
        sample: &str,
        visual: usize,
        grids: &[TokenGrid],
        options: &PruneOptions,
    ) -> Result<()> {
        let mut left = visual;
        let mut present: Option<Vec<usize>> = Some((0..visual).collect());
        for (i, s) in self.stages.iter().enumerate() {
            let at = StageInput {
                sample: Some(sample),
                prompt_visual: visual,
                left,
                grids,
                present: present.as_deref(),
            };
            let plan = s
                .check_at(&at, options)
                .map_err(|e| anyhow::anyhow!("--prune {self}: stage {} `{s}`: {e:#}", i + 1))?;
            left = plan.keep;
            // Which tokens a scoring stage keeps is known only when it runs.
            present = plan.listed;
        }
        Ok(())
    }

    /// A short label for tables and figures: the methods joined by `+` (`divprune+random`).
    pub fn methods_label(&self) -> String {
        if self.is_none() {
            return "unpruned".into();
        }
        let mut names: Vec<&str> = Vec::new();
        for s in &self.stages {
            if names.last() != Some(&s.method.name()) {
                names.push(s.method.name());
            }
        }
        names.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_specs() {
        let s = PruneSpec::parse("divprune@0:284,random@20:38").unwrap();
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.stages[1].method, Method::Random);
        assert_eq!(s.stages[1].layer, 20);
        assert_eq!(s.stages[1].keep, Keep::Count(38));
        assert_eq!(s.to_string(), "divprune@0:284,random@20:38");
        assert_eq!(s.methods_label(), "divprune+random");
        let s = PruneSpec::parse("fastv@2:50%").unwrap();
        assert_eq!(s.stages[0].keep.count(576), 288);
        assert_eq!(s.stages[0].keep.count(575), 287);
        assert!(PruneSpec::parse("none").unwrap().is_none());
        assert_eq!(
            PruneSpec::parse("vtw@16:0").unwrap().to_string(),
            "vtw@16:0"
        );
        // `pooling@0` is the average pooling's old name; from K = 1 it is the paper's Pooling.
        let s = PruneSpec::parse("pooling@0:144").unwrap();
        assert_eq!(s.stages[0].method, Method::AvgPooling);
        assert_eq!(s.to_string(), "avg-pooling@0:144");
        let s = PruneSpec::parse("pooling@2:144").unwrap();
        assert_eq!(s.stages[0].method, Method::Pooling);
        assert_eq!(s.to_string(), "pooling@2:144");
        // Percentages round down: 12.5% of 576 is exactly 72.
        assert_eq!(Keep::Percent(12.5).count(576), 72);
    }

    #[test]
    fn bad_specs_name_the_stage() {
        for (spec, needle) in [
            ("magic@2:10", "stage 1 `magic@2:10`: unknown method `magic`"),
            ("fastv@two:10", "layer `two`"),
            ("fastv@2", "expected method@K:keep"),
            ("fastv@2:lots", "neither a token count"),
            ("fastv@2:150%", "outside 0–100%"),
            ("fastv@0:10", "K must be at least 1"),
            (
                "random@20:38,random@10:10",
                "stage 2 `random@10:10`: layer 10",
            ),
            ("random@2:38,random@10:40", "more than the 38"),
            ("random@2:38,window-fastv@3:10", "must be the first stage"),
            ("avg-pooling@3:144", "before the decoder"),
            ("random@1:38,pooling@3:9", "must be the first stage"),
            ("vtw@3:10", "write vtw@K:0"),
            ("todre@0:10,todre@3:5", "write todre@K:0"),
            ("", "empty spec"),
        ] {
            let err = PruneSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: one line");
        }
        let s = PruneSpec::parse("fastv@40:10").unwrap();
        let err = s.check(32).unwrap_err().to_string();
        assert!(
            err.contains("stage 1 `fastv@40:10`: layer 40 does not exist"),
            "{err}"
        );
    }
}
