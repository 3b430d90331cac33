//! The `horizon` CLI contract on the tiny HF fixtures (written by fixtures/make_llava_fixtures.py with
//! transformers 5.17.0): `forward` output against HF logits, and one-line errors on bad input.

mod common;
use common::{horizon, horizon_one_thread, root};

use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use std::path::{Path, PathBuf};
use tch::Tensor;

fn fixture_model() -> PathBuf {
    root().join("fixtures/llava/models/llava-tiny")
}

fn image(name: &str) -> PathBuf {
    root().join("fixtures/llava/images").join(name)
}

fn horizon_owned(args: &[String]) -> (bool, String, String) {
    horizon(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Copies a checkpoint directory so a test can break it.
fn copy_model(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(fixture_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

fn reference_question(case: &str) -> String {
    let text =
        std::fs::read_to_string(root().join(format!("fixtures/llava/reference/{case}.json")))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["question"].as_str().unwrap().to_string()
}

/// Asserts a failed run printed exactly one `error:` line containing every `needle`, and no panic.
fn assert_one_line_error(ok: bool, stderr: &str, needles: &[&str]) {
    assert!(!ok, "expected failure, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {stderr}");
    }
}

fn run_forward(model: &Path, image_path: &Path, out: &Path) -> (bool, String, String) {
    horizon_one_thread(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image_path.to_str().unwrap(),
        "--prompt",
        &reference_question("square"),
        "--save-logits",
        out.to_str().unwrap(),
    ])
}

#[test]
fn forward_writes_hf_matching_logits_and_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sub/logits.safetensors");
    let (ok, _, stderr) = run_forward(&fixture_model(), &image("square.png"), &out);
    assert!(ok, "{stderr}");
    let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("fixtures/llava/reference/square.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(saved["input_ids"].kind(), tch::Kind::Int64);
    assert_eq!(saved["logits"].kind(), tch::Kind::Float);
    assert!(saved["input_ids"].equal(&reference["input_ids"]));
    assert_eq!(saved["logits"].size(), reference["logits"].size());
    let diff = max_abs_diff(&saved["logits"], &reference["logits"]);
    let tol = f32_logits_tolerance(&reference["logits"]);
    assert!(
        diff <= tol,
        "max abs logits difference {diff} (tolerance {tol})"
    );
}

/// A Qwen2.5-VL directory needs no extra flag: the model type comes from config.json.
#[test]
fn forward_and_generate_on_qwen2_5_vl_match_hf() {
    let dir = root().join("fixtures/qwen2_5_vl");
    let tmp = tempfile::tempdir().unwrap();
    for (case, model) in [
        ("nonsquare", "qwen-tiny"),
        ("tied_nonsquare", "qwen-tiny-tied"),
    ] {
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("reference/{case}.json"))).unwrap(),
        )
        .unwrap();
        let model_dir = dir.join("models").join(model);
        let image = dir.join(meta["image"].as_str().unwrap());
        let question = meta["question"].as_str().unwrap();
        let out = tmp.path().join(format!("{case}.safetensors"));
        let (ok, _, stderr) = horizon_one_thread(&[
            "forward",
            "--model",
            model_dir.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            question,
            "--save-logits",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
            .unwrap()
            .into_iter()
            .collect();
        let reference: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(format!("reference/{case}.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        assert!(
            saved["input_ids"].equal(&reference["input_ids"]),
            "{case}: ids"
        );
        let diff = max_abs_diff(&saved["logits"], &reference["logits"]);
        let tol = f32_logits_tolerance(&reference["logits"]);
        assert!(
            diff <= tol,
            "{case}: max abs logits difference {diff} (tolerance {tol})"
        );
        let (ok, stdout, stderr) = horizon_one_thread(&[
            "generate",
            "--model",
            model_dir.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            question,
            "--max-new-tokens",
            "16",
        ]);
        assert!(ok, "{stderr}");
        assert_eq!(
            stdout.trim_end_matches('\n'),
            meta["generate"]["generated_text"].as_str().unwrap(),
            "{case}: generated text differs from HF"
        );
    }
}

#[test]
fn missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    copy_model(&model);
    let shard = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("model-0000") && n.ends_with(".safetensors"))
        .max()
        .expect("a sharded fixture");
    std::fs::remove_file(model.join(&shard)).unwrap();
    let (ok, _, stderr) = run_forward(
        &model,
        &image("square.png"),
        &tmp.path().join("o.safetensors"),
    );
    assert_one_line_error(ok, &stderr, &[&shard, "missing"]);
}

