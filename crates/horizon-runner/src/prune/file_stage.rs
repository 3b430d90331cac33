//! `file@K:PATH`: a stage whose kept visual tokens are read, per sample, from a file that a method
//! run elsewhere wrote (`docs/pruning.md`, "A method of your own").
//!
//! The file is Parquet (`.parquet`) or JSON lines (`.jsonl`, `.json`), one row per sample:
//!
//! * `key` (string): the sample's key, as horizon names it (the `sample_key` column of
//!   `predictions.parquet`);
//! * `keep` (list of integers): indices of the visual tokens kept, in the prompt's own numbering of
//!   its visual tokens (0 = the first visual token of the prompt, before any stage), in any order.
//!
//! Other columns are ignored. The indices always refer to the prompt's numbering, also when the stage
//! follows another: an index an earlier stage already dropped is an error, not a silent skip.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, ListArray, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One sample's row: where it is in the file (for errors) and its indices as written.
#[derive(Debug)]
struct Row {
    /// `row N` (Parquet, 0-based) or `line N` (JSON lines, 1-based).
    place: String,
    keep: Vec<i64>,
}

/// The kept indices of a `file@K:PATH` stage, read once when the spec is parsed.
#[derive(Clone)]
pub struct KeepFile {
    path: PathBuf,
    rows: Arc<HashMap<String, Row>>,
}

/// Two stages with the same path are the same stage (the file is read once per parse).
impl PartialEq for KeepFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl fmt::Debug for KeepFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeepFile({}, {} samples)",
            self.path.display(),
            self.rows.len()
        )
    }
}

impl KeepFile {
    /// Reads `path` (Parquet or JSON lines by its extension); errors name the file and the row.
    pub fn read(path: &Path) -> Result<Self> {
        let name = path.display();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let rows = match ext.as_deref() {
            Some("parquet") => read_parquet(path),
            Some("jsonl") | Some("json") => read_jsonl(path),
            _ => Err(anyhow!(
                "expected a .parquet or .jsonl file of `key` and `keep` columns"
            )),
        }
        .with_context(|| format!("{name}"))?;
        let mut by_key: HashMap<String, Row> = HashMap::with_capacity(rows.len());
        for (key, row) in rows {
            if let Some(first) = by_key.get(&key) {
                bail!(
                    "{name}: {}: sample key `{key}` is listed twice (first at {})",
                    row.place,
                    first.place
                );
            }
            by_key.insert(key, row);
        }
        Ok(Self {
            path: path.to_path_buf(),
            rows: Arc::new(by_key),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kept visual tokens of sample `key`, ascending, as indices into the prompt's `visual`
    /// visual tokens; `present` (ascending), when known, holds the indices earlier stages left. The
    /// one check of the stage: the run and the up-front check of a sweep both call it.
    pub fn kept(&self, key: &str, visual: usize, present: Option<&[usize]>) -> Result<Vec<usize>> {
        let name = self.path.display();
        let row = self
            .rows
            .get(key)
            .ok_or_else(|| anyhow!("{name}: no row for sample key `{key}`"))?;
        let at = |msg: String| anyhow!("{name}: {} (key `{key}`): {msg}", row.place);
        let mut kept = Vec::with_capacity(row.keep.len());
        for &i in &row.keep {
            if i < 0 || i as u64 >= visual as u64 {
                return Err(at(format!(
                    "index {i} is outside the sample's {visual} visual tokens (0–{})",
                    visual.saturating_sub(1)
                )));
            }
            kept.push(i as usize);
        }
        kept.sort_unstable();
        if let Some(w) = kept.windows(2).find(|w| w[0] == w[1]) {
            return Err(at(format!("index {} is listed twice", w[0])));
        }
        if let Some(present) = present {
            if let Some(&i) = kept.iter().find(|i| present.binary_search(i).is_err()) {
                return Err(at(format!(
                    "index {i} was already dropped by an earlier stage (the indices number the prompt's visual tokens)"
                )));
            }
        }
        Ok(kept)
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<(String, Row)>> {
    let text = std::fs::read_to_string(path).context("cannot read")?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = format!("line {}", i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow!("{place}: not JSON ({e})"))?;
        let key = value
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| anyhow!("{place}: expected a string `key`"))?;
        let keep = value
            .get("keep")
            .and_then(|k| k.as_array())
            .ok_or_else(|| anyhow!("{place}: expected `keep`, a list of integers"))?
            .iter()
            .map(|v| v.as_i64())
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| anyhow!("{place}: `keep` holds a value that is not an integer"))?;
        rows.push((key.to_string(), Row { place, keep }));
    }
    Ok(rows)
}

fn read_parquet(path: &Path) -> Result<Vec<(String, Row)>> {
    let file = std::fs::File::open(path).context("cannot open")?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("not a Parquet file ({e})"))?;
    let schema = builder.schema().clone();
    let field = |name: &str| {
        schema
            .field_with_name(name)
            .map_err(|_| anyhow!("no `{name}` column (expected `key` and `keep`)"))
    };
    let key_type = field("key")?.data_type().clone();
    if !matches!(
        key_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        bail!("column `key` is {key_type}, expected strings");
    }
    let keep_type = field("keep")?.data_type().clone();
    let item = match &keep_type {
        DataType::List(f) | DataType::LargeList(f) => f.data_type().clone(),
        other => bail!("column `keep` is {other}, expected a list of integers"),
    };
    if !item.is_integer() {
        bail!("column `keep` is a list of {item}, expected a list of integers");
    }
    let reader = builder.build().map_err(|e| anyhow!("cannot read ({e})"))?;
    let list_type = DataType::new_list(DataType::Int64, true);
    let mut rows = Vec::new();
    let mut offset = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("cannot read ({e})"))?;
        let column = |name: &str| batch.column(batch.schema().index_of(name).expect("checked"));
        let keys = arrow::compute::cast(column("key"), &DataType::Utf8)?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let keeps = arrow::compute::cast(column("keep"), &list_type)?;
        let keeps = keeps
            .as_any()
            .downcast_ref::<ListArray>()
            .expect("cast to a list of Int64");
        for r in 0..batch.num_rows() {
            let place = format!("row {}", offset + r);
            if keys.is_null(r) {
                bail!("{place}: `key` is null");
            }
            if keeps.is_null(r) {
                bail!("{place} (key `{}`): `keep` is null", keys.value(r));
            }
            let values = keeps.value(r);
            let values = values
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64 items");
            if values.null_count() > 0 {
                bail!("{place} (key `{}`): `keep` holds a null", keys.value(r));
            }
            rows.push((
                keys.value(r).to_string(),
                Row {
                    place,
                    keep: values.values().to_vec(),
                },
            ));
        }
        offset += batch.num_rows();
    }
    Ok(rows)
}
