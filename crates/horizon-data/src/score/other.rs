//! Any other benchmark (the synthetic one, or one without a scorer): exact-match accuracy
//! ([`crate::predictions::exact_match`]: trimmed, final `.`s dropped, lower-cased, equal to a
//! reference), recomputed from each row's prediction and answers (the stored `correct` column is
//! not trusted), over all rows and per category. Convention `exact match`.

use anyhow::Result;
use std::collections::BTreeMap;

use super::{pct, Benchmark, ScoreTable};
use crate::predictions::{exact_match, Prediction};

const B: Benchmark = Benchmark::Other;

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let right: Vec<bool> = predictions
        .iter()
        .map(|p| exact_match(&p.prediction, &p.answers))
        .collect();
    let mut table = ScoreTable::default();
    let ok = right.iter().filter(|&&r| r).count();
    table.push(
        B,
        "accuracy/all",
        "exact match",
        pct(ok, predictions.len()),
        predictions.len(),
    );
    let mut per_cat: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (p, r) in predictions.iter().zip(&right) {
        let e = per_cat.entry(&p.category).or_default();
        e.0 += *r as usize;
        e.1 += 1;
    }
    for (cat, (ok, n)) in per_cat {
        table.push(B, format!("accuracy/{cat}"), "exact match", pct(ok, n), n);
    }
    Ok(table)
}
