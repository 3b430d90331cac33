//! Aggregation of info rows into per-(model, task, layer) statistics and per-window maps.
//!
//! The rows are scattered once into a dense `sample × layer × window` array of information values
//! (NaN = missing), then every (group, layer) is reduced in parallel.

use crate::horizon::{find_horizon, HorizonResult, Threshold};
use crate::read::InfoTable;
use crate::stats;
use crate::uncertainty::{
    self, Comparison, HorizonBootstrap, SampleLevels, SensitivityRow, SENSITIVITY_THRESHOLDS,
};
use crate::{InfoMode, Metric};
use anyhow::{anyhow, bail, Result};
use horizon_data::info_rows::RowVariant;
use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The task name of each model's pooled group (all its samples, every task).
pub const POOLED_TASK: &str = "(all)";

/// Parameters of [`analyze`]; recorded in `horizon.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisParams {
    /// The per-run quantity (default `p`).
    pub metric: Metric,
    /// Which window runs (default `keep-only`).
    pub mode: InfoMode,
    /// The `target` rows to use (default `gt`).
    pub target: String,
    /// Bootstrap resamples B (default 1000).
    pub bootstrap: usize,
    /// Confidence of the percentile interval (default 0.95).
    pub confidence: f64,
    /// Bootstrap seed (default 0).
    pub seed: u64,
    /// Vanishing threshold ε (default 5 % of max_K |m_K|).
    pub threshold: Threshold,
    /// A vanishing layer's CI must also cover 0 (default true).
    pub require_ci_covers_zero: bool,
}

impl Default for AnalysisParams {
    fn default() -> Self {
        AnalysisParams {
            metric: Metric::P,
            mode: InfoMode::KeepOnly,
            target: "gt".into(),
            bootstrap: 1000,
            confidence: 0.95,
            seed: 0,
            threshold: Threshold::default(),
            require_ci_covers_zero: true,
        }
    }
}

/// The window layout the rows show (geometry: `horizon_data::window::WindowGrid`). Window `w` sits at
/// (`row_of[w]`, `col_of[w]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowLayout {
    pub rows: usize,
    pub cols: usize,
    pub n_windows: usize,
    pub row_of: Vec<i32>,
    pub col_of: Vec<i32>,
    /// `horizon.window_size` from the metadata, if present.
    pub window_size: Option<usize>,
    /// The token grid of each window when the rows lie on several grids (LLaVA-NeXT's base and
    /// high-resolution grids); empty for one grid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grid_of: Vec<i32>,
    /// (rows, cols) of each grid's window grid (the extent its windows reach over all samples)
    /// when there are several grids; empty for one grid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grids: Vec<(usize, usize)>,
}

impl WindowLayout {
    /// A row-major `rows × cols` grid.
    pub fn row_major(rows: usize, cols: usize) -> WindowLayout {
        let n = rows * cols;
        WindowLayout {
            rows,
            cols,
            n_windows: n,
            row_of: (0..n).map(|w| (w / cols.max(1)) as i32).collect(),
            col_of: (0..n).map(|w| (w % cols.max(1)) as i32).collect(),
            window_size: None,
            grid_of: Vec::new(),
            grids: Vec::new(),
        }
    }

    /// Token grids the windows lie on (1 unless the rows have several).
    pub fn num_grids(&self) -> usize {
        self.grids.len().max(1)
    }

    /// The grid of window `w` (0 with one grid).
    pub fn grid_of_window(&self, w: usize) -> usize {
        self.grid_of.get(w).map_or(0, |&g| g as usize)
    }

    /// (rows, cols) of grid `g`'s window grid.
    pub fn grid_shape(&self, g: usize) -> (usize, usize) {
        self.grids.get(g).copied().unwrap_or((self.rows, self.cols))
    }

    /// The windows on grid `g`, ascending.
    pub fn windows_of_grid(&self, g: usize) -> Vec<usize> {
        (0..self.n_windows)
            .filter(|&w| self.grid_of_window(w) == g)
            .collect()
    }
}

