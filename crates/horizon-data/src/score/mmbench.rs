//! MMBench (dev): letter accuracy, single round and circular, with the heuristic answer matching of
//! lmms-eval's `MMBench_Evaluator.can_infer` (`lmms_eval/tasks/mmbench/mmbench_evals.py`, taken from
//! OpenCompass) and **without its GPT fallback**: the official scores (the OpenCompass server,
//! lmms-eval's default) ask a GPT model to match the answers the heuristic cannot; here such an
//! answer counts as wrong. Convention name: `heuristic (no GPT)`.
//!
//! **Matching** ([`infer_letter`]):
//! 1. `can_infer_option`: split the prediction on whitespace. If exactly one of the words is one of
//!    `A`-`E`, that letter (unless `A` is a word and there are more than 3 words: "A" may be the
//!    article); else, for each of the forms `X.`, `X,`, `X:`, `X)`, `X).`, `(X)`, `(X).`, `:X`,
//!    `:X,`, `:X.`, `:X)`, `:X).` in turn, the letter if exactly one word has that form.
//! 2. `can_infer_text`: else the option whose text (lower-cased) is in the lower-cased prediction,
//!    if exactly one is.
//!
//! **Scores.** The reference (`answers`) is the correct letter, the options are `choices` (A first).
//! - `accuracy/single-round`: the rows with `index < 1_000_000` (or no index): each question once,
//!   in its original option order.
//! - `accuracy/all-rows`: every row, each circular copy counted as a question of its own.
//! - `accuracy/circular` (CircularEval): rows grouped by `index % 1_000_000`; a group counts when
//!   every row of it is right; only complete groups are counted: the original row plus one row per
//!   option (`k` options, `k` rotations). `n` is the number of complete groups; a note counts the
//!   incomplete ones.

use anyhow::Result;
use std::collections::BTreeMap;

use super::{answer_letter, pct, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::MmBench;
const CONVENTION: &str = "heuristic (no GPT)";
const CIRCULAR: i64 = 1_000_000;

/// `can_infer_option(answer, num_choice=5)`.
fn infer_option(answer: &str) -> Option<char> {
    const CHOICES: [char; 5] = ['A', 'B', 'C', 'D', 'E'];
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    let splits: Vec<&str> = answer.split_whitespace().collect();
    let count = |prefix: &str, suffix: &str| {
        CHOICES
            .iter()
            .filter(|c| splits.contains(&format!("{prefix}{c}{suffix}").as_str()))
            .count()
    };
    let find = |prefix: &str, suffix: &str| {
        CHOICES
            .iter()
            .copied()
            .find(|c| splits.contains(&format!("{prefix}{c}{suffix}").as_str()))
    };
    if count("", "") == 1 {
        let quantifier = splits.contains(&"A") && splits.len() > 3;
        if !quantifier {
            if let Some(c) = find("", "") {
                return Some(c);
            }
        }
    }
    const FORMS: [(&str, &str); 12] = [
        ("", "."),
        ("", ","),
        ("", ":"),
        ("", ")"),
        ("", ")."),
        ("(", ")"),
        ("(", ")."),
        (":", ""),
        (":", ","),
        (":", "."),
        (":", ")"),
        (":", ")."),
    ];
    FORMS
        .iter()
        .find(|(p, s)| count(p, s) == 1)
        .and_then(|(p, s)| find(p, s))
}

/// `can_infer_text`: the one option whose text is in the answer (both lower-cased). Empty options
/// are skipped (lmms-eval drops missing ones).
fn infer_text(answer: &str, choices: &[String]) -> Option<char> {
    let answer = answer.to_lowercase();
    let cands: Vec<usize> = choices
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_empty() && answer.contains(&c.to_lowercase()))
        .map(|(i, _)| i)
        .collect();
    match cands.as_slice() {
        [i] if *i < 26 => Some((b'A' + *i as u8) as char),
        _ => None,
    }
}

