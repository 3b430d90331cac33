//! Hostile input over every subcommand: broken checkpoints, configs, tokenizers, processor files,
//! images, benchmarks and CLI values. Each case must exit non-zero with exactly one `error:` line that
//! names the file, field, tensor or option at fault, never panic, and leave nothing behind: the
//! output's directory is scanned before and after, and only a case that fails after a part was
//! committed may leave those parts (whole ones, no temporary file).

mod common;

use common::{horizon, root};
use std::path::{Path, PathBuf};
use tch::Tensor;

struct Case {
    name: &'static str,
    /// The arguments, given the case's scratch directory.
    args: Vec<String>,
    /// Text the error line must contain.
    needles: Vec<String>,
    /// Where output would have gone: it must not exist afterwards, and nothing may appear in its
    /// directory (or below) but `kept`.
    out: PathBuf,
    /// What a case that fails after committing parts leaves: exactly these paths are new.
    kept: Vec<PathBuf>,
}

fn llava() -> PathBuf {
    root().join("fixtures/llava/models/llava-tiny")
}

fn qwen() -> PathBuf {
    root().join("fixtures/qwen2_5_vl/models/qwen-tiny")
}

fn image() -> PathBuf {
    root().join("fixtures/llava/images/square.png")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A copy of `model` in `dir/m` with its config.json changed by `edit`.
fn with_config(dir: &Path, model: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let m = dir.join("m");
    copy_dir(model, &m);
    let path = m.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    m
}

/// A copy of `model` in `dir/m` with `file` replaced by `contents`.
fn with_file(dir: &Path, model: &Path, file: &str, contents: &[u8]) -> PathBuf {
    let m = dir.join("m");
    copy_dir(model, &m);
    std::fs::write(m.join(file), contents).unwrap();
    m
}

/// A copy of llava-tiny in `dir/m` with tensor `name` (legacy name) changed by `edit`.
fn with_tensor(dir: &Path, name: &str, edit: impl Fn(&Tensor) -> Tensor) -> PathBuf {
    let m = dir.join("m");
    copy_dir(&llava(), &m);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(m.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = index["weight_map"][name].as_str().unwrap().to_string();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(m.join(&shard))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let t = if n == name { edit(&t) } else { t };
            (n, t)
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, m.join(&shard)).unwrap();
    m
}

fn forward(model: &Path, image: &Path, out: &Path) -> Vec<String> {
    [
        "forward",
        "--model",
        &s(model),
        "--image",
        &s(image),
        "--prompt",
        "What color is the circle?",
        "--save-logits",
        &s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// A LLaVA question jsonl in `dir` with the given lines, over the fixture image.
fn jsonl(dir: &Path, lines: &[&str]) -> PathBuf {
    std::fs::copy(image(), dir.join("square.png")).unwrap();
    let q = dir.join("q.jsonl");
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    q
}

const GOOD_LINE: &str = r#"{"question_id": 1, "image": "square.png", "text": "What color is the circle?", "answer": "red", "category": "color"}"#;

fn info(model: &Path, bench: &Path, dir: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "info",
        "--model",
        &s(model),
        "--bench",
        &s(bench),
        "--image-dir",
        &s(dir),
        "--out",
        &s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    a.extend(extra.iter().map(|e| e.to_string()));
    a
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn checkpoint_cases(d: &Path) -> Vec<Case> {
    let out = d.join("logits.safetensors");
    let img = image();
    let mut cases = Vec::new();
    let mut add = |name: &'static str, model: PathBuf, needles: &[&str]| {
        cases.push(Case {
            name,
            args: forward(&model, &img, &out),
            needles: strs(needles),
            out: out.clone(),
            kept: Vec::new(),
        });
    };
    let sub = |n: &str| {
        let p = d.join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    add("model dir missing", d.join("nope"), &["nope", "not found"]);
    add(
        "LLaVA-NeXT chat template --template auto cannot tell",
        with_file(
            &sub("cn1"),
            &root().join("fixtures/llava_next/models/llava-next-tiny"),
            "chat_template.jinja",
            b"{% for message in messages %}<start_of_turn>{{ message['role'] }}{% endfor %}",
        ),
        &["--template auto", "chat_template.jinja"],
    );
    add(
        "config.json invalid",
        with_file(&sub("c1"), &llava(), "config.json", b"{not json"),
        &["config.json", "invalid JSON"],
    );
    add(
        "config.json truncated",
        with_file(
            &sub("c2"),
            &llava(),
            "config.json",
            br#"{"model_type": "llava", "text_con"#,
        ),
        &["config.json"],
    );
    add(
        "model_type missing",
        with_config(&sub("c3"), &llava(), |c| {
            c.as_object_mut().unwrap().remove("model_type");
        }),
        &["config.json", "model_type"],
    );
    add(
        "model_type unknown",
        with_config(&sub("c4"), &llava(), |c| {
            c["model_type"] = "llava_pro".into()
        }),
        &["model_type", "llava_pro"],
    );
    add(
        "zero decoder layers",
        with_config(&sub("c5"), &llava(), |c| {
            c["text_config"]["num_hidden_layers"] = 0.into()
        }),
        &["text_config.num_hidden_layers", "positive"],
    );
    add(
        "fewer layers than the checkpoint",
        with_config(&sub("c6"), &llava(), |c| {
            c["text_config"]["num_hidden_layers"] = 3.into()
        }),
        &["layers.3", "not used"],
    );
    add(
        "more layers than the checkpoint",
        with_config(&sub("c7"), &llava(), |c| {
            c["text_config"]["num_hidden_layers"] = 5.into()
        }),
        &["layers.4", "not found"],
    );
    add(
        "kv heads do not divide heads",
        with_config(&sub("c8"), &llava(), |c| {
            c["text_config"]["num_key_value_heads"] = 3.into()
        }),
        &["text_config.num_key_value_heads"],
    );
    add(
        "negative rms_norm_eps",
        with_config(&sub("c9"), &llava(), |c| {
            c["text_config"]["rms_norm_eps"] = (-1e-6).into()
        }),
        &["text_config.rms_norm_eps"],
    );
    add(
        "string where a number belongs",
        with_config(&sub("c10"), &llava(), |c| {
            c["text_config"]["hidden_size"] = "wide".into()
        }),
        &["config.json", "text_config"],
    );
    add(
        "vision heads do not divide hidden size",
        with_config(&sub("c11"), &llava(), |c| {
            c["vision_config"]["num_attention_heads"] = 5.into()
        }),
        &["vision_config.num_attention_heads"],
    );
    add(
        "unsupported rope scaling",
        with_config(&sub("c12"), &llava(), |c| {
            c["text_config"]["rope_scaling"] =
                serde_json::json!({"rope_type": "linear", "factor": 2.0})
        }),
        &["rope_scaling", "linear"],
    );
    add(
        "unknown activation",
        with_config(&sub("c13"), &llava(), |c| {
            c["text_config"]["hidden_act"] = "swoosh".into()
        }),
        &["hidden_act", "swoosh"],
    );
    add(
        "vision feature layer out of range",
        with_config(&sub("c14"), &llava(), |c| {
            c["vision_feature_layer"] = 40.into()
        }),
        &["vision_feature_layer"],
    );
    add(
        "qwen zero kv heads",
        with_config(&sub("c15"), &qwen(), |c| {
            c["text_config"]["num_key_value_heads"] = 0.into()
        }),
        &["num_key_value_heads"],
    );
    add(
        "qwen bad mrope section",
        with_config(&sub("c16"), &qwen(), |c| {
            c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([1, 1, 1])
        }),
        &["mrope_section"],
    );
    add(
        "qwen zero patch size",
        with_config(&sub("c17"), &qwen(), |c| {
            c["vision_config"]["patch_size"] = 0.into()
        }),
        &["vision_config.patch_size"],
    );
    add(
        "tensor stored as int32",
        with_tensor(&sub("t1"), "language_model.model.norm.weight", |t| {
            t.to_kind(tch::Kind::Int)
        }),
        &["language_model.model.norm.weight", "Int"],
    );
    add(
        "tensor of the wrong shape",
        with_tensor(
            &sub("t2"),
            "language_model.model.layers.0.mlp.up_proj.weight",
            |t| t.narrow(0, 0, 3).contiguous(),
        ),
        &["up_proj.weight", "shape"],
    );
    add(
        "NaN weights",
        with_tensor(&sub("t3"), "language_model.model.norm.weight", |t| {
            t.fill(f64::NAN)
        }),
        &["not finite"],
    );
    let m = sub("t4").join("m");
    copy_dir(&llava(), &m);
    let shard = m.join("model-00001-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    add("truncated shard", m, &["model-00001-of-00003.safetensors"]);
    let m = sub("t5").join("m");
    copy_dir(&llava(), &m);
    std::fs::remove_file(m.join("model-00002-of-00003.safetensors")).unwrap();
    add(
        "missing shard",
        m,
        &["model-00002-of-00003.safetensors", "missing"],
    );
    add(
        "shard index invalid",
        with_file(&sub("t6"), &llava(), "model.safetensors.index.json", b"[]"),
        &["model.safetensors.index.json"],
    );
    let m = sub("t7").join("m");
    copy_dir(&llava(), &m);
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ] {
        std::fs::remove_file(m.join(f)).unwrap();
    }
    add("no weights at all", m, &["no model.safetensors"]);
    add(
        "tokenizer invalid",
        with_file(&sub("k1"), &llava(), "tokenizer.json", b"{\"model\": 3}"),
        &["tokenizer.json"],
    );
    let m = sub("k2").join("m");
    copy_dir(&llava(), &m);
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    add("tokenizer missing", m, &["tokenizer.json", "not found"]);
    let m = sub("p1").join("m");
    copy_dir(&llava(), &m);
    std::fs::remove_file(m.join("preprocessor_config.json")).unwrap();
    std::fs::remove_file(m.join("processor_config.json")).unwrap();
    add(
        "no image processor settings",
        m,
        &["preprocessor_config.json", "processor_config.json"],
    );
    let zero_std = {
        let p = std::fs::read_to_string(llava().join("preprocessor_config.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&p).unwrap();
        v["image_std"] = serde_json::json!([0.0, 0.2, 0.2]);
        v.to_string()
    };
    add(
        "zero image_std",
        with_file(
            &sub("p2"),
            &llava(),
            "preprocessor_config.json",
            zero_std.as_bytes(),
        ),
        &["preprocessor_config.json", "image_std"],
    );
    add(
        "preprocessor invalid",
        with_file(&sub("p3"), &llava(), "preprocessor_config.json", b"[1, 2]"),
        &["preprocessor_config.json"],
    );
    cases
}

fn image_and_value_cases(d: &Path) -> Vec<Case> {
    let out = d.join("logits.safetensors");
    let m = llava();
    let mut cases = Vec::new();
    let broken = d.join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let empty = d.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    for (name, img, needle) in [
        ("image missing", d.join("nope.png"), "nope.png"),
        ("image undecodable", broken, "broken.png"),
        ("image empty", empty, "empty.png"),
    ] {
        cases.push(Case {
            name,
            args: forward(&m, &img, &out),
            needles: strs(&[needle]),
            out: out.clone(),
            kept: Vec::new(),
        });
    }
    let base = forward(&m, &image(), &out);
    for (name, flag, value) in [
        ("unknown device", "--device", "tpu"),
        ("cuda index out of range", "--device", "cuda:99"),
        ("unknown dtype", "--dtype", "f8"),
        ("unknown template", "--template", "chatml"),
        ("bad pillow version", "--pillow-version", "twelve"),
    ] {
        let mut args = base.clone();
        args.extend([flag.to_string(), value.to_string()]);
        cases.push(Case {
            name,
            args,
            needles: strs(&[flag, value]),
            out: out.clone(),
            kept: Vec::new(),
        });
    }
    let gen = |extra: &[&str]| -> Vec<String> {
        let mut a = strs(&[
            "generate",
            "--model",
            &s(&m),
            "--image",
            &s(&image()),
            "--prompt",
            "hi",
        ]);
        a.extend(strs(extra));
        a
    };
    cases.push(Case {
        name: "generate zero tokens",
        args: gen(&["--max-new-tokens", "0"]),
        needles: strs(&["--max-new-tokens"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    cases.push(Case {
        name: "raw template without placeholder",
        args: gen(&["--template", "raw"]),
        needles: strs(&["<image>"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    cases.push(Case {
        name: "qwen with a llava template",
        args: strs(&[
            "generate",
            "--model",
            &s(&qwen()),
            "--image",
            &s(&image()),
            "--prompt",
            "hi",
            "--template",
            "llava-hf",
        ]),
        needles: strs(&["LLaVA template"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    cases
}

fn info_cases(d: &Path) -> Vec<Case> {
    let q = jsonl(d, &[GOOD_LINE]);
    let out = d.join("info-out");
    let m = llava();
    let mut cases = Vec::new();
    for (name, extra, needle) in [
        ("window 0", vec!["--window", "0"], "--window"),
        (
            "layer out of range",
            vec!["--layers", "9"],
            "layer 9 does not exist",
        ),
        ("empty layer range", vec!["--layers", "3-1"], "empty range"),
        (
            "layer not a number",
            vec!["--layers", "one"],
            "'one' is not a layer number",
        ),
        ("unknown mode", vec!["--mode", "drop"], "--mode"),
        ("unknown target", vec!["--target", "best"], "--target"),
        ("batch size 0", vec!["--batch-size", "0"], "--batch-size"),
        (
            "samples per part 0",
            vec!["--samples-per-part", "0"],
            "--samples-per-part",
        ),
        (
            "per category 0",
            vec!["--per-category", "0"],
            "--per-category",
        ),
        ("limit 0", vec!["--limit", "0"], "no sample"),
        ("shard out of range", vec!["--shard", "2/2"], "--shard"),
        ("shard not i/n", vec!["--shard", "half"], "--shard"),
        (
            "negative time budget",
            vec!["--time-budget-min", "-5"],
            "--time-budget-min",
        ),
        (
            "zero max samples",
            vec!["--max-samples-per-run", "0"],
            "--max-samples-per-run",
        ),
    ] {
        cases.push(Case {
            name,
            args: info(&m, &q, d, &out, &extra),
            needles: strs(&[needle]),
            out: out.clone(),
            kept: Vec::new(),
        });
    }
    let bd = d.join("benches");
    std::fs::create_dir_all(&bd).unwrap();
    let bad_json = {
        let sub = bd.join("a");
        std::fs::create_dir_all(&sub).unwrap();
        (jsonl(&sub, &[GOOD_LINE, "{\"question_id\": 2, "]), sub)
    };
    cases.push(Case {
        name: "jsonl line not JSON",
        args: info(&m, &bad_json.0, &bad_json.1, &out, &[]),
        needles: strs(&["q.jsonl", "2"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let no_text = {
        let sub = bd.join("b");
        std::fs::create_dir_all(&sub).unwrap();
        (
            jsonl(&sub, &[r#"{"question_id": 1, "image": "square.png"}"#]),
            sub,
        )
    };
    cases.push(Case {
        name: "jsonl without a question",
        args: info(&m, &no_text.0, &no_text.1, &out, &[]),
        needles: strs(&["q.jsonl", "text"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let empty = {
        let sub = bd.join("c");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("q.jsonl"), "").unwrap();
        (sub.join("q.jsonl"), sub)
    };
    cases.push(Case {
        name: "empty benchmark",
        args: info(&m, &empty.0, &empty.1, &out, &[]),
        needles: strs(&["no sample"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    cases.push(Case {
        name: "benchmark missing",
        args: info(&m, &d.join("nope.jsonl"), d, &out, &[]),
        needles: strs(&["nope.jsonl"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let missing_image = {
        let sub = bd.join("e");
        std::fs::create_dir_all(&sub).unwrap();
        let q = sub.join("q.jsonl");
        std::fs::write(&q, GOOD_LINE.replace("square.png", "gone.png") + "\n").unwrap();
        (q, sub)
    };
    cases.push(Case {
        name: "benchmark image missing",
        args: info(&m, &missing_image.0, &missing_image.1, &out, &[]),
        needles: strs(&["gone.png"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let not_parquet = d.join("fake.parquet");
    std::fs::write(&not_parquet, b"PAR1 nope").unwrap();
    cases.push(Case {
        name: "parquet unreadable",
        args: info(&m, &not_parquet, d, &out, &[]),
        needles: strs(&["fake.parquet"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let file_as_out = d.join("a-file");
    std::fs::write(&file_as_out, b"x").unwrap();
    cases.push(Case {
        name: "out is a file",
        args: info(&m, &q, d, &file_as_out, &[]),
        needles: strs(&["--out", "a-file"]),
        out: file_as_out.join("part-000000.parquet"),
        kept: Vec::new(),
    });
    cases
}

fn analysis_and_other_cases(d: &Path) -> Vec<Case> {
    let out = d.join("analysis-out");
    let info_dir = d.join("no-info");
    let mut cases = Vec::new();
    let horizon_cmd = |extra: &[&str]| -> Vec<String> {
        let mut a = strs(&["horizon", "--info", &s(&info_dir), "--out", &s(&out)]);
        a.extend(strs(extra));
        a
    };
    for (name, extra, needle) in [
        ("threshold NaN", vec!["--threshold", "NaN"], "--threshold"),
        (
            "threshold negative",
            vec!["--threshold", "-0.1"],
            "--threshold",
        ),
        (
            "absolute threshold inf",
            vec!["--absolute-threshold", "inf"],
            "--absolute-threshold",
        ),
        ("bootstrap 0", vec!["--bootstrap", "0"], "--bootstrap"),
        (
            "confidence 1.5",
            vec!["--confidence", "1.5"],
            "--confidence",
        ),
        ("unknown metric", vec!["--metric", "f1"], "--metric"),
        ("info rows missing", vec![], "no-info"),
    ] {
        cases.push(Case {
            name,
            args: horizon_cmd(&extra),
            needles: strs(&[needle]),
            out: out.clone(),
            kept: Vec::new(),
        });
    }
    cases.push(Case {
        name: "plot format gif",
        args: strs(&[
            "plot",
            "--info",
            &s(&info_dir),
            "--out",
            &s(&out),
            "--format",
            "gif",
        ]),
        needles: strs(&["--format", "gif"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let synth_out = d.join("synth.parquet");
    for (name, extra, needle) in [
        (
            "synth image size huge",
            vec!["--image-size", "100000"],
            "--image-size",
        ),
        (
            "synth per category 0",
            vec!["--per-category", "0"],
            "--per-category",
        ),
        (
            "synth zero glyphs",
            vec!["--max-glyphs", "0"],
            "--max-glyphs",
        ),
    ] {
        let mut args = strs(&["synth", "--out", &s(&synth_out)]);
        args.extend(strs(&extra));
        cases.push(Case {
            name,
            args,
            needles: strs(&[needle]),
            out: synth_out.clone(),
            kept: Vec::new(),
        });
    }
    let eval_out = d.join("eval-out");
    let q = jsonl(d, &[GOOD_LINE]);
    for (name, extra, needle) in [
        (
            "eval per category 0",
            vec!["--per-category", "0"],
            "--per-category",
        ),
        ("eval unknown scorer", vec!["--scorer", "vqa9"], "--scorer"),
        (
            "eval unknown prompt style",
            vec!["--prompt-style", "fancy"],
            "--prompt-style",
        ),
        (
            "eval pixel bounds on llava",
            vec!["--max-pixels", "50000"],
            "--max-pixels",
        ),
        (
            "eval zero new tokens",
            vec!["--max-new-tokens", "0"],
            "--max-new-tokens",
        ),
        (
            "eval unknown benchmark kind",
            vec!["--benchmark", "vqa9"],
            "--benchmark",
        ),
    ] {
        let mut args = strs(&[
            "eval",
            "--model",
            &s(&llava()),
            "--bench",
            &s(&q),
            "--image-dir",
            &s(d),
            "--out",
            &s(&eval_out),
        ]);
        args.extend(strs(&extra));
        cases.push(Case {
            name,
            args,
            needles: strs(&[needle]),
            out: eval_out.clone(),
            kept: Vec::new(),
        });
    }
    let pred = d.join("preds.parquet");
    std::fs::write(&pred, b"PAR1 not parquet").unwrap();
    cases.push(Case {
        name: "score unreadable predictions",
        args: strs(&[
            "score",
            "--predictions",
            &s(&pred),
            "--json",
            &s(&d.join("s.json")),
        ]),
        needles: strs(&["preds.parquet"]),
        out: d.join("s.json"),
        kept: Vec::new(),
    });
    let bench_json = d.join("bench.json");
    for (name, extra, needle) in [
        (
            "bench zero layers",
            vec!["--num-layers", "0"],
            "--num-layers",
        ),
        (
            "bench huge layers",
            vec!["--num-layers", "100000"],
            "--num-layers",
        ),
        (
            "bench config missing",
            vec!["--config", "/no/such/config"],
            "/no/such/config",
        ),
        ("bench zero reps", vec!["--reps", "0"], "--reps"),
    ] {
        let mut args = strs(&["bench", "--json", &s(&bench_json)]);
        args.extend(strs(&extra));
        cases.push(Case {
            name,
            args,
            needles: strs(&[needle]),
            out: bench_json.clone(),
            kept: Vec::new(),
        });
    }
    let merged = d.join("merged");
    cases.push(Case {
        name: "merge unfinished shard",
        args: strs(&["merge", "--shards", &s(&info_dir), "--out", &s(&merged)]),
        needles: strs(&["no-info", "DONE.json"]),
        out: merged,
        kept: Vec::new(),
    });
    cases.push(Case {
        name: "unknown subcommand",
        args: strs(&["prune-everything"]),
        needles: strs(&["prune-everything"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    cases
}

/// Bad pruning specs and settings: one line naming the stage or option, no logits written.
fn prune_cases(d: &Path) -> Vec<Case> {
    let out = d.join("pruned.safetensors");
    let mut cases = Vec::new();
    for (name, model, spec, needles) in [
        (
            "prune: unknown method",
            llava(),
            "magic@2:10",
            vec!["stage 1 `magic@2:10`", "unknown method"],
        ),
        (
            "prune: layer out of range",
            llava(),
            "fastv@9:10",
            vec!["stage 1 `fastv@9:10`", "layer 9 does not exist"],
        ),
        (
            "prune: keep more than left",
            llava(),
            "random@1:99",
            vec!["stage 1 `random@1:99`", "only 36 are left"],
        ),
        (
            "prune: later keep above earlier",
            llava(),
            "random@1:10,random@2:20",
            vec!["stage 2 `random@2:20`", "more than the 10"],
        ),
        (
            "prune: stage below an earlier one",
            llava(),
            "random@2:10,random@1:5",
            vec!["stage 2 `random@1:5`", "deeper"],
        ),
        (
            "prune: attention before layer 0",
            llava(),
            "fastv@0:10",
            vec!["stage 1 `fastv@0:10`", "K must be at least 1"],
        ),
        (
            "prune: visionzip keeping nothing",
            qwen(),
            "visionzip@0:0",
            vec!["stage 1 `visionzip@0:0`", "keep ≥ 1"],
        ),
        (
            "prune: info without an answer",
            llava(),
            "info@2:8",
            vec!["stage 1 `info@2:8`", "has none"],
        ),
        (
            "prune: pooling to no grid",
            llava(),
            "pooling@0:7",
            vec!["stage 1 `avg-pooling@0:7`", "7 tokens is no rows"],
        ),
        (
            "prune: bad percentage",
            llava(),
            "fastv@2:150%",
            vec!["150%", "outside 0"],
        ),
    ] {
        let mut args = forward(&model, &image(), &out);
        args.extend(["--prune".to_string(), spec.to_string()]);
        cases.push(Case {
            name,
            args,
            needles: strs(&needles),
            out: out.clone(),
            kept: Vec::new(),
        });
    }
    let mut args = forward(&llava(), &image(), &out);
    args.extend(strs(&["--prune", "random@1:10", "--positions", "gapped"]));
    cases.push(Case {
        name: "prune: unknown positions",
        args,
        needles: strs(&["--positions", "keep, renumber"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    let mut args = forward(&llava(), &image(), &out);
    args.extend(strs(&[
        "--prune",
        "dart@2:12",
        "--dart-pivot-order",
        "sorted",
    ]));
    cases.push(Case {
        name: "prune: unknown dart pivot order",
        args,
        needles: strs(&["--dart-pivot-order", "set, sequence"]),
        out: out.clone(),
        kept: Vec::new(),
    });
    cases
}

/// Outputs that cannot be written because a directory is in the way (found before the work), and
/// a run that fails after it committed parts (those stay, whole, and nothing else).
fn target_and_commit_cases(d: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let dir_in_the_way = |name: &str| {
        let p = d.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let pred = d.join("preds.parquet");
    horizon_data::predictions::write_predictions(
        &pred,
        &[horizon_data::predictions::Prediction {
            sample_key: "1".into(),
            answers: vec!["red".into()],
            prediction: "red".into(),
            ..Default::default()
        }],
        &[],
    )
    .unwrap();
    let json_dir = dir_in_the_way("scores-dir");
    cases.push(Case {
        name: "score --json is a directory",
        args: strs(&["score", "--predictions", &s(&pred), "--json", &s(&json_dir)]),
        needles: strs(&["scores-dir", "is a directory"]),
        out: json_dir.join("x"),
        kept: Vec::new(),
    });
    let logits_dir = dir_in_the_way("logits-dir");
    cases.push(Case {
        name: "forward --save-logits is a directory",
        args: forward(&llava(), &image(), &logits_dir),
        needles: strs(&["logits-dir", "is a directory"]),
        out: logits_dir.join("x"),
        kept: Vec::new(),
    });
    let synth_dir = dir_in_the_way("synth-dir");
    cases.push(Case {
        name: "synth --out is a directory",
        args: strs(&["synth", "--out", &s(&synth_dir), "--per-category", "1"]),
        needles: strs(&["synth-dir", "is a directory"]),
        out: synth_dir.join("x"),
        kept: Vec::new(),
    });
    let q = jsonl(d, &[GOOD_LINE]);
    let eval_out = d.join("eval-scores-dir");
    std::fs::create_dir_all(eval_out.join("scores.json")).unwrap();
    cases.push(Case {
        name: "eval where scores.json is a directory",
        args: strs(&[
            "eval",
            "--model",
            &s(&llava()),
            "--bench",
            &s(&q),
            "--image-dir",
            &s(d),
            "--out",
            &s(&eval_out),
        ]),
        needles: strs(&["scores.json", "is a directory"]),
        out: eval_out.join("part-000000.parquet"),
        kept: Vec::new(),
    });
    // The third image is corrupt: two one-sample parts are committed before it is read.
    let sub = d.join("third");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(image(), sub.join("square.png")).unwrap();
    // Truncated: its header reads (the benchmark reader checks it), its pixels do not.
    let png = std::fs::read(image()).unwrap();
    std::fs::write(sub.join("broken.png"), &png[..png.len() / 2]).unwrap();
    let lines: Vec<String> = (1..=3)
        .map(|i| {
            GOOD_LINE
                .replace("\"question_id\": 1", &format!("\"question_id\": {i}"))
                .replace(
                    "square.png",
                    if i == 3 { "broken.png" } else { "square.png" },
                )
        })
        .collect();
    let q3 = sub.join("q.jsonl");
    std::fs::write(&q3, lines.join("\n") + "\n").unwrap();
    let out = sub.join("out");
    cases.push(Case {
        // Every image is decoded before the model loads: found before any part is written.
        name: "info: corrupt third image found before the first part",
        args: info(
            &llava(),
            &q3,
            &sub,
            &out,
            &["--samples-per-part", "1", "--layers", "1"],
        ),
        needles: strs(&["broken.png"]),
        out: out.clone(),
        kept: vec![],
    });
    cases
}

/// Every path below `dir` (files and directories), sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    all
}

#[test]
fn bad_input_gets_one_line_errors_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, make) in [
        checkpoint_cases as fn(&Path) -> Vec<Case>,
        image_and_value_cases,
        info_cases,
        analysis_and_other_cases,
        prune_cases,
        target_and_commit_cases,
    ]
    .iter()
    .enumerate()
    {
        let d = tmp.path().join(format!("group{i}"));
        std::fs::create_dir_all(&d).unwrap();
        cases.extend(make(&d));
    }
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let scanned = case
            .out
            .ancestors()
            .find(|p| p.is_dir())
            .map(|p| p.parent().unwrap_or(p).to_path_buf())
            .unwrap();
        let before = tree(&scanned);
        let (ok, _, stderr) = horizon(&args);
        let left: Vec<PathBuf> = tree(&scanned)
            .into_iter()
            .filter(|p| !before.contains(p) && !case.kept.contains(p))
            .collect();
        let mut lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if !case.kept.is_empty() {
            // A run that committed parts has said what it runs before it failed.
            lines.retain(|l| l.starts_with("error: "));
        }
        let problem = if ok {
            Some("exited 0".to_string())
        } else if stderr.contains("panicked") || stderr.contains("backtrace") {
            Some(format!("panicked: {stderr}"))
        } else if lines.len() != 1 || !lines[0].starts_with("error: ") {
            Some(format!("not one error line: {stderr}"))
        } else if let Some(n) = case.needles.iter().find(|n| !lines[0].contains(n.as_str())) {
            Some(format!("'{n}' missing from: {}", lines[0]))
        } else if case.out.exists() {
            Some(format!("{} was left behind", case.out.display()))
        } else if !left.is_empty() {
            Some(format!("left behind: {left:?}"))
        } else {
            case.kept
                .iter()
                .find(|k| !k.exists())
                .map(|k| format!("{} (committed before the failure) is gone", k.display()))
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