/// Statistics of one (model, task, layer). Undefined values are NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    pub layer: i32,
    /// Samples with at least one window value at this layer.
    pub n_samples: usize,
    /// m_K = mean over samples of the per-sample window mean.
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// sd(I_s)/√n, NaN for n < 2.
    pub stderr: f64,
    /// Population std of Ī[K,·] over windows.
    pub std_windows: f64,
    /// std_windows / |mean_w Ī[K,·]|.
    pub cv: f64,
    /// Gini of Ī[K,·] clipped at 0.
    pub gini: f64,
    /// Normalised entropy of Ī[K,·] clipped at 0.
    pub entropy_norm: f64,
    /// max_w Ī − min_w Ī.
    pub max_minus_min: f64,
    /// Whether the layer meets the vanishing criterion.
    pub vanishes: bool,
}

/// Results of one (model, task) group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupResult {
    pub model: String,
    /// The task, or [`POOLED_TASK`] for the model's pooled group.
    pub task: String,
    pub pooled: bool,
    /// Samples in the group.
    pub n_samples: usize,
    /// Measured layers, ascending.
    pub layers: Vec<LayerStats>,
    /// `Ī[K,w]`: one row per entry of `layers`, one column per window (NaN = no sample).
    pub window_means: Array2<f64>,
    pub horizon: HorizonResult,
    /// The per-sample levels the horizon's bootstrap resamples.
    pub samples: SampleLevels,
    /// The bootstrap distribution of the horizon over samples.
    pub horizon_bootstrap: HorizonBootstrap,
}

impl GroupResult {
    /// The row of `window_means` of `layer`.
    pub fn layer_index(&self, layer: i32) -> Option<usize> {
        self.layers.iter().position(|l| l.layer == layer)
    }
}

/// What the analysis read and used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSummary {
    pub files: Vec<String>,
    pub rows_read: usize,
    /// Rows that entered the analysis (matching target; window rows of the chosen mode; baselines).
    pub rows_used: usize,
    pub rows_other_target: usize,
    pub rows_other_mode: usize,
    /// Window values dropped because their sample lacks the baseline row the formula needs.
    pub window_values_without_baseline: usize,
    pub metadata: BTreeMap<String, String>,
}

/// The analysis: parameters, grid, and one [`GroupResult`] per (model, task) and per model pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub params: AnalysisParams,
    pub grid: WindowLayout,
    /// Sorted by model, then task, the pooled group last within each model.
    pub groups: Vec<GroupResult>,
    pub input: InputSummary,
    /// Paired comparisons of horizons: task pairs per model, model pairs per task.
    pub comparisons: Vec<Comparison>,
    /// The horizon of every group under each metric present and each sensitivity threshold.
    pub sensitivity: Vec<SensitivityRow>,
}

impl Analysis {
    pub fn group(&self, model: &str, task: &str) -> Option<&GroupResult> {
        self.groups
            .iter()
            .find(|g| g.model == model && g.task == task)
    }

    /// Model names, sorted.
    pub fn models(&self) -> Vec<&str> {
        let mut m: Vec<&str> = self.groups.iter().map(|g| g.model.as_str()).collect();
        m.dedup();
        m
    }
}

const NONE: u32 = u32::MAX;

/// Computes per-layer statistics, window maps and horizons, the horizons' bootstrap distributions,
/// their paired comparisons, and the sensitivity table (every metric column the table has, at
/// [`SENSITIVITY_THRESHOLDS`]). See the crate documentation for the definitions.
pub fn analyze(t: &InfoTable, params: &AnalysisParams) -> Result<Analysis> {
    let mut a = analyze_layers(t, params)?;
    let boot: Vec<HorizonBootstrap> = a
        .groups
        .par_iter()
        .map(|g| {
            uncertainty::horizon_bootstrap(
                g,
                params.bootstrap,
                params.confidence,
                uncertainty::horizon_seed(params.seed, &g.model, &g.task),
                params.threshold,
                params.require_ci_covers_zero,
            )
        })
        .collect();
    for (g, b) in a.groups.iter_mut().zip(boot) {
        g.horizon_bootstrap = b;
    }
    a.comparisons = uncertainty::comparisons(&a);
    let thresholds: Vec<Threshold> = SENSITIVITY_THRESHOLDS
        .iter()
        .map(|&f| Threshold::Relative(f))
        .collect();
    let mut sensitivity = Vec::new();
    for metric in Metric::ALL {
        if t.metric(metric).is_none() {
            continue;
        }
        if metric == params.metric {
            sensitivity.extend(uncertainty::sensitivity_rows(&a, true, &thresholds));
        } else {
            let other = analyze_layers(
                t,
                &AnalysisParams {
                    metric,
                    ..params.clone()
                },
            )?;
            sensitivity.extend(uncertainty::sensitivity_rows(&other, false, &thresholds));
        }
    }
    a.sensitivity = sensitivity;
    Ok(a)
}

