//! Information rows: the long-format Parquet output of `horizon info`, one row per
//! model × sample × layer × variant. Readable by pandas, polars and DuckDB.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `model` | utf8 | model label (directory name unless given) |
//! | `task` | utf8 | sample category |
//! | `sample_id` | utf8 | the benchmark's question id |
//! | `layer` | int32 | cut layer K (0-based: layers < K see every token, layers ≥ K the kept ones); −1 for `full` |
//! | `variant` | utf8 | `full` (unpruned), `text_only` (no visual token from K on), `window` |
//! | `window` | int32 | row-major window index on the window grid; −1 unless `variant = window` |
//! | `window_row`, `window_col` | int32 | the window's place on its grid's window grid; −1 likewise |
//! | `grid` | int32 | the token grid the window lies on: 0 for one-grid families (LLaVA-1.5, Qwen2.5-VL); LLaVA-NeXT 0 the base image, 1 the high-resolution grid; −1 unless `variant = window`. Files written before the column read as 0 |
//! | `mode` | utf8 | `keep-only` (keep only the window's visual tokens) or `leave-out` (drop only the window) |
//! | `target` | utf8 | `gt` (first token of the ground-truth answer) or `greedy` (the unpruned model's first token) |
//! | `target_token` | int64 | the token y |
//! | `p`, `logp` | float64 | p(y) and log p(y) of the variant's first-token distribution (softmax in f32) |
//! | `kl` | float64 | KL(unpruned ‖ variant) of the first-token distributions |
//!
//! File-level key-value metadata (`horizon.*`) records the run ([`crate::run_meta::RunMetadata`]:
//! the settings, the checkpoint and selection fingerprints, the shard). Part files are written atomically (a
//! temporary file renamed into place) and each holds whole samples, so an interrupted run resumes by
//! skipping the samples already present.

use anyhow::{anyhow, Context, Result};
use arrow::array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::atomic::write_parquet_atomic;

/// Which window runs the information is computed from: the `mode` column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum InfoMode {
    /// Keep only window w's visual tokens from layer K on (the reference): I = p_w − p_text.
    #[default]
    #[serde(rename = "keep-only")]
    KeepOnly,
    /// Drop only window w's visual tokens from layer K on: I = p_full − p_{−w}.
    #[serde(rename = "leave-out")]
    LeaveOut,
}

impl InfoMode {
    /// The value of the `mode` column (and of `--mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepOnly => "keep-only",
            Self::LeaveOut => "leave-out",
        }
    }
}

impl std::str::FromStr for InfoMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keep-only" => Ok(Self::KeepOnly),
            "leave-out" => Ok(Self::LeaveOut),
            _ => anyhow::bail!("unknown mode '{s}' (expected keep-only or leave-out)"),
        }
    }
}

impl std::fmt::Display for InfoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the window rows are computed (`--estimate`), recorded in the run metadata
/// (`horizon.estimate`); the rows have the same schema either way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Estimate {
    /// Every variant run as the cut it names (the reference procedure's values).
    #[default]
    #[serde(rename = "exact")]
    Exact,
    /// One-pass estimates from forward and backward passes with a soft mask on the visual keys
    /// (attribution patching; keep-only with AtP*'s QK fix); the linearisation point's own row is
    /// exact.
    #[serde(rename = "gradient")]
    Gradient,
}

impl Estimate {
    /// The value of `--estimate` and of `horizon.estimate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Gradient => "gradient",
        }
    }
}

impl std::str::FromStr for Estimate {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(Self::Exact),
            "gradient" => Ok(Self::Gradient),
            _ => anyhow::bail!("unknown estimate '{s}' (expected exact or gradient)"),
        }
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How leave-out's gradient estimate scores KL(unpruned ‖ variant) (`--estimate-kl`), recorded in
/// the run's `horizon.estimator`. The p and log p columns are the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KlEstimate {
    /// Second order in the change of log p, with the Fisher information restricted to the
    /// unpruned run's most likely tokens: `½ Σ_y p(y) Δlog p(y)²`, one backward pass per token.
    Fisher,
    /// The KL between the answer-versus-rest splits `(p(y), 1 − p(y))` of the unpruned run and of
    /// the estimated variant: a lower bound of the KL, from p's own backward pass alone. The
    /// default: the estimate is then one forward and one backward pass, and the p and log p that
    /// the horizon is read in are the Fisher sum's.
    #[default]
    Answer,
}

impl KlEstimate {
    /// The value of `--estimate-kl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fisher => "fisher",
            Self::Answer => "answer",
        }
    }
}

impl std::str::FromStr for KlEstimate {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fisher" => Ok(Self::Fisher),
            "answer" => Ok(Self::Answer),
            _ => anyhow::bail!("unknown KL estimate '{s}' (expected fisher or answer)"),
        }
    }
}

