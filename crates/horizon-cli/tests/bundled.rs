//! The bundled trained models (data/models/*): they load through the public loader, their logits equal
//! HF transformers' on the same weights (references from fixtures/make_bundled_refs.py), and they answer
//! the bundled benchmark above the accuracy floors the README reports, on a fixed slice.

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

use horizon_data::bench::{self, ImageSource, OpenOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bundled(name: &str) -> PathBuf {
    root().join("data/models").join(name)
}

fn bench_path() -> PathBuf {
    root().join("data/synthetic/test.parquet")
}

fn horizon(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args(args)
        .output()
        .expect("run horizon");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first sample of every category, as the reference script picks them.
fn first_of_each_category() -> Vec<bench::Sample> {
    let b = bench::open(&bench_path(), &OpenOptions::default()).unwrap();
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
        let refs: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(
            root().join(format!("fixtures/bundled/{name}.safetensors")),
        )
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
            let (ok, _, err) = horizon(&[
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
            let ours: std::collections::HashMap<String, Tensor> =
                Tensor::read_safetensors(&out).unwrap().into_iter().collect();
            assert!(
                ours["input_ids"].equal(&refs[&format!("input_ids.{i}")]),
                "{name} {}: input ids differ from HF",
                s.id
            );
            let diff = (&ours["logits"] - &refs[&format!("logits.{i}")])
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-4, "{name} {}: max |logit diff| {diff}", s.id);

            let (ok, answer, err) = horizon(&[
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

/// Accuracy floors on the first 20 samples of each category (the README reports the full split).
/// Coarse: shape_color, shape_exists, count_circles; reading: read_text, boxed_char.
const FLOORS: [(&str, f64, f64); 2] = [("horizon-large", 0.9, 0.6), ("horizon-small", 0.5, 0.1)];

#[test]
fn bundled_models_score_above_the_floors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, coarse, reading) in FLOORS {
        let json = dir.path().join(format!("{name}.json"));
        let (ok, table, err) = horizon(&[
            "eval",
            "--model",
            bundled(name).to_str().unwrap(),
            "--bench",
            bench_path().to_str().unwrap(),
            "--per-category",
            "20",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let cats = v.as_object().unwrap();
        assert_eq!(cats.len(), 5, "{table}");
        for (cat, r) in cats {
            let (ok, n) = (r["correct"].as_f64().unwrap(), r["total"].as_f64().unwrap());
            assert_eq!(n, 20.0, "{cat}");
            let floor = if cat == "read_text" || cat == "boxed_char" {
                reading
            } else {
                coarse
            };
            assert!(
                ok / n >= floor,
                "{name} {cat}: {ok}/{n} below the floor {floor}\n{table}"
            );
        }
    }
}
