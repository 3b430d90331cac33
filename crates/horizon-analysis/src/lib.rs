//! # horizon-analysis
//!
//! Per-layer statistics of visual-token information and location of the *information horizon*
//! (arXiv 2512.07580), computed from the long-format "info rows" Parquet written by `horizon info`.
//! No libtorch.
//!
//! ## Input (info rows)
//!
//! One row per (model, sample, layer, variant) with columns `model`, `task`, `sample_id` (utf8),
//! `layer` (int32, cut layer K, −1 for the unpruned baseline), `variant` (utf8: `full`,
//! `text_only`, `window`), `window`, `window_row`, `window_col`, `grid` (int32, −1 unless
//! `window`; `grid` is the token grid, 0 unless the family has several, read as 0 from files
//! without it), `mode` (utf8: `keep-only` / `leave-out`), `target` (utf8: `gt` / `greedy`), `target_token`
//! (int64), `p`, `logp`, `kl` (float64). File key-value metadata `horizon.grid_rows`,
//! `horizon.grid_cols`, `horizon.window_size`, `horizon.num_layers` describe the window grid.
//! [`read_info_rows`] reads one file or a directory of `*.parquet` part files.
//!
//! ## Information of window w at layer K for sample s (`I[K,w,s]`)
//!
//! With `v` the chosen metric of a run (`p` = p(y), `logp` = log p(y), `kl` = KL(unpruned ‖ run)):
//!
//! | metric | `keep-only` (only window w kept from layer K on) | `leave-out` (only window w dropped from K on) |
//! |---|---|---|
//! | `p`    | `p_w − p_text_only`          | `p_full − p_{−w}` |
//! | `logp` | `log p_w − log p_text_only`  | `log p_full − log p_{−w}` |
//! | `kl`   | `KL_text_only − KL_w`        | `KL_{−w}` |
//!
//! `text_only` is the row of the same model, sample, target and layer K; `full` is the unpruned row
//! (layer −1; a `full` row at layer K, if present, takes precedence). For `kl` the information is how
//! far the window brings the distribution back toward the unpruned one (keep-only) or how far
//! dropping it pushes the distribution away (leave-out). The `p` keep-only form is the reference's
//! formula (arXiv 2512.07580, as `YahongWang1/Information-Horizon` computes it); it is a plain difference and can be negative.
//!
//! ## Aggregation (ours, not from the reference)
//!
//! Per (model, task, layer K), over the samples s that have at least one window value at K:
//! * map `Ī[K,w] = mean_s I[K,w,s]` (per window, over the samples that have that window; windows
//!   on several token grids, LLaVA-NeXT's, are keyed by (grid, window_row, window_col), so the same
//!   place on a grid is one window across samples: docs/information-windows.md);
//! * sample level `I_s = mean_w I[K,w,s]`; level `m_K = mean_s I_s` (equal to `mean_w Ī[K,w]`
//!   when every sample has every window); standard error `sd(I_s)/√n` (sd with n−1);
//! * percentile bootstrap CI of `m_K`: resample the `I_s` with replacement B times (default 1000),
//!   confidence 95 %, percentiles with linear interpolation; seeded per (model, task, layer) from
//!   the user seed, so results do not depend on thread scheduling;
//! * spread of `Ī[K,·]` over windows: population std, coefficient of variation `std/|mean_w Ī|`,
//!   max−min (all on the signed values); Gini and normalised entropy on `Ī` **clipped at 0**
//!   (negative information counts as none): `q_w = max(Ī_w,0)/Σ max(Ī,0)`,
//!   `entropy_norm = −Σ q_w ln q_w / ln(#windows)` (1 = uniform over the windows, 0 = all in one),
//!   Gini = `Σ_i Σ_j |x_i − x_j| / (2 n² x̄)` (0 = uniform, (n−1)/n = all in one). Both are
//!   undefined (null) when no window has positive information.
//!
//! Each model also gets a pooled group, task [`POOLED_TASK`], over all its samples.
//!
//! ## Horizon (ours)
//!
//! Layer K *vanishes* when `|m_K| ≤ ε` and (by default) the CI of `m_K` covers zero. The horizon H
//! is the first measured layer from which every deeper measured layer vanishes; when the deepest
//! layer does not vanish there is "no horizon within the measured layers". ε is absolute or
//! relative: `ε = f · max_K |m_K|` (default f = 5 %). The parameters are recorded in `horizon.json`.
//!
//! ## The horizon's uncertainty (ours; [`uncertainty`])
//!
//! The same B and seed resample each group's samples and apply the rule to every resample, giving
//! the distribution of H (with "no horizon") and its percentile interval; pairs of groups (tasks of a
//! model, models on a task) are compared over joint resamples of the samples they share; and the
//! point estimate is recomputed under every metric present and each of [`SENSITIVITY_THRESHOLDS`].

mod aggregate;
mod horizon;
mod output;
pub mod prune;
mod read;
pub mod stats;
pub mod uncertainty;

pub use aggregate::{
    analyze, Analysis, AnalysisParams, GroupResult, InputSummary, LayerStats, WindowLayout,
    POOLED_TASK,
};
pub use horizon::{find_horizon, HorizonResult, Threshold, NO_HORIZON};
pub use output::{
    horizon_report, layer_table_schema, window_table_schema, write_horizon_json, write_layer_table,
    write_outputs, write_window_table, HorizonEntry, HorizonReport, ModelEntry, SummaryLine,
    HORIZON_JSON_FILE, LAYER_TABLE_FILE, WINDOW_TABLE_FILE,
};
pub use prune::{
    gap_to_random, sweep_curves, table1_json, table1_markdown, BudgetRow, CurvePoint, SweepCurve,
    SweepScore,
};
pub use read::{
    read_info_rows, read_info_rows_many, read_info_rows_with, InfoTable, ReadOptions, StrColumn,
};
pub use uncertainty::{
    Comparison, GroupRef, HorizonBootstrap, HorizonCount, SampleLevels, SensitivityRow,
    SENSITIVITY_THRESHOLDS,
};

use serde::{Deserialize, Serialize};

/// Which per-run quantity the information is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// p(y), the reference's quantity.
    #[default]
    P,
    /// log p(y).
    Logp,
    /// KL(unpruned ‖ variant) of the first-token distribution.
    Kl,
}

impl Metric {
    /// The info-rows column holding this metric.
    pub fn column(self) -> &'static str {
        // The writer's float64 columns, in the order of `Metric::ALL`.
        let [p, logp, kl] = horizon_data::info_rows::columns::METRICS;
        match self {
            Metric::P => p,
            Metric::Logp => logp,
            Metric::Kl => kl,
        }
    }

    pub const ALL: [Metric; 3] = [Metric::P, Metric::Logp, Metric::Kl];
}

impl std::str::FromStr for Metric {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "p" => Ok(Metric::P),
            "logp" => Ok(Metric::Logp),
            "kl" => Ok(Metric::Kl),
            _ => anyhow::bail!("unknown metric `{s}` (expected p, logp or kl)"),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.column())
    }
}

/// Which window runs the information is computed from (one definition, shared with the writer).
pub use horizon_data::info_rows::InfoMode;