impl std::fmt::Display for KlEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which token y is scored: the `target` column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Target {
    /// The first token of the ground-truth answer (the reference procedure).
    #[default]
    #[serde(rename = "gt")]
    Gt,
    /// The unpruned model's own first answer token.
    #[serde(rename = "greedy")]
    Greedy,
}

impl Target {
    /// The value of the `target` column (and of `--target`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gt => "gt",
            Self::Greedy => "greedy",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gt" => Ok(Self::Gt),
            "greedy" => Ok(Self::Greedy),
            _ => anyhow::bail!("unknown target '{s}' (expected gt or greedy)"),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which run a row comes from: the `variant` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowVariant {
    /// The unpruned model (layer −1).
    Full,
    /// No visual token from layer K on.
    TextOnly,
    /// Window w kept (keep-only) or dropped (leave-out) from layer K on.
    Window,
}

impl RowVariant {
    /// The value of the `variant` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::TextOnly => "text_only",
            Self::Window => "window",
        }
    }
}

impl std::str::FromStr for RowVariant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "text_only" => Ok(Self::TextOnly),
            "window" => Ok(Self::Window),
            _ => anyhow::bail!("unknown variant '{s}' (expected full, text_only or window)"),
        }
    }
}

/// One information row (see the module documentation for the meaning of each field).
#[derive(Debug, Clone, PartialEq)]
pub struct InfoRow {
    pub model: String,
    pub task: String,
    pub sample_id: String,
    pub layer: i32,
    pub variant: RowVariant,
    pub window: i32,
    pub window_row: i32,
    pub window_col: i32,
    pub grid: i32,
    pub mode: InfoMode,
    pub target: Target,
    pub target_token: i64,
    pub p: f64,
    pub logp: f64,
    pub kl: f64,
}

pub fn info_schema() -> Arc<Schema> {
    let fields = columns::ALL
        .iter()
        .map(|&name| Field::new(name, columns::data_type(name), false))
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}

/// The columns of an info-row file (the table in the module documentation): their names by type,
/// the one definition that the writer's schema ([`info_schema`]) and the readers' checks use.
pub mod columns {
    use arrow::datatypes::DataType;

    /// utf8 columns, in file order.
    pub const TEXT: [&str; 6] = ["model", "task", "sample_id", "variant", "mode", "target"];
    /// int32 columns every file has.
    pub const LAYER_WINDOW: [&str; 2] = ["layer", "window"];
    /// int32 columns of the window's place on its grid (files written before them lack them).
    pub const WINDOW_PLACE: [&str; 2] = ["window_row", "window_col"];
    /// int32: the token grid of the window (files written before it lack it: grid 0).
    pub const GRID: &str = "grid";
    /// The int64 token y.
    pub const TARGET_TOKEN: &str = "target_token";
    /// float64 columns: p(y), log p(y), KL(unpruned ‖ variant).
    pub const METRICS: [&str; 3] = ["p", "logp", "kl"];
    /// Every column, in file order.
    pub const ALL: [&str; 15] = [
        "model",
        "task",
        "sample_id",
        "layer",
        "variant",
        "window",
        "window_row",
        "window_col",
        GRID,
        "mode",
        "target",
        TARGET_TOKEN,
        "p",
        "logp",
        "kl",
    ];

    /// The Arrow type the writer gives column `name` (float64 for a name that is none of them).
    pub fn data_type(name: &str) -> DataType {
        if TEXT.contains(&name) {
            DataType::Utf8
        } else if LAYER_WINDOW.contains(&name) || WINDOW_PLACE.contains(&name) || name == GRID {
            DataType::Int32
        } else if name == TARGET_TOKEN {
            DataType::Int64
        } else {
            DataType::Float64
        }
    }
}

fn to_batch(rows: &[InfoRow]) -> Result<RecordBatch> {
    let s = |f: fn(&InfoRow) -> &str| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as Arc<dyn Array>
    };
    let i = |f: fn(&InfoRow) -> i32| {
        Arc::new(Int32Array::from_iter_values(rows.iter().map(f))) as Arc<dyn Array>
    };
    let d = |f: fn(&InfoRow) -> f64| {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as Arc<dyn Array>
    };
    Ok(RecordBatch::try_new(
        info_schema(),
        vec![
            s(|r| &r.model),
            s(|r| &r.task),
            s(|r| &r.sample_id),
            i(|r| r.layer),
            s(|r| r.variant.as_str()),
            i(|r| r.window),
            i(|r| r.window_row),
            i(|r| r.window_col),
            i(|r| r.grid),
            s(|r| r.mode.as_str()),
            s(|r| r.target.as_str()),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.target_token),
            )),
            d(|r| r.p),
            d(|r| r.logp),
            d(|r| r.kl),
        ],
    )?)
}

