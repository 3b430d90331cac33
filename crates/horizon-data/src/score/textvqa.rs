//! TextVQA: VQA accuracy, with the leave-one-annotator-out average and the EvalAI answer
//! normalisation of `m4c_evaluator.py` (`EvalAIAnswerProcessor`, `TextVQAAccuracyEvaluator`), which
//! LLaVA (`llava/eval/eval_textvqa.py`) and lmms-eval 0.7.3 (`lmms_eval/tasks/textvqa/utils.py`,
//! `textvqa_process_results`) share: one convention, `official`.
//!
//! **Normalisation** ([`normalize`]), of the prediction and of every reference answer, in order:
//! 1. lower-case; remove `,` and `?`; `'s` becomes ` 's`; trim; newlines and tabs become spaces; trim;
//! 2. each of ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` is removed if the text (as it was before
//!    this step) has it before or after a space, or has digits around a comma, else replaced by a
//!    space; then a `.` not followed by a digit is removed (at most 32 of them: the script passes
//!    `re.UNICODE` as `re.sub`'s count);
//! 3. split on whitespace; `none`, `zero` ... `ten` become `0` ... `10`; the articles `a`, `an`,
//!    `the` are dropped; the contraction table maps `dont` to `don't` and so on; join with spaces.
//!
//! **Score** of a prediction `a` against `n` normalised answers:
//! `acc(a) = (1/n) Σ_i min(1, |{j ≠ i : gt_j = a}| / 3)`; the value is the mean over questions × 100.
//! `m4c_evaluator` asserts `n = 10`; lmms-eval takes any `n`, as here (a note counts the questions
//! without 10 answers). Digits are ASCII digits (Python's `\d` also takes other scripts' digits).

use anyhow::Result;

use super::{row_error, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::TextVqa;

const PUNCTUATIONS: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const NUMBER_MAP: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// `EvalAIAnswerProcessor.CONTRACTIONS` (keys with capitals can never match a lower-cased word,
/// and `somebody'd` maps to `somebodyd`: both as in the script).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// `COMMA_STRIP = (?<=\d)(\,)+(?=\d)`: a run of commas between two digits.
fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_ascii_digit() {
            let mut j = i + 1;
            while j < c.len() && c[j] == ',' {
                j += 1;
            }
            if j > i + 1 && j < c.len() && c[j].is_ascii_digit() {
                return true;
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    false
}

/// `process_punctuation`.
fn process_punctuation(in_text: &str) -> String {
    let comma = has_digit_comma_digit(in_text);
    let mut out = in_text.to_string();
    for p in PUNCTUATIONS {
        let spaced = in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}"));
        out = if spaced || comma {
            out.replace(p, "")
        } else {
            out.replace(p, " ")
        };
    }
    // PERIOD_STRIP = (?!<=\d)(\.)(?!\d): the first lookahead never fails at a '.', so this removes a
    // '.' not followed by a digit, at most re.UNICODE = 32 times (passed as re.sub's count).
    let chars: Vec<char> = out.chars().collect();
    let mut s = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '.' && !next_digit && removed < 32 {
            removed += 1;
        } else {
            s.push(c);
        }
    }
    s
}

/// `process_digit_article`.
fn process_digit_article(in_text: &str) -> String {
    let words: Vec<&str> = in_text
        .split_whitespace()
        .map(|w| {
            NUMBER_MAP
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| v)
        })
        .filter(|w| !ARTICLES.contains(w))
        .collect();
    // The words are already lower-case; lower-casing again (as the script does) changes nothing.
    words
        .iter()
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| k == w)
                .map_or(*w, |(_, v)| v)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `EvalAIAnswerProcessor.__call__` (module documentation).
pub fn normalize(answer: &str) -> String {
    let w = answer
        .to_lowercase()
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let w = w.trim().replace(['\n', '\t'], " ");
    let w = process_punctuation(w.trim());
    process_digit_article(&w.to_lowercase())
}

/// VQA accuracy (0-1) of `prediction` against the raw reference `answers`.
pub fn vqa_accuracy(prediction: &str, answers: &[String]) -> f64 {
    let pred = normalize(prediction);
    let gts: Vec<String> = answers.iter().map(|a| normalize(a)).collect();
    let n = gts.len();
    if n == 0 {
        return 0.0;
    }
    let matching = gts.iter().filter(|g| **g == pred).count();
    (0..n)
        .map(|i| {
            let others = matching - (gts[i] == pred) as usize;
            (others as f64 / 3.0).min(1.0)
        })
        .sum::<f64>()
        / n as f64
}

/// The row's VQA accuracy (0-1).
pub fn row_score(row: usize, p: &Prediction) -> Result<f64> {
    if p.answers.is_empty() {
        return Err(row_error(B, row, p, "column answers: no reference answers"));
    }
    Ok(vqa_accuracy(&p.prediction, &p.answers))
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let mut sum = 0.0;
    let mut not_ten = 0;
    for (i, p) in predictions.iter().enumerate() {
        if p.answers.is_empty() {
            return Err(row_error(B, i, p, "column answers: no reference answers"));
        }
        not_ten += (p.answers.len() != 10) as usize;
        sum += vqa_accuracy(&p.prediction, &p.answers);
    }
    let n = predictions.len();
    let mut table = ScoreTable::default();
    table.push(B, "accuracy", "official", 100.0 * sum / n as f64, n);
    if not_ten > 0 {
        table.note(
            B,
            format!(
                "{not_ten} questions do not have 10 reference answers; scored by the same \
                 leave-one-out formula over the answers they have (lmms-eval's generalisation)"
            ),
        );
    }
    table.note(
        B,
        "official: VQA accuracy, mean over annotators i of min(1, other annotators agreeing / 3), \
         EvalAI answer normalisation of m4c_evaluator.py (same in LLaVA and lmms-eval). The number \
         depends on the OCR tokens in the prompt (LLaVA's 58.2 has them; lmms-eval by default not)",
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_like_eval_ai() {
        let cases = [
            ("two", "2"),
            ("None", "0"),
            ("a dog", "dog"),
            ("The Dog's bowl", "dog 's bowl"),
            ("A dog.", "dog"),
            ("dont", "don't"),
            ("coca-cola", "coca cola"),
            ("coca - cola", "coca cola"), // "- " present: the '-' is removed, spaces collapse
            ("12.5.", "12.5"),
            ("3,000", "3000"),
            ("yes!", "yes"),
            ("what?", "what"),
            ("line\none", "line 1"),
            ("  an  apple ", "apple"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn contraction_table_is_the_script_s() {
        assert_eq!(CONTRACTIONS.len(), 120);
        let mut keys: Vec<_> = CONTRACTIONS.iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 120, "no key twice");
    }
}