/// Per-layer statistics, window maps, point-estimate horizons and per-sample levels of one metric.
fn analyze_layers(t: &InfoTable, params: &AnalysisParams) -> Result<Analysis> {
    if !(params.confidence > 0.0 && params.confidence < 1.0) {
        bail!("confidence must be in (0, 1), got {}", params.confidence);
    }
    let vals = t
        .metric(params.metric)
        .ok_or_else(|| anyhow!("metric column `{}` was not read", params.metric.column()))?;
    let n = t.len();
    let target = t.target.code_of(&params.target).ok_or_else(|| {
        anyhow!(
            "no rows with target `{}` (targets present: {})",
            params.target,
            t.target.dict.join(", ")
        )
    })?;
    let mode = t.mode.code_of(params.mode.as_str()).ok_or_else(|| {
        anyhow!(
            "no rows with mode `{}` (modes present: {})",
            params.mode,
            t.mode.dict.join(", ")
        )
    })?;
    let var_of: Vec<RowVariant> = t
        .variant
        .dict
        .iter()
        .map(|v| {
            v.parse::<RowVariant>().map_err(|_| {
                anyhow!("column `variant`: unknown value `{v}` (expected full, text_only, window)")
            })
        })
        .collect::<Result<_>>()?;

    // Windows on several grids (LLaVA-NeXT) are keyed by (grid, row, col): the same place on a
    // grid is the same window in every sample, whatever the grid's size in that sample.
    let several = several_grids(t, target, mode, &var_of)?;
    let window_of = |i: usize| -> i32 {
        match &several {
            Some(s) => s.index_of_row(t, i),
            None => t.window[i],
        }
    };

    // Pass 1: dense sample ids, measured layers, number of windows.
    let mut sample_of_row = vec![NONE; n];
    let mut sample_key: HashMap<(u32, u32, u32), u32> = HashMap::new();
    let mut samples: Vec<(u32, u32, u32)> = Vec::new();
    let mut last: Option<((u32, u32, u32), u32)> = None;
    let mut max_layer: i32 = -1;
    let mut max_window: i32 = -1;
    let (mut rows_other_target, mut rows_other_mode) = (0usize, 0usize);
    for i in 0..n {
        if t.target.codes[i] != target {
            rows_other_target += 1;
            continue;
        }
        let var = var_of[t.variant.codes[i] as usize];
        if var == RowVariant::Window {
            if t.mode.codes[i] != mode {
                rows_other_mode += 1;
                continue;
            }
            let (k, w) = (t.layer[i], window_of(i));
            if k < 0 || w < 0 {
                bail!(
                    "window row with layer {k} and window {w} (model {}, sample {}): both must be >= 0",
                    t.model.get(i),
                    t.sample_id.get(i)
                );
            }
            max_layer = max_layer.max(k);
            max_window = max_window.max(w);
        }
        let key = (t.model.codes[i], t.task.codes[i], t.sample_id.codes[i]);
        let s = match last {
            Some((lk, ls)) if lk == key => ls,
            _ => {
                let next = samples.len() as u32;
                let s = *sample_key.entry(key).or_insert(next);
                if s == next {
                    samples.push(key);
                }
                last = Some((key, s));
                s
            }
        };
        sample_of_row[i] = s;
    }
    if max_window < 0 {
        bail!(
            "no window rows with target `{}` and mode `{}`",
            params.target,
            params.mode
        );
    }
    if max_layer > 1_000_000 || max_window > 10_000_000 {
        bail!("implausible layer {max_layer} or window {max_window}");
    }
    let n_layers_all = (max_layer + 1) as usize;
    let grid = match &several {
        Some(s) => s.layout(t.metadata_usize("horizon.window_size")),
        None => window_grid(t, (max_window + 1) as usize, target, mode, &var_of),
    };
    let nw = grid.n_windows;
    let ns = samples.len();

    // Pass 2: scatter into dense arrays.
    let nl = n_layers_all;
    let mut win = vec![f64::NAN; ns * nl * nw];
    let mut text = vec![f64::NAN; ns * nl];
    let mut full_at = vec![f64::NAN; ns * nl];
    let mut full = vec![f64::NAN; ns];
    let mut layer_seen = vec![false; nl];
    let mut rows_used = 0usize;
    let describe = |i: usize| {
        format!(
            "model {}, task {}, sample {}, layer {}, variant {}, window {}",
            t.model.get(i),
            t.task.get(i),
            t.sample_id.get(i),
            t.layer[i],
            t.variant.get(i),
            t.window[i]
        )
    };
    for i in 0..n {
        let s = sample_of_row[i];
        if s == NONE {
            continue;
        }
        let s = s as usize;
        let v = vals[i];
        let k = t.layer[i];
        rows_used += 1;
        match var_of[t.variant.codes[i] as usize] {
            RowVariant::Window => {
                let k = k as usize;
                layer_seen[k] = true;
                let cell = &mut win[(s * nl + k) * nw + window_of(i) as usize];
                if !cell.is_nan() {
                    bail!(
                        "duplicate info row ({}); is a sample in two part files?",
                        describe(i)
                    );
                }
                *cell = v;
            }
            RowVariant::TextOnly => {
                if k < 0 || k as usize >= nl {
                    continue; // a layer without window rows: unused
                }
                set_baseline(&mut text[s * nl + k as usize], v, || describe(i))?;
            }
            RowVariant::Full => {
                if k < 0 {
                    set_baseline(&mut full[s], v, || describe(i))?;
                } else if (k as usize) < nl {
                    set_baseline(&mut full_at[s * nl + k as usize], v, || describe(i))?;
                }
            }
        }
    }

    // Information values in place.
    let (metric, pmode) = (params.metric, params.mode);
    let without_baseline: usize = win
        .par_chunks_mut(nl * nw)
        .enumerate()
        .map(|(s, block)| {
            let mut missing = 0usize;
            for k in 0..nl {
                let base = match pmode {
                    InfoMode::KeepOnly => text[s * nl + k],
                    InfoMode::LeaveOut if metric == Metric::Kl => 0.0,
                    InfoMode::LeaveOut => {
                        let f = full_at[s * nl + k];
                        if f.is_nan() {
                            full[s]
                        } else {
                            f
                        }
                    }
                };
                for x in &mut block[k * nw..(k + 1) * nw] {
                    if x.is_nan() {
                        continue;
                    }
                    if base.is_nan() {
                        missing += 1;
                    }
                    *x = match (pmode, metric) {
                        (InfoMode::KeepOnly, Metric::Kl) => base - *x,
                        (InfoMode::KeepOnly, _) => *x - base,
                        (InfoMode::LeaveOut, Metric::Kl) => *x,
                        (InfoMode::LeaveOut, _) => base - *x,
                    };
                }
            }
            missing
        })
        .sum();

    // Groups: per (model, task), then the model's pooled group.
    let name = |col: &crate::read::StrColumn, c: u32| col.dict[c as usize].clone();
    let mut by_group: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
    for (s, &(m, tk, _)) in samples.iter().enumerate() {
        by_group
            .entry((name(&t.model, m), name(&t.task, tk)))
            .or_default()
            .push(s as u32);
    }
    let mut groups: Vec<(String, String, bool, Vec<u32>)> = Vec::new();
    let models: Vec<String> = {
        let mut m: Vec<String> = by_group.keys().map(|k| k.0.clone()).collect();
        m.dedup();
        m
    };
    for model in &models {
        let mut pooled = Vec::new();
        for ((m, task), ss) in by_group.range((model.clone(), String::new())..) {
            if m != model {
                break;
            }
            groups.push((m.clone(), task.clone(), false, ss.clone()));
            pooled.extend_from_slice(ss);
        }
        pooled.sort_unstable();
        groups.push((model.clone(), POOLED_TASK.to_string(), true, pooled));
    }

    let layers: Vec<usize> = (0..nl).filter(|&k| layer_seen[k]).collect();
    let jobs: Vec<(usize, usize)> = (0..groups.len())
        .flat_map(|g| layers.iter().map(move |&k| (g, k)))
        .collect();
    let cells: Vec<Option<(LayerStats, Vec<f64>)>> = jobs
        .par_iter()
        .map(|&(g, k)| {
            let (model, task, _, ss) = &groups[g];
            layer_cell(&win, ss, k, nl, nw, params, model, task)
        })
        .collect();
    let mut results = Vec::with_capacity(groups.len());
    let mut it = cells.into_iter();
    for (model, task, pooled, ss) in groups {
        let mut ls = Vec::new();
        let mut rows: Vec<f64> = Vec::new();
        for _ in &layers {
            if let Some((st, wm)) = it.next().expect("one cell per job") {
                ls.push(st);
                rows.extend(wm);
            }
        }
        let hz = find_horizon(
            &ls.iter()
                .map(|l| (l.layer, l.mean, l.ci_low, l.ci_high))
                .collect::<Vec<_>>(),
            params.threshold,
            params.require_ci_covers_zero,
        );
        for l in ls.iter_mut() {
            l.vanishes = hz.vanishing.iter().any(|&(k, v)| k == l.layer && v);
        }
        let window_means = Array2::from_shape_vec((ls.len(), nw), rows).expect("layers x windows");
        let levels = sample_levels(&win, &ss, &ls, &samples, t, nl, nw);
        results.push(GroupResult {
            model,
            task,
            pooled,
            n_samples: ss.len(),
            layers: ls,
            window_means,
            horizon: hz,
            samples: levels,
            horizon_bootstrap: HorizonBootstrap::default(),
        });
    }
    Ok(Analysis {
        params: params.clone(),
        grid,
        groups: results,
        input: InputSummary {
            files: t.files.iter().map(|f| f.display().to_string()).collect(),
            rows_read: n,
            rows_used,
            rows_other_target,
            rows_other_mode,
            window_values_without_baseline: without_baseline,
            metadata: t.metadata.clone(),
        },
        comparisons: Vec::new(),
        sensitivity: Vec::new(),
    })
}

