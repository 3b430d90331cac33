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
    assert_eq!(
        first.iter().filter(|p| p.0.ends_with(".parquet")).count(),
        2
    );
    assert!(
        first.iter().any(|p| p.0 == "DONE.json"),
        "a finished run writes DONE.json"
    );
    // A second run into the same directory is refused without --resume.
    let (ok, _, stderr) = horizon_owned(&args(&[]));
    assert_one_line_error(ok, &stderr, &["--resume"]);
    // Different settings are refused with --resume.
    let (ok, _, stderr) = horizon_owned(&args(&["--resume", "--window", "3"]));
    assert_one_line_error(ok, &stderr, &["window_size"]);
    // An interrupted run (the second part never written) continues to the same bytes.
    let last_part = first
        .iter()
        .filter(|p| p.0.ends_with(".parquet"))
        .map(|p| &p.0)
        .max()
        .unwrap();
    std::fs::remove_file(out.join(last_part)).unwrap();
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
    // A layer that was not measured is refused before any figure is written.
    let bad_figs = tmp.path().join("bad-figs");
    let (ok, _, stderr) = horizon_owned(&[
        "plot".into(),
        "--info".into(),
        s(&info),
        "--out".into(),
        s(&bad_figs),
        "--bootstrap".into(),
        "50".into(),
        "--layers".into(),
        "1,99".into(),
    ]);
    assert_one_line_error(ok, &stderr, &["--layers", "99"]);
    let left: Vec<_> = std::fs::read_dir(&bad_figs)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "figures left behind: {left:?}");
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

