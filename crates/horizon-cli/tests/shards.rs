//! Scale and resumption of `horizon info`: three shards merged equal the unsharded run row for row;
//! `horizon merge` refuses shards that do not make one run; a run stopped by `--max-samples-per-run`
//! and resumed equals an uninterrupted one; `--resume` refuses another checkpoint, other samples or
//! another batch rule, and clears what a killed writer left; `--workers` writes the parts that one
//! sample at a time writes.

mod common;

use common::{
    five_question_bench, horizon, one_line_error, part_rows, root, tiny_info, tiny_info_one_thread,
};
use std::path::{Path, PathBuf};

#[test]
fn three_shards_merged_equal_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    let (ok, err) = tiny_info(d, &q, &model, &d.join("whole"), &[]);
    assert!(ok, "{err}");
    let shard_dirs: Vec<PathBuf> = (0..3).map(|i| d.join(format!("shard{i}"))).collect();
    for (i, dir) in shard_dirs.iter().enumerate() {
        let (ok, err) = tiny_info(d, &q, &model, dir, &["--shard", &format!("{i}/3")]);
        assert!(ok, "{err}");
    }
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let list = |dirs: &[&PathBuf]| dirs.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
    let merged = d.join("merged");
    let all: Vec<&PathBuf> = shard_dirs.iter().collect();
    let (ok, _, err) = horizon(&["merge", "--shards", &list(&all), "--out", &s(&merged)]);
    assert!(ok, "{err}");
    let whole = part_rows(&d.join("whole"));
    assert_eq!(
        whole.len(),
        5 * (1 + 2 * (1 + 9)),
        "5 samples, full + 2 layers × (text-only + 9 windows)"
    );
    assert_eq!(
        part_rows(&merged),
        whole,
        "merged shards differ from the unsharded run"
    );

    // Shards that do not make one run are refused, one line each.
    let (ok, _, err) = horizon(&[
        "merge",
        "--shards",
        &list(&all[..2]),
        "--out",
        &s(&d.join("m2")),
    ]);
    one_line_error(ok, &err, "shard 2/3 is missing");
    let twice = [all[0], all[0], all[1]];
    let (ok, _, err) = horizon(&[
        "merge",
        "--shards",
        &list(&twice),
        "--out",
        &s(&d.join("m3")),
    ]);
    one_line_error(ok, &err, "given twice");
    let other = d.join("other");
    let (ok, err) = tiny_info(d, &q, &model, &other, &["--shard", "2/3", "--window", "3"]);
    assert!(ok, "{err}");
    let mixed = [all[0], all[1], &other];
    let (ok, _, err) = horizon(&[
        "merge",
        "--shards",
        &list(&mixed),
        "--out",
        &s(&d.join("m4")),
    ]);
    one_line_error(ok, &err, "horizon.window_size");
    std::fs::remove_file(shard_dirs[1].join("DONE.json")).unwrap();
    let (ok, _, err) = horizon(&["merge", "--shards", &list(&all), "--out", &s(&d.join("m5"))]);
    one_line_error(ok, &err, "has not finished");
    let (ok, _, err) = horizon(&[
        "info", "--model", "x", "--bench", "y", "--out", "z", "--shard", "3/3",
    ]);
    one_line_error(ok, &err, "--shard");
}

