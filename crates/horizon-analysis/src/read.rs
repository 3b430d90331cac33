//! Reading info rows into an in-memory columnar table.
//!
//! Files are opened once to validate their schema (one-line errors naming the file and column);
//! then their row groups are decoded in parallel (rayon), record batch by record batch, into
//! per-chunk columns with chunk-local string dictionaries, which are merged in file order.

use crate::Metric;
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Float64Array, Int32Array, Int64Array,
    LargeStringArray, StringArray, StringViewArray,
};
use arrow::datatypes::{
    ArrowDictionaryKeyType, DataType, Int16Type, Int32Type, Int64Type, Int8Type, Schema,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A dictionary-encoded utf8 column: `dict[codes[i]]` is row i's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StrColumn {
    pub codes: Vec<u32>,
    pub dict: Vec<String>,
}

impl StrColumn {
    /// Row i's value.
    pub fn get(&self, i: usize) -> &str {
        &self.dict[self.codes[i] as usize]
    }

    /// The code of `value`, if it occurs in the dictionary.
    pub fn code_of(&self, value: &str) -> Option<u32> {
        self.dict.iter().position(|d| d == value).map(|p| p as u32)
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// What [`read_info_rows_with`] reads.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Metric columns to read (each must be present). Default: all three.
    pub metrics: Vec<Metric>,
    /// Read `target_token` if present. Default: true.
    pub target_token: bool,
    /// Rows per decoded record batch. Default: 65536.
    pub batch_size: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            metrics: Metric::ALL.to_vec(),
            target_token: true,
            batch_size: 65536,
        }
    }
}

impl ReadOptions {
    /// Reads only what the analysis of `metric` needs (no other metric, no `target_token`).
    pub fn for_metric(metric: Metric) -> Self {
        ReadOptions {
            metrics: vec![metric],
            target_token: false,
            ..Default::default()
        }
    }
}

/// Info rows in columnar form. Optional columns are `None` when absent from the files or not
/// requested.
#[derive(Debug, Clone, Default)]
pub struct InfoTable {
    pub model: StrColumn,
    pub task: StrColumn,
    pub sample_id: StrColumn,
    pub layer: Vec<i32>,
    pub variant: StrColumn,
    pub window: Vec<i32>,
    pub window_row: Option<Vec<i32>>,
    pub window_col: Option<Vec<i32>>,
    /// The token grid of each row's window (`grid`); 0 for files written before the column.
    pub grid: Vec<i32>,
    pub mode: StrColumn,
    pub target: StrColumn,
    pub target_token: Option<Vec<i64>>,
    pub p: Option<Vec<f64>>,
    pub logp: Option<Vec<f64>>,
    pub kl: Option<Vec<f64>>,
    /// File key-value metadata (the first file's value wins when files disagree).
    pub metadata: BTreeMap<String, String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl InfoTable {
    pub fn len(&self) -> usize {
        self.layer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layer.is_empty()
    }

    /// The values of `metric`, if read.
    pub fn metric(&self, metric: Metric) -> Option<&[f64]> {
        match metric {
            Metric::P => self.p.as_deref(),
            Metric::Logp => self.logp.as_deref(),
            Metric::Kl => self.kl.as_deref(),
        }
    }

    /// An integer metadata value such as `horizon.grid_cols`.
    pub fn metadata_usize(&self, key: &str) -> Option<usize> {
        self.metadata.get(key).and_then(|v| v.trim().parse().ok())
    }
}

/// Reads every column of one Parquet file or of the `*.parquet` files of a directory.
pub fn read_info_rows(path: impl AsRef<Path>) -> Result<InfoTable> {
    read_info_rows_with(path, &ReadOptions::default())
}

// The columns as the writer defines them (`horizon_data::info_rows::columns`).
use horizon_data::info_rows::columns::{
    GRID, LAYER_WINDOW as I32_COLS, TARGET_TOKEN, TEXT as STR_COLS, WINDOW_PLACE as OPT_I32_COLS,
};

/// Reads one Parquet file or the `*.parquet` files (sorted by name, dot-files skipped) of a
/// directory.
pub fn read_info_rows_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<InfoTable> {
    read_info_rows_many(&[path], opts)
}

/// Reads the rows of several inputs (each a Parquet file or a directory of them) as one table, e.g.
/// one `horizon info` output directory per model.
pub fn read_info_rows_many<P: AsRef<Path>>(paths: &[P], opts: &ReadOptions) -> Result<InfoTable> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(input_files(path.as_ref())?);
    }
    // Open and validate every file first (cheap: footer only).
    let mut plans = Vec::with_capacity(files.len());
    for f in &files {
        plans.push(FilePlan::open(f, opts)?);
    }
    let mut metadata = BTreeMap::new();
    for p in &plans {
        for (k, v) in &p.kv {
            metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    // One task per (file, group of row groups): ~2 tasks per thread at least.
    let threads = rayon::current_num_threads().max(1);
    let mut tasks: Vec<(usize, Vec<usize>)> = Vec::new();
    for (fi, p) in plans.iter().enumerate() {
        let n = p.meta.metadata().num_row_groups();
        let per = if plans.len() >= 2 * threads {
            n.max(1)
        } else {
            n.div_ceil(2 * threads).max(1)
        };
        let groups: Vec<usize> = (0..n).collect();
        for chunk in groups.chunks(per) {
            tasks.push((fi, chunk.to_vec()));
        }
    }
    let parts: Vec<Chunk> = tasks
        .par_iter()
        .map(|(fi, rgs)| plans[*fi].read(rgs.clone(), opts))
        .collect::<Result<_>>()?;
    let mut table = merge(parts, &plans, opts);
    table.metadata = metadata;
    table.files = files;
    Ok(table)
}

fn input_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot list directory", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.parquet files in directory", path.display());
    }
    Ok(files)
}

