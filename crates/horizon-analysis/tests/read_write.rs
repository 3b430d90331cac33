mod common;

use arrow::array::{Array, ArrayRef, DictionaryArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use common::*;
use horizon_analysis::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::sync::Arc;

fn rows() -> Vec<Row> {
    let mut g = Gen(99);
    random_rows(&mut g, &["m"], &["a"], 3, &[0, 1], (1, 3))
}

/// The test batch with one column replaced (or removed when `array` is None).
fn with_column(name: &str, array: Option<ArrayRef>) -> RecordBatch {
    let b = batch(&rows());
    let schema = b.schema();
    let mut fields = vec![];
    let mut cols = vec![];
    for (f, c) in schema.fields().iter().zip(b.columns()) {
        if f.name() == name {
            if let Some(a) = &array {
                fields.push(Field::new(name, a.data_type().clone(), true));
                cols.push(a.clone());
            }
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

#[test]
fn missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("no_layer.parquet");
    write_batch(&f, &with_column("layer", None), &[], 1024);
    let e = read_info_rows(&f).unwrap_err().to_string();
    assert!(
        e.contains("no_layer.parquet") && e.contains("`layer` is missing"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn wrong_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p_f32.parquet");
    let n = rows().len();
    let p = Arc::new(Float32Array::from(vec![0.5f32; n])) as ArrayRef;
    write_batch(&f, &with_column("p", Some(p)), &[], 1024);
    let e = read_info_rows(&f).unwrap_err().to_string();
    assert!(
        e.contains("p_f32.parquet") && e.contains("`p` has type Float32, expected float64"),
        "{e}"
    );
    // but reading only the kl metric works
    let t = read_info_rows_with(&f, &ReadOptions::for_metric(Metric::Kl)).unwrap();
    assert!(t.p.is_none() && t.kl.is_some() && t.target_token.is_none());
}

#[test]
fn corrupt_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_rows(&dir.path().join("part-0.parquet"), &rows(), (1, 3));
    std::fs::write(
        dir.path().join("part-1.parquet"),
        b"PAR1 this is not parquet",
    )
    .unwrap();
    let e = read_info_rows(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("part-1.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = read_info_rows(empty.path()).unwrap_err().to_string();
    assert!(e.contains("no *.parquet files"), "{e}");
}

#[test]
fn dictionary_string_columns_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dict.parquet");
    let rs = rows();
    let dict: DictionaryArray<Int32Type> = rs.iter().map(|r| r.sample.as_str()).collect();
    write_batch(
        &f,
        &with_column("sample_id", Some(Arc::new(dict) as ArrayRef)),
        &[
            ("horizon.grid_rows", "1"),
            ("horizon.grid_cols", "3"),
            ("horizon.model", "x/y"),
        ],
        5,
    );
    let t = read_info_rows(&f).unwrap();
    assert_eq!(t.len(), rs.len());
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(t.sample_id.get(i), r.sample);
        assert_eq!(t.model.get(i), r.model);
        assert_eq!(t.layer[i], r.layer);
        assert_eq!(t.p.as_ref().unwrap()[i], r.p);
        assert_eq!(t.window_col.as_ref().unwrap()[i], r.col);
    }
    // A file written before the `grid` column: every window on grid 0.
    assert_eq!(t.grid, vec![0; rs.len()]);
    assert_eq!(
        t.metadata.get("horizon.model").map(String::as_str),
        Some("x/y")
    );
    assert_eq!(t.metadata_usize("horizon.grid_cols"), Some(3));
}

#[test]
fn unknown_variant_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("v.parquet");
    let rs = rows();
    let v = StringArray::from_iter_values(rs.iter().map(|r| {
        if r.variant == "full" {
            "whole"
        } else {
            r.variant
        }
    }));
    write_batch(
        &f,
        &with_column("variant", Some(Arc::new(v) as ArrayRef)),
        &[],
        1024,
    );
    let t = read_info_rows(&f).unwrap();
    let e = analyze(&t, &AnalysisParams::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`variant`") && e.contains("whole"), "{e}");
}

#[test]
fn outputs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gen(5);
    let rs = random_rows(&mut g, &["m1", "m2"], &["a", "b"], 4, &[0, 1, 2], (2, 2));
    let f = dir.path().join("in.parquet");
    write_rows(&f, &rs, (2, 2));
    let t = read_info_rows(&f).unwrap();
    let a = analyze(
        &t,
        &AnalysisParams {
            bootstrap: 100,
            ..Default::default()
        },
    )
    .unwrap();
    let out = dir.path().join("out");
    write_outputs(&a, &out).unwrap();
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "no temporary files left: {names:?}");

    let json: serde_json::Value =
        serde_json::from_reader(File::open(out.join(HORIZON_JSON_FILE)).unwrap()).unwrap();
    assert_eq!(json["parameters"]["metric"], "p");
    assert_eq!(json["parameters"]["mode"], "keep-only");
    assert_eq!(json["parameters"]["bootstrap"], 100);
    assert_eq!(json["parameters"]["threshold"]["kind"], "relative");
    assert_eq!(json["parameters"]["threshold"]["value"], 0.05);
    assert_eq!(json["models"].as_array().unwrap().len(), 2);
    assert_eq!(json["models"][0]["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(json["models"][0]["pooled"]["task"], POOLED_TASK);
    assert_eq!(json["summary"].as_array().unwrap().len(), 6);
    assert!(json["definitions"]["information_keep_only"].is_string());
    // the report deserialises back
    let back: HorizonReport =
        serde_json::from_reader(File::open(out.join(HORIZON_JSON_FILE)).unwrap()).unwrap();
    assert_eq!(back.parameters, a.params);

    let read = |name: &str| -> RecordBatch {
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(out.join(name)).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let bs: Vec<RecordBatch> = b.map(|x| x.unwrap()).collect();
        arrow::compute::concat_batches(&bs[0].schema(), &bs).unwrap()
    };
    let layers = read(LAYER_TABLE_FILE);
    assert_eq!(layers.schema(), layer_table_schema());
    assert_eq!(layers.num_rows(), 6 * 3);
    let windows = read(WINDOW_TABLE_FILE);
    assert_eq!(windows.schema(), window_table_schema());
    assert_eq!(windows.num_rows(), 6 * 3 * 4);
    let mean = windows
        .column_by_name("mean")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .unwrap();
    assert_eq!(mean.null_count(), 0);
    assert_eq!(mean.value(5), a.groups[0].window_means[[1, 1]]);
    let row = windows
        .column_by_name("row")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Int32Array>()
        .unwrap();
    assert_eq!(&row.values()[..4], &[0, 0, 1, 1]);
    let _ = DataType::Utf8;
}
