//! MME: per-subtask `acc`, `acc+` and score, perception and cognition totals.
//!
//! **Parsing** of the prediction into yes / no / other:
//! - `official`: MME's `eval_tool/calculation.py` (`parse_pred_ans`), which LLaVA runs on the txt
//!   files of `convert_answer_to_mme.py`: lower-case; `yes` or `no` if it is exactly that; else `yes`
//!   if "yes" is in its first 4 characters, else `no` if "no" is, else `other`. So "Yes, it is" and
//!   "yesterday" are yes, "Not really" and "know" are no, "I think yes" and "Y" are other.
//! - `lmms-eval 0.7.3`: `lmms_eval/tasks/mme/utils.py` (`parse_pred_ans`): lower-case, strip, remove every
//!   `.`; exactly yes/no; else a single character `y` / `n` is yes / no (any other one is other);
//!   else the same first-4-characters rule.
//!
//! The reference is lower-cased, stripped and stripped of `.` (both scripts); it must be yes or no.
//!
//! **Scores** (both conventions; calculation.py, and lmms-eval's `mme_aggregate_results`, which is
//! the same for two questions per image). Per subtask (the `category` column):
//! - `acc = 100 * questions right / questions` (an `other` answer is wrong),
//! - `acc+ = 100 * images with every question right / images`, an image being a `question_id`
//!   (MME's two questions of an image share it),
//! - `score = acc + acc+` (at most 200).
//!
//! `perception` is the sum of the scores of existence, count, position, color, posters, celebrity,
//! scene, landmark, artwork, OCR (at most 2000); `cognition` of commonsense_reasoning,
//! numerical_calculation, text_translation, code_reasoning (at most 800); `perception+cognition`
//! their sum (the pruning papers' "MME"; LLaVA's Model Zoo reports perception only). Subtask names
//! match ignoring case. Subtasks missing from the file are left out of the totals (with a note);
//! other categories get their own rows but are in no total. Both scripts assert two questions per
//! image; here an image with another count still counts for `acc+` when all its questions are right,
//! and a note says how many images that is.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

use super::{pct, row_error, single_answer, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::Mme;
const LMMS_EVAL: &str = "lmms-eval 0.7.3";

/// MME's 10 perception subtasks (also how a benchmark file is recognized as MME).
pub const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
/// MME's 4 cognition subtasks.
pub const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

/// A parsed MME answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YesNo {
    Yes,
    No,
    Other,
}

/// The first-4-characters rule shared by both conventions, on an already lower-cased answer.
fn prefix_rule(p: &str) -> YesNo {
    let prefix: String = p.chars().take(4).collect();
    if prefix.contains("yes") {
        YesNo::Yes
    } else if prefix.contains("no") {
        YesNo::No
    } else {
        YesNo::Other
    }
}

/// `calculation.py`'s `parse_pred_ans` after its `lower()`.
pub fn parse_official(prediction: &str) -> YesNo {
    let p = prediction.to_lowercase();
    match p.as_str() {
        "yes" => YesNo::Yes,
        "no" => YesNo::No,
        _ => prefix_rule(&p),
    }
}

/// lmms-eval's `parse_pred_ans`.
pub fn parse_lmms_eval(prediction: &str) -> YesNo {
    let p = prediction.to_lowercase().trim().replace('.', "");
    match p.as_str() {
        "yes" | "y" => YesNo::Yes,
        "no" | "n" => YesNo::No,
        _ if p.chars().count() == 1 => YesNo::Other,
        _ => prefix_rule(&p),
    }
}

/// The reference of a row: yes or no once lower-cased, stripped and stripped of `.`.
pub fn reference(row: usize, p: &Prediction) -> Result<YesNo> {
    let gt = single_answer(B, row, p)?
        .to_lowercase()
        .trim()
        .replace('.', "");
    match gt.as_str() {
        "yes" => Ok(YesNo::Yes),
        "no" => Ok(YesNo::No),
        _ => Err(row_error(
            B,
            row,
            p,
            &format!("column answers: {gt:?} is not yes or no"),
        )),
    }
}

