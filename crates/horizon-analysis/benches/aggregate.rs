//! Benchmark: read + aggregate ~20 million info rows, against a naive HashMap-of-Vec baseline
//! measured in the same run.
//!
//! `cargo bench -p horizon-analysis --bench aggregate [-- SAMPLES_PER_TASK]`
//!
//! Default: 1120 samples per (model, task), i.e. 2 models × 2 tasks × 1120 × (31 layers ×
//! (144 windows and text_only) and full) = 20.1 M rows. The data go to a temporary directory, or
//! to `$HORIZON_BENCH_DIR` (reused when it already holds the same data).

use arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use horizon_analysis::{analyze, read_info_rows_with, AnalysisParams, Metric, ReadOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const MODELS: [&str; 2] = ["llava-1.5-7b", "qwen2.5-vl-7b"];
const TASKS: [&str; 2] = ["counting", "color"];
const LAYERS: i32 = 31;
const GRID: i32 = 12;
const SAMPLES_PER_FILE: usize = 140;

fn schema() -> Arc<Schema> {
    let u = |n: &str| Field::new(n, DataType::Utf8, false);
    let i = |n: &str| Field::new(n, DataType::Int32, false);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        u("model"),
        u("task"),
        u("sample_id"),
        i("layer"),
        u("variant"),
        i("window"),
        i("window_row"),
        i("window_col"),
        u("mode"),
        u("target"),
        Field::new("target_token", DataType::Int64, false),
        f("p"),
        f("logp"),
        f("kl"),
    ]))
}

#[derive(Default)]
struct Cols {
    model: Vec<&'static str>,
    task: Vec<&'static str>,
    sample: Vec<String>,
    layer: Vec<i32>,
    variant: Vec<&'static str>,
    window: Vec<i32>,
    p: Vec<f64>,
}

impl Cols {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        m: &'static str,
        t: &'static str,
        s: &str,
        k: i32,
        v: &'static str,
        w: i32,
        p: f64,
    ) {
        self.model.push(m);
        self.task.push(t);
        self.sample.push(s.to_string());
        self.layer.push(k);
        self.variant.push(v);
        self.window.push(w);
        self.p.push(p);
    }

    fn batch(self) -> RecordBatch {
        let n = self.layer.len();
        let s = |v: Vec<&str>| Arc::new(StringArray::from(v)) as ArrayRef;
        let rc = |f: fn(i32) -> i32| {
            Arc::new(Int32Array::from_iter_values(self.window.iter().map(|&w| {
                if w < 0 {
                    -1
                } else {
                    f(w)
                }
            }))) as ArrayRef
        };
        let row = rc(|w| w / GRID);
        let col = rc(|w| w % GRID);
        let logp: Vec<f64> = self.p.iter().map(|p| p.ln()).collect();
        let kl: Vec<f64> = self.p.iter().map(|p| 1.0 - p).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                s(self.model),
                s(self.task),
                Arc::new(StringArray::from(self.sample)),
                Arc::new(Int32Array::from(self.layer)),
                s(self.variant),
                Arc::new(Int32Array::from(self.window)),
                row,
                col,
                s(vec!["keep-only"; n]),
                s(vec!["gt"; n]),
                Arc::new(Int64Array::from(vec![450i64; n])),
                Arc::new(Float64Array::from(self.p)),
                Arc::new(Float64Array::from(logp)),
                Arc::new(Float64Array::from(kl)),
            ],
        )
        .unwrap()
    }
}

fn synthesize(dir: &Path, samples_per_task: usize) -> usize {
    let marker = dir.join(format!("done-{samples_per_task}"));
    let rows_per_sample = (LAYERS * (GRID * GRID + 1) + 1) as usize;
    let total = MODELS.len() * TASKS.len() * samples_per_task * rows_per_sample;
    if marker.exists() {
        println!("reusing {total} rows in {}", dir.display());
        return total;
    }
    let t0 = Instant::now();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_max_row_group_row_count(Some(1 << 20))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("horizon.grid_rows".into(), GRID.to_string()),
            KeyValue::new("horizon.grid_cols".into(), GRID.to_string()),
            KeyValue::new("horizon.window_size".into(), "2".to_string()),
            KeyValue::new("horizon.num_layers".into(), "32".to_string()),
        ]))
        .build();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut part = 0;
    for m in MODELS {
        for t in TASKS {
            for first in (0..samples_per_task).step_by(SAMPLES_PER_FILE) {
                let path = dir.join(format!("part-{part:05}.parquet"));
                part += 1;
                let mut w = ArrowWriter::try_new(
                    File::create(&path).unwrap(),
                    schema(),
                    Some(props.clone()),
                )
                .unwrap();
                let mut c = Cols::default();
                for s in first..(first + SAMPLES_PER_FILE).min(samples_per_task) {
                    let sid = format!("{t}-{s:06}");
                    c.push(m, t, &sid, -1, "full", -1, 0.5 + 0.4 * rng.gen::<f64>());
                    for k in 0..LAYERS {
                        let text = 0.05 + 0.1 * rng.gen::<f64>();
                        c.push(m, t, &sid, k, "text_only", -1, text);
                        let level = 0.3 * (-(k as f64) / 6.0).exp();
                        for win in 0..GRID * GRID {
                            let p = text + level * rng.gen::<f64>();
                            c.push(m, t, &sid, k, "window", win, p.min(1.0));
                        }
                    }
                }
                w.write(&c.batch()).unwrap();
                w.close().unwrap();
            }
        }
    }
    std::fs::write(&marker, b"").unwrap();
    println!(
        "synthesised {total} rows in {part} part files in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    total
}

