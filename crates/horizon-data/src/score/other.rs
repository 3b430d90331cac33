//! Any other benchmark (the synthetic one, or one without a scorer): the accuracy of the `correct`
//! column ([`crate::predictions::exact_match`]: trimmed, final `.`s dropped, lower-cased, equal to a
//! reference), over all rows and per category. Convention `exact match`.

use anyhow::Result;
use std::collections::BTreeMap;

use super::{pct, Benchmark, ScoreTable};
use crate::predictions::Prediction;

const B: Benchmark = Benchmark::Other;

pub fn score(predictions: &[Prediction]) -> Result<ScoreTable> {
    let mut table = ScoreTable::default();
    let ok = predictions.iter().filter(|p| p.correct).count();
    table.push(
        B,
        "accuracy/all",
        "exact match",
        pct(ok, predictions.len()),
        predictions.len(),
    );
    let mut per_cat: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in predictions {
        let e = per_cat.entry(&p.category).or_default();
        e.0 += p.correct as usize;
        e.1 += 1;
    }
    for (cat, (ok, n)) in per_cat {
        table.push(B, format!("accuracy/{cat}"), "exact match", pct(ok, n), n);
    }
    Ok(table)
}
