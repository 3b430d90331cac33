//! What can be checked before the work is checked before it: the pruning sweep's and the demo's
//! keep counts against the visual tokens the model gets, the sweep's unpruned score, which every
//! other score is relative to, before any pruned run, and that `eval --info-rows` rows cover every
//! sample and info layer before the first answer. Each case exits non-zero with one `error:` line
//! naming the option, spec or run at fault, never panics, and leaves nothing of the work it refused.

mod common;

use common::{assert_one_error, horizon, root, s, small, synthetic};

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

/// A spec some sample cannot run (DART keeping fewer tokens than its image pivots, Pooling to a
/// count that is no grid inside the 8×8 visual grid) is refused before the first run of
/// `prune-sweep` or `eval --prune`, with the spec's stage, the reason and the samples named, and
/// nothing written; before this check the sweep stopped at that spec's first sample, after the runs
/// before it had finished.
#[test]
fn specs_some_sample_cannot_run_are_refused_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let (ok, _, stderr) = horizon(&[
        "prune-sweep",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--methods",
        "fastv,dart",
        "--layers",
        "1-2",
        "--keep",
        "25%",
        "--dart-pivots",
        "20",
        "--out",
        &s(&out),
    ]);
    assert_one_error(
        ok,
        &stderr,
        &[
            "dart@1:25%",
            "dart keeps its 20 image pivots: keep ≥ 20",
            "at every sample",
            "64 visual tokens, 8×8 grid",
            "nothing was run",
        ],
    );
    assert!(!out.exists(), "nothing written");

    let out = tmp.path().join("eval");
    let (ok, _, stderr) = horizon(&[
        "eval",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--prune",
        "fastv@2:50%",
        "--prune",
        "pooling@1:11",
        "--out",
        &s(&out),
    ]);
    assert_one_error(
        ok,
        &stderr,
        &[
            "pooling@1:11",
            "11 tokens is no rows × cols grid inside the 8×8 visual grid",
            "nothing was run",
        ],
    );
    assert!(!out.exists(), "nothing written");
}
