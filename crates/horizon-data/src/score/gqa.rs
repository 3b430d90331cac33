//! GQA (testdev-balanced): exact-match accuracy.
//!
//! - `llava`: `scripts/convert_gqa_for_eval.py` writes `prediction = text.rstrip('.').lower()`, and
//!   GQA's official `eval.py` counts it right when it equals the reference answer exactly
//!   (`predicted == gold`; the references are lower-case). No other normalisation: no trimming, and
//!   "the table" is not "table".
//! - `lmms-eval 0.7.3`: the `gqa` task's `exact_match` metric (`lmms_eval/api/metrics.py`,
//!   `exact_match_hf_evaluate`) with `ignore_case` and `ignore_punctuation`: both sides
//!   lower-cased and stripped of every ASCII punctuation character (Python's `string.punctuation`),
//!   then compared exactly ("T-shirt" equals "tshirt", "No!" equals "no").
//!
//! A prediction is right when it matches one of the row's `answers` (GQA has one).

use anyhow::Result;

use super::{pct, row_error, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::Gqa;
const LMMS_EVAL: &str = "lmms-eval 0.7.3";

/// What LLaVA's conversion leaves of a prediction.
pub fn normalize_llava(pred: &str) -> String {
    pred.trim_end_matches('.').to_lowercase()
}

/// lmms-eval's `exact_match(ignore_case, ignore_punctuation)` normalisation of either side.
pub fn normalize_lmms_eval(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect()
}

/// 1 when LLaVA's conversion and GQA's `eval.py` (`llava`) count the row right, else 0.
pub fn row_score(row: usize, p: &Prediction) -> Result<f64> {
    if p.answers.is_empty() {
        return Err(row_error(B, row, p, "column answers: no reference answer"));
    }
    let right = p.answers.contains(&normalize_llava(&p.prediction));
    Ok(if right { 1.0 } else { 0.0 })
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let (mut llava, mut lmms) = (0, 0);
    for (i, p) in predictions.iter().enumerate() {
        if p.answers.is_empty() {
            return Err(row_error(B, i, p, "column answers: no reference answer"));
        }
        let pl = normalize_llava(&p.prediction);
        llava += p.answers.contains(&pl) as usize;
        let pm = normalize_lmms_eval(&p.prediction);
        lmms += p.answers.iter().any(|a| normalize_lmms_eval(a) == pm) as usize;
    }
    let n = predictions.len();
    let mut table = ScoreTable::default();
    table.push(B, "accuracy", "llava", pct(llava, n), n);
    table.push(B, "accuracy", LMMS_EVAL, pct(lmms, n), n);
    table.note(
        B,
        "llava: scripts/convert_gqa_for_eval.py (rstrip '.', lower) then GQA eval.py exact match; \
         lmms-eval 0.7.3: exact_match ignoring case and punctuation",
    );
    Ok(table)
}
