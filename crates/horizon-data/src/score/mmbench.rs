//! MMBench (dev): letter accuracy, single round and circular, as lmms-eval 0.7.3 scores it without
//! a GPT model (`lmms_eval/tasks/mmbench/mmbench_evals.py`, `MMBench_Evaluator.eval_result`).
//!
//! **Matching** of a prediction (stripped, as `mmbench_process_results` does) to a letter:
//! 1. `can_infer_option` ([`infer_option`]): split on whitespace. If exactly one of the words is
//!    one of `A`-`E`, that letter (unless `A` is a word and there are more than 3 words: "A" may be
//!    the article); else, for each of the forms `X.`, `X,`, `X:`, `X)`, `X).`, `(X)`, `(X).`, `:X`,
//!    `:X,`, `:X.`, `:X)`, `:X).` in turn, the letter if exactly one word has that form.
//! 2. `can_infer_text`: else the option (of `A`-`D`) whose text, lower-cased, is in the lower-cased
//!    prediction, if exactly one is.
//! 3. Only in `lmms-eval 0.7.3 static` (the `mmbench_en_dev_static` task, `eval_method="static"`):
//!    else `_task_utils/mcq_extract.py`'s `extract_mcq_answer` ([`extract_mcq_answer`]).
//!
//! Conventions: `lmms-eval 0.7.3 static` (steps 1-3), and `heuristic (no GPT)` (steps 1-2; an
//! answer they cannot match is wrong). The official MMBench numbers (the OpenCompass server,
//! lmms-eval's default `mmbench_en_dev`) ask a GPT model where steps 1-2 fail; that is not
//! reproduced.
//!
//! **Scores.** The reference (`answers`) is the correct letter, the options are `choices` (A first).
//! - `accuracy/single-round`: the original rows (`index < 1_000_000`, or no index), each on its own.
//! - `accuracy/circular` (CircularEval, given when some row is a circular copy): for every original
//!   row, its group is every row with the same `index % 1_000_000`; the group is right when every
//!   row of it is. Groups are counted whatever rotations they have (lmms-eval iterates the original
//!   rows, so a group lacking a rotation counts with the rows it has, and copies whose original row
//!   is missing count nowhere); `n` is the number of original rows. A note counts both cases.

use anyhow::Result;
use std::collections::BTreeMap;