/// 1 when `calculation.py` (`official`) parses the row's answer as its reference, else 0.
pub fn row_score(row: usize, p: &Prediction) -> Result<f64> {
    let right = parse_official(&p.prediction) == reference(row, p)?;
    Ok(if right { 1.0 } else { 0.0 })
}

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let mut gts = Vec::with_capacity(predictions.len());
    for (i, p) in predictions.iter().enumerate() {
        gts.push(reference(i, p)?);
    }
    // Subtasks in the official order, then any other category by name.
    let canonical = |c: &str| -> String {
        PERCEPTION
            .iter()
            .chain(COGNITION.iter())
            .find(|k| k.eq_ignore_ascii_case(c))
            .map_or_else(|| c.to_string(), |k| k.to_string())
    };
    let mut subtasks: Vec<String> = PERCEPTION
        .iter()
        .chain(COGNITION.iter())
        .map(|s| s.to_string())
        .filter(|s| predictions.iter().any(|p| canonical(&p.category) == *s))
        .collect();
    let mut others: Vec<String> = predictions
        .iter()
        .map(|p| canonical(&p.category))
        .filter(|c| !subtasks.contains(c))
        .collect();
    others.sort();
    others.dedup();
    subtasks.extend(others.iter().cloned());

    let mut table = ScoreTable::default();
    let mut odd_images = 0;
    for (convention, parse) in [
        ("official", parse_official as fn(&str) -> YesNo),
        (LMMS_EVAL, parse_lmms_eval as fn(&str) -> YesNo),
    ] {
        let mut per_task = Vec::new();
        for task in &subtasks {
            // question_id -> (questions, right)
            let mut images: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for (p, gt) in predictions.iter().zip(&gts) {
                if canonical(&p.category) != *task {
                    continue;
                }
                let e = images.entry(&p.question_id).or_default();
                e.0 += 1;
                e.1 += (parse(&p.prediction) == *gt) as usize;
            }
            let questions: usize = images.values().map(|e| e.0).sum();
            let right: usize = images.values().map(|e| e.1).sum();
            let both = images.values().filter(|e| e.0 == e.1).count();
            if convention == "official" {
                odd_images += images.values().filter(|e| e.0 != 2).count();
            }
            let (acc, acc_plus) = (pct(right, questions), pct(both, images.len()));
            per_task.push((task, acc, acc_plus, questions, images.len()));
        }
        let total = |names: &[&str]| {
            let t: Vec<_> = per_task
                .iter()
                .filter(|t| names.contains(&t.0.as_str()))
                .collect();
            (
                t.iter().map(|t| t.1 + t.2).sum::<f64>(),
                t.iter().map(|t| t.3).sum::<usize>(),
                t.len(),
            )
        };
        let (p, pn, pk) = total(&PERCEPTION);
        let (c, cn, ck) = total(&COGNITION);
        if pk + ck == 0 {
            bail!(
                "mme: no row's category is an MME subtask (found {})",
                others.join(", ")
            );
        }
        if pk > 0 {
            table.push(B, "perception", convention, p, pn);
        }
        if ck > 0 {
            table.push(B, "cognition", convention, c, cn);
        }
        table.push(B, "perception+cognition", convention, p + c, pn + cn);
        for (task, acc, acc_plus, questions, images) in per_task {
            table.push(
                B,
                format!("score/{task}"),
                convention,
                acc + acc_plus,
                questions,
            );
            table.push(B, format!("acc/{task}"), convention, acc, questions);
            table.push(B, format!("acc+/{task}"), convention, acc_plus, images);
        }
        if convention == "official" {
            let missing = |names: &[&'static str]| -> Vec<&'static str> {
                names
                    .iter()
                    .filter(|n| !subtasks.iter().any(|s| s == *n))
                    .copied()
                    .collect()
            };
            let (mp, mc) = (missing(&PERCEPTION), missing(&COGNITION));
            if !mp.is_empty() {
                table.note(
                    B,
                    format!(
                        "perception sums {pk} of 10 subtasks; missing: {}",
                        mp.join(", ")
                    ),
                );
            }
            if !mc.is_empty() {
                table.note(
                    B,
                    format!(
                        "cognition sums {ck} of 4 subtasks; missing: {}",
                        mc.join(", ")
                    ),
                );
            }
        }
    }
    if !others.is_empty() {
        table.note(
            B,
            format!(
                "categories that are not MME subtasks, in no total: {}",
                others.join(", ")
            ),
        );
    }
    if odd_images > 0 {
        table.note(
            B,
            format!(
                "{odd_images} images (question_id) do not have exactly 2 questions; MME pairs them, \
                 and acc+ here counts an image right when all its questions are"
            ),
        );
    }
    table.note(
        B,
        "official: MME eval_tool/calculation.py parsing (as LLaVA runs it); lmms-eval 0.7.3: \
         lmms_eval/tasks/mme/utils.py parsing (also strips '.', accepts y/n). Scores in MME points \
         (subtask = acc + acc+, at most 200)",
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use YesNo::*;

    #[test]
    fn parsing_by_both_conventions() {
        // (prediction, official, lmms-eval)
        let cases = [
            ("Yes", Yes, Yes),
            ("no", No, No),
            ("Yes, it is", Yes, Yes),
            ("yesterday", Yes, Yes), // "yest" holds "yes"
            ("Not really", No, No),
            ("know", No, No), // "know" holds "no"
            ("I think yes", Other, Other),
            ("Y", Other, Yes),
            ("n.", Other, No),
            ("..yes", Other, Yes), // lmms-eval removes the dots first
            (" yes", Yes, Yes),
            ("   yes", Other, Yes), // "   y"; lmms-eval strips
            ("nope", No, No),
            ("", Other, Other),
            ("x", Other, Other),
        ];
        for (p, off, lmms) in cases {
            assert_eq!(parse_official(p), off, "official {p:?}");
            assert_eq!(parse_lmms_eval(p), lmms, "lmms-eval {p:?}");
        }
    }
}
