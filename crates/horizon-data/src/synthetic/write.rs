//! Parquet output of the synthetic set (schema in the parent module's docs).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use arrow::array::{ArrayRef, AsArray, BinaryArray, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use image::{ImageEncoder, RgbImage};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::{GenConfig, SampleMeta, SynthSample};

const ROW_GROUP: usize = 256;

/// PNG (8-bit RGB, default compression) of `img`. Deterministic.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("PNG encoding into memory cannot fail");
    buf
}

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("question_id", DataType::Utf8, false),
        Field::new("image", DataType::Struct(image_fields()), true),
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("meta", DataType::Utf8, false),
    ]))
}

/// The `huggingface` key-value metadata that makes 🤗 `datasets` read `image` as an `Image` feature.
fn hf_metadata() -> String {
    let value = serde_json::json!({"dtype": "string", "_type": "Value"});
    serde_json::json!({
        "info": {
            "features": {
                "question_id": value,
                "image": {"_type": "Image"},
                "question": value,
                "answer": value,
                "category": value,
                "meta": value,
            }
        }
    })
    .to_string()
}

fn batch(samples: &[SynthSample]) -> Result<RecordBatch> {
    let ids = StringArray::from_iter_values(samples.iter().map(|s| s.id.as_str()));
    let pngs: Vec<Vec<u8>> = samples.iter().map(SynthSample::png).collect();
    let bytes = BinaryArray::from_iter_values(pngs.iter());
    let paths = StringArray::from_iter_values(samples.iter().map(|s| format!("{}.png", s.id)));
    let image = StructArray::try_new(
        image_fields(),
        vec![Arc::new(bytes) as ArrayRef, Arc::new(paths) as ArrayRef],
        None,
    )?;
    let questions = StringArray::from_iter_values(samples.iter().map(|s| s.question.as_str()));
    let answers = StringArray::from_iter_values(samples.iter().map(|s| s.answer.as_str()));
    let cats = StringArray::from_iter_values(samples.iter().map(|s| s.category.name()));
    let metas: Vec<String> = samples
        .iter()
        .map(|s| serde_json::to_string(&s.meta))
        .collect::<Result<_, _>>()?;
    let metas = StringArray::from_iter_values(metas.iter());
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(ids),
            Arc::new(image),
            Arc::new(questions),
            Arc::new(answers),
            Arc::new(cats),
            Arc::new(metas),
        ],
    )?)
}

/// Writes `samples` to `path` in the HF-parquet layout, atomically: a temporary file in the same folder,
/// synced, then renamed over `path`. Parent folders are created. PNGs are encoded one row group (256 rows)
/// at a time.
pub fn write_parquet(path: impl AsRef<Path>, samples: &[SynthSample]) -> Result<()> {
    crate::atomic::write_atomic(path.as_ref(), |tmp| write_to(tmp, samples))
}

fn write_to(tmp: &Path, samples: &[SynthSample]) -> Result<()> {
    let file = File::create(tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "huggingface".to_string(),
            hf_metadata(),
        )]))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props))
        .with_context(|| format!("{}: cannot start parquet writer", tmp.display()))?;
    for chunk in samples.chunks(ROW_GROUP) {
        writer
            .write(&batch(chunk)?)
            .with_context(|| format!("{}: cannot write rows", tmp.display()))?;
    }
    let file = writer
        .into_inner()
        .with_context(|| format!("{}: cannot finish parquet file", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("{}: cannot sync", tmp.display()))?;
    Ok(())
}

/// Generates a split ([`super::generate_split`]) and writes it to `path`; returns the number of rows.
pub fn write_split(
    path: impl AsRef<Path>,
    cfg: &GenConfig,
    per_category: usize,
    seed: u64,
) -> Result<usize> {
    let samples = super::generate_split(cfg, per_category, seed)?;
    write_parquet(path, &samples)?;
    Ok(samples.len())
}

/// Reads the `question_id` and `meta` columns of a synthetic parquet file back into `(id, SampleMeta)` pairs.
pub fn read_meta(path: impl AsRef<Path>) -> Result<Vec<(String, SampleMeta)>> {
    let path = path.as_ref();
    let file_name = path.display();
    let file = File::open(path).map_err(|e| anyhow!("{file_name}: cannot open: {e}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{file_name}: not a readable parquet file: {e}"))?;
    let roots = builder.parquet_schema().root_schema().get_fields();
    let find = |name: &str| {
        roots
            .iter()
            .position(|t| t.name() == name)
            .ok_or_else(|| anyhow!("{file_name}: missing column `{name}`"))
    };
    let (id_idx, meta_idx) = (find("question_id")?, find("meta")?);
    for name in ["question_id", "meta"] {
        let dt = builder.schema().field_with_name(name)?.data_type().clone();
        if dt != DataType::Utf8 {
            return Err(anyhow!(
                "{file_name}: column `{name}`: expected Utf8, found {dt}"
            ));
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [id_idx, meta_idx]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| anyhow!("{file_name}: cannot read: {e}"))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("{file_name}: cannot read rows: {e}"))?;
        let ids = batch
            .column_by_name("question_id")
            .unwrap()
            .as_string::<i32>();
        let metas = batch.column_by_name("meta").unwrap().as_string::<i32>();
        for i in 0..batch.num_rows() {
            let row = out.len();
            let meta: SampleMeta = serde_json::from_str(metas.value(i))
                .map_err(|e| anyhow!("{file_name}: row {row}: column `meta`: bad JSON: {e}"))?;
            out.push((ids.value(i).to_string(), meta));
        }
    }
    Ok(out)
}