struct FilePlan {
    path: PathBuf,
    meta: ArrowReaderMetadata,
    kv: Vec<(String, String)>,
    has_window_rc: bool,
    /// The file has the `grid` column (files written before it: every window on grid 0).
    has_grid: bool,
    has_target_token: bool,
}

fn type_ok(name: &str, dt: &DataType) -> bool {
    let is_str =
        |d: &DataType| matches!(d, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    if STR_COLS.contains(&name) {
        return is_str(dt) || matches!(dt, DataType::Dictionary(_, v) if is_str(v));
    }
    if I32_COLS.contains(&name) || OPT_I32_COLS.contains(&name) || name == GRID {
        return dt == &DataType::Int32;
    }
    if name == TARGET_TOKEN {
        return dt == &DataType::Int64;
    }
    dt == &DataType::Float64
}

fn expected(name: &str) -> &'static str {
    if STR_COLS.contains(&name) {
        "utf8"
    } else if name == TARGET_TOKEN {
        "int64"
    } else if I32_COLS.contains(&name) || OPT_I32_COLS.contains(&name) || name == GRID {
        "int32"
    } else {
        "float64"
    }
}

impl FilePlan {
    fn open(path: &Path, opts: &ReadOptions) -> Result<FilePlan> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", path.display()))?;
        let schema: &Schema = meta.schema();
        let check = |name: &str, required: bool| -> Result<bool> {
            match schema.field_with_name(name) {
                Ok(f) if type_ok(name, f.data_type()) => Ok(true),
                Ok(f) => bail!(
                    "{}: column `{name}` has type {}, expected {}",
                    path.display(),
                    f.data_type(),
                    expected(name)
                ),
                Err(_) if required => bail!("{}: column `{name}` is missing", path.display()),
                Err(_) => Ok(false),
            }
        };
        for c in STR_COLS.iter().chain(I32_COLS.iter()) {
            check(c, true)?;
        }
        for m in &opts.metrics {
            check(m.column(), true)?;
        }
        let has_window_rc = check(OPT_I32_COLS[0], false)? & check(OPT_I32_COLS[1], false)?;
        let has_grid = check(GRID, false)?;
        let has_target_token = opts.target_token && check(TARGET_TOKEN, false)?;
        let kv = meta
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| {
                kv.iter()
                    .filter_map(|k| k.value.clone().map(|v| (k.key.clone(), v)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(FilePlan {
            path: path.to_path_buf(),
            meta,
            kv,
            has_window_rc,
            has_grid,
            has_target_token,
        })
    }

    fn columns(&self, opts: &ReadOptions) -> Vec<&'static str> {
        let mut cols: Vec<&'static str> = STR_COLS.iter().chain(I32_COLS.iter()).copied().collect();
        if self.has_window_rc {
            cols.extend(OPT_I32_COLS);
        }
        if self.has_grid {
            cols.push(GRID);
        }
        if self.has_target_token {
            cols.push(TARGET_TOKEN);
        }
        for m in &opts.metrics {
            cols.push(m.column());
        }
        cols
    }

    fn read(&self, row_groups: Vec<usize>, opts: &ReadOptions) -> Result<Chunk> {
        let p = self.path.display();
        let file = File::open(&self.path).with_context(|| format!("{p}: cannot open"))?;
        let cols = self.columns(opts);
        let schema = self.meta.schema();
        let indices: Vec<usize> = cols
            .iter()
            .map(|c| schema.index_of(c).expect("validated"))
            .collect();
        let mask = ProjectionMask::roots(self.meta.parquet_schema(), indices);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_row_groups(row_groups)
            .with_projection(mask)
            .with_batch_size(opts.batch_size.max(1))
            .build()
            .map_err(|e| anyhow!("{p}: cannot read ({e})"))?;
        let mut chunk = Chunk::new(opts, self.has_window_rc, self.has_target_token);
        for batch in reader {
            let batch = batch.map_err(|e| anyhow!("{p}: corrupt data ({e})"))?;
            let col = |name: &str| -> Result<&ArrayRef> {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| anyhow!("{p}: column `{name}` is missing"))
            };
            for (i, name) in STR_COLS.iter().enumerate() {
                chunk.strs[i]
                    .push_array(col(name)?)
                    .map_err(|e| anyhow!("{p}: column `{name}`: {e}"))?;
            }
            let [layer, window] = I32_COLS;
            push_i32(&mut chunk.layer, col(layer)?, &self.path, layer)?;
            push_i32(&mut chunk.window, col(window)?, &self.path, window)?;
            if let (Some(r), Some(c)) = (chunk.window_row.as_mut(), chunk.window_col.as_mut()) {
                let [row, column] = OPT_I32_COLS;
                push_i32(r, col(row)?, &self.path, row)?;
                push_i32(c, col(column)?, &self.path, column)?;
            }
            if self.has_grid {
                push_i32(&mut chunk.grid, col(GRID)?, &self.path, GRID)?;
            } else {
                chunk.grid.resize(chunk.layer.len(), 0);
            }
            if let Some(t) = chunk.target_token.as_mut() {
                let a = col(TARGET_TOKEN)?
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| anyhow!("{p}: column `target_token` is not int64"))?;
                if a.null_count() > 0 {
                    bail!("{p}: column `target_token` has null values");
                }
                t.extend_from_slice(a.values());
            }
            for (m, v) in chunk.metrics.iter_mut() {
                let name = m.column();
                let a = col(name)?
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| anyhow!("{p}: column `{name}` is not float64"))?;
                if a.null_count() > 0 {
                    // Nulls become NaN (treated as missing by the analysis).
                    v.extend(a.iter().map(|x| x.unwrap_or(f64::NAN)));
                } else {
                    v.extend_from_slice(a.values());
                }
            }
        }
        Ok(chunk)
    }
}

