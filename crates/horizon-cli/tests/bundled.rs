//! The bundled trained models (data/models/*): they load through the public loader, their logits equal
//! HF transformers' on the same weights (references from fixtures/make_bundled_refs.py), and they answer
//! the bundled benchmark above the accuracy floors the README reports, on a fixed slice.

mod common;
use common::{horizon, horizon_one_thread, root};

use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use std::path::PathBuf;
use tch::Tensor;

use horizon_data::bench::{self, ImageSource, OpenOptions};

fn bundled(name: &str) -> PathBuf {
    root().join("data/models").join(name)
}

fn bench_path() -> PathBuf {
    root().join("data/synthetic/test.parquet")
}

/// The first sample of every category, as the reference script picks them.
fn first_of_each_category() -> Vec<bench::Sample> {
    let b = bench::open(bench_path(), &OpenOptions::default()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for s in b.iter() {
        let s = s.unwrap();
        if seen.insert(s.category.clone()) {
            out.push(s);
        }
    }
    out
}

#[test]
fn bundled_models_match_hf() {
    let samples = first_of_each_category();
    assert_eq!(samples.len(), 5);
    let dir = tempfile::tempdir().unwrap();
    for name in ["horizon-large", "horizon-small"] {
        let refs: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(root().join(format!("fixtures/bundled/{name}.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root().join(format!("fixtures/bundled/{name}.json"))).unwrap(),
        )
        .unwrap();
        for (i, s) in samples.iter().enumerate() {
            assert_eq!(meta[i]["question_id"], s.id.as_str());
            let ImageSource::Bytes(png) = &s.image else {
                panic!("bundled images are embedded")
            };
            let image = dir.path().join(format!("{i}.png"));
            std::fs::write(&image, png).unwrap();
            let out = dir.path().join(format!("{name}-{i}.safetensors"));
            let (ok, _, err) = horizon_one_thread(&[
                "forward",
                "--model",
                bundled(name).to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--prompt",
                &s.question,
                "--save-logits",
                out.to_str().unwrap(),
            ]);
            assert!(ok, "{err}");
            let ours: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
                .unwrap()
                .into_iter()
                .collect();
            assert!(
                ours["input_ids"].equal(&refs[&format!("input_ids.{i}")]),
                "{name} {}: input ids differ from HF",
                s.id
            );
            // Relative to the largest reference logit: see `horizon_runner::parity`.
            let reference = &refs[&format!("logits.{i}")];
            let diff = max_abs_diff(&ours["logits"], reference);
            let tol = f32_logits_tolerance(reference);
            assert!(
                diff <= tol,
                "{name} {}: max |logit diff| {diff} (tolerance {tol})",
                s.id
            );

            let (ok, answer, err) = horizon_one_thread(&[
                "generate",
                "--model",
                bundled(name).to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--prompt",
                &s.question,
                "--max-new-tokens",
                "8",
            ]);
            assert!(ok, "{err}");
            assert_eq!(
                answer.trim(),
                meta[i]["hf_greedy_answer"].as_str().unwrap(),
                "{name} {}",
                s.id
            );
        }
    }
}

/// Regression floors on the first 20 samples of each category, per model: a little under what the
/// bundled models scored on that slice when they were committed (README, "The bundled benchmark and small
/// models", has the full-split numbers; `horizon-large` (run `large11`) scored 20 / 20 / 20 / 18 / 19 of 20 on
/// colour, presence, count, text, box). They are NOT the targets of the embedded-default issue (at least
/// 90% coarse, 60% reading for the larger model, checked on the full split, README), only a guard
/// against a regression; categories a model has not learned (the smaller model's reading) have no floor. Chance on 20
/// samples: colour 2.5, presence 10, count 4, reading under 1.
const FLOORS: [(&str, &[(&str, usize)]); 2] = [
    (
        "horizon-large",
        &[
            ("shape_color", 18),
            ("shape_exists", 18),
            ("count_circles", 18),
            ("read_text", 16),
            ("boxed_char", 17),
        ],
    ),
    (
        "horizon-small",
        &[
            ("shape_color", 17),
            ("shape_exists", 14),
            ("count_circles", 5),
        ],
    ),
];

#[test]
fn bundled_models_score_above_the_floors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, floors) in FLOORS {
        let out = dir.path().join(name);
        let (ok, table, err) = horizon(&[
            "eval",
            "--model",
            bundled(name).to_str().unwrap(),
            "--bench",
            bench_path().to_str().unwrap(),
            "--per-category",
            "20",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        // The per-sample file agrees with the score table, and its `correct` with its own answers.
        let rows =
            horizon_data::predictions::read_predictions(&out.join("predictions.parquet")).unwrap();
        assert_eq!(rows.len(), 100);
        let keys: std::collections::HashSet<_> = rows.iter().map(|r| &r.sample_key).collect();
        assert_eq!(keys.len(), 100, "one row per sample");
        let mut correct_by_cat: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in &rows {
            assert_eq!(r.benchmark, "synthetic");
            let norm = |s: &str| s.trim().trim_end_matches('.').to_lowercase();
            let matches = r.answers.iter().any(|a| norm(a) == norm(&r.prediction));
            assert_eq!(r.correct, matches, "{r:?}");
            *correct_by_cat.entry(&r.category).or_default() += r.correct as usize;
        }
        // scores.json: exact-match accuracy per category (the synthetic set has no official scorer).
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap())
                .unwrap();
        let accuracy = |cat: &str| -> f64 {
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["metric"] == format!("accuracy/{cat}").as_str())
                .unwrap_or_else(|| panic!("no accuracy/{cat} in {v}"))["value"]
                .as_f64()
                .unwrap()
        };
        for (cat, correct) in &correct_by_cat {
            assert!(
                (accuracy(cat) - 100.0 * *correct as f64 / 20.0).abs() < 1e-9,
                "{cat}"
            );
        }
        for (cat, floor) in floors {
            let correct = correct_by_cat.get(cat).copied().unwrap_or(0);
            assert!(
                correct >= *floor,
                "{name} {cat}: {correct}/20 below the floor {floor}/20\n{table}"
            );
        }
    }
}

/// `horizon demo` end to end on the bundled models (a small slice): info per model, statistics,
/// horizons and figures; a rerun continues the finished info runs instead of redoing them.
#[test]
fn demo_runs_end_to_end_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let args = [
        "demo",
        "--models",
        &format!(
            "{},{}",
            bundled("horizon-large").display(),
            bundled("horizon-small").display()
        ),
        "--bench",
        bench_path().to_str().unwrap(),
        "--per-category",
        "1",
        "--layers",
        "0,2,5",
        "--bootstrap",
        "50",
        "--format",
        "png",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, summary, err) = horizon(&argv);
    assert!(ok, "{err}");
    for model in ["horizon-large", "horizon-small"] {
        assert!(
            summary.contains(&format!("| {model} | (all) | 5 |")),
            "{summary}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("analysis/horizon.json")).unwrap())
            .unwrap();
    assert_eq!(report["models"].as_array().unwrap().len(), 2);
    for f in [
        "information_vs_layer.png",
        "information_vs_layer_models.png",
        "windows_horizon-large__all_.png",
        "layer_window_horizon-small_read_text.png",
    ] {
        assert!(out.join("figures").join(f).exists(), "{f} missing");
    }
    let (ok, _, err) = horizon(&argv);
    assert!(ok, "{err}");
    assert!(err.contains("5 samples (5 already done)"), "{err}");
}