/// Writes `rows` to `path` atomically (temporary file in the same directory, then rename), zstd
/// compressed, with `metadata` as `key=value` pairs in the file footer.
pub fn write_info_rows(path: &Path, rows: &[InfoRow], metadata: &[(String, String)]) -> Result<()> {
    write_parquet_atomic(path, &to_batch(rows)?, metadata)
}

/// The `*.parquet` part files of an output directory, sorted by name (temporary files excluded).
pub fn part_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    parts.sort();
    Ok(parts)
}

/// (model, sample_id) pairs already written in the part files of `dir`: what `--resume` skips.
pub fn completed_samples(dir: &Path) -> Result<HashSet<(String, String)>> {
    let mut done = HashSet::new();
    for path in part_files(dir)? {
        for_each_model_sample(&path, |model, id| {
            done.insert((model.to_string(), id.to_string()));
        })?;
    }
    Ok(done)
}

/// The sample ids of the info-row part file `path`, each once, in the order of their first row.
pub fn part_sample_ids(path: &Path) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for_each_model_sample(path, |_, id| {
        if seen.insert(id.to_string()) {
            ids.push(id.to_string());
        }
    })?;
    Ok(ids)
}

/// Calls `f(model, sample_id)` for every row of the info-row part file `path`.
fn for_each_model_sample(path: &Path, mut f: impl FnMut(&str, &str)) -> Result<()> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", path.display()))?;
    let schema = builder.parquet_schema();
    let cols: Vec<usize> = ["model", "sample_id"]
        .iter()
        .map(|name| {
            schema
                .columns()
                .iter()
                .position(|c| c.name() == *name)
                .ok_or_else(|| anyhow!("{}: column {name} is missing", path.display()))
        })
        .collect::<Result<_>>()?;
    let mask = ProjectionMask::leaves(schema, cols);
    for batch in builder.with_projection(mask).build()? {
        let batch = batch.with_context(|| format!("{}: corrupt row group", path.display()))?;
        let col = |name: &str| -> Result<StringArray> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .ok_or_else(|| anyhow!("{}: column {name} is not utf8", path.display()))
        };
        let (models, ids) = (col("model")?, col("sample_id")?);
        for i in 0..batch.num_rows() {
            f(models.value(i), ids.value(i));
        }
    }
    Ok(())
}

/// The `horizon.*` key-value metadata of the first part file in `dir` (the run's settings), or `None`
/// when `dir` holds no part file yet.
pub fn run_metadata(dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let Some(first) = part_files(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let file = File::open(&first).with_context(|| format!("{}: cannot open", first.display()))?;
    let reader = parquet::file::reader::SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", first.display()))?;
    use parquet::file::reader::FileReader;
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    Ok(Some(
        kv.into_iter()
            .filter_map(|k| k.value.map(|v| (k.key, v)))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sample: &str, layer: i32, p: f64) -> InfoRow {
        InfoRow {
            model: "m".into(),
            task: "t".into(),
            sample_id: sample.into(),
            layer,
            variant: RowVariant::Window,
            window: 3,
            window_row: 1,
            window_col: 1,
            grid: 0,
            mode: InfoMode::KeepOnly,
            target: Target::Gt,
            target_token: 42,
            p,
            logp: p.ln(),
            kl: 0.5,
        }
    }

    #[test]
    fn write_then_list_completed_samples() {
        let dir = tempfile::tempdir().unwrap();
        let meta = vec![("horizon.window_size".to_string(), "2".to_string())];
        write_info_rows(
            &dir.path().join("part-000000.parquet"),
            &[row("a", 1, 0.5), row("b", 2, 0.25)],
            &meta,
        )
        .unwrap();
        write_info_rows(
            &dir.path().join("part-000002.parquet"),
            &[row("c", 1, 0.125)],
            &meta,
        )
        .unwrap();
        std::fs::write(dir.path().join(".part-000003.parquet.tmp1"), b"partial").unwrap();
        assert_eq!(part_files(dir.path()).unwrap().len(), 2);
        let done = completed_samples(dir.path()).unwrap();
        let want: HashSet<_> = ["a", "b", "c"]
            .iter()
            .map(|s| ("m".to_string(), s.to_string()))
            .collect();
        assert_eq!(done, want);
        // Values round-trip exactly.
        let file = File::open(dir.path().join("part-000000.parquet")).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(kv
            .iter()
            .any(|k| k.key == "horizon.window_size" && k.value.as_deref() == Some("2")));
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let p = batch
            .column_by_name("p")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(p.values(), &[0.5, 0.25]);
    }

    #[test]
    fn corrupt_part_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("part-000000.parquet"),
            b"not parquet at all",
        )
        .unwrap();
        let err = completed_samples(dir.path()).unwrap_err().to_string();
        assert!(err.contains("part-000000.parquet"), "{err}");
    }
}
