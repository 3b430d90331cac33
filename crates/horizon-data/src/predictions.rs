//! Per-sample predictions of `horizon eval --predictions FILE`: one Parquet row per evaluated sample,
//! so that errors can be studied by answer, glyph count or image (join on `question_id` with the
//! benchmark). Readable by pandas, polars and DuckDB.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `question_id` | utf8 | the benchmark's question id |
//! | `category` | utf8 | sample category |
//! | `question` | utf8 | the question as asked (before the prompt template) |
//! | `answers` | list<utf8> | the reference answers (any one counts as a match) |
//! | `prediction` | utf8 | the greedy answer, decoded |
//! | `correct` | bool | exact match after trimming, dropping final `.`s and lower-casing |
//!
//! File-level key-value metadata (`horizon.*`) records the model path and the benchmark path. The file
//! is written atomically (a temporary file renamed into place).

use anyhow::{anyhow, Context, Result};
use arrow::array::{Array, BooleanArray, ListArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::atomic::write_parquet_atomic;

/// One evaluated sample (see the module documentation for the meaning of each field).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub question_id: String,
    pub category: String,
    pub question: String,
    pub answers: Vec<String>,
    pub prediction: String,
    pub correct: bool,
}

fn answer_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Utf8, false))
}

pub fn predictions_schema() -> Arc<Schema> {
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        utf8("question_id"),
        utf8("category"),
        utf8("question"),
        Field::new("answers", DataType::List(answer_item()), false),
        utf8("prediction"),
        Field::new("correct", DataType::Boolean, false),
    ]))
}

fn to_batch(rows: &[Prediction]) -> Result<RecordBatch> {
    let s = |f: fn(&Prediction) -> &str| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as Arc<dyn Array>
    };
    let answers = answers_column(rows);
    Ok(RecordBatch::try_new(
        predictions_schema(),
        vec![
            s(|r| &r.question_id),
            s(|r| &r.category),
            s(|r| &r.question),
            Arc::new(answers),
            s(|r| &r.prediction),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.correct)),
            )),
        ],
    )?)
}

/// The non-null `list<utf8>` column of reference answers.
fn answers_column(rows: &[Prediction]) -> ListArray {
    let values = StringArray::from_iter_values(rows.iter().flat_map(|r| r.answers.iter()));
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.answers.len()));
    ListArray::new(answer_item(), offsets, Arc::new(values), None)
}

/// Writes `rows` to `path` atomically, zstd compressed, with `metadata` as `key=value` pairs in the
/// file footer.
pub fn write_predictions(
    path: &Path,
    rows: &[Prediction],
    metadata: &[(String, String)],
) -> Result<()> {
    write_parquet_atomic(path, &to_batch(rows)?, metadata)
}

/// Reads a predictions file back (every column checked against the schema).
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a Parquet file", path.display()))?
        .build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: cannot read", path.display()))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| anyhow!("{}: no column {name}", path.display()))
        };
        let strings = |name: &str| -> Result<StringArray> {
            col(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| anyhow!("{}: column {name} is not utf8", path.display()))
        };
        let (qid, cat, q, pred) = (
            strings("question_id")?,
            strings("category")?,
            strings("question")?,
            strings("prediction")?,
        );
        let answers = col("answers")?
            .as_any()
            .downcast_ref::<ListArray>()
            .cloned()
            .ok_or_else(|| anyhow!("{}: column answers is not a list", path.display()))?;
        let correct = col("correct")?
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| anyhow!("{}: column correct is not bool", path.display()))?;
        for i in 0..batch.num_rows() {
            let list = answers.value(i);
            let list = list
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| anyhow!("{}: answers items are not utf8", path.display()))?;
            rows.push(Prediction {
                question_id: qid.value(i).to_string(),
                category: cat.value(i).to_string(),
                question: q.value(i).to_string(),
                answers: list.iter().flatten().map(str::to_string).collect(),
                prediction: pred.value(i).to_string(),
                correct: correct.value(i),
            });
        }
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
                question_id: "q1".into(),
                category: "read_text".into(),
                question: "What is the text in the image?".into(),
                answers: vec!["K7Q".into()],
                prediction: "K7O".into(),
                correct: false,
            },
            Prediction {
                question_id: "q2".into(),
                category: "textvqa".into(),
                question: "What brand?".into(),
                answers: vec!["acme".into(), "ACME corp".into(), "acme".into()],
                prediction: "acme".into(),
                correct: true,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pred.parquet");
        write_predictions(&path, &rows, &[("horizon.model".into(), "m".into())]).unwrap();
        assert_eq!(read_predictions(&path).unwrap(), rows);
        let err = read_predictions(&dir.path().join("missing.parquet")).unwrap_err();
        assert!(err.to_string().contains("missing.parquet"), "{err}");
    }
}
