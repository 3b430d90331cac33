//! Benchmarks as users have them, through the CLI on the tiny fixture model: the paper's own MME
//! layout (two questions per image share one `question_id`) runs `info` → `horizon` → `plot`;
//! `eval` writes predictions and the official score table, which `horizon score` reproduces from the
//! predictions alone; an evaluation stopped and resumed equals an uninterrupted one.

mod common;

use common::{horizon, llava, mme, root, s, small, synthetic};
use std::path::Path;

/// The predictions of a run with their wall times cleared (the only fields that differ between
/// two runs of the same settings).
fn predictions_without_wall_times(path: &Path) -> Vec<horizon_data::predictions::Prediction> {
    horizon_data::predictions::read_predictions(path)
        .unwrap()
        .into_iter()
        .map(|p| horizon_data::predictions::Prediction {
            prefill_ms: None,
            decode_ms_per_token: None,
            ..p
        })
        .collect()
}

#[test]
fn mme_layout_runs_info_horizon_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let info = tmp.path().join("info");
    let (ok, _, err) = horizon(&[
        "info",
        "--model",
        &llava(),
        "--bench",
        &mme(),
        "--out",
        &s(&info),
        "--layers",
        "1,2",
    ]);
    assert!(ok, "{err}");
    // Every question of the 7 (4 images, two of them asked twice) has its own rows.
    let done = horizon_data::info_rows::completed_samples(&info).unwrap();
    assert_eq!(done.len(), 7, "{done:?}");
    assert!(done
        .iter()
        .any(|(_, k)| k.starts_with("code_reasoning/0020.png#")));
    let an = tmp.path().join("an");
    let (ok, stdout, err) = horizon(&[
        "horizon",
        "--info",
        &s(&info),
        "--out",
        &s(&an),
        "--bootstrap",
        "20",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("llava-tiny"), "{stdout}");
    let figs = tmp.path().join("figs");
    let (ok, _, err) = horizon(&[
        "plot",
        "--info",
        &s(&info),
        "--out",
        &s(&figs),
        "--bootstrap",
        "20",
    ]);
    assert!(ok, "{err}");
    assert!(figs.join("information_vs_layer.png").exists());
}

