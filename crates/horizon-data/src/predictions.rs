//! Per-sample predictions of `horizon eval --predictions FILE`: one Parquet row per evaluated sample,
//! enough to rescore a run by each benchmark's official rules without the model (`horizon score`,
//! [`crate::score`]), and to study errors by answer, category or image. Readable by pandas, polars
//! and DuckDB.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `sample_key` | utf8 | unique per row (a file with two equal keys is refused) |
//! | `question_id` | utf8 | the benchmark's question id; MME: the image (`code_reasoning/0020.png`), shared by its two questions |
//! | `benchmark` | utf8 | `mme`, `pope`, `textvqa`, `scienceqa`, `gqa`, `mmbench` or `other` (`synthetic`, `generic` read as `other`): picks the scorer |
//! | `category` | utf8 | sample category (MME subtask, POPE split, MMBench category, ...) |
//! | `question` | utf8 | the question as asked (before the prompt template) |
//! | `answers` | `list<utf8>` | reference answers: MME/POPE `yes`/`no`; TextVQA the 10 annotator answers; ScienceQA/MMBench the correct letter; GQA the answer |
//! | `choices` | `list<utf8>` | the options in letter order (A first); empty when the question has none |
//! | `index` | int64, nullable | MMBench `index`: circular copies are `index + k * 1_000_000` and share `index % 1_000_000`; null elsewhere |
//! | `has_image` | bool | the sample has an image (ScienceQA's IMG subset); `false` only for text-only questions |
//! | `prediction` | utf8 | the greedy answer, decoded |
//! | `correct` | bool | whether the benchmark's score counts the row right, by its first convention ([`crate::score::row_score`]: MME `official` parsing, POPE `llava`, ScienceQA `llava`, GQA `llava`, MMBench `lmms-eval 0.7.3 static` option matching; TextVQA: any VQA credit; other benchmarks [`exact_match`]); `false` when the row has no reference answer |
//! | `score` | float64, nullable | what the benchmark's score averages for the row, by the same rule: 1 or 0, TextVQA the VQA accuracy (0 to 1); null without a reference answer |
//! | `prefill_ms` | float64, nullable | wall time of the prefill, pruning included (device-synchronized) |
//! | `decode_ms_per_token` | float64, nullable | mean wall time of one decoding step (null when one token was generated) |
//! | `new_tokens` | int64, nullable | tokens generated |
//! | `kv_cache_bytes` | int64, nullable | KV-cache bytes at the end of generation (its peak) |
//! | `visual_tokens_layer0` | int64, nullable | visual tokens the first decoder layer processed |
//! | `visual_tokens_final` | int64, nullable | visual tokens the last decoder layer processed |
//! | `visual_tokens_t_eq` | float64, nullable | visual tokens averaged over the decoder layers |
//!
//! The cost columns are filled by `horizon eval`; rescored or hand-made files may leave them null.
//! Every other column but `index` and `score` is non-null. Files written before `sample_key`, `benchmark`, `choices`,
//! `index` and `has_image` existed are still read: the key is then the question id, the benchmark
//! `other`, no choices, no index, and an image. Strings may also be `large_utf8` or `utf8_view`, lists
//! `large_list`, and `index` any integer type (files rewritten by polars or DuckDB). A file that does
//! not fit is refused with one line naming the file, the row and the column.
//!
//! File-level key-value metadata (`horizon.*`) records the model path and the benchmark path. The file
//! is written atomically (a temporary file renamed into place).

use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::atomic::write_parquet_atomic;

/// One evaluated sample (see the module documentation for the meaning of each field). `Default` gives
/// empty strings and lists, no index, `has_image: true` and benchmark `other`; in JSON every field
/// but `prediction` may be left out and takes that default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prediction {
    pub sample_key: String,
    pub question_id: String,
    pub benchmark: String,
    pub category: String,
    pub question: String,
    pub answers: Vec<String>,
    pub choices: Vec<String>,
    pub index: Option<i64>,
    pub has_image: bool,
    pub prediction: String,
    pub correct: bool,
    pub score: Option<f64>,
    pub prefill_ms: Option<f64>,
    pub decode_ms_per_token: Option<f64>,
    pub new_tokens: Option<i64>,
    pub kv_cache_bytes: Option<i64>,
    pub visual_tokens_layer0: Option<i64>,
    pub visual_tokens_final: Option<i64>,
    pub visual_tokens_t_eq: Option<f64>,
}

