//! Benchmark scores by each benchmark's official rules, from per-sample predictions
//! ([`crate::predictions`]), without the model. Where LLaVA's evaluation scripts and lmms-eval score
//! the same benchmark differently, both numbers are given, each named by its convention.
//!
//! | benchmark | conventions | rules (source) |
//! |---|---|---|
//! | MME | `official`, `lmms-eval 0.7.3` | [`mme`]: MME `eval_tool/calculation.py` (LLaVA runs it after `convert_answer_to_mme.py`); `lmms_eval/tasks/mme/utils.py` |
//! | POPE | `llava`, `lmms-eval 0.7.3` | [`pope`]: LLaVA `llava/eval/eval_pope.py`; `lmms_eval/tasks/pope/utils.py` |
//! | TextVQA | `official` | [`textvqa`]: VQA accuracy with `m4c_evaluator`'s answer normalisation (LLaVA's `llava/eval/m4c_evaluator.py`, identical in lmms-eval 0.7.3) |
//! | ScienceQA | `llava`, `lmms-eval 0.7.3` | [`scienceqa`]: LLaVA `llava/eval/eval_science_qa.py`; `lmms_eval/tasks/scienceqa/utils.py` |
//! | GQA | `llava`, `lmms-eval 0.7.3` | [`gqa`]: LLaVA `scripts/convert_gqa_for_eval.py` + GQA `eval.py`; lmms-eval `exact_match` (ignore case, punctuation) |
//! | MMBench | `lmms-eval 0.7.3 static`, `heuristic (no GPT)` | [`mmbench`]: lmms-eval's `mmbench_en_dev_static` (`can_infer`, then `extract_mcq_answer`), and `can_infer` alone; circular over every group with its original row; the official GPT matching is not reproduced |
//! | other | `exact match` | [`crate::predictions::exact_match`] |
//!
//! Every convention named `lmms-eval 0.7.3` follows that release's task code; the repository's
//! `fixtures/official_scores.py` runs that code (and ports of LLaVA's and MME's scripts) on the
//! prediction sets of `fixtures/official/`, and the tests hold these scorers to its numbers.
//!
//! [`row_score`] is the per-row value the first convention of each benchmark averages: the
//! predictions' `correct` and `score` columns ([`fill_outcome`]).
//!
//! The result is a [`ScoreTable`]: rows `{benchmark, metric, convention, value, n}` and notes (what
//! the conventions mean, what is missing or not reproduced), as JSON ([`ScoreTable::to_json`]) or
//! Markdown ([`ScoreTable::to_markdown`]). A `metric` is `measure` or `measure/subset`, the subset a
//! category (`f1/adversarial`), `mean` (the mean over categories) or `all` (every question pooled).
//! Values are percentages (0-100), except MME's, which are MME points (a subtask scores up to 200).
//! `n` counts what the value is averaged over: questions, or images for MME's `acc+`, or question
//! groups for MMBench's circular accuracy.

pub mod gqa;
pub mod mmbench;
pub mod mme;
pub mod other;
pub mod pope;
pub mod scienceqa;
pub mod textvqa;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::predictions::Prediction;

/// The benchmarks with a scorer. The names are the `benchmark` column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    Mme,
    Pope,
    TextVqa,
    ScienceQa,
    Gqa,
    MmBench,
    Other,
}

impl Benchmark {
    pub const ALL: [Benchmark; 7] = [
        Benchmark::Mme,
        Benchmark::Pope,
        Benchmark::TextVqa,
        Benchmark::ScienceQa,
        Benchmark::Gqa,
        Benchmark::MmBench,
        Benchmark::Other,
    ];

    /// The name in the `benchmark` column: `mme`, `pope`, `textvqa`, `scienceqa`, `gqa`, `mmbench`,
    /// `other`.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Mme => "mme",
            Benchmark::Pope => "pope",
            Benchmark::TextVqa => "textvqa",
            Benchmark::ScienceQa => "scienceqa",
            Benchmark::Gqa => "gqa",
            Benchmark::MmBench => "mmbench",
            Benchmark::Other => "other",
        }
    }

    /// Parses a benchmark name, ignoring case, `-` and `_`: the names of [`Benchmark::name`], and
    /// `sqa`, `scienceqa-img`, `text-vqa`, any name starting `mmbench` (`mmbench_en`,
    /// `mmbench-cn`: the same scoring), and `synthetic` and `generic` for `other` (the names of
    /// `bench::BenchmarkKind` without a scorer of their own).
    pub fn from_name(name: &str) -> Result<Benchmark> {
        let n: String = name
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect();
        Ok(match n.as_str() {
            "mme" => Benchmark::Mme,
            "pope" => Benchmark::Pope,
            "textvqa" => Benchmark::TextVqa,
            "scienceqa" | "scienceqaimg" | "sqa" | "sqaimg" => Benchmark::ScienceQa,
            "gqa" => Benchmark::Gqa,
            "other" | "synthetic" | "generic" => Benchmark::Other,
            _ if n.starts_with("mmbench") => Benchmark::MmBench,
            _ => bail!(
                "unknown benchmark {name:?} (known: {})",
                Benchmark::ALL.map(Benchmark::name).join(", ")
            ),
        })
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Benchmark::from_name(s)
    }
}