/// `can_infer`: the letter the heuristic reads in `prediction`, if any.
pub fn infer_letter(prediction: &str, choices: &[String]) -> Option<char> {
    infer_option(prediction).or_else(|| infer_text(prediction, choices))
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let mut right = Vec::with_capacity(predictions.len());
    for (i, p) in predictions.iter().enumerate() {
        let n_options = if p.choices.is_empty() {
            5
        } else {
            p.choices.len()
        };
        let gt = answer_letter(B, i, p, n_options)?;
        right.push(infer_letter(&p.prediction, &p.choices) == Some((b'A' + gt as u8) as char));
    }
    let n = predictions.len();
    let mut table = ScoreTable::default();

    let single: Vec<usize> = (0..n)
        .filter(|&i| predictions[i].index.is_none_or(|x| x < CIRCULAR))
        .collect();
    let ok = single.iter().filter(|&&i| right[i]).count();
    table.push(
        B,
        "accuracy/single-round",
        CONVENTION,
        pct(ok, single.len()),
        single.len(),
    );
    let ok = right.iter().filter(|&&r| r).count();
    table.push(B, "accuracy/all-rows", CONVENTION, pct(ok, n), n);

    // index % 1e6 -> rows
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, p) in predictions.iter().enumerate() {
        if let Some(x) = p.index {
            groups.entry(x.rem_euclid(CIRCULAR)).or_default().push(i);
        }
    }
    let (mut complete, mut hit, mut incomplete) = (0, 0, 0);
    for rows in groups.values() {
        let original = rows.iter().find(|&&i| {
            predictions[i]
                .index
                .is_some_and(|x| (0..CIRCULAR).contains(&x))
        });
        let mut distinct: Vec<i64> = rows.iter().filter_map(|&i| predictions[i].index).collect();
        distinct.sort();
        distinct.dedup();
        let is_complete = original.is_some_and(|&o| {
            let k = predictions[o].choices.len();
            k > 0 && distinct.len() == k && rows.len() == k
        });
        if is_complete {
            complete += 1;
            hit += rows.iter().all(|&i| right[i]) as usize;
        } else {
            incomplete += 1;
        }
    }
    if complete > 0 {
        table.push(
            B,
            "accuracy/circular",
            CONVENTION,
            pct(hit, complete),
            complete,
        );
    }
    let no_index = predictions.iter().filter(|p| p.index.is_none()).count();
    let mut left_out = Vec::new();
    if incomplete > 0 {
        left_out.push(format!("{incomplete} questions lack some rotation"));
    }
    if no_index > 0 {
        left_out.push(format!("{no_index} rows have no index"));
    }
    if !left_out.is_empty() {
        table.note(
            B,
            format!(
                "circular accuracy is over the {complete} questions with all their rotations; left \
                 out: {}",
                left_out.join(", ")
            ),
        );
    }
    table.note(
        B,
        "the official MMBench score (OpenCompass server; lmms-eval by default) matches answers to \
         options with a GPT model when the heuristic fails: that GPT matching is NOT reproduced here \
         (heuristic (no GPT): lmms-eval's can_infer letter/option-text matching, an unmatched \
         answer counts as wrong), so these are local, unofficial numbers",
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn can_infer_like_lmms_eval() {
        let c = opts(&["cat", "dog", "bird", "fish"]);
        assert_eq!(infer_letter("A", &c), Some('A'));
        assert_eq!(infer_letter("D. cat", &c), Some('D'));
        assert_eq!(infer_letter("The answer is C", &c), Some('C'));
        assert_eq!(infer_letter("(B)", &c), Some('B'));
        assert_eq!(infer_letter("cat", &c), Some('A'));
        assert_eq!(infer_letter("A or B", &c), None); // two letters, no option text
        assert_eq!(infer_letter("a dog or a cat", &c), None); // two option texts
                                                              // "A" as an article in a longer answer: not a letter; the option text decides.
        assert_eq!(infer_letter("A bird is on it", &c), Some('C'));
        assert_eq!(infer_letter("E", &c), Some('E')); // a letter, though not an option: wrong
    }
}