/// `I_s` of each sample of a group at each of its measured layers, summed in the order
/// [`layer_cell`] sums, so that the mean over all samples is bit-identical to `m_K`.
fn sample_levels(
    win: &[f64],
    ss: &[u32],
    layers: &[LayerStats],
    samples: &[(u32, u32, u32)],
    t: &InfoTable,
    nl: usize,
    nw: usize,
) -> SampleLevels {
    let mut levels = Array2::<f64>::from_elem((ss.len(), layers.len()), f64::NAN);
    for (i, &s) in ss.iter().enumerate() {
        for (j, l) in layers.iter().enumerate() {
            let row = &win[(s as usize * nl + l.layer as usize) * nw..][..nw];
            let (mut sum, mut cnt) = (0.0, 0u32);
            for &x in row {
                if !x.is_nan() {
                    sum += x;
                    cnt += 1;
                }
            }
            if cnt > 0 {
                levels[[i, j]] = sum / cnt as f64;
            }
        }
    }
    let keys = ss
        .iter()
        .map(|&s| {
            let (_, task, id) = samples[s as usize];
            (
                t.task.dict[task as usize].clone(),
                t.sample_id.dict[id as usize].clone(),
            )
        })
        .collect();
    SampleLevels { keys, levels }
}

fn set_baseline(cell: &mut f64, v: f64, describe: impl Fn() -> String) -> Result<()> {
    if cell.is_nan() {
        *cell = v;
    } else if (*cell - v).abs() > 1e-9 * cell.abs().max(1.0) {
        bail!(
            "conflicting baseline rows ({}): {} and {v}",
            describe(),
            *cell
        );
    }
    Ok(())
}

