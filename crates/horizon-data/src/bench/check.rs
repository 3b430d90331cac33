//! The checks a run makes on its samples before any model loads: everything that can fail on the
//! data fails here, with the sample named, instead of after hours of generation.

use anyhow::{anyhow, bail, Result};

use super::{question_prompt, BenchmarkKind, PromptStyle, Sample};
use crate::predictions::Prediction;
use crate::score::{row_score, Benchmark};

/// What a run will use, for its first lines of output.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// The benchmark of the samples.
    pub benchmark: BenchmarkKind,
    /// The scorer (`None` when the run does not score).
    pub scorer: Option<Benchmark>,
    /// The prompt style.
    pub style: PromptStyle,
    /// The first sample's key and its question prompt (the text that goes where the question goes
    /// in the model's chat template).
    pub first: Option<(String, String)>,
    /// Samples without reference answers.
    pub without_answers: usize,
}

impl RunPlan {
    /// `benchmark {b} ({how}), scorer {s}, prompt style {p}` then the first prompt, indented:
    /// `full_prompt` when given (the question prompt in the model's chat template), else the
    /// question prompt.
    pub fn describe(&self, benchmark_given: bool, full_prompt: Option<&str>) -> String {
        let mut s = format!(
            "benchmark {} ({}), ",
            self.benchmark,
            if benchmark_given {
                "--benchmark"
            } else {
                "detected"
            }
        );
        if let Some(b) = self.scorer {
            s += &format!("scorer {b}, ");
        }
        s += &format!("prompt style {}", self.style);
        if let Some((key, question)) = &self.first {
            let prompt = full_prompt.unwrap_or(question);
            s += &format!("\nfirst prompt (sample {key}):\n");
            for line in prompt.lines() {
                s += &format!("    {line}\n");
            }
        }
        s.trim_end().to_string()
    }
}

/// The scorer a benchmark's samples are scored by when none is given.
pub fn default_scorer(kind: BenchmarkKind) -> Benchmark {
    match kind {
        BenchmarkKind::Mme => Benchmark::Mme,
        BenchmarkKind::Pope => Benchmark::Pope,
        BenchmarkKind::TextVqa => Benchmark::TextVqa,
        BenchmarkKind::ScienceQa => Benchmark::ScienceQa,
        BenchmarkKind::Gqa => Benchmark::Gqa,
        BenchmarkKind::MmBench => Benchmark::MmBench,
        BenchmarkKind::Synthetic | BenchmarkKind::Generic => Benchmark::Other,
    }
}

/// Checks `samples` before the model loads: there are some; every image decodes (text-only
/// questions have none); multiple-choice
/// samples (ScienceQA, MMBench) have at least two options and a reference letter among them; and,
/// when `scorer` is given, every reference answer is one that scorer can score (MME / POPE: yes or
/// no; ScienceQA / MMBench: an option letter). Errors name the sample.
pub fn check_samples(
    samples: &[Sample],
    scorer: Option<Benchmark>,
    style: PromptStyle,
) -> Result<RunPlan> {
    let Some(first) = samples.first() else {
        bail!("no samples selected");
    };
    let mut without_answers = 0;
    for (i, s) in samples.iter().enumerate() {
        let at = || format!("sample {} (position {i})", s.key);
        if s.has_image() {
            s.image
                .decode()
                .map_err(|e| anyhow!("{}: image: {e}", at()))?;
        }
        if matches!(
            s.benchmark,
            BenchmarkKind::ScienceQa | BenchmarkKind::MmBench
        ) && s.choices.len() < 2
        {
            bail!(
                "{}: {} options; a {} question needs at least 2",
                at(),
                s.choices.len(),
                s.benchmark
            );
        }
        if s.answers.iter().all(|a| a.trim().is_empty()) {
            without_answers += 1;
            continue;
        }
        let Some(b) = scorer.or_else(|| {
            matches!(
                s.benchmark,
                BenchmarkKind::ScienceQa | BenchmarkKind::MmBench
            )
            .then(|| default_scorer(s.benchmark))
        }) else {
            continue;
        };
        let p = Prediction {
            sample_key: s.key.clone(),
            benchmark: b.name().into(),
            answers: s.answers.clone(),
            choices: s.choices.clone(),
            index: s.index,
            ..Prediction::default()
        };
        row_score(b, i, &p).map_err(|e| {
            anyhow!(
                "{}: the {b} scorer cannot score its reference answer: {e}",
                at()
            )
        })?;
    }
    Ok(RunPlan {
        benchmark: first.benchmark,
        scorer,
        style,
        first: Some((first.key.clone(), question_prompt(first, style))),
        without_answers,
    })
}
