//! A method of one's own through the CLI: `horizon eval --prune file@K:PATH` and `horizon prune-sweep`
//! with a file curve (`--methods file:PATH`) and a file stage in a `--compare` spec, on the bundled
//! small model (8×8 = 64 visual tokens) and the synthetic benchmark. A file listing every token is
//! the unpruned run; one listing 16 tokens from K runs with 16 from K; a file that misses a sample
//! or lists an index out of range is refused before any run, naming the file and the key, with
//! nothing written.

mod common;

use common::{assert_one_error, horizon, s, small, synthetic};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, ListBuilder, StringArray};
use arrow::record_batch::RecordBatch;

/// The rows of a predictions.parquet as JSON objects of their scalar columns, in file order.
fn predictions(dir: &Path) -> Vec<serde_json::Value> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(dir.join("predictions.parquet")).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let mut row = serde_json::Map::new();
            for (name, field) in r.get_column_iter() {
                let value = match field {
                    Field::Str(v) => serde_json::json!(v),
                    Field::Bool(v) => serde_json::json!(v),
                    Field::Long(v) => serde_json::json!(v),
                    Field::Int(v) => serde_json::json!(v),
                    Field::Double(v) => serde_json::json!(v),
                    _ => serde_json::Value::Null,
                };
                row.insert(name.clone(), value);
            }
            serde_json::Value::Object(row)
        })
        .collect()
}

/// What a pruned run's rows say apart from timings and cache sizes.
fn outcome(rows: &[serde_json::Value]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            serde_json::json!([
                r["sample_key"],
                r["prediction"],
                r["correct"],
                r["visual_tokens_layer0"],
                r["visual_tokens_final"],
                r["visual_tokens_t_eq"],
            ])
        })
        .collect()
}

/// A Parquet file of `key` and `keep` (lists of int64), as pandas writes a column of Python lists.
fn write_kept(path: &Path, rows: &[(String, Vec<i64>)]) {
    let keys: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
    ));
    let mut keep = ListBuilder::new(Int64Builder::new());
    for (_, v) in rows {
        keep.values().append_slice(v);
        keep.append(true);
    }
    let keep: ArrayRef = Arc::new(keep.finish());
    let batch = RecordBatch::try_from_iter([("key", keys), ("keep", keep)]).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn eval(out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "eval".to_string(),
        "--model".into(),
        small(),
        "--bench".into(),
        synthetic(),
        "--per-category".into(),
        "1".into(),
        "--max-new-tokens".into(),
        "4".into(),
        "--out".into(),
        s(out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = horizon(&refs);
    (ok, err)
}

/// The directory of the run of `spec` under an `eval --prune` output (its name starts with the
/// stage's slug, `file-at1-…`).
fn run_dir(out: &Path, prefix: &str) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "{prefix} in {}: {found:?}", out.display());
    found[0].clone()
}