fn push_i32(out: &mut Vec<i32>, a: &ArrayRef, path: &Path, name: &str) -> Result<()> {
    let a = a
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| anyhow!("{}: column `{name}` is not int32", path.display()))?;
    if a.null_count() > 0 {
        bail!("{}: column `{name}` has null values", path.display());
    }
    out.extend_from_slice(a.values());
    Ok(())
}

/// Interns strings into codes; the last value is cached because info rows come in long runs.
#[derive(Default)]
struct Interner {
    map: HashMap<String, u32>,
    dict: Vec<String>,
    codes: Vec<u32>,
    last: Option<u32>,
}

impl Interner {
    #[inline]
    fn code(&mut self, s: &str) -> u32 {
        if let Some(l) = self.last {
            if self.dict[l as usize] == s {
                return l;
            }
        }
        let c = match self.map.get(s) {
            Some(&c) => c,
            None => {
                let c = self.dict.len() as u32;
                self.dict.push(s.to_string());
                self.map.insert(s.to_string(), c);
                c
            }
        };
        self.last = Some(c);
        c
    }

    fn push_array(&mut self, a: &ArrayRef) -> Result<()> {
        if a.null_count() > 0 {
            bail!("null values");
        }
        match a.data_type() {
            DataType::Utf8 => {
                let a = a.as_any().downcast_ref::<StringArray>().expect("utf8");
                self.codes.reserve(a.len());
                for s in a.iter() {
                    let c = self.code(s.unwrap_or_default());
                    self.codes.push(c);
                }
            }
            DataType::LargeUtf8 => {
                let a = a.as_any().downcast_ref::<LargeStringArray>().expect("utf8");
                for s in a.iter() {
                    let c = self.code(s.unwrap_or_default());
                    self.codes.push(c);
                }
            }
            DataType::Utf8View => {
                let a = a.as_any().downcast_ref::<StringViewArray>().expect("utf8");
                for s in a.iter() {
                    let c = self.code(s.unwrap_or_default());
                    self.codes.push(c);
                }
            }
            DataType::Dictionary(k, _) => match k.as_ref() {
                DataType::Int8 => self.push_dict::<Int8Type>(a)?,
                DataType::Int16 => self.push_dict::<Int16Type>(a)?,
                DataType::Int32 => self.push_dict::<Int32Type>(a)?,
                DataType::Int64 => self.push_dict::<Int64Type>(a)?,
                DataType::UInt8 => self.push_dict::<UInt8Type>(a)?,
                DataType::UInt16 => self.push_dict::<UInt16Type>(a)?,
                DataType::UInt32 => self.push_dict::<UInt32Type>(a)?,
                DataType::UInt64 => self.push_dict::<UInt64Type>(a)?,
                other => bail!("unsupported dictionary key type {other}"),
            },
            other => bail!("type {other}, expected utf8"),
        }
        Ok(())
    }

