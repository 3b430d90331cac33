//! Outputs: `horizon.json`, the per-layer table and the per-window table, written atomically.

use crate::aggregate::{Analysis, AnalysisParams, InputSummary, WindowLayout};
use crate::horizon::HorizonResult;
use crate::uncertainty::{interval_text, Comparison, HorizonBootstrap, SensitivityRow};
use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

pub const HORIZON_JSON_FILE: &str = "horizon.json";
pub const LAYER_TABLE_FILE: &str = "layers.parquet";
pub const WINDOW_TABLE_FILE: &str = "windows.parquet";

/// Definitions recorded in `horizon.json` (ours, not the reference's; see the crate docs).
const DEFINITIONS: &[(&str, &str)] = &[
    ("status", "aggregation and horizon definitions are ours (horizon-analysis), not from the reference code or paper"),
    ("information_keep_only", "p: p_w - p_text_only; logp: log p_w - log p_text_only; kl: KL_text_only - KL_w (same sample, target and layer K)"),
    ("information_leave_out", "p: p_full - p_{-w}; logp: log p_full - log p_{-w}; kl: KL_{-w}"),
    ("window_mean", "Ibar[K,w] = mean over samples of I[K,w,s]"),
    ("mean", "m_K = mean over samples of (mean over windows of I[K,w,s])"),
    ("ci", "percentile bootstrap of m_K over samples (resampled with replacement), linear-interpolated percentiles"),
    ("stderr", "sample sd (n-1) of the per-sample window means / sqrt(n)"),
    ("spread", "std_windows (population), cv = std/|mean_w Ibar|, max_minus_min on signed Ibar[K,.]; gini and entropy_norm on Ibar clipped at 0, entropy_norm = H(q)/ln(#windows)"),
    ("horizon", "first measured layer H such that every measured layer K >= H has |m_K| <= threshold and (if required) a CI covering 0; threshold relative = fraction * max_K |m_K|"),
    ("pooled_task", "task \"(all)\" pools every sample of the model"),
    ("horizon_bootstrap", "the horizon rule applied to B resamples of the group's samples (with replacement): resample layer means, the relative threshold recomputed, each layer's CI the full data's moved to the resample mean; interval = (1-c)/2 and 1-(1-c)/2 quantiles of the resampled horizons (inverted CDF), no horizon ordered deepest, null = no horizon"),
    ("comparisons", "pairs of tasks per model and of models per task; per resample the shared samples (same task and sample id) are drawn jointly, the others within their group; p_a_deeper = fraction of resamples with H_a > H_b, no horizon deeper than every layer"),
    ("sensitivity", "the point-estimate horizon of every group under each metric column present and each relative threshold (and the parameters' own threshold), same mode, target and CI rule"),
];

/// One (model, task) entry of `horizon.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HorizonEntry {
    pub task: String,
    pub n_samples: usize,
    pub first_layer: Option<i32>,
    pub last_layer: Option<i32>,
    pub horizon: HorizonResult,
    /// m_K at the peak layer.
    pub peak_mean: Option<f64>,
    /// The horizon's bootstrap distribution over samples (absent in files of older versions).
    #[serde(default)]
    pub bootstrap: HorizonBootstrap,
}

/// One model of `horizon.json`: per task and pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub model: String,
    pub pooled: HorizonEntry,
    pub tasks: Vec<HorizonEntry>,
}

/// Compact summary: one line per (model, task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryLine {
    pub model: String,
    pub task: String,
    pub horizon: Option<i32>,
    pub description: String,
    /// Ends of the horizon's bootstrap interval (null: no horizon), and its text.
    #[serde(default)]
    pub horizon_low: Option<i32>,
    #[serde(default)]
    pub horizon_high: Option<i32>,
    #[serde(default)]
    pub interval: String,
    /// Fraction of resamples without a horizon.
    #[serde(default)]
    pub p_no_horizon: Option<f64>,
}