#[test]
fn wrong_tensor_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    copy_model(&model);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let name = "language_model.model.layers.0.mlp.up_proj.weight";
    let shard = index["weight_map"][name]
        .as_str()
        .expect("legacy llava-hf names on disk");
    let mut tensors = Tensor::read_safetensors(model.join(shard)).unwrap();
    for (n, t) in tensors.iter_mut() {
        if n == name {
            *t = t.narrow(0, 0, t.size()[0] - 1).contiguous();
        }
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, model.join(shard)).unwrap();
    let (ok, _, stderr) = run_forward(
        &model,
        &image("square.png"),
        &tmp.path().join("o.safetensors"),
    );
    assert_one_line_error(ok, &stderr, &[shard, name, "shape"]);
}

#[test]
fn unknown_model_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    copy_model(&model);
    let path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["model_type"] = serde_json::json!("llava_next_video_pro");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (ok, _, stderr) = run_forward(
        &model,
        &image("square.png"),
        &tmp.path().join("o.safetensors"),
    );
    assert_one_line_error(
        ok,
        &stderr,
        &["config.json", "model_type", "llava_next_video_pro"],
    );
}

#[test]
fn missing_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    copy_model(&model);
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let (ok, _, stderr) = run_forward(
        &model,
        &image("square.png"),
        &tmp.path().join("o.safetensors"),
    );
    assert_one_line_error(ok, &stderr, &["tokenizer.json"]);
}

#[test]
fn unreadable_image_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let (ok, _, stderr) = run_forward(&fixture_model(), &bad, &tmp.path().join("o.safetensors"));
    assert_one_line_error(ok, &stderr, &["broken.png"]);
    let missing = tmp.path().join("nope.png");
    let (ok, _, stderr) = run_forward(
        &fixture_model(),
        &missing,
        &tmp.path().join("o.safetensors"),
    );
    assert_one_line_error(ok, &stderr, &["nope.png"]);
}

#[test]
fn bad_cli_values_are_rejected() {
    let m = fixture_model();
    let img = image("square.png");
    for (flag, value) in [("--dtype", "f8"), ("--device", "tpu")] {
        let (ok, _, stderr) = horizon(&[
            "forward",
            "--model",
            m.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--prompt",
            "hi",
            flag,
            value,
            "--save-logits",
            "/tmp/never-written.safetensors",
        ]);
        assert_one_line_error(ok, &stderr, &[flag, value]);
    }
    // Training options are checked before anything is built or written.
    let run_dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--vision-width", "100"),
        ("--vision-layers", "0"),
        ("--coarse-only-fraction", "1.5"),
        ("--pooled-count-weight", "inf"),
    ] {
        let (ok, _, stderr) = horizon(&[
            "train",
            "--steps",
            "10",
            "--run-dir",
            run_dir.path().join("run").to_str().unwrap(),
            flag,
            value,
        ]);
        assert_one_line_error(ok, &stderr, &[flag, value]);
        assert!(
            !run_dir.path().join("run").exists(),
            "{flag}: nothing written"
        );
    }
}

#[test]
fn generate_prints_an_answer() {
    let (ok, stdout, stderr) = horizon(&[
        "generate",
        "--model",
        fixture_model().to_str().unwrap(),
        "--image",
        image("square.png").to_str().unwrap(),
        "--prompt",
        &reference_question("square"),
        "--max-new-tokens",
        "4",
    ]);
    assert!(ok, "{stderr}");
    assert!(!stdout.trim().is_empty(), "no answer printed");
}