impl Default for Prediction {
    fn default() -> Self {
        Prediction {
            sample_key: String::new(),
            question_id: String::new(),
            benchmark: "other".into(),
            category: String::new(),
            question: String::new(),
            answers: Vec::new(),
            choices: Vec::new(),
            index: None,
            has_image: true,
            prediction: String::new(),
            correct: false,
            score: None,
            prefill_ms: None,
            decode_ms_per_token: None,
            new_tokens: None,
            kv_cache_bytes: None,
            visual_tokens_layer0: None,
            visual_tokens_final: None,
            visual_tokens_t_eq: None,
        }
    }
}

/// The `correct` column's rule for benchmarks without a scorer of their own (`other`): `prediction`
/// equals one of `answers` once both are trimmed, stripped of final `.`s and lower-cased. The
/// benchmarks' own rules are in [`crate::score`] ([`crate::score::row_score`]).
pub fn exact_match(prediction: &str, answers: &[String]) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('.').to_lowercase();
    let p = norm(prediction);
    answers.iter().any(|a| norm(a) == p)
}

fn list_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Utf8, false))
}

/// The schema [`write_predictions`] writes (see the module documentation).
pub fn predictions_schema() -> Arc<Schema> {
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
    let list = |n: &str| Field::new(n, DataType::List(list_item()), false);
    Arc::new(Schema::new(vec![
        utf8("sample_key"),
        utf8("question_id"),
        utf8("benchmark"),
        utf8("category"),
        utf8("question"),
        list("answers"),
        list("choices"),
        Field::new("index", DataType::Int64, true),
        Field::new("has_image", DataType::Boolean, false),
        utf8("prediction"),
        Field::new("correct", DataType::Boolean, false),
        Field::new("score", DataType::Float64, true),
        Field::new("prefill_ms", DataType::Float64, true),
        Field::new("decode_ms_per_token", DataType::Float64, true),
        Field::new("new_tokens", DataType::Int64, true),
        Field::new("kv_cache_bytes", DataType::Int64, true),
        Field::new("visual_tokens_layer0", DataType::Int64, true),
        Field::new("visual_tokens_final", DataType::Int64, true),
        Field::new("visual_tokens_t_eq", DataType::Float64, true),
    ]))
}

fn to_batch(rows: &[Prediction]) -> Result<RecordBatch> {
    let s = |f: fn(&Prediction) -> &str| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let b = |f: fn(&Prediction) -> bool| {
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(f(r))))) as ArrayRef
    };
    let f = |f: fn(&Prediction) -> Option<f64>| {
        Arc::new(Float64Array::from_iter(rows.iter().map(f))) as ArrayRef
    };
    let i = |f: fn(&Prediction) -> Option<i64>| {
        Arc::new(Int64Array::from_iter(rows.iter().map(f))) as ArrayRef
    };
    Ok(RecordBatch::try_new(
        predictions_schema(),
        vec![
            s(|r| &r.sample_key),
            s(|r| &r.question_id),
            s(|r| &r.benchmark),
            s(|r| &r.category),
            s(|r| &r.question),
            Arc::new(list_column(rows, |r| &r.answers)),
            Arc::new(list_column(rows, |r| &r.choices)),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.index))),
            b(|r| r.has_image),
            s(|r| &r.prediction),
            b(|r| r.correct),
            f(|r| r.score),
            f(|r| r.prefill_ms),
            f(|r| r.decode_ms_per_token),
            i(|r| r.new_tokens),
            i(|r| r.kv_cache_bytes),
            i(|r| r.visual_tokens_layer0),
            i(|r| r.visual_tokens_final),
            f(|r| r.visual_tokens_t_eq),
        ],
    )?)
}