#[test]
fn eval_and_prune_sweep_run_a_file_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The sample keys, as horizon names them, from an unpruned run.
    let (ok, err) = eval(&d.join("plain"), &[]);
    assert!(ok, "{err}");
    let keys: Vec<String> = predictions(&d.join("plain"))
        .iter()
        .map(|r| r["sample_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 5);
    let all = d.join("all.parquet");
    write_kept(
        &all,
        &keys
            .iter()
            .map(|k| (k.clone(), (0..64).rev().collect()))
            .collect::<Vec<_>>(),
    );
    // 16 tokens per sample, a different set for each, listed unsorted in JSON lines.
    let some = d.join("some.jsonl");
    let lines: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let keep: Vec<usize> = (0..16).map(|j| (j * 4 + i) % 64).rev().collect();
            format!(
                "{}\n",
                serde_json::json!({"key": k, "keep": keep, "score": 1.5})
            )
        })
        .collect();
    std::fs::write(&some, lines).unwrap();

    let out = d.join("eval");
    let (ok, err) = eval(
        &out,
        &[
            "--prune",
            &format!("file@1:{}", s(&all)),
            "--prune",
            &format!("file@1:{}", s(&some)),
        ],
    );
    assert!(ok, "{err}");
    let unpruned = predictions(&out.join("unpruned"));
    let every = predictions(&run_dir(&out, "file-at1-all-"));
    assert_eq!(
        outcome(&every),
        outcome(&unpruned),
        "a file keeping all is unpruned"
    );
    let sixteen = predictions(&run_dir(&out, "file-at1-some-"));
    assert_eq!(sixteen.len(), 5);
    for r in &sixteen {
        assert_eq!(r["visual_tokens_layer0"], 64);
        assert_eq!(r["visual_tokens_final"], 16);
        // Layer 0 sees 64, layers 1–7 see 16.
        assert_eq!(r["visual_tokens_t_eq"], (64.0 + 7.0 * 16.0) / 8.0);
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!("file@1:{}", s(&some))),
        "{summary}"
    );

    // prune-sweep: a file curve at layers 1 and 2, and a file stage after FastV in a Table-1 spec.
    let first_half = d.join("half.parquet");
    write_kept(
        &first_half,
        &keys
            .iter()
            .map(|k| (k.clone(), (0..32).collect()))
            .collect::<Vec<_>>(),
    );
    let sweep = d.join("sweep");
    let (ok, _, err) = horizon(&[
        "prune-sweep",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--max-new-tokens",
        "4",
        "--repeats",
        "1",
        "--methods",
        &format!("fastv,file:{}", s(&first_half)),
        "--layers",
        "1-2",
        "--compare",
        &format!("random@1:48,file@2:{}", s(&all)),
        "--out",
        &s(&sweep),
    ]);
    // The compare spec keeps 48 then lists all 64: refused before any run.
    assert_one_error(
        ok,
        &err,
        &[
            "stage 2 `file@2:",
            "keeps 64 visual tokens but only 48 are left",
            "nothing was run",
        ],
    );
    assert!(!sweep.exists(), "nothing written");
    let (ok, _, err) = horizon(&[
        "prune-sweep",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--per-category",
        "1",
        "--max-new-tokens",
        "4",
        "--repeats",
        "1",
        "--methods",
        &format!("fastv,file:{}", s(&first_half)),
        "--layers",
        "1-2",
        "--compare",
        &format!("file@0:{},random@2:8", s(&first_half)),
        "--out",
        &s(&sweep),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sweep.join("sweep.json")).unwrap()).unwrap();
    let curve = format!("file:{}", s(&first_half));
    let layers: Vec<u64> = report["scores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["method"] == curve.as_str())
        .map(|p| p["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(layers, [1, 2], "{}", report["scores"]);
    for layer in [1, 2] {
        let dir = run_dir(&sweep.join("runs"), &format!("file-at{layer}-half-"));
        for r in predictions(&dir) {
            assert_eq!(r["visual_tokens_final"], 32);
        }
    }
    let compare = run_dir(&sweep.join("runs"), "file-at0-half-");
    for r in predictions(&compare) {
        assert_eq!(r["visual_tokens_layer0"], 32);
        assert_eq!(r["visual_tokens_final"], 8);
    }
    assert!(sweep.join("table1.md").exists());
}

/// A file that misses a sample, or lists an index outside its visual tokens, is refused before any
/// run of `eval --prune` or `prune-sweep`: one line naming the file, the row and the key.
#[test]
fn bad_kept_files_are_refused_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (ok, err) = eval(&d.join("plain"), &[]);
    assert!(ok, "{err}");
    let keys: Vec<String> = predictions(&d.join("plain"))
        .iter()
        .map(|r| r["sample_key"].as_str().unwrap().to_string())
        .collect();
    let missing = d.join("missing.parquet");
    write_kept(
        &missing,
        &keys[1..]
            .iter()
            .map(|k| (k.clone(), vec![0, 1]))
            .collect::<Vec<_>>(),
    );
    let range = d.join("range.parquet");
    let mut rows: Vec<(String, Vec<i64>)> = keys.iter().map(|k| (k.clone(), vec![0, 1])).collect();
    rows[2].1 = vec![5, 64];
    write_kept(&range, &rows);
    for (file, needles) in [
        (
            &missing,
            vec![
                "missing.parquet: no row for sample key".to_string(),
                format!("`{}`", keys[0]),
                "at 1 of the 5 samples".into(),
            ],
        ),
        (
            &range,
            vec![
                format!("range.parquet: row 2 (key `{}`): index 64 is outside the sample's 64 visual tokens", keys[2]),
                "nothing was run".into(),
            ],
        ),
    ] {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let out = d.join("eval");
        let (ok, err) = eval(&out, &["--prune", &format!("fastv@1:50%,file@2:{}", s(file))]);
        assert_one_error(ok, &err, &needles);
        assert!(!out.exists(), "nothing written");
        let out = d.join("sweep");
        let (ok, _, err) = horizon(&[
            "prune-sweep",
            "--model",
            &small(),
            "--bench",
            &synthetic(),
            "--per-category",
            "1",
            "--methods",
            &format!("file:{}", s(file)),
            "--layers",
            "1",
            "--out",
            &s(&out),
        ]);
        assert_one_error(ok, &err, &needles);
        assert!(!out.exists(), "nothing written");
    }
    let out = d.join("sweep");
    let (ok, _, err) = horizon(&[
        "prune-sweep",
        "--model",
        &small(),
        "--bench",
        &synthetic(),
        "--methods",
        &format!("fastv,file:{}", s(&d.join("nowhere.parquet"))),
        "--out",
        &s(&out),
    ]);
    assert_one_error(
        ok,
        &err,
        &["--methods file:", "nowhere.parquet: cannot open"],
    );
    assert!(!out.exists(), "nothing written");
}