    fn push_dict<K: ArrowDictionaryKeyType>(&mut self, a: &ArrayRef) -> Result<()> {
        let d: &DictionaryArray<K> = a.as_dictionary::<K>();
        let values = d.values();
        let mut sub = Interner::default();
        sub.push_array(values)?;
        let map: Vec<u32> = sub
            .codes
            .iter()
            .map(|&c| self.code(&sub.dict[c as usize]))
            .collect();
        for k in d.keys().values() {
            let k = k.as_usize();
            self.codes.push(
                *map.get(k)
                    .ok_or_else(|| anyhow!("dictionary key out of range"))?,
            );
        }
        Ok(())
    }
}

use arrow::datatypes::ArrowNativeType;

struct Chunk {
    strs: Vec<Interner>,
    layer: Vec<i32>,
    window: Vec<i32>,
    window_row: Option<Vec<i32>>,
    window_col: Option<Vec<i32>>,
    grid: Vec<i32>,
    target_token: Option<Vec<i64>>,
    metrics: Vec<(Metric, Vec<f64>)>,
}

impl Chunk {
    fn new(opts: &ReadOptions, window_rc: bool, target_token: bool) -> Chunk {
        Chunk {
            strs: (0..STR_COLS.len()).map(|_| Interner::default()).collect(),
            layer: Vec::new(),
            window: Vec::new(),
            window_row: window_rc.then(Vec::new),
            window_col: window_rc.then(Vec::new),
            grid: Vec::new(),
            target_token: target_token.then(Vec::new),
            metrics: opts.metrics.iter().map(|&m| (m, Vec::new())).collect(),
        }
    }
}

fn merge(parts: Vec<Chunk>, plans: &[FilePlan], opts: &ReadOptions) -> InfoTable {
    let n: usize = parts.iter().map(|c| c.layer.len()).sum();
    let all_rc = plans.iter().all(|p| p.has_window_rc);
    let all_tt = plans.iter().all(|p| p.has_target_token);
    let mut strs: Vec<Interner> = (0..STR_COLS.len()).map(|_| Interner::default()).collect();
    for s in strs.iter_mut() {
        s.codes.reserve(n);
    }
    let mut t = InfoTable {
        layer: Vec::with_capacity(n),
        window: Vec::with_capacity(n),
        window_row: all_rc.then(|| Vec::with_capacity(n)),
        window_col: all_rc.then(|| Vec::with_capacity(n)),
        grid: Vec::with_capacity(n),
        target_token: all_tt.then(|| Vec::with_capacity(n)),
        ..Default::default()
    };
    let mut metrics: Vec<(Metric, Vec<f64>)> = opts
        .metrics
        .iter()
        .map(|&m| (m, Vec::with_capacity(n)))
        .collect();
    for part in parts {
        for (g, local) in strs.iter_mut().zip(part.strs.iter()) {
            let remap: Vec<u32> = local.dict.iter().map(|s| g.code(s)).collect();
            g.codes
                .extend(local.codes.iter().map(|&c| remap[c as usize]));
        }
        t.layer.extend_from_slice(&part.layer);
        t.window.extend_from_slice(&part.window);
        t.grid.extend_from_slice(&part.grid);
        if let (Some(dst), Some(src)) = (t.window_row.as_mut(), part.window_row.as_ref()) {
            dst.extend_from_slice(src);
        }
        if let (Some(dst), Some(src)) = (t.window_col.as_mut(), part.window_col.as_ref()) {
            dst.extend_from_slice(src);
        }
        if let (Some(dst), Some(src)) = (t.target_token.as_mut(), part.target_token.as_ref()) {
            dst.extend_from_slice(src);
        }
        for ((_, dst), (_, src)) in metrics.iter_mut().zip(part.metrics.iter()) {
            dst.extend_from_slice(src);
        }
    }
    let mut cols = strs.into_iter().map(|i| StrColumn {
        codes: i.codes,
        dict: i.dict,
    });
    t.model = cols.next().expect("model");
    t.task = cols.next().expect("task");
    t.sample_id = cols.next().expect("sample_id");
    t.variant = cols.next().expect("variant");
    t.mode = cols.next().expect("mode");
    t.target = cols.next().expect("target");
    for (m, v) in metrics {
        match m {
            Metric::P => t.p = Some(v),
            Metric::Logp => t.logp = Some(v),
            Metric::Kl => t.kl = Some(v),
        }
    }
    t
}