/// One number of a [`ScoreTable`] (module documentation: metric names, units, `n`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub benchmark: Benchmark,
    pub metric: String,
    pub convention: String,
    pub value: f64,
    pub n: usize,
}

/// Scores and the notes that go with them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreTable {
    pub rows: Vec<ScoreRow>,
    pub notes: Vec<String>,
}

impl ScoreTable {
    pub fn push(
        &mut self,
        benchmark: Benchmark,
        metric: impl Into<String>,
        convention: &str,
        value: f64,
        n: usize,
    ) {
        self.rows.push(ScoreRow {
            benchmark,
            metric: metric.into(),
            convention: convention.to_string(),
            value,
            n,
        });
    }

    pub fn note(&mut self, benchmark: Benchmark, text: impl fmt::Display) {
        self.notes.push(format!("{benchmark}: {text}"));
    }

    /// Appends `other`'s rows and notes.
    pub fn append(&mut self, mut other: ScoreTable) {
        self.rows.append(&mut other.rows);
        self.notes.append(&mut other.notes);
    }

    /// The row of `metric` under `convention`, if any.
    pub fn get(&self, metric: &str, convention: &str) -> Option<&ScoreRow> {
        self.rows
            .iter()
            .find(|r| r.metric == metric && r.convention == convention)
    }

    /// `{"rows": [{"benchmark", "metric", "convention", "value", "n"}, ...], "notes": [...]}`,
    /// pretty-printed, values unrounded.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a score table serializes")
    }

    /// A Markdown table (values to 2 decimals), then the notes as a list.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| benchmark | metric | convention | value | n |\n|---|---|---|---:|---:|\n",
        );
        for r in &self.rows {
            s += &format!(
                "| {} | {} | {} | {:.2} | {} |\n",
                r.benchmark,
                md_cell(&r.metric),
                md_cell(&r.convention),
                r.value,
                r.n
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                s += &format!("- {}\n", n.replace('\n', " "));
            }
        }
        s
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Scores `predictions` by `benchmark`'s rules (whatever their `benchmark` column says).
pub fn score(benchmark: Benchmark, predictions: &[Prediction]) -> Result<ScoreTable> {
    if predictions.is_empty() {
        bail!("{benchmark}: no predictions to score");
    }
    match benchmark {
        Benchmark::Mme => mme::score(predictions),
        Benchmark::Pope => pope::score(predictions),
        Benchmark::TextVqa => textvqa::score(predictions),
        Benchmark::ScienceQa => scienceqa::score(predictions),
        Benchmark::Gqa => gqa::score(predictions),
        Benchmark::MmBench => mmbench::score(predictions),
        Benchmark::Other => other::score(predictions),
    }
}

/// The benchmarks of the rows' `benchmark` column, in order of first appearance, with the rows of
/// each. Errors name the first row whose benchmark is unknown.
pub fn group_by_benchmark(predictions: &[Prediction]) -> Result<Vec<(Benchmark, Vec<Prediction>)>> {
    let mut groups: Vec<(Benchmark, Vec<Prediction>)> = Vec::new();
    for (i, p) in predictions.iter().enumerate() {
        let b = Benchmark::from_name(&p.benchmark)
            .map_err(|e| anyhow!("row {i} (sample {:?}), column benchmark: {e}", p.sample_key))?;
        match groups.iter_mut().find(|(g, _)| *g == b) {
            Some((_, rows)) => rows.push(p.clone()),
            None => groups.push((b, vec![p.clone()])),
        }
    }
    Ok(groups)
}