use super::{answer_letter, pct, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::MmBench;
/// The conventions, in the order of the table; the first decides [`row_score`].
pub const STATIC: &str = "lmms-eval 0.7.3 static";
pub const HEURISTIC: &str = "heuristic (no GPT)";
const CIRCULAR: i64 = 1_000_000;

/// `can_infer_option(answer, num_choice=5)`.
pub fn infer_option(answer: &str) -> Option<char> {
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

/// `can_infer_text`: the one option of `A`-`D` (`build_choices`) whose text is in the answer (both
/// lower-cased). Empty options are skipped (horizon's readers drop them).
fn infer_text(answer: &str, choices: &[String]) -> Option<char> {
    let answer = answer.to_lowercase();
    let cands: Vec<usize> = choices
        .iter()
        .take(4)
        .enumerate()
        .filter(|(_, c)| !c.is_empty() && answer.contains(&c.to_lowercase()))
        .map(|(i, _)| i)
        .collect();
    match cands.as_slice() {
        [i] => Some((b'A' + *i as u8) as char),
        _ => None,
    }
}

/// `can_infer`: the letter the heuristic reads in `prediction`, if any.
pub fn infer_letter(prediction: &str, choices: &[String]) -> Option<char> {
    infer_option(prediction).or_else(|| infer_text(prediction, choices))
}

/// The format ranks of `extract_mcq_answer` (`_FORMAT_PRIORITY`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Format {
    Fallback = 0,
    Space = 2,
    RightParen = 3,
    Colon = 4,
    Period = 5,
    Parentheses = 6,
    Phrase = 7,
    End = 9,
    Start = 10,
}

const ANSWER_PHRASES: [&str; 27] = [
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
];

/// `str.find(sub, start)` over code points.
fn find_from(text: &[char], sub: &[char], start: usize) -> Option<usize> {
    if sub.len() > text.len() {
        return None;
    }
    (start..=text.len() - sub.len()).find(|&i| text[i..i + sub.len()] == *sub)
}

/// `str.rfind(sub)` over code points.
fn rfind(text: &[char], sub: &[char]) -> Option<usize> {
    if sub.len() > text.len() {
        return None;
    }
    (0..=text.len() - sub.len())
        .rev()
        .find(|&i| text[i..i + sub.len()] == *sub)
}

/// `extract_mcq_answer(response, choices)` of lmms-eval 0.7.3 (`_task_utils/mcq_extract.py`): the
/// candidates of every format (`(X)`, `X.`, `X:`, `X)`, `X `, after an answer phrase, at the start,
/// at the end, else anywhere), the highest-ranked format winning and, within it, the last
/// position. `choices` empty means `A`-`H`. Positions count code points, as Python's do.
pub fn extract_mcq_answer(response: &str, choices: &[char]) -> Option<char> {
    const DEFAULT: [char; 8] = ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H'];
    if response.trim().is_empty() {
        return None;
    }
    let all: &[char] = if choices.is_empty() {
        &DEFAULT
    } else {
        choices
    };
    let mut t: &str = response.trim();
    for c in [',', '.', '!', '?', ';', ':', '\'', '"'] {
        t = t.trim_matches(c);
    }
    let text: Vec<char> = format!(" {t} ").chars().collect();
    let mut cands: Vec<(char, usize, Format)> = Vec::new();
    let forms: [(&str, &str, Format); 5] = [
        ("(", ")", Format::Parentheses),
        ("", ".", Format::Period),
        ("", ":", Format::Colon),
        ("", ")", Format::RightParen),
        ("", " ", Format::Space),
    ];
    for (prefix, suffix, format) in forms {
        for &ch in all {
            let pat: Vec<char> = format!("{prefix}{ch}{suffix}").chars().collect();
            if let Some(pos) = rfind(&text, &pat) {
                cands.push((ch, pos, format));
            }
        }
    }
    let lower: Vec<char> = text
        .iter()
        .collect::<String>()
        .to_lowercase()
        .chars()
        .collect();
    for phrase in ANSWER_PHRASES {
        let p: Vec<char> = phrase.chars().collect();
        if let Some(idx) = find_from(&lower, &p, 0) {
            let after = idx + p.len();
            for &ch in all {
                if after <= text.len() {
                    if let Some(pos) = find_from(&text, &[ch], after) {
                        cands.push((ch, pos, Format::Phrase));
                    }
                }
            }
        }
    }
    let stripped: Vec<char> = text.iter().collect::<String>().trim().chars().collect();
    for &ch in all {
        if stripped.first() == Some(&ch) && (stripped.len() == 1 || !stripped[1].is_alphabetic()) {
            cands.push((ch, 0, Format::Start));
        }
    }
    for &ch in all {
        let n = stripped.len();
        if stripped.last() == Some(&ch) && (n == 1 || !stripped[n - 2].is_alphabetic()) {
            cands.push((ch, text.len() - 1, Format::End));
        }
    }
    if cands.is_empty() {
        for &ch in all {
            if let Some(pos) = rfind(&text, &[ch]) {
                cands.push((ch, pos, Format::Fallback));
            }
        }
    }
    // Python's stable sort, reversed: the first of equal keys stays first.
    let mut best: Option<(char, usize, Format)> = None;
    for c in cands {
        if best.is_none_or(|b| (c.2, c.1) > (b.2, b.1)) {
            best = Some(c);
        }
    }
    best.map(|b| b.0)
}

/// The letter a row's prediction is read as under `convention` ([`STATIC`] or [`HEURISTIC`]).
pub fn read_letter(convention: &str, prediction: &str, choices: &[String]) -> Option<char> {
    let p = prediction.trim();
    infer_letter(p, choices).or_else(|| {
        (convention == STATIC)
            .then(|| {
                let letters: Vec<char> = (0..choices.len().min(4))
                    .map(|i| (b'A' + i as u8) as char)
                    .collect();
                extract_mcq_answer(p, &letters)
            })
            .flatten()
    })
}

fn n_options(p: &Prediction) -> usize {
    if p.choices.is_empty() {
        5
    } else {
        p.choices.len()
    }
}

/// 1 when the row's letter ([`STATIC`]) is the reference, else 0.
pub fn row_score(row: usize, p: &Prediction) -> Result<f64> {
    let gt = answer_letter(B, row, p, n_options(p))?;
    let right = read_letter(STATIC, &p.prediction, &p.choices) == Some((b'A' + gt as u8) as char);
    Ok(if right { 1.0 } else { 0.0 })
}

fn is_original(p: &Prediction) -> bool {
    p.index.is_none_or(|x| (0..CIRCULAR).contains(&x))
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let mut gts = Vec::with_capacity(predictions.len());
    for (i, p) in predictions.iter().enumerate() {
        gts.push((b'A' + answer_letter(B, i, p, n_options(p))? as u8) as char);
    }
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, p) in predictions.iter().enumerate() {
        if let Some(x) = p.index {
            groups.entry(x.rem_euclid(CIRCULAR)).or_default().push(i);
        }
    }
    let originals: Vec<usize> = (0..predictions.len())
        .filter(|&i| is_original(&predictions[i]))
        .collect();
    let has_copies = predictions.iter().any(|p| !is_original(p));
    let mut table = ScoreTable::default();
    for convention in [STATIC, HEURISTIC] {
        let right: Vec<bool> = predictions
            .iter()
            .zip(&gts)
            .map(|(p, gt)| read_letter(convention, &p.prediction, &p.choices) == Some(*gt))
            .collect();
        let ok = originals.iter().filter(|&&i| right[i]).count();
        table.push(
            B,
            "accuracy/single-round",
            convention,
            pct(ok, originals.len()),
            originals.len(),
        );
        if has_copies {
            let hit = originals
                .iter()
                .filter(|&&o| match predictions[o].index {
                    Some(x) => groups[&x].iter().all(|&i| right[i]),
                    None => right[o],
                })
                .count();
            table.push(
                B,
                "accuracy/circular",
                convention,
                pct(hit, originals.len()),
                originals.len(),
            );
        }
    }
    if has_copies {
        let short = originals
            .iter()
            .filter(|&&o| {
                predictions[o].index.is_some_and(|x| {
                    let k = predictions[o].choices.len();
                    k > 0 && groups[&x].len() < k
                })
            })
            .count();
        let orphans: usize = groups
            .values()
            .filter(|rows| !rows.iter().any(|&i| is_original(&predictions[i])))
            .map(Vec::len)
            .sum();
        if short > 0 || orphans > 0 {
            table.note(
                B,
                format!(
                    "circular accuracy counts every original row's group as lmms-eval 0.7.3 does: \
                     {short} groups lack some rotation (scored on the rows they have), {orphans} \
                     circular copies have no original row (counted nowhere)"
                ),
            );
        }
    }
    table.note(
        B,
        "lmms-eval 0.7.3 static: the mmbench_en_dev_static task (can_infer, then extract_mcq_answer); \
         heuristic (no GPT): can_infer only, an unmatched answer is wrong. The official MMBench \
         score (OpenCompass server; lmms-eval's default mmbench_en_dev) asks a GPT model where \
         can_infer fails: NOT reproduced here",
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
        assert_eq!(infer_letter("A bird is on it", &c), Some('C')); // "A" as an article
        assert_eq!(infer_letter("E", &c), Some('E')); // a letter, though not an option: wrong
    }

    #[test]
    fn extract_mcq_answer_ranks_formats_then_positions() {
        let abcd = ['A', 'B', 'C', 'D'];
        assert_eq!(
            extract_mcq_answer("The correct answer is (B).", &abcd),
            Some('B')
        );
        assert_eq!(extract_mcq_answer("A or B", &abcd), Some('A')); // start beats end
        assert_eq!(extract_mcq_answer("it is b", &abcd), None);
        assert_eq!(extract_mcq_answer("maybe C", &abcd), Some('C')); // end
        assert_eq!(extract_mcq_answer("", &abcd), None);
        assert_eq!(extract_mcq_answer("xAx", &abcd), Some('A')); // fallback
    }
}
