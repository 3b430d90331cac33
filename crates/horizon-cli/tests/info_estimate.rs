//! `horizon info --estimate gradient` writes rows of the same schema as exact runs, records the
//! estimator in every part's metadata, resumes to exactly the rows of an uninterrupted run, refuses
//! to mix with an exact run in either direction, and `horizon horizon` reads its rows unchanged.

mod common;

use common::{five_question_bench, horizon, one_line_error, part_schemas_and_rows, root};
use std::path::Path;

/// `horizon info` of the tiny LLaVA fixture (see [`common::tiny_info`]).
fn info(dir: &Path, q: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    common::tiny_info(
        dir,
        q,
        &root().join("fixtures/llava/models/llava-tiny"),
        out,
        extra,
    )
}

fn footer(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let part = dir.join("part-000000.parquet");
    let meta = horizon_data::run_meta::RunMetadata::read_part(&part).unwrap();
    meta.to_pairs().into_iter().collect()
}

fn estimate_of(dir: &Path) -> String {
    footer(dir)["horizon.estimate"].clone()
}

#[test]
fn gradient_rows_have_the_exact_schema_resume_and_never_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = five_question_bench(d);
    let exact = d.join("exact");
    let (ok, err) = info(d, &q, &exact, &["--mode", "leave-out"]);
    assert!(ok, "{err}");
    let whole = d.join("whole");
    let gradient_args = ["--mode", "leave-out", "--estimate", "gradient"];
    let (ok, err) = info(d, &q, &whole, &gradient_args);
    assert!(ok, "{err}");
    assert!(err.contains("estimate gradient (KL answer)"), "{err}");
    assert_eq!(estimate_of(&exact), "exact");
    assert_eq!(estimate_of(&whole), "gradient");
    let (exact_schema, exact_rows) = part_schemas_and_rows(&exact);
    let (schema, whole_rows) = part_schemas_and_rows(&whole);
    assert_eq!(schema, exact_schema);
    // 5 samples × (full + 2 layers × (text-only + 9 windows)).
    assert_eq!(whole_rows.len(), 5 * 21);
    assert_eq!(whole_rows.len(), exact_rows.len());
    // The default KL is the answer-versus-rest split's, as `--estimate-kl answer` says.
    assert_eq!(
        footer(&whole)["horizon.estimator"],
        "attention-qk-fix-log-odds-answer-kl"
    );
    assert!(!footer(&exact).contains_key("horizon.estimator"));
    let answer = d.join("answer");
    let answer_kl = [&gradient_args[..], &["--estimate-kl", "answer"]].concat();
    let (ok, err) = info(d, &q, &answer, &answer_kl);
    assert!(ok, "{err}");
    assert_eq!(part_schemas_and_rows(&answer).1, whole_rows);

    // Leave-out's Fisher-sum KL is its own estimator, with the same schema and the same p and
    // log p; it is not continued with the default KL (the error names the option that does), and
    // nothing else takes it.
    let fisher = d.join("fisher");
    let fisher_kl = [&gradient_args[..], &["--estimate-kl", "fisher"]].concat();
    let (ok, err) = info(d, &q, &fisher, &fisher_kl);
    assert!(ok, "{err}");
    assert!(err.contains("estimate gradient (KL fisher)"), "{err}");
    assert_eq!(
        footer(&fisher)["horizon.estimator"],
        "attention-qk-fix-log-odds"
    );
    let (schema, fisher_rows) = part_schemas_and_rows(&fisher);
    assert_eq!(
        (schema, fisher_rows.len()),
        (exact_schema.clone(), whole_rows.len())
    );
    let (ok, err) = info(
        d,
        &q,
        &fisher,
        &[&gradient_args[..], &["--resume"]].concat(),
    );
    one_line_error(ok, &err, "(--estimate-kl fisher continues it)");
    let (ok, err) = info(d, &q, &whole, &[&fisher_kl[..], &["--resume"]].concat());
    one_line_error(ok, &err, "(--estimate-kl answer continues it)");
    // Outside leave-out's estimate any --estimate-kl is refused, the default's name too.
    for other in [
        &["--estimate", "gradient"][..],
        &["--mode", "leave-out"][..],
    ] {
        for kl in ["answer", "fisher"] {
            let (ok, err) = info(
                d,
                &q,
                &d.join("refused"),
                &[other, &["--estimate-kl", kl]].concat(),
            );
            one_line_error(ok, &err, &format!("--estimate-kl {kl}: only leave-out's"));
            assert!(!d.join("refused").exists());
        }
    }

    // Keep-only estimates record theirs, with the same schema.
    let keep_only = d.join("keep-only");
    let (ok, err) = info(d, &q, &keep_only, &["--estimate", "gradient"]);
    assert!(ok, "{err}");
    assert_eq!(
        footer(&keep_only)["horizon.estimator"],
        "attention-qk-fix-own-window"
    );
    assert_eq!(part_schemas_and_rows(&keep_only).0, exact_schema);

    // Stopped and resumed: the rows of the uninterrupted run.
    let steps = d.join("steps");
    let gradient = ["--mode", "leave-out", "--estimate", "gradient"];
    let (ok, err) = info(
        d,
        &q,
        &steps,
        &[&gradient[..], &["--max-samples-per-run", "2"]].concat(),
    );
    assert!(ok, "{err}");
    assert!(!steps.join("DONE.json").exists());
    let (ok, err) = info(d, &q, &steps, &[&gradient[..], &["--resume"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("2 already done"), "{err}");
    assert_eq!(part_schemas_and_rows(&steps).1, whole_rows);
    assert!(steps.join("DONE.json").exists());

    // Never a mixed run: exact parts are not continued with estimates, nor the other way round.
    let mixed = d.join("mixed");
    let (ok, err) = info(
        d,
        &q,
        &mixed,
        &["--mode", "leave-out", "--max-samples-per-run", "2"],
    );
    assert!(ok, "{err}");
    let (ok, err) = info(d, &q, &mixed, &[&gradient[..], &["--resume"]].concat());
    one_line_error(ok, &err, "horizon.estimate");
    let (ok, err) = info(d, &q, &steps, &["--mode", "leave-out", "--resume"]);
    one_line_error(ok, &err, "horizon.estimate");

    // The analysis reads the estimate's rows as it reads exact ones, and says that its intervals
    // do not cover the estimate's error, unless the check is off.
    let analysis = d.join("analysis");
    let analyse = |rows: &Path, extra: &[&str]| {
        let (ok, _, err) = horizon(
            &[
                &[
                    "horizon",
                    "--info",
                    rows.to_str().unwrap(),
                    "--out",
                    analysis.to_str().unwrap(),
                    "--bootstrap",
                    "50",
                    "--mode",
                    "leave-out",
                ][..],
                extra,
            ]
            .concat(),
        );
        assert!(ok, "{err}");
        assert!(analysis.join("horizon.json").exists());
        err
    };
    let err = analyse(&whole, &[]);
    assert!(
        err.contains("one-pass gradient estimates (attention-qk-fix-log-odds-answer-kl)"),
        "{err}"
    );
    assert!(!analyse(&whole, &["--no-ci-check"]).contains("note:"));
    assert!(!analyse(&exact, &[]).contains("note:"));
}

#[test]
fn bench_times_the_gradient_estimate_of_the_same_rows_in_both_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/llava/models/llava-tiny");
    for mode in ["keep-only", "leave-out"] {
        let json = tmp.path().join(format!("{mode}.json"));
        let (ok, out, err) = horizon(&[
            "bench",
            "--config",
            model.to_str().unwrap(),
            "--layers",
            "all",
            "--naive-variants",
            "0",
            "--reps",
            "1",
            "--mode",
            mode,
            "--gradient",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(
            out.contains("| one-pass gradient estimate of the same 40 rows |"),
            "{out}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert!(j["gradient_s"].as_f64().unwrap() > 0.0, "{j}");
        assert!(j["gradient_error"].is_null(), "{j}");
        assert!(j["engine_s"].as_f64().unwrap() > 0.0, "{j}");
    }
}