#[test]
fn stopped_and_resumed_runs_equal_one_run_and_resume_checks_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    let (ok, err) = tiny_info(d, &q, &model, &d.join("whole"), &[]);
    assert!(ok, "{err}");
    let out = d.join("steps");
    let (ok, err) = tiny_info(d, &q, &model, &out, &["--max-samples-per-run", "2"]);
    assert!(ok, "{err}");
    assert!(err.contains("--resume to continue"), "{err}");
    assert!(!out.join("DONE.json").exists());
    assert_eq!(part_rows(&out).len(), 2 * 21);
    // A killed writer's temporary file is cleared on resume.
    std::fs::write(out.join(".part-000002.parquet.tmp4242"), b"half").unwrap();
    let (ok, err) = tiny_info(d, &q, &model, &out, &["--resume"]);
    assert!(ok, "{err}");
    assert!(err.contains("2 already done"), "{err}");
    assert!(!out.join(".part-000002.parquet.tmp4242").exists());
    assert_eq!(part_rows(&out), part_rows(&d.join("whole")));
    assert!(out.join("DONE.json").exists());

    // --resume refuses another checkpoint under the same model name ...
    let copy = d.join("llava-tiny");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
    }
    let cfg = copy.join("generation_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace('{', "{\"max_length\": 77, ")).unwrap();
    let (ok, err) = tiny_info(d, &q, &copy, &out, &["--resume"]);
    one_line_error(ok, &err, "horizon.model_fingerprint");
    // ... other samples under the same ids ...
    let text = std::fs::read_to_string(&q).unwrap();
    let q2 = d.join("q2.jsonl");
    std::fs::write(&q2, text.replace("shape 4", "shape four")).unwrap();
    let (ok, err) = tiny_info(d, &q2, &model, &out, &["--resume"]);
    one_line_error(ok, &err, "horizon.selection_fingerprint");
    // ... and another batch rule.
    let (ok, err) = tiny_info(d, &q, &model, &out, &["--resume", "--batch-size", "3"]);
    one_line_error(ok, &err, "horizon.batch");
    // An empty selection is an error, and nothing is written.
    let empty = d.join("empty");
    let (ok, err) = tiny_info(d, &q, &model, &empty, &["--limit", "0"]);
    one_line_error(ok, &err, "no sample");
    assert!(std::fs::read_dir(&empty)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true));
}

/// The part files of `dir`, by name, and its `DONE.json`.
fn parts_and_marker(dir: &Path) -> (Vec<String>, String) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    (
        names,
        std::fs::read_to_string(dir.join("DONE.json")).unwrap(),
    )
}