#[test]
fn eval_scores_by_the_official_rules_and_score_reproduces_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let (ok, stdout, err) = horizon(&[
        "eval",
        "--model",
        &llava(),
        "--bench",
        &mme(),
        "--out",
        &s(&out),
        "--max-new-tokens",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("perception"), "{stdout}");
    let preds =
        horizon_data::predictions::read_predictions(&out.join("predictions.parquet")).unwrap();
    assert_eq!(preds.len(), 7);
    assert!(preds.iter().all(|p| p.benchmark == "mme"));
    // Two questions of one image: one question_id, two keys (acc+ pairs them by question_id).
    let pair: Vec<_> = preds
        .iter()
        .filter(|p| p.question_id == "code_reasoning/0020.png")
        .collect();
    assert_eq!(pair.len(), 2);
    assert_ne!(pair[0].sample_key, pair[1].sample_key);
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    let metric = |m: &str, c: &str| {
        scores["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == m && r["convention"] == c)
            .map(|r| r["value"].as_f64().unwrap())
    };
    // The official rule recomputed from the predictions: per subtask acc + acc+, in MME points.
    let official = |p: &str| {
        let p = p.to_lowercase();
        if p == "yes" || p == "no" {
            p
        } else if p.get(..4).is_some_and(|h| h.contains("yes")) {
            "yes".into()
        } else if p.get(..4).is_some_and(|h| h.contains("no")) {
            "no".into()
        } else {
            "other".into()
        }
    };
    let sub = "code_reasoning";
    let rows: Vec<_> = preds.iter().filter(|p| p.category == sub).collect();
    let right: Vec<bool> = rows
        .iter()
        .map(|p| official(&p.prediction) == p.answers[0].to_lowercase())
        .collect();
    let acc = 100.0 * right.iter().filter(|r| **r).count() as f64 / right.len() as f64;
    let acc_plus = if right.iter().all(|r| *r) { 100.0 } else { 0.0 };
    let got = metric(&format!("score/{sub}"), "official")
        .or_else(|| {
            metric(&format!("acc/{sub}"), "official")
                .map(|a| a + metric(&format!("acc+/{sub}"), "official").unwrap())
        })
        .expect("a code_reasoning score row");
    assert!(
        (got - (acc + acc_plus)).abs() < 1e-9,
        "{got} vs {acc} + {acc_plus}"
    );
    // horizon score gives the same table from the predictions alone.
    let rescored = tmp.path().join("rescored.json");
    let (ok, _, err) = horizon(&[
        "score",
        "--predictions",
        &s(&out.join("predictions.parquet")),
        "--json",
        &s(&rescored),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(&rescored).unwrap(),
        std::fs::read_to_string(out.join("scores.json")).unwrap()
    );
}

#[test]
fn eval_stopped_and_resumed_equals_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let base = |out: &Path| -> Vec<String> {
        [
            "eval",
            "--model",
            &llava(),
            "--bench",
            &mme(),
            "--out",
            &s(out),
            "--max-new-tokens",
            "3",
            "--samples-per-part",
            "2",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        horizon(&refs)
    };
    let (ok, _, err) = run(base(&whole));
    assert!(ok, "{err}");
    let steps = tmp.path().join("steps");
    let mut first = base(&steps);
    first.extend(["--max-samples-per-run".into(), "3".into()]);
    let (ok, _, err) = run(first);
    assert!(ok, "{err}");
    assert!(!steps.join("scores.json").exists());
    let (ok, _, err) = run(base(&steps));
    assert!(!ok && err.contains("--resume"), "{err}");
    let mut again = base(&steps);
    again.push("--resume".into());
    let (ok, _, err) = run(again);
    assert!(ok, "{err}");
    assert!(err.contains("3 already done"), "{err}");
    // Everything but the wall times is the same.
    let read = |d: &Path| predictions_without_wall_times(&d.join("predictions.parquet"));
    assert_eq!(read(&steps), read(&whole));
    assert_eq!(
        std::fs::read_to_string(steps.join("scores.json")).unwrap(),
        std::fs::read_to_string(whole.join("scores.json")).unwrap()
    );
}

/// Qwen2.5-VL's pixel bounds decide the visual token count; `--max-pixels` changes it and is recorded
/// in the outputs' metadata.
#[test]
fn qwen_pixel_bounds_change_the_tokens_and_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/qwen2_5_vl/models/qwen-tiny");
    let img = root().join("fixtures/qwen2_5_vl/images/nonsquare.png");
    let tokens = |extra: &[&str]| -> usize {
        let out = tmp.path().join("l.safetensors");
        let mut args = vec![
            "forward".to_string(),
            "--model".into(),
            s(&model),
            "--image".into(),
            s(&img),
            "--prompt".into(),
            "hi".into(),
            "--save-logits".into(),
            s(&out),
        ];
        args.extend(extra.iter().map(|e| e.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = horizon(&refs);
        assert!(ok, "{err}");
        // "wrote FILE (logits [S, V], N visual tokens)"
        let n = err.rsplit(", ").next().unwrap();
        n.split(' ').next().unwrap().parse::<usize>().unwrap()
    };
    let default = tokens(&[]);
    let small = tokens(&["--max-pixels", "3136"]);
    // 3136 = 56² pixels: at most four 28×28 merged units.
    assert!(small <= 4 && small < default, "{default} vs {small}");
    let q = tmp.path().join("q.jsonl");
    std::fs::copy(&img, tmp.path().join("nonsquare.png")).unwrap();
    std::fs::write(
        &q,
        r#"{"question_id": 1, "image": "nonsquare.png", "text": "Colour?", "answer": "red"}"#
            .to_string()
            + "\n",
    )
    .unwrap();
    let info = tmp.path().join("info");
    let (ok, _, err) = horizon(&[
        "info",
        "--model",
        &s(&model),
        "--bench",
        &s(&q),
        "--image-dir",
        &s(tmp.path()),
        "--out",
        &s(&info),
        "--layers",
        "1",
        "--max-pixels",
        "3136",
    ]);
    assert!(ok, "{err}");
    let meta = horizon_data::info_rows::run_metadata(&info)
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.get("horizon.max_pixels").map(String::as_str),
        Some("3136")
    );
}

/// Two eval shards, merged and scored, give the unsharded run's scores.
#[test]
fn eval_shards_merge_and_score_like_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = |out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "eval",
            "--model",
            &llava(),
            "--bench",
            &mme(),
            "--out",
            &s(out),
            "--max-new-tokens",
            "3",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|e| e.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = horizon(&refs);
        assert!(ok, "{err}");
    };
    let whole = tmp.path().join("whole");
    eval(&whole, &[]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    eval(&a, &["--shard", "0/2"]);
    eval(&b, &["--shard", "1/2"]);
    let merged = tmp.path().join("merged");
    let shards = format!("{},{}", s(&a), s(&b));
    let (ok, _, err) = horizon(&["merge", "--shards", &shards, "--out", &s(&merged)]);
    assert!(ok, "{err}");
    let scores = tmp.path().join("scores.json");
    let (ok, _, err) = horizon(&["score", "--predictions", &s(&merged), "--json", &s(&scores)]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(&scores).unwrap(),
        std::fs::read_to_string(whole.join("scores.json")).unwrap()
    );
}

#[test]
fn eval_compares_pruning_specs_with_costs_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned");
    let (ok, stdout, err) = horizon(&[
        "eval",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "2",
        "--out",
        &s(&out),
        "--max-new-tokens",
        "3",
        "--prune",
        "fastv@2:50%",
        "--prune",
        "divprune@0:9,random@2:3",
        "--repeats",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("`fastv@2:50%`"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let specs = summary.as_array().unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s["spec"].as_str().unwrap()).collect();
    assert_eq!(names, ["none", "fastv@2:50%", "divprune@0:9,random@2:3"]);
    assert_eq!(specs[0]["relative"].as_f64(), Some(100.0));
    assert_eq!(specs[2]["repeats"].as_u64(), Some(2));
    // 64 visual tokens, 8 layers: FastV keeps 32 from layer 2, T_eq = (2·64 + 6·32) / 8 = 40.
    assert_eq!(specs[1]["visual_tokens_layer0"].as_f64(), Some(64.0));
    assert_eq!(specs[1]["visual_tokens_final"].as_f64(), Some(32.0));
    assert_eq!(specs[1]["visual_tokens_t_eq"].as_f64(), Some(40.0));
    // DivPrune 9 from layer 0, random 3 from layer 2: T_eq = (2·9 + 6·3) / 8 = 4.5.
    assert_eq!(specs[2]["visual_tokens_t_eq"].as_f64(), Some(4.5));
    assert!(specs[1]["kv_cache_bytes_peak"].as_i64() < specs[0]["kv_cache_bytes_peak"].as_i64());
    // Per-sample rows carry the costs; the seeded runs are separate directories.
    let preds = horizon_data::predictions::read_predictions(
        &out.join("fastv-at2-keep50pct/predictions.parquet"),
    )
    .unwrap();
    assert_eq!(preds.len(), 10);
    assert!(preds
        .iter()
        .all(|p| p.prefill_ms.is_some() && p.kv_cache_bytes.is_some()));
    assert!(out
        .join("divprune-at0-keep9+random-at2-keep3-seed1")
        .join("DONE.json")
        .exists());
    assert!(out.join("summary.md").exists());
}

#[test]
fn prune_sweep_writes_curves_figure_and_table1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let (ok, stdout, err) = horizon(&[
        "prune-sweep",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "2",
        "--out",
        &s(&out),
        "--methods",
        "fastv,pooling",
        "--layers",
        "0-2",
        "--keep",
        "25%",
        "--repeats",
        "2",
        "--max-new-tokens",
        "2",
        "--compare",
        "divprune@0:16",
        "--compare",
        "divprune@0:24,random@4:8",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| fastv |"), "{stdout}");
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let skipped: Vec<&str> = sweep["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spec"].as_str().unwrap())
        .collect();
    // pooling is the paper's Pooling (K >= 1); pooling@0 would be the average pooling's old name.
    assert_eq!(skipped, ["fastv@0:25%", "pooling@0:25%"]);
    // fastv at 1, 2; pooling at 1, 2 (4x4 windows of the 8x8 grid); random at 0, 1, 2 with 2 seeds each.
    assert_eq!(sweep["scores"].as_array().unwrap().len(), 2 + 2 + 6);
    for f in [
        "prune_sweep.png",
        "prune_sweep.svg",
        "table1.md",
        "sweep.md",
        "summary.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let table = std::fs::read_to_string(out.join("table1.md")).unwrap();
    assert!(table.contains("divprune@0:24,random@4:8"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table1.json")).unwrap()).unwrap();
    let rows: Vec<&serde_json::Value> = json["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["rows"].as_array().unwrap())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r["spec"] == "divprune@0:24,random@4:8" && r["t_eq"].is_number()),
        "{json}"
    );
}

#[test]
fn info_pruning_from_info_rows_equals_computing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows");
    let (ok, _, err) = horizon(&[
        "info",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "2",
        "--out",
        &s(&rows),
        "--layers",
        "2",
        "--window",
        "2",
    ]);
    assert!(ok, "{err}");
    let (model, bench) = (small(), synthetic());
    let eval = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            &model,
            "--bench",
            &bench,
            "--per-category",
            "2",
            "--out",
            s(out).leak(),
            "--max-new-tokens",
            "3",
            "--prune",
            "info@2:16",
        ];
        args.extend_from_slice(extra);
        horizon(&args)
    };
    let (fly, from_rows) = (tmp.path().join("fly"), tmp.path().join("rows-eval"));
    let (ok, _, err) = eval(&fly, &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = eval(&from_rows, &["--info-rows", s(&rows).leak()]);
    assert!(ok, "{err}");
    let read =
        |d: &Path| predictions_without_wall_times(&d.join("info-at2-keep16/predictions.parquet"));
    assert_eq!(read(&fly), read(&from_rows));
    // Rows of other windows are refused, and so is a layer the rows do not have.
    let (ok, _, err) = eval(
        &tmp.path().join("w4"),
        &["--info-rows", s(&rows).leak(), "--info-window", "4"],
    );
    assert!(!ok && err.contains("--info-window is 4"), "{err}");
    // Rows of another selection (here: fewer samples per category) are refused.
    let (ok, _, err) = horizon(&[
        "eval",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--out",
        &s(&tmp.path().join("sel")),
        "--prune",
        "info@2:16",
        "--info-rows",
        &s(&rows),
    ]);
    assert!(!ok && err.contains("another selection"), "{err}");
    let (ok, _, err) = horizon(&[
        "eval",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "2",
        "--out",
        &s(&tmp.path().join("l3")),
        "--prune",
        "info@3:16",
        "--info-rows",
        &s(&rows),
    ]);
    assert!(!ok && err.contains("no layer 3"), "{err}");
}
