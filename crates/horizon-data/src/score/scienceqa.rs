//! ScienceQA: accuracy on all questions (`accuracy`: LLaVA's "Accuracy", over the 4,241 test
//! questions of `llava_test_CQM-A.json` or ScienceQA-FULL, text-only ones answered without an
//! image as `model_vqa_science.py` does; lmms-eval's `scienceqa` task) and on the questions with an
//! image (`img_accuracy`: LLaVA's "IMG-Accuracy", the Model Zoo's number; lmms-eval's
//! `scienceqa_img`).
//!
//! - `llava` (`llava/eval/eval_science_qa.py`, haotian-liu/LLaVA main): the letter is the prediction
//!   if it is exactly one of `A`-`E`; else its first character if that is one of `A`-`E` followed by
//!   `". "`; else the one match of `The answer is ([A-Z]).` (regex: any character after the letter,
//!   so "The answer is B." gives B but a text ending "The answer is B" gives nothing; two matches
//!   give nothing); else FAILED. The letter counts only if it names one of the options
//!   (`get_pred_idx`); it must then be the reference letter. No trimming, case matters.
//! - `lmms-eval 0.7.3` (`lmms_eval/tasks/scienceqa/utils.py`, `sqa_process_results`, as of
//!   lmms-eval 0.7.3; other releases may differ): the stripped
//!   prediction equals the reference letter ignoring case, or starts with an upper-case letter and a
//!   `.` and that letter is the reference ("B." and "B. dog" are B).
//!
//! The reference (`answers`) is the correct letter; the options are `choices` (when a row has none,
//! five options `A`-`E` are assumed). `has_image` marks the IMG subset.

use anyhow::Result;

use super::{answer_letter, pct, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::ScienceQa;
const LMMS_EVAL: &str = "lmms-eval 0.7.3";
const OPTIONS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];

/// `eval_science_qa.py`'s parsed letter, or `None` for FAILED.
pub fn parse_llava(pred: &str) -> Option<char> {
    let c: Vec<char> = pred.chars().collect();
    if c.len() == 1 && OPTIONS.contains(&c[0]) {
        return Some(c[0]);
    }
    if c.len() >= 3 && OPTIONS.contains(&c[0]) && c[1] == '.' && c[2] == ' ' {
        return Some(c[0]);
    }
    // re.findall(r'The answer is ([A-Z]).', pred), exactly one match.
    let pat: Vec<char> = "The answer is ".chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + pat.len() + 2 <= c.len() {
        let letter = c[i + pat.len()];
        if c[i..i + pat.len()] == pat[..]
            && letter.is_ascii_uppercase()
            && c[i + pat.len() + 1] != '\n'
        {
            found.push(letter);
            i += pat.len() + 2;
        } else {
            i += 1;
        }
    }
    match found.as_slice() {
        [l] => Some(*l),
        _ => None,
    }
}

/// `get_pred_idx`: the option index of a parsed letter, if it names one of `n_options` options.
fn option_index(letter: Option<char>, n_options: usize) -> Option<usize> {
    let l = letter?;
    let idx = OPTIONS.iter().position(|&o| o == l)?;
    (idx < n_options).then_some(idx)
}

/// lmms-eval's `sqa_process_results` against the reference letter `target`.
pub fn correct_lmms_eval(pred: &str, target: char) -> bool {
    let target = target.to_lowercase().to_string();
    let pred = pred.trim();
    if pred.to_lowercase() == target {
        return true;
    }
    let mut c = pred.chars();
    match (c.next(), c.next()) {
        (Some(first), Some('.')) if first.is_uppercase() => {
            first.to_lowercase().to_string() == target
        }
        _ => false,
    }
}