/// The naive baseline: every row's keys as owned Strings into a HashMap of Vecs, then a
/// straightforward per-(model, task, layer) reduction with a sequential bootstrap.
fn naive(dir: &Path, b: usize) -> HashMap<(String, String, i32), (f64, f64, f64)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    type Key = (String, String, String, i32);
    let mut text: HashMap<Key, f64> = HashMap::new();
    let mut windows: HashMap<Key, Vec<(i32, f64)>> = HashMap::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let s = |n: &str| {
                batch
                    .column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let i = |n: &str| {
                batch
                    .column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .clone()
            };
            let (model, task, sample, variant, mode, target) = (
                s("model"),
                s("task"),
                s("sample_id"),
                s("variant"),
                s("mode"),
                s("target"),
            );
            let (layer, window) = (i("layer"), i("window"));
            let p = batch
                .column_by_name("p")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
            for r in 0..batch.num_rows() {
                if target.value(r) != "gt" {
                    continue;
                }
                let key = (
                    model.value(r).to_string(),
                    task.value(r).to_string(),
                    sample.value(r).to_string(),
                    layer.value(r),
                );
                match variant.value(r) {
                    "text_only" => {
                        text.insert(key, p.value(r));
                    }
                    "window" if mode.value(r) == "keep-only" => {
                        windows
                            .entry(key)
                            .or_default()
                            .push((window.value(r), p.value(r)));
                    }
                    _ => {}
                }
            }
        }
    }
    let mut per_layer: HashMap<(String, String, i32), Vec<f64>> = HashMap::new();
    let mut per_window: HashMap<(String, String, i32, i32), (f64, usize)> = HashMap::new();
    for (key, ws) in &windows {
        let Some(&t) = text.get(key) else { continue };
        let mut sum = 0.0;
        for &(w, p) in ws {
            sum += p - t;
            let e = per_window
                .entry((key.0.clone(), key.1.clone(), key.3, w))
                .or_insert((0.0, 0));
            e.0 += p - t;
            e.1 += 1;
        }
        per_layer
            .entry((key.0.clone(), key.1.clone(), key.3))
            .or_default()
            .push(sum / ws.len() as f64);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    per_layer
        .into_iter()
        .map(|(k, v)| {
            let n = v.len();
            let mean = v.iter().sum::<f64>() / n as f64;
            let mut means: Vec<f64> = (0..b)
                .map(|_| (0..n).map(|_| v[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
                .collect();
            means.sort_by(f64::total_cmp);
            let lo = means[(0.025 * (b - 1) as f64) as usize];
            let hi = means[(0.975 * (b - 1) as f64) as usize];
            (k, (mean, lo, hi))
        })
        .collect()
}

fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1120);
    let tmp;
    let dir = match std::env::var("HORIZON_BENCH_DIR") {
        Ok(d) => {
            std::fs::create_dir_all(&d).unwrap();
            PathBuf::from(d)
        }
        Err(_) => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    let rows = synthesize(&dir, samples);
    println!("threads: {}", rayon::current_num_threads());

    let t0 = Instant::now();
    let table = read_info_rows_with(&dir, &ReadOptions::for_metric(Metric::P)).unwrap();
    let t_read = t0.elapsed().as_secs_f64();
    let params = AnalysisParams::default();
    let t1 = Instant::now();
    let a = analyze(&table, &params).unwrap();
    let t_agg = t1.elapsed().as_secs_f64();
    let t_fast = t0.elapsed().as_secs_f64();
    assert_eq!(table.len(), rows);
    drop(table);
    println!(
        "horizon-analysis: read {rows} rows {t_read:.2} s + aggregate (B = {}) {t_agg:.2} s = {t_fast:.2} s ({:.1} M rows/s)",
        params.bootstrap,
        rows as f64 / t_fast / 1e6
    );

    let t2 = Instant::now();
    let base = naive(&dir, params.bootstrap);
    let t_naive = t2.elapsed().as_secs_f64();
    println!("naive HashMap-of-Vec baseline: {t_naive:.2} s");
    println!("speed-up: {:.1}x", t_naive / t_fast);

    // The two agree on the means.
    let mut checked = 0;
    for g in a.groups.iter().filter(|g| !g.pooled) {
        for l in &g.layers {
            let (m, _, _) = base[&(g.model.clone(), g.task.clone(), l.layer)];
            assert!(
                (m - l.mean).abs() < 1e-9,
                "{} {} {}",
                g.model,
                g.task,
                l.layer
            );
            checked += 1;
        }
    }
    println!("means agree on {checked} (model, task, layer) cells");
    let g = &a.groups[0];
    println!(
        "{} / {}: horizon {}, m_0 = {:.4} [{:.4}, {:.4}]",
        g.model,
        g.task,
        g.horizon.description,
        g.layers[0].mean,
        g.layers[0].ci_low,
        g.layers[0].ci_high
    );
}