/// The rows of two runs of `name`: the exact sweep's bit for bit; leave-out's gradient estimate
/// batches a part's samples by the workers' share of it (`RunPlan::run_batched`), so its p, log p
/// and KL are equal up to the float rounding of another batch, every other column exactly.
fn same_rows(name: &str, a: &[String], b: &[String]) {
    if name != "gradient" {
        assert_eq!(a, b, "{name}");
        return;
    }
    assert_eq!(a.len(), b.len(), "{name}");
    let fields = |row: &str| -> Vec<(String, String)> {
        row.trim_matches(|c| c == '{' || c == '}')
            .split(", ")
            .map(|f| {
                let (k, v) = f.split_once(": ").expect("key: value");
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    for (x, y) in a.iter().zip(b) {
        for ((k, u), (l, v)) in fields(x).into_iter().zip(fields(y)) {
            assert_eq!(k, l, "{name}");
            if ["p", "logp", "kl"].contains(&k.as_str()) {
                let (u, v): (f64, f64) = (u.parse().unwrap(), v.parse().unwrap());
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{name} {k}: {x} vs {y}"
                );
            } else {
                assert_eq!(u, v, "{name} {k}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn sample_workers_write_the_rows_and_parts_of_one_sample_at_a_time_and_resume_across_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    // One libtorch thread in every run and a fixed batch: the exact sweep's bits are then the same
    // whichever worker computes a sample.
    for (name, extra) in [
        ("exact", &["--mode", "keep-only", "--batch-size", "4"][..]),
        (
            "gradient",
            &["--mode", "leave-out", "--estimate", "gradient"][..],
        ),
    ] {
        let one = d.join(format!("{name}-1"));
        let (ok, err) =
            tiny_info_one_thread(d, &q, &model, &one, &[extra, &["--workers", "1"]].concat());
        assert!(ok, "{err}");
        // Five samples, two per part: three workers, more than a part holds.
        let three = d.join(format!("{name}-3"));
        let (ok, err) = tiny_info_one_thread(
            d,
            &q,
            &model,
            &three,
            &[extra, &["--workers", "3"]].concat(),
        );
        assert!(ok, "{err}");
        assert_eq!(part_rows(&three).len(), 5 * 21, "{name}");
        same_rows(name, &part_rows(&three), &part_rows(&one));
        assert_eq!(parts_and_marker(&three), parts_and_marker(&one), "{name}");
        // A run stopped with one worker continues with two.
        let steps = d.join(format!("{name}-steps"));
        let first = [extra, &["--workers", "1", "--max-samples-per-run", "3"]].concat();
        let (ok, err) = tiny_info_one_thread(d, &q, &model, &steps, &first);
        assert!(ok, "{err}");
        let rest = [extra, &["--workers", "2", "--resume"]].concat();
        let (ok, err) = tiny_info_one_thread(d, &q, &model, &steps, &rest);
        assert!(ok, "{err}");
        assert!(err.contains("3 already done"), "{err}");
        same_rows(name, &part_rows(&steps), &part_rows(&one));
    }
    let (ok, err) = tiny_info(d, &q, &model, &d.join("none"), &["--workers", "0"]);
    one_line_error(ok, &err, "--workers");
}

/// `horizon eval` with sample workers answers as one sample at a time does, in the same part files,
/// unpruned and pruned, for every family, and a run stopped with one worker continues with two. The latency columns
/// are each run's own, so the rows are compared without them.
#[test]
fn eval_sample_workers_give_the_answers_and_parts_of_one_sample_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let answers = |dir: &Path| -> Vec<String> {
        let rows =
            horizon_data::predictions::read_predictions(&dir.join("predictions.parquet")).unwrap();
        rows.iter()
            .map(|p| {
                format!(
                    "{} {:?} {} {:?} {:?} {:?} {:?}",
                    p.sample_key,
                    p.prediction,
                    p.correct,
                    p.new_tokens,
                    p.visual_tokens_layer0,
                    p.visual_tokens_final,
                    p.kv_cache_bytes
                )
            })
            .collect()
    };
    let part_names = |dir: &Path| parts_and_marker(dir).0;
    let families = [
        ("llava", "fixtures/llava/models/llava-tiny"),
        ("qwen", "fixtures/qwen2_5_vl/models/qwen-tiny"),
        ("next", "fixtures/llava_next/models/llava-next-tiny"),
    ];
    for ((family, model), prune) in families
        .iter()
        .flat_map(|f| [(f, &[][..]), (f, &["--prune", "fastv@1:50%"][..])])
    {
        let model = root().join(model);
        // With --prune each spec runs in its own subdirectory (the unpruned one too).
        let run_dir = |out: &Path| {
            if prune.is_empty() {
                out.to_path_buf()
            } else {
                out.join("fastv-at1-keep50pct")
            }
        };
        let one = d.join(format!("eval-{family}-1-{}", prune.len()));
        let (ok, err) = eval(d, &q, &model, &one, &[prune, &["--workers", "1"]].concat());
        assert!(ok, "{err}");
        let three = d.join(format!("eval-{family}-3-{}", prune.len()));
        let (ok, err) = eval(
            d,
            &q,
            &model,
            &three,
            &[prune, &["--workers", "3"]].concat(),
        );
        assert!(ok, "{err}");
        assert_eq!(answers(&run_dir(&three)).len(), 5);
        assert_eq!(answers(&run_dir(&three)), answers(&run_dir(&one)));
        assert_eq!(part_names(&run_dir(&three)), part_names(&run_dir(&one)));
        let steps = d.join(format!("eval-{family}-steps-{}", prune.len()));
        let first = [prune, &["--workers", "1", "--max-samples-per-run", "3"]].concat();
        let (ok, err) = eval(d, &q, &model, &steps, &first);
        assert!(ok, "{err}");
        let rest = [prune, &["--workers", "2", "--resume"]].concat();
        let (ok, err) = eval(d, &q, &model, &steps, &rest);
        assert!(ok, "{err}");
        assert_eq!(answers(&run_dir(&steps)), answers(&run_dir(&one)));
    }
    let model = root().join(families[0].1);
    let (ok, err) = eval(d, &q, &model, &d.join("none"), &["--workers", "0"]);
    one_line_error(ok, &err, "--workers");
}

/// A copy of llava-tiny at `dir/llava-tiny` (same model name) with another generation config.
fn other_checkpoint(dir: &Path) -> PathBuf {
    let copy = dir.join("llava-tiny");
    std::fs::create_dir_all(&copy).unwrap();
    let model = root().join("fixtures/llava/models/llava-tiny");
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
    }
    let cfg = copy.join("generation_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace('{', "{\"max_length\": 77, ")).unwrap();
    copy
}

/// A copy of llava-tiny at `dir/llava-tiny` (same model name) whose projector weight is zeroed in
/// place: the shard keeps its size and header, only data bytes change.
fn zeroed_projector_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("llava-tiny");
    std::fs::create_dir_all(&copy).unwrap();
    let model = root().join("fixtures/llava/models/llava-tiny");
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
    }
    let shard = copy.join("model-00003-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let offsets = &header["multi_modal_projector.linear_1.weight"]["data_offsets"];
    let (a, b) = (
        8 + n + offsets[0].as_u64().unwrap() as usize,
        8 + n + offsets[1].as_u64().unwrap() as usize,
    );
    assert!(bytes[a..b].iter().any(|&x| x != 0));
    let size = bytes.len();
    bytes[a..b].fill(0);
    std::fs::write(&shard, &bytes).unwrap();
    assert_eq!(std::fs::metadata(&shard).unwrap().len() as usize, size);
    copy
}

fn eval(dir: &Path, q: &Path, model: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args: Vec<String> = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--bench",
        q.to_str().unwrap(),
        "--image-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--samples-per-part",
        "2",
        "--max-new-tokens",
        "2",
        "--no-warmup",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = horizon(&refs);
    (ok, err)
}

#[test]
fn every_part_is_checked_on_resume_merge_and_score() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    let edited = other_checkpoint(&d.join("edited"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let steps = d.join("steps");
    let (ok, err) = tiny_info(d, &q, &model, &steps, &["--max-samples-per-run", "2"]);
    assert!(ok, "{err}");
    // A part of another checkpoint under the same model name, put in the run, is refused by name.
    let other = d.join("other");
    let (ok, err) = tiny_info(d, &q, &edited, &other, &[]);
    assert!(ok, "{err}");
    std::fs::copy(
        other.join("part-000002.parquet"),
        steps.join("part-000002.parquet"),
    )
    .unwrap();
    let (ok, err) = tiny_info(d, &q, &model, &steps, &["--resume"]);
    one_line_error(ok, &err, "part-000002.parquet");
    assert!(err.contains("horizon.model_fingerprint"), "{err}");
    std::fs::remove_file(steps.join("part-000002.parquet")).unwrap();
    let (ok, err) = tiny_info(d, &q, &model, &steps, &["--resume"]);
    assert!(ok, "{err}");

    // merge: a finished shard missing a part, or holding a foreign one, is refused.
    let shards: Vec<PathBuf> = (0..2).map(|i| d.join(format!("s{i}"))).collect();
    for (i, dir) in shards.iter().enumerate() {
        let (ok, err) = tiny_info(d, &q, &model, dir, &["--shard", &format!("{i}/2")]);
        assert!(ok, "{err}");
    }
    let list = format!("{},{}", s(&shards[0]), s(&shards[1]));
    let kept = d.join("kept.parquet");
    std::fs::rename(shards[1].join("part-000001.parquet"), &kept).unwrap();
    let (ok, _, err) = horizon(&["merge", "--shards", &list, "--out", &s(&d.join("m1"))]);
    one_line_error(ok, &err, "part-000001.parquet is missing");
    std::fs::rename(&kept, shards[1].join("part-000001.parquet")).unwrap();
    std::fs::copy(
        other.join("part-000002.parquet"),
        shards[0].join("part-000002.parquet"),
    )
    .unwrap();
    let (ok, _, err) = horizon(&["merge", "--shards", &list, "--out", &s(&d.join("m2"))]);
    one_line_error(ok, &err, "not a part of this finished run");
    std::fs::remove_file(shards[0].join("part-000002.parquet")).unwrap();
    let (ok, _, err) = horizon(&["merge", "--shards", &list, "--out", &s(&d.join("m3"))]);
    assert!(ok, "{err}");
    assert_eq!(part_rows(&d.join("m3")), part_rows(&steps));

    // An info shard merged with an eval shard is named as such.
    let e1 = d.join("e1");
    let (ok, err) = eval(d, &q, &model, &e1, &["--shard", "1/2"]);
    assert!(ok, "{err}");
    let mixed = format!("{},{}", s(&shards[0]), s(&e1));
    let (ok, _, err) = horizon(&["merge", "--shards", &mixed, "--out", &s(&d.join("m4"))]);
    one_line_error(ok, &err, "`horizon eval` run");

    // score: a part the finished run does not list is refused; every part of a run without
    // DONE.json must carry one run's metadata.
    let e = d.join("e");
    let (ok, err) = eval(d, &q, &model, &e, &[]);
    assert!(ok, "{err}");
    let (ok, out, err) = horizon(&["score", "--predictions", &s(&e)]);
    assert!(ok, "{err}");
    let eo = d.join("eo");
    let (ok, err) = eval(d, &q, &edited, &eo, &[]);
    assert!(ok, "{err}");
    std::fs::copy(e.join("part-000000.parquet"), e.join("part-000100.parquet")).unwrap();
    let (ok, _, err) = horizon(&["score", "--predictions", &s(&e)]);
    one_line_error(ok, &err, "part-000100.parquet");
    std::fs::remove_file(e.join("part-000100.parquet")).unwrap();
    std::fs::remove_file(e.join("DONE.json")).unwrap();
    std::fs::copy(e.join("part-000000.parquet"), e.join("part-000001.parquet")).unwrap();
    let (ok, _, err) = horizon(&["score", "--predictions", &s(&e)]);
    one_line_error(ok, &err, "is in part-000000.parquet too");
    std::fs::remove_file(e.join("part-000001.parquet")).unwrap();
    std::fs::copy(
        eo.join("part-000002.parquet"),
        e.join("part-000002.parquet"),
    )
    .unwrap();
    let (ok, _, err) = horizon(&["score", "--predictions", &s(&e)]);
    one_line_error(ok, &err, "horizon.model_fingerprint");
    // The unchanged run scores as eval printed it.
    assert!(out.contains("accuracy/all"), "{out}");
}

#[test]
fn score_recomputes_correctness_and_refuses_duplicate_keys() {
    use horizon_data::predictions::{write_predictions, Prediction};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let row = |key: &str, prediction: &str, answers: &[&str], correct: bool| Prediction {
        sample_key: key.into(),
        question_id: key.into(),
        category: "c".into(),
        answers: answers.iter().map(|a| a.to_string()).collect(),
        prediction: prediction.into(),
        correct,
        ..Default::default()
    };
    let file = d.join("p.parquet");
    write_predictions(
        &file,
        &[
            row("a", "zzz", &["red"], true),
            row("b", "Red.", &["red"], false),
            row("c", "blue", &[], true),
        ],
        &[],
    )
    .unwrap();
    let json = d.join("s.json");
    let (ok, _, err) = horizon(&[
        "score",
        "--predictions",
        file.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let all = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "accuracy/all")
        .unwrap();
    // "zzz" is wrong whatever its stored `correct` says; "Red." matches; "c" has no answer.
    assert_eq!(all["value"], 50.0, "{table}");
    assert_eq!(all["n"], 2, "{table}");
    assert!(
        table["notes"]
            .to_string()
            .contains("1 of 3 samples have no reference answer"),
        "{table}"
    );
}

#[test]
fn no_answer_samples_are_excluded_and_a_stopped_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    // Sample 0 has no answer.
    let text = std::fs::read_to_string(&q).unwrap();
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.replace(r#", "answer": "red""#, "")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    let model = root().join("fixtures/llava/models/llava-tiny");
    let whole = d.join("whole");
    let (ok, err) = tiny_info(d, &q, &model, &whole, &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("excluded 1 samples without a ground-truth answer"),
        "{err}"
    );
    assert_eq!(part_rows(&whole).len(), 4 * 21);
    let done: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("DONE.json")).unwrap()).unwrap();
    assert_eq!(done["skipped"], serde_json::json!(["0"]));
    let out = d.join("steps");
    let mut finished = false;
    for _ in 0..4 {
        let (ok, err) = tiny_info(
            d,
            &q,
            &model,
            &out,
            &["--resume", "--max-samples-per-run", "3"],
        );
        assert!(ok, "{err}");
        if out.join("DONE.json").exists() {
            finished = true;
            break;
        }
    }
    assert!(finished, "the stopped run never finished");
    assert_eq!(part_rows(&out), part_rows(&whole));
}

#[test]
fn a_run_killed_after_a_part_resumes_to_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    let whole = d.join("whole");
    let (ok, err) = tiny_info(d, &q, &model, &whole, &[]);
    assert!(ok, "{err}");
    let out = d.join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args([
            "info",
            "--model",
            model.to_str().unwrap(),
            "--bench",
            q.to_str().unwrap(),
            "--image-dir",
            d.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--layers",
            "1,3",
            "--samples-per-part",
            "2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = out.join("part-000000.parquet");
    while !first.exists() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    child.wait().unwrap();
    // Whatever the kill interrupted, what is there is complete parts and temporary files.
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with("part-") || name.starts_with('.') || name == "DONE.json",
            "{name}"
        );
    }
    let (ok, err) = tiny_info(d, &q, &model, &out, &["--resume"]);
    assert!(ok, "{err}");
    assert_eq!(part_rows(&out), part_rows(&whole));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn weights_edited_in_place_are_seen_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    let edited = zeroed_projector_copy(&d.join("edited"));
    let steps = d.join("steps");
    let (ok, err) = tiny_info(d, &q, &model, &steps, &["--max-samples-per-run", "2"]);
    assert!(ok, "{err}");
    let (ok, err) = tiny_info(d, &q, &edited, &steps, &["--resume"]);
    one_line_error(ok, &err, "horizon.model_fingerprint");
}

/// The DART pivot order is part of a DART run's identity (a resume with the other order is refused),
/// and only of a DART run's: a run without a DART stage resumes whatever `--dart-pivot-order` says.
#[test]
fn dart_pivot_order_is_checked_on_resume_of_dart_runs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let model = root().join("fixtures/llava/models/llava-tiny");
    // Stops a run of `spec` after two samples, then resumes it with the other pivot order.
    let stop_then_resume_in_sequence_order = |name: &str, spec: &str| {
        let out = d.join(name);
        let (ok, err) = eval(
            d,
            &q,
            &model,
            &out,
            &["--prune", spec, "--max-samples-per-run", "2"],
        );
        assert!(ok, "{err}");
        eval(
            d,
            &q,
            &model,
            &out,
            &[
                "--prune",
                spec,
                "--resume",
                "--dart-pivot-order",
                "sequence",
            ],
        )
    };
    let (ok, err) = stop_then_resume_in_sequence_order("dart", "dart@1:12");
    common::assert_one_error(ok, &err, &["prune_options", "dart_pivot_order=set"]);
    let (ok, err) = stop_then_resume_in_sequence_order("fastv", "fastv@1:12");
    assert!(ok, "{err}");
}