/// A non-null `list<utf8>` column.
fn list_column(rows: &[Prediction], f: fn(&Prediction) -> &Vec<String>) -> ListArray {
    let values = StringArray::from_iter_values(rows.iter().flat_map(|r| f(r).iter()));
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| f(r).len()));
    ListArray::new(list_item(), offsets, Arc::new(values), None)
}

/// Row numbers of the first repeated `sample_key`: (first row, repeat).
fn duplicate_key(rows: &[Prediction]) -> Option<(usize, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if let Some(&first) = seen.get(r.sample_key.as_str()) {
            return Some((first, i));
        }
        seen.insert(&r.sample_key, i);
    }
    None
}

/// Writes `rows` to `path` atomically, zstd compressed, with `metadata` as `key=value` pairs in the
/// file footer. Refuses rows whose `sample_key`s are not unique.
pub fn write_predictions(
    path: &Path,
    rows: &[Prediction],
    metadata: &[(String, String)],
) -> Result<()> {
    if let Some((first, again)) = duplicate_key(rows) {
        bail!(
            "{}: row {again}, column sample_key: {:?} repeats row {first}",
            path.display(),
            rows[again].sample_key
        );
    }
    write_parquet_atomic(path, &to_batch(rows)?, metadata)
}

/// One batch of a predictions file being read: the columns by name, and where its rows start, so that
/// errors name the file, the row (counted over the whole file) and the column.
struct BatchReader<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
    first_row: usize,
}

impl BatchReader<'_> {
    fn err(&self, row: usize, column: &str, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: row {row}, column {column}: {what}",
            self.path.display()
        )
    }

    /// The column `name`; `None` if absent and `optional`.
    fn column(&self, name: &str, expected: &str, optional: bool) -> Result<Option<&ArrayRef>> {
        match self.batch.column_by_name(name) {
            Some(c) => Ok(Some(c)),
            None if optional => Ok(None),
            None => Err(self.err(
                self.first_row,
                name,
                format!("missing (expected {expected})"),
            )),
        }
    }

    fn wrong_type(&self, name: &str, found: &DataType, expected: &str) -> anyhow::Error {
        self.err(
            self.first_row,
            name,
            format!("type {found}, expected {expected}"),
        )
    }

    /// A non-null string column, as `utf8`.
    fn strings(&self, name: &str, optional: bool) -> Result<Option<StringArray>> {
        let Some(col) = self.column(name, "utf8", optional)? else {
            return Ok(None);
        };
        let arr = match col.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                cast(col, &DataType::Utf8).map_err(|e| self.err(self.first_row, name, e))?
            }
            other => return Err(self.wrong_type(name, other, "utf8")),
        };
        let arr = arr
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| self.wrong_type(name, col.data_type(), "utf8"))?;
        self.no_nulls(&arr, name)?;
        Ok(Some(arr))
    }

    /// A non-null list-of-strings column, as `list<utf8>`, with no null items.
    fn lists(&self, name: &str, optional: bool) -> Result<Option<ListArray>> {
        let Some(col) = self.column(name, "list<utf8>", optional)? else {
            return Ok(None);
        };
        let item_ok = |f: &Field| {
            matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        };
        let arr = match col.data_type() {
            DataType::List(f) | DataType::LargeList(f) if item_ok(f) => cast(
                col,
                &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            )
            .map_err(|e| self.err(self.first_row, name, e))?,
            other => return Err(self.wrong_type(name, other, "list<utf8>")),
        };
        let list = arr
            .as_any()
            .downcast_ref::<ListArray>()
            .cloned()
            .ok_or_else(|| self.wrong_type(name, col.data_type(), "list<utf8>"))?;
        self.no_nulls(&list, name)?;
        for i in 0..list.len() {
            if list.value(i).null_count() > 0 {
                return Err(self.err(self.first_row + i, name, "null list item"));
            }
        }
        Ok(Some(list))
    }

    /// A non-null boolean column.
    fn bools(&self, name: &str, optional: bool) -> Result<Option<BooleanArray>> {
        let Some(col) = self.column(name, "bool", optional)? else {
            return Ok(None);
        };
        let arr = col
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| self.wrong_type(name, col.data_type(), "bool"))?;
        self.no_nulls(&arr, name)?;
        Ok(Some(arr))
    }

    /// A nullable float column, as `float64`.
    fn floats(&self, name: &str) -> Result<Option<Float64Array>> {
        let Some(col) = self.column(name, "float64", true)? else {
            return Ok(None);
        };
        let numeric = col.data_type().is_numeric() || col.data_type() == &DataType::Null;
        if !numeric {
            return Err(self.wrong_type(name, col.data_type(), "float64"));
        }
        let arr = cast(col, &DataType::Float64).map_err(|e| self.err(self.first_row, name, e))?;
        Ok(arr.as_any().downcast_ref::<Float64Array>().cloned())
    }

    /// A nullable integer column, as `int64`.
    fn ints(&self, name: &str) -> Result<Option<Int64Array>> {
        let Some(col) = self.column(name, "int64", true)? else {
            return Ok(None);
        };
        if !col.data_type().is_integer() && col.data_type() != &DataType::Null {
            return Err(self.wrong_type(name, col.data_type(), "int64"));
        }
        let arr = cast(col, &DataType::Int64).map_err(|e| self.err(self.first_row, name, e))?;
        Ok(arr.as_any().downcast_ref::<Int64Array>().cloned())
    }

    fn no_nulls(&self, arr: &dyn Array, name: &str) -> Result<()> {
        if arr.null_count() == 0 {
            return Ok(());
        }
        let i = (0..arr.len()).find(|&i| arr.is_null(i)).unwrap_or(0);
        Err(self.err(self.first_row + i, name, "null"))
    }
}

