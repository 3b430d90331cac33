//! `horizon info --estimate gradient` writes rows of the same schema as exact runs, records the
//! estimator in every part's metadata, resumes to exactly the rows of an uninterrupted run, refuses
//! to mix with an exact run in either direction, and `horizon horizon` reads its rows unchanged.

mod common;

use common::{horizon, root};
use std::path::{Path, PathBuf};

fn bench(dir: &Path) -> PathBuf {
    for name in ["square.png", "nonsquare.png"] {
        std::fs::copy(
            root().join("fixtures/llava/images").join(name),
            dir.join(name),
        )
        .unwrap();
    }
    let q = dir.join("q.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"question_id": {i}, "image": "{}", "text": "What color is shape {i}?", "answer": "red", "category": "c{}"}}"#,
                if i % 2 == 0 { "square.png" } else { "nonsquare.png" },
                i % 2
            )
        })
        .collect();
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    q
}

fn info(dir: &Path, q: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let model = root().join("fixtures/llava/models/llava-tiny");
    let mut args: Vec<String> = [
        "info",
        "--model",
        model.to_str().unwrap(),
        "--bench",
        q.to_str().unwrap(),
        "--image-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--layers",
        "1,3",
        "--samples-per-part",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = horizon(&refs);
    (ok, err)
}

/// The schema and every row of every part file in `dir`, as text, sorted.
fn rows(dir: &Path) -> (Vec<String>, Vec<String>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let (mut schemas, mut out) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            let schema = reader.metadata().file_metadata().schema_descr();
            schemas.push(format!("{:?}", schema.columns()));
            for row in reader.get_row_iter(None).unwrap() {
                out.push(row.unwrap().to_string());
            }
        }
    }
    schemas.sort();
    schemas.dedup();
    out.sort();
    (schemas, out)
}

fn estimate_of(dir: &Path) -> String {
    let part = dir.join("part-000000.parquet");
    let meta = horizon_data::run_meta::RunMetadata::read_part(&part).unwrap();
    let pairs: std::collections::BTreeMap<_, _> = meta.to_pairs().into_iter().collect();
    pairs["horizon.estimate"].clone()
}

fn one_line_error(ok: bool, err: &str, needle: &str) {
    assert!(!ok, "expected a failure");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn gradient_rows_have_the_exact_schema_resume_and_never_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = bench(d);
    let exact = d.join("exact");
    let (ok, err) = info(d, &q, &exact, &["--mode", "leave-out"]);
    assert!(ok, "{err}");
    let whole = d.join("whole");
    let (ok, err) = info(
        d,
        &q,
        &whole,
        &["--mode", "leave-out", "--estimate", "gradient"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("estimate gradient"), "{err}");
    assert_eq!(estimate_of(&exact), "exact");
    assert_eq!(estimate_of(&whole), "gradient");
    let (exact_schema, exact_rows) = rows(&exact);
    let (schema, whole_rows) = rows(&whole);
    assert_eq!(schema, exact_schema);
    // 5 samples × (full + 2 layers × (text-only + 9 windows)).
    assert_eq!(whole_rows.len(), 5 * 21);
    assert_eq!(whole_rows.len(), exact_rows.len());

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
    assert_eq!(rows(&steps).1, whole_rows);
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

    // The analysis reads the estimate's rows as it reads exact ones.
    let analysis = d.join("analysis");
    let (ok, _, err) = horizon(&[
        "horizon",
        "--info",
        whole.to_str().unwrap(),
        "--out",
        analysis.to_str().unwrap(),
        "--bootstrap",
        "50",
        "--mode",
        "leave-out",
    ]);
    assert!(ok, "{err}");
    assert!(analysis.join("horizon.json").exists());
}