/// Statistics of one (group, layer); `None` when no sample has a value there.
#[allow(clippy::too_many_arguments)]
fn layer_cell(
    win: &[f64],
    samples: &[u32],
    k: usize,
    nl: usize,
    nw: usize,
    params: &AnalysisParams,
    model: &str,
    task: &str,
) -> Option<(LayerStats, Vec<f64>)> {
    let mut wsum = vec![0.0f64; nw];
    let mut wcnt = vec![0u32; nw];
    let mut per_sample = Vec::with_capacity(samples.len());
    for &s in samples {
        let row = &win[(s as usize * nl + k) * nw..][..nw];
        let (mut sum, mut cnt) = (0.0, 0u32);
        for (w, &x) in row.iter().enumerate() {
            if !x.is_nan() {
                sum += x;
                cnt += 1;
                wsum[w] += x;
                wcnt[w] += 1;
            }
        }
        if cnt > 0 {
            per_sample.push(sum / cnt as f64);
        }
    }
    if per_sample.is_empty() {
        return None;
    }
    let wm: Vec<f64> = wsum
        .iter()
        .zip(&wcnt)
        .map(|(&s, &c)| if c > 0 { s / c as f64 } else { f64::NAN })
        .collect();
    let present: Vec<f64> = wm.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = per_sample.len();
    let mean = stats::mean(&per_sample);
    let (ci_low, ci_high) = stats::bootstrap_mean_ci(
        &per_sample,
        params.bootstrap,
        params.confidence,
        stats::group_seed(params.seed, model, task, k as i32),
    );
    let std_windows = stats::population_std(&present);
    let wmean = stats::mean(&present);
    let cv = if wmean != 0.0 {
        std_windows / wmean.abs()
    } else {
        f64::NAN
    };
    let (mx, mn) = present
        .iter()
        .fold((f64::NEG_INFINITY, f64::INFINITY), |(a, b), &x| {
            (a.max(x), b.min(x))
        });
    Some((
        LayerStats {
            layer: k as i32,
            n_samples: n,
            mean,
            ci_low,
            ci_high,
            stderr: stats::sample_std(&per_sample) / (n as f64).sqrt(),
            std_windows,
            cv,
            gini: stats::gini_clipped(&present).unwrap_or(f64::NAN),
            entropy_norm: stats::entropy_norm_clipped(&present).unwrap_or(f64::NAN),
            max_minus_min: mx - mn,
            vanishes: false,
        },
        wm,
    ))
}

