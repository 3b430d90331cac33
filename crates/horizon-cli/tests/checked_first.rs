//! What can be checked before the work is checked before it: the pruning sweep's and the demo's
//! keep counts against the visual tokens the model gets, the sweep's unpruned score, which every
//! other score is relative to, before any pruned run, and that `eval --info-rows` rows cover every
//! sample and info layer before the first answer. Each case exits non-zero with one `error:` line
//! naming the option, spec or run at fault, never panics, and leaves nothing of the work it refused.

mod common;

use common::{horizon, root};
use std::path::Path;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn small() -> String {
    s(&root().join("data/models/horizon-small"))
}

fn synthetic() -> String {
    s(&root().join("data/synthetic/test.parquet"))
}

/// Exactly one `error:` line, containing every needle; no panic.
fn assert_one_error(ok: bool, stderr: &str, needles: &[&str]) {
    assert!(!ok, "expected a failure");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
}

/// The bundled small model gets 64 visual tokens (an 8×8 grid): a count above that, in --keep or in
/// a --compare spec, is refused before the unpruned run, with nothing written under --out.
#[test]
fn prune_sweep_refuses_keep_counts_above_the_visual_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, needles) in [
        (
            vec!["--keep", "65"],
            vec!["keeps 65 visual tokens", "only 64"],
        ),
        (
            vec!["--keep", "50%", "--compare", "divprune@0:80"],
            vec!["divprune@0:80", "keeps 80 visual tokens", "only 64"],
        ),
    ] {
        let out = tmp.path().join("sweep");
        let mut args = vec![
            "prune-sweep".to_string(),
            "--model".into(),
            small(),
            "--bench".into(),
            synthetic(),
            "--per-category".into(),
            "1".into(),
            "--layers".into(),
            "0-1".into(),
            "--out".into(),
            s(&out),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = horizon(&args);
        assert_one_error(ok, &stderr, &needles);
        assert!(!out.exists(), "{extra:?}: nothing written");
    }
}

/// The demo's sweep comes after the information runs of every model; its keep is checked before the
/// first of them.
#[test]
fn demo_refuses_a_bad_prune_keep_before_the_information_runs() {
    let tmp = tempfile::tempdir().unwrap();
    for (keep, needles) in [
        ("1000", vec!["keeps 1000 visual tokens", "only 64"]),
        ("lots", vec!["--keep", "lots"]),
    ] {
        let out = tmp.path().join("demo");
        let (ok, _, stderr) = horizon(&[
            "demo",
            "--models",
            &small(),
            "--bench",
            &synthetic(),
            "--per-category",
            "1",
            "--prune-per-category",
            "1",
            "--prune-keep",
            keep,
            "--out",
            &s(&out),
        ]);
        assert_one_error(ok, &stderr, &needles);
        assert!(!out.exists(), "--prune-keep {keep}: nothing written");
    }
}

/// A benchmark the unpruned model scores 0 on (every answer is a word it never says): the sweep stops
/// after the unpruned run, naming it, and starts no pruned run.
#[test]
fn prune_sweep_stops_at_a_zero_unpruned_score() {
    let tmp = tempfile::tempdir().unwrap();
    let images = root().join("fixtures/llava/images");
    let q = tmp.path().join("q.jsonl");
    let mut lines = String::new();
    for (i, name) in ["square.png", "nonsquare.png"].iter().enumerate() {
        std::fs::copy(images.join(name), tmp.path().join(name)).unwrap();
        lines.push_str(&format!(
            "{{\"question_id\": {i}, \"image\": \"{name}\", \"text\": \"What colour is it?\", \"answer\": \"zzzz\"}}\n"
        ));
    }
    std::fs::write(&q, lines).unwrap();
    let out = tmp.path().join("sweep");
    let (ok, _, stderr) = horizon(&[
        "prune-sweep",
        "--model",
        &small(),
        "--bench",
        &s(&q),
        "--image-dir",
        &s(tmp.path()),
        "--layers",
        "1",
        "--max-new-tokens",
        "2",
        "--out",
        &s(&out),
    ]);
    assert_one_error(
        ok,
        &stderr,
        &["unpruned", "scores 0", "no pruned run was started"],
    );
    let runs: Vec<String> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs, ["unpruned"]);
    assert!(!out.join("sweep.json").exists());
}

/// Info rows of a stopped `horizon info` run (the same selection, some samples not done yet):
/// `eval --info-rows` names the first sample without rows before answering any, and writes nothing.
#[test]
fn eval_refuses_info_rows_that_miss_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows");
    let (ok, _, err) = horizon(&[
        "info",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--out",
        &s(&rows),
        "--layers",
        "2",
        "--samples-per-part",
        "1",
        "--max-samples-per-run",
        "3",
    ]);
    assert!(ok, "{err}");
    let out = tmp.path().join("eval");
    let (ok, _, stderr) = horizon(&[
        "eval",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--out",
        &s(&out),
        "--prune",
        "info@2:16",
        "--info-rows",
        &s(&rows),
    ]);
    assert_one_error(
        ok,
        &stderr,
        &[
            "--info-rows",
            "no rows for sample",
            "2 of the 5 samples have none",
        ],
    );
    assert!(!out.exists());
}
