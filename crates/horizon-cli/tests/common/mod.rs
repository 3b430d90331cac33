//! Helpers shared by the CLI integration tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the `horizon` binary: (success, stdout, stderr).
pub fn horizon(args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_horizon")).args(args))
}

/// Runs the `horizon` binary with libtorch on one CPU thread, for outputs compared with HF's
/// committed references. Multi-threaded float32 forwards are not bit-reproducible from one process
/// to the next on every CPU: on a Sapphire Rapids Xeon, 1-3% of `horizon forward`
/// runs of `horizon-large` gave logits up to 4.8e-3 away from the usual ones, from position 45 of
/// 91 on (about half way: likely where the second thread's share of the rows starts), and HF's own
/// forward did the same in 1 of 25 processes (0.024 away); on one thread, 0 of 60 runs differed.
pub fn horizon_one_thread(args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args(args)
        .env("OMP_NUM_THREADS", "1"))
}

fn run(command: &mut Command) -> (bool, String, String) {
    let out = command.output().expect("run horizon");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The bundled small model.
pub fn small() -> String {
    s(&root().join("data/models/horizon-small"))
}

/// The bundled synthetic benchmark.
pub fn synthetic() -> String {
    s(&root().join("data/synthetic/test.parquet"))
}

/// The tiny LLaVA fixture checkpoint.
pub fn llava() -> String {
    s(&root().join("fixtures/llava/models/llava-tiny"))
}

/// The MME fixture in lmms-lab's HF-parquet layout.
pub fn mme() -> String {
    s(&root().join("fixtures/bench/hf/mme"))
}

/// A failure with exactly one line of stderr, containing `needle`; no panic.
pub fn one_line_error(ok: bool, err: &str, needle: &str) {
    assert!(!ok, "expected a failure");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A failure with exactly one `error:` line, containing every needle; no panic.
pub fn assert_one_error(ok: bool, stderr: &str, needles: &[&str]) {
    assert!(!ok, "expected a failure");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
}

/// Five LLaVA-format questions (`q.jsonl`) on the square and non-square fixture images, copied into
/// `dir`, in two categories: the benchmark of the tiny `horizon info` runs.
pub fn five_question_bench(dir: &Path) -> PathBuf {
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

/// `horizon info` of `model` on the [`five_question_bench`] `q` (images in `dir`) into `out`,
/// layers 1 and 3, two samples per part, plus `extra`: (success, stderr).
pub fn tiny_info(dir: &Path, q: &Path, model: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    tiny_info_with(horizon, dir, q, model, out, extra)
}

/// [`tiny_info`] with libtorch on one CPU thread ([`horizon_one_thread`]).
pub fn tiny_info_one_thread(
    dir: &Path,
    q: &Path,
    model: &Path,
    out: &Path,
    extra: &[&str],
) -> (bool, String) {
    tiny_info_with(horizon_one_thread, dir, q, model, out, extra)
}

fn tiny_info_with(
    horizon: fn(&[&str]) -> (bool, String, String),
    dir: &Path,
    q: &Path,
    model: &Path,
    out: &Path,
    extra: &[&str],
) -> (bool, String) {
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

/// The distinct schemas and every row of every part file in `dir`, as text, sorted.
pub fn part_schemas_and_rows(dir: &Path) -> (Vec<String>, Vec<String>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let (mut schemas, mut rows) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            let schema = reader.metadata().file_metadata().schema_descr();
            schemas.push(format!("{:?}", schema.columns()));
            for row in reader.get_row_iter(None).unwrap() {
                rows.push(row.unwrap().to_string());
            }
        }
    }
    schemas.sort();
    schemas.dedup();
    rows.sort();
    (schemas, rows)
}

/// Every row of every part file in `dir`, as text, sorted.
pub fn part_rows(dir: &Path) -> Vec<String> {
    part_schemas_and_rows(dir).1
}
