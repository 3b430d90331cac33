//! `horizon score`: rescores a predictions file (`horizon eval --predictions`) by the benchmarks'
//! official rules, without the model; prints the score table as Markdown.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

use horizon_data::atomic::write_atomic;
use horizon_data::info_rows::part_files;
use horizon_data::predictions::read_predictions;
use horizon_data::score::{score, score_detected, Benchmark};

#[derive(Args)]
pub struct ScoreArgs {
    /// Predictions: a Parquet file (`predictions.parquet` of `horizon eval --out DIR`), or a directory
    /// of part files (an eval run or merged eval shards).
    #[arg(long)]
    pub predictions: PathBuf,
    /// Score every row by this benchmark's rules instead of the one in each row's `benchmark`
    /// column: mme, pope, textvqa, scienceqa, gqa, mmbench or other.
    #[arg(long)]
    pub scorer: Option<String>,
    /// Also write the score table as JSON (`{"rows": [{benchmark, metric, convention, value, n}],
    /// "notes": [...]}`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the score table as Markdown (what is printed).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let rows = if args.predictions.is_dir() {
        let mut rows = Vec::new();
        for part in part_files(&args.predictions)? {
            if part
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
            {
                rows.extend(read_predictions(&part)?);
            }
        }
        if rows.is_empty() {
            anyhow::bail!(
                "{}: no part-*.parquet predictions",
                args.predictions.display()
            );
        }
        rows
    } else {
        read_predictions(&args.predictions)?
    };
    let table = match &args.scorer {
        Some(name) => score(Benchmark::from_name(name)?, &rows)?,
        None => score_detected(&rows)?,
    };
    let markdown = table.to_markdown();
    print!("{markdown}");
    for (path, text) in [(&args.json, table.to_json()), (&args.markdown, markdown)] {
        if let Some(path) = path {
            write_atomic(path, |tmp| {
                std::fs::write(tmp, &text)
                    .with_context(|| format!("{}: cannot write", tmp.display()))
            })?;
        }
    }
    Ok(())
}
