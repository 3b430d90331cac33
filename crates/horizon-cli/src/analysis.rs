//! `horizon horizon` and `horizon plot`: per-layer statistics, the information horizon and the figures,
//! from the Parquet rows `horizon info` writes. libtorch is not involved.

use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use horizon_data::info_rows::Target;

use crate::options::{at_least_one, non_negative, unit_open};

use horizon_analysis::{
    analyze, read_info_rows_many, uncertainty::interval_text, write_outputs, Analysis,
    AnalysisParams, InfoMode, Metric, ReadOptions, Threshold,
};
use horizon_plot::{
    plot_information_vs_layer, plot_layer_window_heatmap, plot_window_heatmaps, CurveOptions,
};

/// How information is aggregated and the horizon located (recorded in horizon.json).
#[derive(Args)]
pub struct AnalysisArgs {
    /// Info rows written by `horizon info`: its output directory (part-*.parquet) or one Parquet file.
    /// Repeat (or give several, comma-separated) to analyse several runs together, e.g. one per model.
    #[arg(long, required = true, num_args = 1.., value_delimiter = ',')]
    pub info: Vec<PathBuf>,
    /// Quantity per run: p (probability of y), logp, or kl (KL to the unpruned model).
    #[arg(long, default_value = "p", value_parser = Metric::from_str)]
    pub metric: Metric,
    /// keep-only or leave-out rows.
    #[arg(long, default_value = "keep-only", value_parser = InfoMode::from_str)]
    pub mode: InfoMode,
    /// gt or greedy rows.
    #[arg(long, default_value = "gt", value_parser = Target::from_str)]
    pub target: Target,
    /// Vanishing threshold as a fraction of the largest |mean information| over layers.
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true, value_parser = non_negative)]
    pub threshold: f64,
    /// Vanishing threshold as an absolute value instead (overrides --threshold).
    #[arg(long, allow_hyphen_values = true, value_parser = non_negative)]
    pub absolute_threshold: Option<f64>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub bootstrap: usize,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95, value_parser = unit_open)]
    pub confidence: f64,
    /// Do not require a vanishing layer's interval to cover zero.
    #[arg(long)]
    pub no_ci_check: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl AnalysisArgs {
    pub fn run(&self) -> Result<Analysis> {
        if self.confidence <= 0.0 || self.confidence >= 1.0 {
            bail!("--confidence: {} is not in (0, 1)", self.confidence);
        }
        let params = AnalysisParams {
            metric: self.metric,
            mode: self.mode,
            target: self.target.as_str().to_string(),
            bootstrap: self.bootstrap,
            confidence: self.confidence,
            seed: self.seed,
            threshold: match self.absolute_threshold {
                Some(a) => Threshold::Absolute(a),
                None => Threshold::Relative(self.threshold),
            },
            require_ci_covers_zero: !self.no_ci_check,
        };
        let rows = read_info_rows_many(&self.info, &ReadOptions::default())?;
        if let Some(note) = estimate_note(&rows.metadata, self.no_ci_check) {
            eprintln!("{note}");
        }
        analyze(&rows, &params)
    }
}

/// A note for rows of `horizon info --estimate gradient` analysed with the interval check: the
/// bootstrap interval is the estimate's sampling spread, and a small bias of the estimate at the
/// deep layers falls outside it once samples are many (BENCHMARKS.md, one-pass estimate).
fn estimate_note(
    metadata: &std::collections::BTreeMap<String, String>,
    no_ci_check: bool,
) -> Option<String> {
    if no_ci_check || metadata.get("horizon.estimate").map(String::as_str) != Some("gradient") {
        return None;
    }
    let estimator = metadata
        .get("horizon.estimator")
        .map_or(String::new(), |e| format!(" ({e})"));
    Some(format!(
        "note: these rows are one-pass gradient estimates{estimator}; the bootstrap intervals cover \
         their sampling, not their error, so the interval check can refuse a layer where the \
         estimate is only slightly biased (--no-ci-check drops the check)"
    ))
}