/// The one benchmark of the rows' `benchmark` column; an error if there are none, an unknown name,
/// or several benchmarks.
pub fn detect(predictions: &[Prediction]) -> Result<Benchmark> {
    let groups = group_by_benchmark(predictions)?;
    match groups.as_slice() {
        [] => bail!("no predictions, so no benchmark to detect"),
        [(b, _)] => Ok(*b),
        _ => bail!(
            "the benchmark column names several benchmarks ({}); score them one at a time or all \
             together with score_detected",
            groups
                .iter()
                .map(|(b, r)| format!("{b}: {} rows", r.len()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Scores each benchmark of the rows' `benchmark` column on its own rows, tables one after another.
pub fn score_detected(predictions: &[Prediction]) -> Result<ScoreTable> {
    let groups = group_by_benchmark(predictions)?;
    if groups.is_empty() {
        bail!("no predictions to score");
    }
    let mut table = ScoreTable::default();
    for (b, rows) in groups {
        table.append(score(b, &rows)?);
    }
    Ok(table)
}

/// What the benchmark's score counts for row `row` (for error messages) by its first convention:
/// 1 (right) or 0, TextVQA the VQA accuracy (0-1): MME `official`, POPE `llava`, TextVQA
/// `official`, ScienceQA `llava`, GQA `llava`, MMBench `lmms-eval 0.7.3 static` (the row on its
/// own), other [`crate::predictions::exact_match`]. An error when the row's reference cannot be
/// scored (not yes / no, not an option letter, none).
pub fn row_score(benchmark: Benchmark, row: usize, p: &Prediction) -> Result<f64> {
    match benchmark {
        Benchmark::Mme => mme::row_score(row, p),
        Benchmark::Pope => pope::row_score(row, p),
        Benchmark::TextVqa => textvqa::row_score(row, p),
        Benchmark::ScienceQa => scienceqa::row_score(row, p),
        Benchmark::Gqa => gqa::row_score(row, p),
        Benchmark::MmBench => mmbench::row_score(row, p),
        Benchmark::Other => Ok(
            if crate::predictions::exact_match(&p.prediction, &p.answers) {
                1.0
            } else {
                0.0
            },
        ),
    }
}

/// Sets `p.score` to [`row_score`] by `benchmark` (default: the row's `benchmark` column) and
/// `p.correct` to `score > 0`; a row without reference answers (none, or only blank ones) gets no
/// score and `correct = false`.
pub fn fill_outcome(benchmark: Option<Benchmark>, row: usize, p: &mut Prediction) -> Result<()> {
    if p.answers.iter().all(|a| a.trim().is_empty()) {
        p.score = None;
        p.correct = false;
        return Ok(());
    }
    let b = match benchmark {
        Some(b) => b,
        None => Benchmark::from_name(&p.benchmark).map_err(|e| {
            anyhow!(
                "row {row} (sample {:?}), column benchmark: {e}",
                p.sample_key
            )
        })?,
    };
    let s = row_score(b, row, p)?;
    p.score = Some(s);
    p.correct = s > 0.0;
    Ok(())
}

/// `100 * num / den`, 0 when `den` is 0.
pub(crate) fn pct(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        100.0 * num as f64 / den as f64
    }
}

/// An error about one prediction: row, sample key and what is wrong.
pub(crate) fn row_error(
    benchmark: Benchmark,
    row: usize,
    p: &Prediction,
    what: &str,
) -> anyhow::Error {
    anyhow!("{benchmark}: row {row} (sample {:?}): {what}", p.sample_key)
}

/// The single reference answer of `p` (MME, POPE, ScienceQA, MMBench keep one).
pub(crate) fn single_answer(benchmark: Benchmark, row: usize, p: &Prediction) -> Result<&str> {
    match p.answers.as_slice() {
        [a] => Ok(a),
        a => Err(row_error(
            benchmark,
            row,
            p,
            &format!(
                "column answers: expected 1 reference answer, found {}",
                a.len()
            ),
        )),
    }
}

/// The reference letter of a multiple-choice row, as an option index (`A` is 0), checked against the
/// number of options `n_options`.
pub(crate) fn answer_letter(
    benchmark: Benchmark,
    row: usize,
    p: &Prediction,
    n_options: usize,
) -> Result<usize> {
    let a = single_answer(benchmark, row, p)?.trim();
    let mut chars = a.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => {
            let idx = (c.to_ascii_uppercase() as u8 - b'A') as usize;
            if idx < n_options {
                Ok(idx)
            } else {
                Err(row_error(
                    benchmark,
                    row,
                    p,
                    &format!("column answers: letter {a:?} is past the {n_options} options"),
                ))
            }
        }
        _ => Err(row_error(
            benchmark,
            row,
            p,
            &format!("column answers: {a:?} is not an option letter"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for b in Benchmark::ALL {
            assert_eq!(Benchmark::from_name(b.name()).unwrap(), b);
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{b}\""));
        }
        assert_eq!(
            Benchmark::from_name("MMBench_EN").unwrap(),
            Benchmark::MmBench
        );
        assert_eq!(
            Benchmark::from_name("ScienceQA-IMG").unwrap(),
            Benchmark::ScienceQa
        );
        assert_eq!(
            Benchmark::from_name("text_vqa").unwrap(),
            Benchmark::TextVqa
        );
        for alias in ["synthetic", "generic"] {
            assert_eq!(Benchmark::from_name(alias).unwrap(), Benchmark::Other);
        }
        let err = Benchmark::from_name("vqav2").unwrap_err().to_string();
        assert!(err.contains("vqav2") && err.contains("mmbench"), "{err}");
    }
}