/// The content of `horizon.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HorizonReport {
    pub tool: String,
    pub definitions: std::collections::BTreeMap<String, String>,
    pub parameters: AnalysisParams,
    pub grid: WindowLayout,
    pub input: InputSummary,
    pub models: Vec<ModelEntry>,
    pub summary: Vec<SummaryLine>,
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
    #[serde(default)]
    pub sensitivity: Vec<SensitivityRow>,
}

/// Builds the `horizon.json` content.
pub fn horizon_report(a: &Analysis) -> HorizonReport {
    let entry = |g: &crate::GroupResult| HorizonEntry {
        task: g.task.clone(),
        n_samples: g.n_samples,
        first_layer: g.layers.first().map(|l| l.layer),
        last_layer: g.layers.last().map(|l| l.layer),
        peak_mean: g
            .horizon
            .peak_layer
            .and_then(|k| g.layers.iter().find(|l| l.layer == k))
            .map(|l| l.mean),
        horizon: g.horizon.clone(),
        bootstrap: g.horizon_bootstrap.clone(),
    };
    let mut models: Vec<ModelEntry> = Vec::new();
    for g in &a.groups {
        if models.last().is_none_or(|m| m.model != g.model) {
            models.push(ModelEntry {
                model: g.model.clone(),
                pooled: entry(g),
                tasks: Vec::new(),
            });
        }
        let m = models.last_mut().expect("pushed");
        if g.pooled {
            m.pooled = entry(g);
        } else {
            m.tasks.push(entry(g));
        }
    }
    let summary = a
        .groups
        .iter()
        .map(|g| SummaryLine {
            model: g.model.clone(),
            task: g.task.clone(),
            horizon: g.horizon.horizon,
            description: g.horizon.description.clone(),
            horizon_low: g.horizon_bootstrap.low,
            horizon_high: g.horizon_bootstrap.high,
            interval: interval_text(&g.horizon_bootstrap),
            p_no_horizon: (g.horizon_bootstrap.resamples > 0)
                .then_some(g.horizon_bootstrap.p_no_horizon),
        })
        .collect();
    let mut definitions: std::collections::BTreeMap<String, String> = DEFINITIONS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    definitions.insert("metric".into(), a.params.metric.to_string());
    HorizonReport {
        tool: format!("horizon-analysis {}", env!("CARGO_PKG_VERSION")),
        definitions,
        parameters: a.params.clone(),
        grid: a.grid.clone(),
        input: a.input.clone(),
        models,
        summary,
        comparisons: a.comparisons.clone(),
        sensitivity: a.sensitivity.clone(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then rename.
fn atomic_write(path: &Path, write: impl FnOnce(File) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let file = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    if let Err(e) = write(file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("{}: cannot write", path.display())));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Writes `horizon.json` (pretty-printed; non-finite numbers become null).
pub fn write_horizon_json(a: &Analysis, path: &Path) -> Result<()> {
    let report = horizon_report(a);
    atomic_write(path, |mut f| {
        serde_json::to_writer_pretty(&mut f, &report)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        Ok(())
    })
}

fn opt(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn kv_metadata(a: &Analysis) -> Vec<KeyValue> {
    let mut kv = vec![
        KeyValue::new(
            "horizon.analysis.parameters".to_string(),
            serde_json::to_string(&a.params).unwrap_or_default(),
        ),
        KeyValue::new("horizon.grid_rows".to_string(), a.grid.rows.to_string()),
        KeyValue::new("horizon.grid_cols".to_string(), a.grid.cols.to_string()),
    ];
    for (k, v) in &a.input.metadata {
        if !k.starts_with("horizon.grid_") {
            kv.push(KeyValue::new(k.clone(), v.clone()));
        }
    }
    kv
}

fn write_parquet(path: &Path, batch: RecordBatch, a: &Analysis) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_key_value_metadata(Some(kv_metadata(a)))
        .build();
    atomic_write(path, |f| {
        let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props))?;
        w.write(&batch)?;
        let f = w.into_inner()?;
        f.sync_all()?;
        Ok(())
    })
}

/// The per-layer table's schema.
pub fn layer_table_schema() -> Arc<Schema> {
    let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    Arc::new(Schema::new(vec![
        f("model", DataType::Utf8, false),
        f("task", DataType::Utf8, false),
        f("layer", DataType::Int32, false),
        f("n_samples", DataType::Int64, false),
        f("mean", DataType::Float64, true),
        f("ci_low", DataType::Float64, true),
        f("ci_high", DataType::Float64, true),
        f("stderr", DataType::Float64, true),
        f("std_windows", DataType::Float64, true),
        f("cv", DataType::Float64, true),
        f("gini", DataType::Float64, true),
        f("entropy_norm", DataType::Float64, true),
        f("max_minus_min", DataType::Float64, true),
        f("vanishes", DataType::Boolean, false),
    ]))
}

/// Writes the per-layer table: one row per (model, task, layer); undefined values are null.
pub fn write_layer_table(a: &Analysis, path: &Path) -> Result<()> {
    let rows: Vec<(&crate::GroupResult, &crate::LayerStats)> = a
        .groups
        .iter()
        .flat_map(|g| g.layers.iter().map(move |l| (g, l)))
        .collect();
    let s = |f: &dyn Fn(&crate::GroupResult) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(g, _)| f(g)),
        ))
    };
    let d = |f: &dyn Fn(&crate::LayerStats) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(|(_, l)| opt(f(l)))))
    };
    let batch = RecordBatch::try_new(
        layer_table_schema(),
        vec![
            s(&|g| &g.model),
            s(&|g| &g.task),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|(_, l)| l.layer),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|(_, l)| l.n_samples as i64),
            )),
            d(&|l| l.mean),
            d(&|l| l.ci_low),
            d(&|l| l.ci_high),
            d(&|l| l.stderr),
            d(&|l| l.std_windows),
            d(&|l| l.cv),
            d(&|l| l.gini),
            d(&|l| l.entropy_norm),
            d(&|l| l.max_minus_min),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|(_, l)| Some(l.vanishes)),
            )),
        ],
    )?;
    write_parquet(path, batch, a)
}