/// 1 when `eval_science_qa.py` (`llava`) counts the row right, else 0.
pub fn row_score(row: usize, p: &Prediction) -> Result<f64> {
    let n_options = if p.choices.is_empty() {
        OPTIONS.len()
    } else {
        p.choices.len()
    };
    let gt = answer_letter(B, row, p, n_options)?;
    let right = option_index(parse_llava(&p.prediction), n_options) == Some(gt);
    Ok(if right { 1.0 } else { 0.0 })
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    // (has_image, llava right, lmms-eval right)
    let mut results = Vec::with_capacity(predictions.len());
    let mut no_choices = 0;
    for (i, p) in predictions.iter().enumerate() {
        let n_options = if p.choices.is_empty() {
            no_choices += 1;
            OPTIONS.len()
        } else {
            p.choices.len()
        };
        let gt = answer_letter(B, i, p, n_options)?;
        let llava = option_index(parse_llava(&p.prediction), n_options) == Some(gt);
        let lmms = correct_lmms_eval(&p.prediction, (b'A' + gt as u8) as char);
        results.push((p.has_image, llava, lmms));
    }
    let mut table = ScoreTable::default();
    let img: Vec<_> = results.iter().filter(|r| r.0).collect();
    for (convention, right) in [
        (
            "llava",
            (|r: &(bool, bool, bool)| r.1) as fn(&(bool, bool, bool)) -> bool,
        ),
        (LMMS_EVAL, |r| r.2),
    ] {
        if !img.is_empty() {
            let ok = img.iter().filter(|r| right(r)).count();
            table.push(B, "img_accuracy", convention, pct(ok, img.len()), img.len());
        }
        let ok = results.iter().filter(|r| right(r)).count();
        table.push(
            B,
            "accuracy",
            convention,
            pct(ok, results.len()),
            results.len(),
        );
    }
    if img.len() == results.len() {
        table.note(
            B,
            "every question has an image, so accuracy equals img_accuracy (LLaVA's overall \
             accuracy is over all 4,241 test questions, text-only ones included: evaluate \
             ScienceQA-FULL or llava_test_CQM-A.json whole for it)",
        );
    } else if img.is_empty() {
        table.note(B, "no question has an image: no img_accuracy");
    }
    if no_choices > 0 {
        table.note(
            B,
            format!("{no_choices} questions have no choices; five options A-E assumed"),
        );
    }
    table.note(
        B,
        "accuracy: every question (LLaVA's Accuracy); img_accuracy: the questions with an image \
         (LLaVA's IMG-Accuracy). llava: llava/eval/eval_science_qa.py letter parsing (\"B\", \
         \"B. ...\", \"The answer is B.\"); lmms-eval 0.7.3: lmms_eval/tasks/scienceqa/utils.py \
         (letter ignoring case, or \"B.\" prefix)",
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_letter_parsing() {
        assert_eq!(parse_llava("B"), Some('B'));
        assert_eq!(parse_llava("b"), None);
        assert_eq!(parse_llava(" B"), None);
        assert_eq!(parse_llava("A. dog"), Some('A'));
        assert_eq!(parse_llava("B."), None); // too short for "X. "
        assert_eq!(parse_llava("The answer is B."), Some('B'));
        assert_eq!(parse_llava("So... The answer is C, clearly"), Some('C'));
        assert_eq!(parse_llava("The answer is B"), None); // the regex needs a character after B
        assert_eq!(parse_llava("The answer is A. The answer is B."), None); // two matches
        assert_eq!(parse_llava("The answer is F."), Some('F')); // then no option: FAILED
        assert_eq!(option_index(Some('F'), 5), None);
        assert_eq!(option_index(Some('C'), 2), None);
    }

    #[test]
    fn lmms_eval_matching() {
        assert!(correct_lmms_eval("b", 'B'));
        assert!(correct_lmms_eval(" B. ", 'B'));
        assert!(correct_lmms_eval("B. dog", 'B'));
        assert!(!correct_lmms_eval("b. dog", 'B')); // the letter must be upper-case
        assert!(!correct_lmms_eval("The answer is B.", 'B'));
    }
}
