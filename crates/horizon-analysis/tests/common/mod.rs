//! Test helpers: an info-rows writer independent of the crate, and a naive oracle.
#![allow(dead_code)]

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Row {
    pub model: String,
    pub task: String,
    pub sample: String,
    pub layer: i32,
    pub variant: &'static str,
    pub window: i32,
    pub row: i32,
    pub col: i32,
    pub mode: &'static str,
    pub target: &'static str,
    pub p: f64,
    pub logp: f64,
    pub kl: f64,
}

impl Row {
    pub fn new(model: &str, task: &str, sample: &str, layer: i32, variant: &'static str) -> Row {
        Row {
            model: model.into(),
            task: task.into(),
            sample: sample.into(),
            layer,
            variant,
            window: -1,
            row: -1,
            col: -1,
            mode: "keep-only",
            target: "gt",
            p: 0.0,
            logp: 0.0,
            kl: 0.0,
        }
    }
    pub fn win(mut self, w: i32, cols: i32, mode: &'static str) -> Row {
        self.window = w;
        self.row = w / cols;
        self.col = w % cols;
        self.mode = mode;
        self
    }
    /// Sets p and derives logp = ln p and an arbitrary kl.
    pub fn vals(mut self, p: f64, kl: f64) -> Row {
        self.p = p;
        self.logp = p.ln();
        self.kl = kl;
        self
    }
}

pub fn batch(rows: &[Row]) -> RecordBatch {
    let s = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let i = |f: &dyn Fn(&Row) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(rows.iter().map(f)))
    };
    let d = |f: &dyn Fn(&Row) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let fields = vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("window", DataType::Int32, false),
        Field::new("window_row", DataType::Int32, false),
        Field::new("window_col", DataType::Int32, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("target_token", DataType::Int64, false),
        Field::new("p", DataType::Float64, false),
        Field::new("logp", DataType::Float64, false),
        Field::new("kl", DataType::Float64, false),
    ];
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![
            s(&|r| r.model.clone()),
            s(&|r| r.task.clone()),
            s(&|r| r.sample.clone()),
            i(&|r| r.layer),
            s(&|r| r.variant.to_string()),
            i(&|r| r.window),
            i(&|r| r.row),
            i(&|r| r.col),
            s(&|r| r.mode.to_string()),
            s(&|r| r.target.to_string()),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| 42))),
            d(&|r| r.p),
            d(&|r| r.logp),
            d(&|r| r.kl),
        ],
    )
    .unwrap()
}