fn list_value(list: &ListArray, i: usize) -> Vec<String> {
    let v = list.value(i);
    let s = v
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to list<utf8>");
    s.iter().flatten().map(str::to_string).collect()
}

/// Reads a predictions file back, every column checked against the schema (module documentation);
/// files of the older schema get the documented defaults. Errors are one line naming the file, the
/// row and the column.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{}: not a Parquet file ({e})", path.display()))?
        .build()
        .map_err(|e| anyhow!("{}: cannot read ({e})", path.display()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("{}: cannot read ({e})", path.display()))?;
        let r = BatchReader {
            path,
            batch: &batch,
            first_row: rows.len(),
        };
        let qid = r.strings("question_id", false)?.expect("required");
        let key = r.strings("sample_key", true)?;
        let bench = r.strings("benchmark", true)?;
        let cat = r.strings("category", false)?.expect("required");
        let q = r.strings("question", false)?.expect("required");
        let answers = r.lists("answers", false)?.expect("required");
        let choices = r.lists("choices", true)?;
        let index = r.ints("index")?;
        let has_image = r.bools("has_image", true)?;
        let pred = r.strings("prediction", false)?.expect("required");
        let correct = r.bools("correct", false)?.expect("required");
        let score = r.floats("score")?;
        let prefill_ms = r.floats("prefill_ms")?;
        let decode_ms = r.floats("decode_ms_per_token")?;
        let new_tokens = r.ints("new_tokens")?;
        let kv = r.ints("kv_cache_bytes")?;
        let vis0 = r.ints("visual_tokens_layer0")?;
        let vis_final = r.ints("visual_tokens_final")?;
        let t_eq = r.floats("visual_tokens_t_eq")?;
        let fl = |a: &Option<Float64Array>, i: usize| {
            a.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
        };
        let int = |a: &Option<Int64Array>, i: usize| {
            a.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
        };
        for i in 0..batch.num_rows() {
            rows.push(Prediction {
                sample_key: key.as_ref().unwrap_or(&qid).value(i).to_string(),
                question_id: qid.value(i).to_string(),
                benchmark: bench.as_ref().map_or("other", |b| b.value(i)).to_string(),
                category: cat.value(i).to_string(),
                question: q.value(i).to_string(),
                answers: list_value(&answers, i),
                choices: choices.as_ref().map_or_else(Vec::new, |c| list_value(c, i)),
                index: index
                    .as_ref()
                    .and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
                has_image: has_image.as_ref().is_none_or(|h| h.value(i)),
                prediction: pred.value(i).to_string(),
                correct: correct.value(i),
                score: fl(&score, i),
                prefill_ms: fl(&prefill_ms, i),
                decode_ms_per_token: fl(&decode_ms, i),
                new_tokens: int(&new_tokens, i),
                kv_cache_bytes: int(&kv, i),
                visual_tokens_layer0: int(&vis0, i),
                visual_tokens_final: int(&vis_final, i),
                visual_tokens_t_eq: fl(&t_eq, i),
            });
        }
    }
    if let Some((first, again)) = duplicate_key(&rows) {
        bail!(
            "{}: row {again}, column sample_key: {:?} repeats row {first}",
            path.display(),
            rows[again].sample_key
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_round_trip_with_lists_of_answers() {
        let rows = vec![
            Prediction {
                sample_key: "synthetic/q1".into(),
                question_id: "q1".into(),
                category: "read_text".into(),
                question: "What is the text in the image?".into(),
                answers: vec!["K7Q".into()],
                prediction: "K7O".into(),
                ..Prediction::default()
            },
            Prediction {
                sample_key: "mmbench/1000002".into(),
                question_id: "1000002".into(),
                benchmark: "mmbench".into(),
                category: "attribute".into(),
                question: "Which colour?".into(),
                answers: vec!["B".into()],
                choices: vec!["blue".into(), "red".into()],
                index: Some(1_000_002),
                has_image: false,
                prediction: "B".into(),
                correct: true,
                prefill_ms: Some(12.5),
                new_tokens: Some(2),
                kv_cache_bytes: Some(4096),
                visual_tokens_t_eq: Some(171.0),
                ..Prediction::default()
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pred.parquet");
        write_predictions(&path, &rows, &[("horizon.model".into(), "m".into())]).unwrap();
        assert_eq!(read_predictions(&path).unwrap(), rows);
        let err = read_predictions(&dir.path().join("missing.parquet")).unwrap_err();
        assert!(err.to_string().contains("missing.parquet"), "{err}");
    }

    #[test]
    fn files_of_the_first_schema_read_with_defaults() {
        // The six columns files had before sample_key, benchmark, choices, index and has_image.
        let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
        let schema = Arc::new(Schema::new(vec![
            utf8("question_id"),
            utf8("category"),
            utf8("question"),
            Field::new("answers", DataType::List(list_item()), false),
            utf8("prediction"),
            Field::new("correct", DataType::Boolean, false),
        ]));
        let one = |s: &str| Arc::new(StringArray::from(vec![s])) as ArrayRef;
        let answers = ListArray::new(
            list_item(),
            OffsetBuffer::from_lengths([2]),
            Arc::new(StringArray::from(vec!["red", "Red"])),
            None,
        );
        let batch = RecordBatch::try_new(
            schema,
            vec![
                one("q7"),
                one("colour"),
                one("What colour?"),
                Arc::new(answers),
                one("red"),
                Arc::new(BooleanArray::from(vec![true])),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.parquet");
        write_parquet_atomic(&path, &batch, &[]).unwrap();
        let rows = read_predictions(&path).unwrap();
        assert_eq!(
            rows,
            vec![Prediction {
                sample_key: "q7".into(),
                question_id: "q7".into(),
                category: "colour".into(),
                question: "What colour?".into(),
                answers: vec!["red".into(), "Red".into()],
                prediction: "red".into(),
                correct: true,
                ..Prediction::default()
            }]
        );
    }

    #[test]
    fn repeated_sample_keys_are_refused() {
        let row = Prediction {
            sample_key: "k".into(),
            ..Prediction::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dup.parquet");
        let err = write_predictions(&path, &[row.clone(), row], &[]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("dup.parquet: row 1, column sample_key: \"k\" repeats row 0"),
            "{err}"
        );
    }

    #[test]
    fn exact_match_trims_drops_final_periods_and_ignores_case() {
        let ans = vec!["Red".to_string(), "crimson".to_string()];
        assert!(exact_match(" red. ", &ans));
        assert!(exact_match("CRIMSON", &ans));
        assert!(!exact_match("a red", &ans));
    }
}