/// The window grid: metadata `horizon.grid_rows`/`grid_cols` if present, else the extent of the
/// `window_row`/`window_col` columns, else a square grid when #windows is a square, else 1 × n.
fn window_grid(
    t: &InfoTable,
    n_from_rows: usize,
    target: u32,
    mode: u32,
    var_of: &[RowVariant],
) -> WindowLayout {
    let meta = (
        t.metadata_usize("horizon.grid_rows"),
        t.metadata_usize("horizon.grid_cols"),
    );
    let mut row_of = vec![-1i32; n_from_rows];
    let mut col_of = vec![-1i32; n_from_rows];
    if let (Some(r), Some(c)) = (t.window_row.as_ref(), t.window_col.as_ref()) {
        let mut filled = 0usize;
        for i in 0..t.len() {
            if t.target.codes[i] != target
                || t.mode.codes[i] != mode
                || var_of[t.variant.codes[i] as usize] != RowVariant::Window
            {
                continue;
            }
            let w = t.window[i] as usize;
            if row_of[w] < 0 {
                row_of[w] = r[i];
                col_of[w] = c[i];
                filled += 1;
                if filled == n_from_rows {
                    break;
                }
            }
        }
    }
    let (rows, cols) = match meta {
        (Some(r), Some(c)) if r * c >= n_from_rows && r * c > 0 => (r, c),
        _ => {
            let mr = row_of.iter().copied().max().unwrap_or(-1);
            let mc = col_of.iter().copied().max().unwrap_or(-1);
            if mr >= 0 && mc >= 0 && ((mr + 1) * (mc + 1)) as usize >= n_from_rows {
                ((mr + 1) as usize, (mc + 1) as usize)
            } else {
                let s = (n_from_rows as f64).sqrt().round() as usize;
                if s * s == n_from_rows {
                    (s, s)
                } else {
                    (1, n_from_rows)
                }
            }
        }
    };
    let mut grid = WindowLayout::row_major(rows, cols);
    for w in 0..n_from_rows {
        if row_of[w] >= 0 && col_of[w] >= 0 {
            grid.row_of[w] = row_of[w];
            grid.col_of[w] = col_of[w];
        }
    }
    grid.window_size = t.metadata_usize("horizon.window_size");
    grid
}