/// The per-window table's schema.
pub fn window_table_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("window", DataType::Int32, false),
        Field::new("row", DataType::Int32, false),
        Field::new("col", DataType::Int32, false),
        Field::new("grid", DataType::Int32, false),
        Field::new("mean", DataType::Float64, true),
    ]))
}

/// Writes the per-window table: one row per (model, task, layer, window) with `Ī[K,w]` (null when no
/// sample has the window).
pub fn write_window_table(a: &Analysis, path: &Path) -> Result<()> {
    let nw = a.grid.n_windows;
    let mut model = Vec::new();
    let mut task = Vec::new();
    let (mut layer, mut window, mut row, mut col, mut grid, mut mean) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for g in &a.groups {
        for (li, l) in g.layers.iter().enumerate() {
            for w in 0..nw {
                model.push(g.model.as_str());
                task.push(g.task.as_str());
                layer.push(l.layer);
                window.push(w as i32);
                row.push(a.grid.row_of[w]);
                col.push(a.grid.col_of[w]);
                grid.push(a.grid.grid_of_window(w) as i32);
                mean.push(opt(g.window_means[[li, w]]));
            }
        }
    }
    let batch = RecordBatch::try_new(
        window_table_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(model)),
            Arc::new(StringArray::from_iter_values(task)),
            Arc::new(Int32Array::from(layer)),
            Arc::new(Int32Array::from(window)),
            Arc::new(Int32Array::from(row)),
            Arc::new(Int32Array::from(col)),
            Arc::new(Int32Array::from(grid)),
            Arc::new(Float64Array::from(mean)),
        ],
    )?;
    write_parquet(path, batch, a)
}

/// Writes `horizon.json`, `layers.parquet` and `windows.parquet` into `dir`.
pub fn write_outputs(a: &Analysis, dir: &Path) -> Result<()> {
    write_horizon_json(a, &dir.join(HORIZON_JSON_FILE))?;
    write_layer_table(a, &dir.join(LAYER_TABLE_FILE))?;
    write_window_table(a, &dir.join(WINDOW_TABLE_FILE))?;
    Ok(())
}