/// The rows `horizon info` writes for one sample, against HF running the same cuts
/// (`fixtures/hf_cut.py`, `fixtures/llava/reference/cut.*`): the target token, the layer −1 `full`
/// row, and for K = 1, 2 the text-only row and window 0's row (its place on the window grid) in both
/// modes.
#[test]
fn info_rows_match_hf_cut_forwards() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let refs = root().join("fixtures/llava/reference");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs.join("cut.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(image("square.png"), tmp.path().join("square.png")).unwrap();
    let q = tmp.path().join("q.jsonl");
    std::fs::write(
        &q,
        format!(
            "{}\n",
            serde_json::json!({"question_id": 7, "image": "square.png",
                "text": meta["question"], "answer": meta["answer"], "category": "color"})
        ),
    )
    .unwrap();
    let target = meta["target_token_id"].as_i64().unwrap();
    let tol = 5e-5 * 20.0; // the f32 logits tolerance at |logits| up to 20, doubled by log_softmax
    for (mode, variant) in [("keep-only", "keep_window0"), ("leave-out", "drop_window0")] {
        let out = tmp.path().join(mode);
        let (ok, _, stderr) = horizon_one_thread(&[
            "info",
            "--model",
            fixture_model().to_str().unwrap(),
            "--bench",
            q.to_str().unwrap(),
            "--image-dir",
            tmp.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--layers",
            "1,2",
            "--window",
            "2",
            "--mode",
            mode,
        ]);
        assert!(ok, "{stderr}");
        let mut seen = 0;
        for part in horizon_data::info_rows::part_files(&out).unwrap() {
            let reader = SerializedFileReader::new(std::fs::File::open(&part).unwrap()).unwrap();
            for row in reader.get_row_iter(None).unwrap() {
                let row = row.unwrap();
                let get = |name: &str| {
                    row.get_column_iter()
                        .find(|(n, _)| n.as_str() == name)
                        .map(|(_, f)| f.clone())
                        .unwrap()
                };
                let int = |name: &str| match get(name) {
                    Field::Int(v) => v as i64,
                    Field::Long(v) => v,
                    other => panic!("{name}: {other:?}"),
                };
                let float = |name: &str| match get(name) {
                    Field::Double(v) => v,
                    other => panic!("{name}: {other:?}"),
                };
                let text = |name: &str| match get(name) {
                    Field::Str(v) => v,
                    other => panic!("{name}: {other:?}"),
                };
                assert_eq!(int("target_token"), target);
                assert_eq!(text("mode"), mode);
                assert_eq!(text("sample_id"), "7");
                let (layer, kind, window) = (int("layer"), text("variant"), int("window"));
                let key = match (kind.as_str(), window) {
                    ("full", _) => {
                        assert_eq!(
                            (layer, window, int("window_row"), int("window_col")),
                            (-1, -1, -1, -1)
                        );
                        let hf = meta["full"]["log_p_y"].as_f64().unwrap();
                        assert!(
                            (float("logp") - hf).abs() <= tol,
                            "full: {} vs {hf}",
                            float("logp")
                        );
                        assert_eq!(float("kl"), 0.0);
                        seen += 1;
                        continue;
                    }
                    ("text_only", _) => "text_only",
                    ("window", 0) => {
                        assert_eq!((int("window_row"), int("window_col")), (0, 0));
                        variant
                    }
                    _ => continue,
                };
                let hf = &meta["results"][format!("K{layer}")][key];
                for (col, field) in [("logp", "log_p_y"), ("kl", "kl_full")] {
                    let want = hf[field].as_f64().unwrap();
                    assert!(
                        (float(col) - want).abs() <= 2.0 * tol,
                        "{mode} K={layer} {key} {col}: {} vs HF {want}",
                        float(col)
                    );
                }
                let p = hf["p_y"].as_f64().unwrap();
                assert!((float("p") - p).abs() <= p * 2.0 * tol + 1e-9);
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            1 + 2 * 2,
            "{mode}: full + (text-only, window 0) at 2 layers"
        );
    }
}

/// The analysis on what `horizon info` really writes (no grid metadata in the files, windows placed
/// by their row/column columns), on Qwen2.5-VL's non-square merged grid: the window layout is the
/// image's, and every window mean and layer mean equals a naive recomputation from the rows
/// (keep-only, p: I = p_window − p_text_only, averaged over samples).
#[test]
fn analysis_of_real_info_rows_on_a_non_square_grid() {
    use horizon_analysis::{analyze, read_info_rows, AnalysisParams, InfoMode, Metric};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use std::collections::BTreeMap;
    let model_dir = root().join("fixtures/qwen2_5_vl/models/qwen-tiny");
    let img = root().join("fixtures/qwen2_5_vl/images/nonsquare.png");
    let grid = {
        let model =
            horizon_runner::VlModel::load(&model_dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
        let processor = horizon_runner::processor::Processor::load(&model_dir, &model).unwrap();
        let inputs = processor
            .prepare(
                &model,
                "q",
                &img,
                horizon_runner::processor::PromptTemplate::Auto,
            )
            .unwrap();
        inputs.visual.grid
    };
    let (wr, wc) = (grid.0.div_ceil(2), grid.1.div_ceil(2));
    assert_ne!(
        wr, wc,
        "the fixture gives a non-square window grid ({grid:?})"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&img, tmp.path().join("nonsquare.png")).unwrap();
    let q = tmp.path().join("q.jsonl");
    let lines: Vec<String> = ["red", "blue", "green"]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::json!({"question_id": i, "image": "nonsquare.png",
                "text": format!("Which colour is shape {i}?"), "answer": a, "category": "colour"})
            .to_string()
        })
        .collect();
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    let out = tmp.path().join("info");
    let (ok, _, stderr) = horizon(&[
        "info",
        "--model",
        model_dir.to_str().unwrap(),
        "--bench",
        q.to_str().unwrap(),
        "--image-dir",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--layers",
        "all",
    ]);
    assert!(ok, "{stderr}");
    // Naive: (sample, layer) → text-only p, and (layer, window) → p values.
    let mut text: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut win: Vec<(String, i64, i64, f64)> = Vec::new();
    for part in horizon_data::info_rows::part_files(&out).unwrap() {
        let reader = SerializedFileReader::new(std::fs::File::open(&part).unwrap()).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let f: BTreeMap<String, Field> = row
                .get_column_iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let (Field::Str(sid), Field::Str(var), Field::Int(k), Field::Int(w), Field::Double(p)) = (
                &f["sample_id"],
                &f["variant"],
                &f["layer"],
                &f["window"],
                &f["p"],
            ) else {
                panic!("unexpected column types")
            };
            match var.as_str() {
                "text_only" => {
                    text.insert((sid.clone(), *k as i64), *p);
                }
                "window" => win.push((sid.clone(), *k as i64, *w as i64, *p)),
                _ => {}
            }
        }
    }
    let table = read_info_rows(&out).unwrap();
    let a = analyze(
        &table,
        &AnalysisParams {
            metric: Metric::P,
            mode: InfoMode::KeepOnly,
            bootstrap: 20,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (a.grid.rows, a.grid.cols, a.grid.n_windows),
        (wr, wc, wr * wc)
    );
    let g = a.group("qwen-tiny", "colour").unwrap();
    for (li, l) in g.layers.iter().enumerate() {
        let k = l.layer as i64;
        let mut per_sample: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for w in 0..(wr * wc) as i64 {
            let vals: Vec<f64> = win
                .iter()
                .filter(|v| v.1 == k && v.2 == w)
                .map(|v| v.3 - text[&(v.0.clone(), k)])
                .collect();
            assert_eq!(vals.len(), 3);
            let mean = vals.iter().sum::<f64>() / 3.0;
            let got = g.window_means[[li, w as usize]];
            assert!((got - mean).abs() < 1e-12, "K={k} w={w}: {got} vs {mean}");
            for v in win.iter().filter(|v| v.1 == k && v.2 == w) {
                per_sample
                    .entry(&v.0)
                    .or_default()
                    .push(v.3 - text[&(v.0.clone(), k)]);
            }
        }
        let sample_means: Vec<f64> = per_sample
            .values()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            .collect();
        let mean = sample_means.iter().sum::<f64>() / sample_means.len() as f64;
        assert!((l.mean - mean).abs() < 1e-12, "K={k}: {} vs {mean}", l.mean);
        assert_eq!(l.n_samples, 3);
    }
}