/// The windows of rows on several token grids: every (grid, window_row, window_col) present, sorted
/// (grid 0's windows first, each grid row-major), numbered densely.
struct SeveralGrids {
    keys: Vec<(i32, i32, i32)>,
    index: HashMap<(i32, i32, i32), i32>,
}

impl SeveralGrids {
    fn index_of_row(&self, t: &InfoTable, i: usize) -> i32 {
        let (r, c) = (t.window_row.as_ref(), t.window_col.as_ref());
        match (r, c) {
            (Some(r), Some(c)) => self
                .index
                .get(&(t.grid[i], r[i], c[i]))
                .copied()
                .unwrap_or(-1),
            _ => -1,
        }
    }

    fn layout(&self, window_size: Option<usize>) -> WindowLayout {
        let n = self.keys.len();
        let ngrids = self.keys.last().map_or(0, |k| k.0 as usize + 1);
        let mut grids = vec![(0usize, 0usize); ngrids];
        for &(g, r, c) in &self.keys {
            let e = &mut grids[g as usize];
            e.0 = e.0.max(r as usize + 1);
            e.1 = e.1.max(c as usize + 1);
        }
        WindowLayout {
            rows: grids.iter().map(|g| g.0).max().unwrap_or(0),
            cols: grids.iter().map(|g| g.1).max().unwrap_or(0),
            n_windows: n,
            row_of: self.keys.iter().map(|k| k.1).collect(),
            col_of: self.keys.iter().map(|k| k.2).collect(),
            window_size,
            grid_of: self.keys.iter().map(|k| k.0).collect(),
            grids,
        }
    }
}

/// `Some` when the window rows of `target` and `mode` lie on more than one grid (the `grid`
/// column; files without it are one grid). Needs the `window_row`/`window_col` columns.
fn several_grids(
    t: &InfoTable,
    target: u32,
    mode: u32,
    var_of: &[RowVariant],
) -> Result<Option<SeveralGrids>> {
    let is_window = |i: usize| {
        t.target.codes[i] == target
            && t.mode.codes[i] == mode
            && var_of[t.variant.codes[i] as usize] == RowVariant::Window
    };
    if !(0..t.len()).any(|i| is_window(i) && t.grid[i] != 0) {
        return Ok(None);
    }
    let (Some(rows), Some(cols)) = (t.window_row.as_ref(), t.window_col.as_ref()) else {
        bail!("window rows on several grids (column `grid`) need the `window_row` and `window_col` columns");
    };
    let mut keys = std::collections::BTreeSet::new();
    for i in (0..t.len()).filter(|&i| is_window(i)) {
        let key = (t.grid[i], rows[i], cols[i]);
        if key.0 < 0 || key.1 < 0 || key.2 < 0 {
            bail!(
                "window row with grid {}, window_row {}, window_col {} (model {}, sample {}): all must be >= 0",
                key.0,
                key.1,
                key.2,
                t.model.get(i),
                t.sample_id.get(i)
            );
        }
        keys.insert(key);
    }
    let keys: Vec<(i32, i32, i32)> = keys.into_iter().collect();
    let index = keys
        .iter()
        .enumerate()
        .map(|(w, &k)| (k, w as i32))
        .collect();
    Ok(Some(SeveralGrids { keys, index }))
}
