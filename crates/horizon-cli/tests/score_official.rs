//! `horizon score` held to the official scoring code (the numbers `fixtures/official_scores.py`
//! got from lmms-eval 0.7.3 and ports of LLaVA's scripts on `fixtures/official/*.jsonl`), and
//! `horizon eval` on data it must check before the model loads or answer without an image.

mod common;

use common::{horizon, root};
use std::path::Path;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn llava() -> String {
    s(&root().join("fixtures/llava/models/llava-tiny"))
}

#[test]
fn horizon_score_equals_the_official_code_on_every_benchmark() {
    let tmp = tempfile::tempdir().unwrap();
    let official: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/official/scores.json")).unwrap(),
    )
    .unwrap();
    for (bench, want) in official.as_object().unwrap() {
        let text = std::fs::read_to_string(root().join(format!("fixtures/official/{bench}.jsonl")))
            .unwrap();
        let mut rows: Vec<horizon_data::predictions::Prediction> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // `score` recomputes from predictions and answers: a stored `correct` is not trusted.
        for r in &mut rows {
            r.correct = !r.correct;
        }
        let preds = tmp.path().join(format!("{bench}.parquet"));
        horizon_data::predictions::write_predictions(&preds, &rows, &[]).unwrap();
        let json = tmp.path().join(format!("{bench}.json"));
        let (ok, _, err) = horizon(&["score", "--predictions", &s(&preds), "--json", &s(&json)]);
        assert!(ok, "{bench}: {err}");
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for w in want.as_array().unwrap() {
            let row = got["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["metric"] == w["metric"] && r["convention"] == w["convention"])
                .unwrap_or_else(|| panic!("{bench}: no {} / {}", w["metric"], w["convention"]));
            let (g, v) = (row["value"].as_f64().unwrap(), w["value"].as_f64().unwrap());
            assert!(
                (g - v).abs() < 1e-9,
                "{bench} {} / {}: horizon {g} != official {v}",
                w["metric"],
                w["convention"]
            );
        }
    }
}

#[test]
fn eval_on_scienceqa_full_answers_text_only_questions_and_reports_overall_and_img() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sqa");
    let (ok, _, err) = horizon(&[
        "eval",
        "--model",
        &llava(),
        "--bench",
        &s(&root().join("fixtures/bench/hf/scienceqa/ScienceQA-FULL")),
        "--out",
        &s(&out),
        "--max-new-tokens",
        "2",
    ]);
    assert!(ok, "{err}");
    // The detected benchmark, the prompt style and the first prompt come first.
    assert!(
        err.contains(
            "horizon eval: benchmark scienceqa (detected), scorer scienceqa, prompt style llava"
        ),
        "{err}"
    );
    // The whole prompt the model gets: chat template, image placeholder, question, options.
    assert!(
        err.contains(
            "first prompt (sample 0):\n    USER: <image>\n    Which of these states is farthest north?\n    A. West Virginia"
        ),
        "{err}"
    );
    let preds =
        horizon_data::predictions::read_predictions(&out.join("predictions.parquet")).unwrap();
    assert_eq!(preds.len(), 2);
    assert_eq!(
        preds.iter().map(|p| p.has_image).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(
        preds[1].visual_tokens_layer0,
        Some(0),
        "no image, no visual tokens"
    );
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    let n = |metric: &str| {
        scores["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == metric && r["convention"] == "llava")
            .map(|r| r["n"].as_u64().unwrap())
    };
    assert_eq!(n("accuracy"), Some(2), "overall: every question");
    assert_eq!(
        n("img_accuracy"),
        Some(1),
        "IMG: the question with an image"
    );
    // Each row's `correct` is what the score counts.
    for p in &preds {
        let mut again = p.clone();
        horizon_data::score::fill_outcome(None, 0, &mut again).unwrap();
        assert_eq!(again.correct, p.correct);
        assert_eq!(again.score, p.score);
    }
}

#[test]
fn eval_checks_the_data_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    // A model directory that does not exist: an error about the data proves it came first.
    let missing_model = s(&tmp.path().join("no-model"));
    let eval = |bench: &str, extra: &[&str]| {
        let out = s(&tmp.path().join("out"));
        let mut args = vec![
            "eval",
            "--model",
            &missing_model,
            "--bench",
            bench,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        horizon(&args)
    };
    // GQA answers scored as MME: refused, naming the sample.
    let gqa = s(&root().join("fixtures/bench/hf/gqa"));
    let (ok, _, err) = eval(&gqa, &["--scorer", "mme"]);
    assert!(!ok);
    assert!(
        err.contains("the mme scorer cannot score its reference answer")
            && err.contains("is not yes or no")
            && !err.contains("no-model"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // An image that does not decode.
    let bad = s(&root().join("fixtures/bench/bad/mme_bad_image.parquet"));
    let (ok, _, err) = eval(&bad, &[]);
    assert!(!ok);
    assert!(
        err.contains("mme_bad_image.parquet") && !err.contains("no-model"),
        "{err}"
    );
    assert!(!tmp.path().join("out").exists(), "nothing written");
}
