//! POPE: accuracy, precision, recall, F1 (yes is the positive class) and yes-ratio, per category
//! (adversarial / popular / random).
//!
//! - `llava` (`llava/eval/eval_pope.py`): keep the text before the first `.`, drop `,`, split on
//!   single spaces; the answer is no if a word is exactly `No`, `not` or `no` (case matters: `NO` and
//!   `Not` are yes), else yes. Per category: `accuracy = (TP+TN)/all`, `precision = TP/(TP+FP)`,
//!   `recall = TP/(TP+FN)`, `f1 = 2PR/(P+R)`, `yes_ratio = predicted yes / all`; `x/mean` is the mean
//!   over the categories present (papers report `f1/mean`, the "Average F1"). A zero denominator
//!   gives 0 (the script would stop).
//! - `lmms-eval 0.7.3` (`lmms_eval/tasks/pope/utils.py`): the lower-cased, stripped prediction must equal
//!   the reference; precision and recall count only predictions that are exactly `yes` or `no`
//!   (`TP`: yes/yes, `FP`: yes for a no, `FN`: no for a yes), 0 on a zero denominator. Given per
//!   category and pooled over all questions (`x/all`, lmms-eval's `pope` task). Its `pope_yes_ratio`
//!   counts the reference answers, not the predictions, so it is not reproduced.
//!
//! References (`answers`) are yes or no, ignoring case and surrounding space.

use anyhow::Result;

use super::{pct, row_error, single_answer, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::Pope;
const LMMS_EVAL: &str = "lmms-eval 0.7.3";

/// `eval_pope.py`'s parsing: `true` for yes.
pub fn parse_llava(text: &str) -> bool {
    let first = text.split('.').next().unwrap_or("");
    let first = first.replace(',', "");
    !first
        .split(' ')
        .any(|w| w == "No" || w == "not" || w == "no")
}

/// What lmms-eval compares: the lower-cased, stripped prediction.
pub fn normalize_lmms_eval(text: &str) -> String {
    text.to_lowercase().trim().to_string()
}

/// A measure's name and how it is computed from the counts.
type Measure = (&'static str, fn(&Counts) -> f64);

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
    right: usize,
    pred_yes: usize,
    all: usize,
}

impl Counts {
    fn precision(&self) -> f64 {
        pct(self.tp, self.tp + self.fp)
    }
    fn recall(&self) -> f64 {
        pct(self.tp, self.tp + self.fn_)
    }
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    fn accuracy(&self) -> f64 {
        pct(self.right, self.all)
    }
}

fn reference(row: usize, p: &Prediction) -> Result<bool> {
    let gt = single_answer(B, row, p)?.trim().to_lowercase();
    match gt.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(row_error(
            B,
            row,
            p,
            &format!("column answers: {gt:?} is not yes or no"),
        )),
    }
}

/// 1 when `eval_pope.py` (`llava`) reads the row's answer as its reference, else 0.
pub fn row_score(row: usize, p: &Prediction) -> Result<f64> {
    let right = parse_llava(&p.prediction) == reference(row, p)?;
    Ok(if right { 1.0 } else { 0.0 })
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let mut gts = Vec::with_capacity(predictions.len());
    for (i, p) in predictions.iter().enumerate() {
        gts.push(reference(i, p)?);
    }
    let mut categories: Vec<&str> = predictions.iter().map(|p| p.category.as_str()).collect();
    categories.sort();
    categories.dedup();

    let count = |cat: Option<&str>, llava: bool| {
        let mut c = Counts::default();
        for (p, &gt) in predictions.iter().zip(&gts) {
            if cat.is_some_and(|cat| p.category != cat) {
                continue;
            }
            c.all += 1;
            if llava {
                let yes = parse_llava(&p.prediction);
                c.pred_yes += yes as usize;
                c.right += (yes == gt) as usize;
                match (yes, gt) {
                    (true, true) => c.tp += 1,
                    (true, false) => c.fp += 1,
                    (false, false) => c.tn += 1,
                    (false, true) => c.fn_ += 1,
                }
            } else {
                let pred = normalize_lmms_eval(&p.prediction);
                c.right += (pred == if gt { "yes" } else { "no" }) as usize;
                match (pred.as_str(), gt) {
                    ("yes", true) => c.tp += 1,
                    ("yes", false) => c.fp += 1,
                    ("no", true) => c.fn_ += 1,
                    ("no", false) => c.tn += 1,
                    _ => {}
                }
            }
        }
        c
    };

    let mut table = ScoreTable::default();
    // LLaVA: means over the categories first, then each category.
    let per_cat: Vec<(&str, Counts)> = categories
        .iter()
        .map(|&cat| (cat, count(Some(cat), true)))
        .collect();
    let k = per_cat.len() as f64;
    let mean = |f: fn(&Counts) -> f64| per_cat.iter().map(|(_, c)| f(c)).sum::<f64>() / k;
    let total = predictions.len();
    let measures: [Measure; 5] = [
        ("f1", Counts::f1),
        ("accuracy", Counts::accuracy),
        ("precision", Counts::precision),
        ("recall", Counts::recall),
        ("yes_ratio", |c| pct(c.pred_yes, c.all)),
    ];
    for (name, f) in measures {
        table.push(B, format!("{name}/mean"), "llava", mean(f), total);
    }
    for (cat, c) in &per_cat {
        for (name, f) in measures {
            table.push(B, format!("{name}/{cat}"), "llava", f(c), c.all);
        }
    }
    // lmms-eval: pooled, then each category; no yes-ratio.
    let lmms_measures = &measures[..4];
    let all = count(None, false);
    for (name, f) in lmms_measures {
        table.push(B, format!("{name}/all"), LMMS_EVAL, f(&all), all.all);
    }
    for &cat in &categories {
        let c = count(Some(cat), false);
        for (name, f) in lmms_measures {
            table.push(B, format!("{name}/{cat}"), LMMS_EVAL, f(&c), c.all);
        }
    }
    let standard = ["adversarial", "popular", "random"];
    if categories != standard {
        table.note(
            B,
            format!(
                "categories {} rather than adversarial, popular, random: the means are over these",
                categories.join(", ")
            ),
        );
    }
    table.note(
        B,
        "llava: llava/eval/eval_pope.py (first sentence, 'No'/'not'/'no' -> no, else yes; mean over \
         categories); lmms-eval 0.7.3: lmms_eval/tasks/pope/utils.py (exact yes/no match; its \
         pope_yes_ratio counts the ground truth and is not reproduced)",
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_parsing_keeps_the_first_sentence_and_is_case_sensitive() {
        assert!(parse_llava("Yes, there is a dog."));
        assert!(!parse_llava("There is not a cat in the image."));
        assert!(parse_llava("Yes. But it is not clear.")); // "not" is in the second sentence
        assert!(!parse_llava("No"));
        assert!(parse_llava("NO")); // only "No", "not", "no" count
        assert!(parse_llava("Not at all")); // "Not" is not "not"
        assert!(!parse_llava("Nothing, no.")); // "Nothing no" -> words [Nothing, no]
        assert!(parse_llava("no\nthere is none")); // split on ' ' only: "no\nthere"
    }
}
