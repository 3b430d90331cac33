//! The scorers held to the official scoring code itself: `fixtures/official_scores.py` ran
//! lmms-eval 0.7.3's task functions and ports of LLaVA's and MME's scripts (cited there) on the
//! prediction sets of `fixtures/official/*.jsonl` and wrote their numbers to
//! `fixtures/official/scores.json`, and each row's value of the benchmark's first convention to the
//! row's `correct` and `score`. Every official number must come out of horizon's scorer, and every
//! row's outcome out of `row_score`. Values agree to 1e-9 (the same sums, in another order).

use std::path::{Path, PathBuf};

use horizon_data::predictions::{read_predictions, write_predictions, Prediction};
use horizon_data::score::{fill_outcome, score, Benchmark};

fn official(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/official")
        .join(name)
}

/// The fixture's rows, through a Parquet predictions file.
fn load(bench: &str) -> Vec<Prediction> {
    let text = std::fs::read_to_string(official(&format!("{bench}.jsonl"))).unwrap();
    let rows: Vec<Prediction> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{bench}: {e}: {l}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write_predictions(&path, &rows, &[]).unwrap();
    let back = read_predictions(&path).unwrap();
    assert_eq!(back, rows);
    back
}

fn expected(bench: &str) -> Vec<(String, String, f64)> {
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(official("scores.json")).unwrap()).unwrap();
    all[bench]
        .as_array()
        .unwrap_or_else(|| panic!("no {bench} in scores.json"))
        .iter()
        .map(|r| {
            (
                r["metric"].as_str().unwrap().to_string(),
                r["convention"].as_str().unwrap().to_string(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn check(bench: &str, b: Benchmark, rows_at_least: usize) {
    let rows = load(bench);
    assert!(rows.len() >= rows_at_least, "{bench}: {} rows", rows.len());
    let table = score(b, &rows).unwrap();
    let want = expected(bench);
    assert!(!want.is_empty());
    for (metric, convention, value) in &want {
        let got = table.get(metric, convention).unwrap_or_else(|| {
            panic!(
                "{bench}: no {metric} / {convention} in\n{}",
                table.to_markdown()
            )
        });
        assert!(
            (got.value - value).abs() < 1e-9,
            "{bench} {metric} / {convention}: horizon {} != official {value}",
            got.value
        );
    }
    let mut right_rows = 0;
    for (i, row) in rows.iter().enumerate() {
        let mut mine = row.clone();
        mine.correct = !row.correct;
        mine.score = None;
        fill_outcome(None, i, &mut mine).unwrap();
        assert_eq!(
            mine.correct, row.correct,
            "{bench} row {i} ({:?}): correct",
            row.prediction
        );
        let (got, want) = (mine.score.unwrap(), row.score.unwrap());
        assert!(
            (got - want).abs() < 1e-12,
            "{bench} row {i} ({:?}): score {got} != {want}",
            row.prediction
        );
        right_rows += row.correct as usize;
    }
    // The sets are varied: some rows right, some wrong.
    assert!(right_rows > 0 && right_rows < rows.len(), "{bench}");
}

#[test]
fn mme_equals_calculation_py_and_lmms_eval() {
    check("mme", Benchmark::Mme, 200);
}

#[test]
fn pope_equals_eval_pope_py_and_lmms_eval() {
    check("pope", Benchmark::Pope, 200);
}

#[test]
fn textvqa_equals_m4c_evaluator_and_lmms_eval() {
    check("textvqa", Benchmark::TextVqa, 200);
}

#[test]
fn scienceqa_overall_and_img_equal_eval_science_qa_py_and_lmms_eval() {
    let rows = load("scienceqa");
    let text_only = rows.iter().filter(|r| !r.has_image).count();
    assert!(text_only > 50 && text_only < rows.len(), "{text_only}");
    check("scienceqa", Benchmark::ScienceQa, 200);
}

#[test]
fn gqa_equals_llava_conversion_and_lmms_eval() {
    check("gqa", Benchmark::Gqa, 200);
}

#[test]
fn mmbench_circular_over_every_original_row_equals_lmms_eval_static() {
    let rows = load("mmbench");
    // Incomplete groups and copies without their original row are part of the set.
    let originals = rows.iter().filter(|r| r.index.unwrap() < 1_000_000).count();
    assert!(originals < rows.len());
    check("mmbench", Benchmark::MmBench, 200);
}