/// A LLaVA question jsonl over the fixture images.
fn jsonl_bench(dir: &Path) -> PathBuf {
    for name in ["square.png", "nonsquare.png"] {
        std::fs::copy(image(name), dir.join(name)).unwrap();
    }
    let q = dir.join("q.jsonl");
    std::fs::write(
        &q,
        concat!(
            r#"{"question_id": 1, "image": "square.png", "text": "What color is the circle?", "answer": "red", "category": "color"}"#,
            "\n",
            r#"{"question_id": 2, "image": "nonsquare.png", "text": "Describe the shape on the left.", "answer": "triangle", "category": "shape"}"#,
            "\n",
            r#"{"question_id": 3, "image": "square.png", "text": "How many lines are there?", "answer": "two", "category": "count"}"#,
            "\n"
        ),
    )
    .unwrap();
    q
}

fn parts(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn info_resume_reproduces_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let q = jsonl_bench(tmp.path());
    let out = tmp.path().join("out");
    let base: Vec<String> = [
        "info",
        "--model",
        fixture_model().to_str().unwrap(),
        "--bench",
        q.to_str().unwrap(),
        "--image-dir",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--samples-per-part",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let (ok, _, stderr) = horizon_owned(&args(&[]));
    assert!(ok, "{stderr}");
    let first = parts(&out);
    assert_eq!(first.len(), 2);
    // A second run into the same directory is refused without --resume.
    let (ok, _, stderr) = horizon_owned(&args(&[]));
    assert_one_line_error(ok, &stderr, &["--resume"]);
    // Different settings are refused with --resume.
    let (ok, _, stderr) = horizon_owned(&args(&["--resume", "--window", "3"]));
    assert_one_line_error(ok, &stderr, &["window_size"]);
    // An interrupted run (the second part never written) continues to the same bytes.
    std::fs::remove_file(out.join(&first[1].0)).unwrap();
    let (ok, _, stderr) = horizon_owned(&args(&["--resume"]));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("2 already done"), "{stderr}");
    assert_eq!(
        parts(&out),
        first,
        "resumed output differs from the uninterrupted run"
    );
}

/// samples → info rows → per-layer statistics and horizon → figures, through the CLI.
#[test]
fn info_horizon_plot_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let q = jsonl_bench(tmp.path());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let info = tmp.path().join("info");
    let (ok, _, stderr) = horizon_owned(&[
        "info".into(),
        "--model".into(),
        s(&fixture_model()),
        "--bench".into(),
        s(&q),
        "--image-dir".into(),
        s(tmp.path()),
        "--out".into(),
        s(&info),
        "--layers".into(),
        "all".into(),
    ]);
    assert!(ok, "{stderr}");
    let an = tmp.path().join("an");
    let (ok, stdout, stderr) = horizon_owned(&[
        "horizon".into(),
        "--info".into(),
        s(&info),
        "--out".into(),
        s(&an),
        "--bootstrap".into(),
        "50".into(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("llava-tiny"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(an.join("horizon.json")).unwrap()).unwrap();
    assert!(report["summary"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(an.join("layers.parquet").exists() && an.join("windows.parquet").exists());
    let figs = tmp.path().join("figs");
    let (ok, _, stderr) = horizon_owned(&[
        "plot".into(),
        "--info".into(),
        s(&info),
        "--out".into(),
        s(&figs),
        "--bootstrap".into(),
        "50".into(),
    ]);
    assert!(ok, "{stderr}");
    let png = image::open(figs.join("information_vs_layer.png")).expect("a readable PNG");
    assert!(png.width() > 100 && png.height() > 100);
    // Bad analysis values are one-line errors.
    let (ok, _, stderr) = horizon_owned(&[
        "horizon".into(),
        "--info".into(),
        s(&info),
        "--out".into(),
        s(&an),
        "--metric".into(),
        "f1".into(),
    ]);
    assert_one_line_error(ok, &stderr, &["--metric"]);
}