pub fn write_batch(path: &Path, batch: &RecordBatch, meta: &[(&str, &str)], row_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .set_key_value_metadata(Some(
            meta.iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
                .collect(),
        ))
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

pub fn write_rows(path: &Path, rows: &[Row], grid: (usize, usize)) {
    let (r, c) = (grid.0.to_string(), grid.1.to_string());
    write_batch(
        path,
        &batch(rows),
        &[
            ("horizon.grid_rows", &r),
            ("horizon.grid_cols", &c),
            ("horizon.window_size", "2"),
        ],
        7, // small row groups: exercises the parallel row-group reader
    );
}

/// Small deterministic generator (xorshift), independent of the crate's RNG.
pub struct Gen(pub u64);
impl Gen {
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_f64().max(1e-300), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A random complete dataset: every sample has full, text_only per layer and every window in both
/// modes, for both targets.
pub fn random_rows(
    g: &mut Gen,
    models: &[&str],
    tasks: &[&str],
    samples_per_task: usize,
    layers: &[i32],
    grid: (i32, i32),
) -> Vec<Row> {
    let nw = grid.0 * grid.1;
    let mut rows = Vec::new();
    for m in models {
        for t in tasks {
            for s in 0..samples_per_task {
                let sid = format!("{t}-{s}");
                for target in ["gt", "greedy"] {
                    let mut r =
                        Row::new(m, t, &sid, -1, "full").vals(0.3 + 0.6 * g.next_f64(), 0.0);
                    r.target = target;
                    rows.push(r);
                    for &k in layers {
                        let mut r = Row::new(m, t, &sid, k, "text_only")
                            .vals(0.01 + 0.2 * g.next_f64(), 2.0 * g.next_f64());
                        r.target = target;
                        rows.push(r);
                        for mode in ["keep-only", "leave-out"] {
                            for w in 0..nw {
                                let mut r = Row::new(m, t, &sid, k, "window")
                                    .win(w, grid.1, mode)
                                    .vals(0.01 + 0.9 * g.next_f64(), 2.0 * g.next_f64());
                                r.target = target;
                                rows.push(r);
                            }
                        }
                    }
                }
            }
        }
    }
    rows
}

/// Naive oracle statistics of one (model, task or None = pooled, layer).
#[derive(Debug)]
pub struct Oracle {
    pub n: usize,
    pub mean: f64,
    pub stderr: f64,
    pub window_means: Vec<f64>,
    pub std_windows: f64,
    pub gini: Option<f64>,
    pub entropy: Option<f64>,
    pub max_minus_min: f64,
}

/// Straightforward implementation from the definitions: nested maps, no dense arrays.
pub fn oracle(
    rows: &[Row],
    model: &str,
    task: Option<&str>,
    layer: i32,
    metric: &str,
    mode: &str,
    nw: usize,
) -> Oracle {
    let val = |r: &Row| match metric {
        "p" => r.p,
        "logp" => r.logp,
        _ => r.kl,
    };
    let sel = |r: &&Row| r.model == model && task.is_none_or(|t| r.task == t) && r.target == "gt";
    // sample -> (text, full, windows)
    let mut text: BTreeMap<String, f64> = BTreeMap::new();
    let mut full: BTreeMap<String, f64> = BTreeMap::new();
    let mut wins: BTreeMap<String, BTreeMap<i32, f64>> = BTreeMap::new();
    for r in rows.iter().filter(sel) {
        let key = format!("{}/{}", r.task, r.sample);
        match r.variant {
            "text_only" if r.layer == layer => {
                text.insert(key, val(r));
            }
            "full" if r.layer == -1 => {
                full.insert(key, val(r));
            }
            "window" if r.layer == layer && r.mode == mode => {
                wins.entry(key).or_default().insert(r.window, val(r));
            }
            _ => {}
        }
    }
    let mut info: BTreeMap<String, Vec<(i32, f64)>> = BTreeMap::new();
    for (s, ws) in &wins {
        for (&w, &v) in ws {
            let i = match (mode, metric) {
                ("keep-only", "kl") => text[s] - v,
                ("keep-only", _) => v - text[s],
                ("leave-out", "kl") => v,
                _ => full[s] - v,
            };
            info.entry(s.clone()).or_default().push((w, i));
        }
    }
    let per_sample: Vec<f64> = info
        .values()
        .map(|v| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64)
        .collect();
    let n = per_sample.len();
    let mean = per_sample.iter().sum::<f64>() / n as f64;
    let var = per_sample.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    let mut window_means = vec![0.0; nw];
    for (w, wm) in window_means.iter_mut().enumerate() {
        let xs: Vec<f64> = info
            .values()
            .flat_map(|v| v.iter().filter(|x| x.0 == w as i32).map(|x| x.1))
            .collect();
        *wm = xs.iter().sum::<f64>() / xs.len() as f64;
    }
    let wmean = window_means.iter().sum::<f64>() / nw as f64;
    let std_windows = (window_means
        .iter()
        .map(|x| (x - wmean).powi(2))
        .sum::<f64>()
        / nw as f64)
        .sqrt();
    let clipped: Vec<f64> = window_means.iter().map(|x| x.max(0.0)).collect();
    let total: f64 = clipped.iter().sum();
    let gini = (total > 0.0).then(|| {
        let mut s = 0.0;
        for a in &clipped {
            for b in &clipped {
                s += (a - b).abs();
            }
        }
        s / (2.0 * (nw * nw) as f64 * (total / nw as f64))
    });
    let entropy = (total > 0.0).then(|| {
        -clipped
            .iter()
            .map(|x| x / total)
            .filter(|&q| q > 0.0)
            .map(|q| q * q.ln())
            .sum::<f64>()
            / (nw as f64).ln()
    });
    let mx = window_means.iter().cloned().fold(f64::MIN, f64::max);
    let mn = window_means.iter().cloned().fold(f64::MAX, f64::min);
    Oracle {
        n,
        mean,
        stderr: (var / n as f64).sqrt(),
        window_means,
        std_windows,
        gini,
        entropy,
        max_minus_min: mx - mn,
    }
}