#[derive(Args)]
pub struct HorizonArgs {
    #[command(flatten)]
    analysis: AnalysisArgs,
    /// Output directory: horizon.json, layers.parquet, windows.parquet.
    #[arg(long)]
    out: PathBuf,
}

pub fn print_summary(a: &Analysis) {
    println!(
        "| model | task | samples | horizon | {:.0}% interval (bootstrap) | P(no horizon) |",
        a.params.confidence * 100.0
    );
    println!("|---|---|---|---|---|---|");
    for g in &a.groups {
        let b = &g.horizon_bootstrap;
        println!(
            "| {} | {} | {} | {} | {} | {:.2} |",
            g.model,
            g.task,
            g.n_samples,
            g.horizon.description,
            interval_text(b),
            b.p_no_horizon
        );
    }
}

pub fn horizon(args: &HorizonArgs) -> Result<()> {
    let a = args.analysis.run()?;
    write_outputs(&a, &args.out)?;
    print_summary(&a);
    eprintln!(
        "wrote horizon.json, layers.parquet and windows.parquet to {}",
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct PlotArgs {
    #[command(flatten)]
    analysis: AnalysisArgs,
    /// Output directory for the figures.
    #[arg(long)]
    out: PathBuf,
    /// Layers shown in the spatial heatmap grid, e.g. 1,4,8 (default: all measured layers).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<i32>,
    /// png, svg or both.
    #[arg(long, default_value = "png", value_parser = ["png", "svg", "both"])]
    format: String,
}

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn plot(args: &PlotArgs) -> Result<()> {
    let a = args.analysis.run()?;
    let written = render_figures(&a, &args.out, &args.layers, &args.format)?;
    print_summary(&a);
    eprintln!("wrote {written} figures to {}", args.out.display());
    Ok(())
}

/// Renders every figure of `a` into `out` (`format`: png, svg or both); returns how many were written.
pub fn render_figures(a: &Analysis, out: &Path, layers: &[i32], format: &str) -> Result<usize> {
    // Every requested layer is checked before the first figure is written, so a bad --layers leaves
    // no partial set of figures behind.
    for g in &a.groups {
        if let Some(k) = layers.iter().find(|&&k| g.layer_index(k).is_none()) {
            let measured: Vec<String> = g.layers.iter().map(|l| l.layer.to_string()).collect();
            anyhow::bail!(
                "--layers: layer {k} was not measured for {}/{} (measured: {})",
                g.model,
                g.task,
                measured.join(",")
            );
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create directory ({e})", out.display()))?;
    let exts: &[&str] = match format {
        "png" => &["png"],
        "svg" => &["svg"],
        _ => &["png", "svg"],
    };
    let mut written = 0;
    for ext in exts {
        let path = |name: String| -> PathBuf { out.join(format!("{name}.{ext}")) };
        plot_information_vs_layer(
            a,
            &CurveOptions::default(),
            &path("information_vs_layer".into()),
        )?;
        written += 1;
        let models = a.models();
        if models.len() > 1 {
            // One panel per model (its tasks), and the models against each other (pooled over tasks).
            for m in &models {
                let opts = CurveOptions {
                    models: vec![m.to_string()],
                    ..CurveOptions::default()
                };
                plot_information_vs_layer(
                    a,
                    &opts,
                    &path(format!("information_vs_layer_{}", safe(m))),
                )?;
                written += 1;
            }
            let pooled = CurveOptions {
                tasks: false,
                ..CurveOptions::default()
            };
            plot_information_vs_layer(a, &pooled, &path("information_vs_layer_models".into()))?;
            written += 1;
        }
        for g in &a.groups {
            let stem = format!("{}_{}", safe(&g.model), safe(&g.task));
            plot_window_heatmaps(
                a,
                &g.model,
                &g.task,
                layers,
                &path(format!("windows_{stem}")),
            )?;
            plot_layer_window_heatmap(a, &g.model, &g.task, &path(format!("layer_window_{stem}")))?;
            written += 2;
        }
    }
    Ok(written)
}
