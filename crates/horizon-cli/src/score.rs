//! `horizon score`: rescores predictions (`horizon eval`'s) by the benchmarks' official rules,
//! without the model; prints the score table as Markdown. Each row's correctness is recomputed from
//! its prediction and answers; a key present twice, or a part file that does not belong to the run,
//! is refused.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

use horizon_data::atomic::{check_file_target, write_atomic};
use horizon_data::predictions::{read_predictions, Prediction};
use horizon_data::run_meta::{RunMetadata, DONE_FILE};
use horizon_data::score::Benchmark;
use horizon_runner::evaluate::score_predictions;
use horizon_runner::parts::{check_finished_parts, part_paths};

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

/// The predictions of the part files in `dir`, after checking that they make one run: with a
/// `DONE.json`, exactly the parts it lists, each with its metadata; without, every part with the
/// metadata of the first (shards and paths aside).
fn read_run_dir(dir: &Path) -> Result<Vec<Prediction>> {
    let paths = if dir.join(DONE_FILE).exists() {
        check_finished_parts(dir)?.1
    } else {
        let paths = part_paths(dir)?;
        if let Some(first) = paths.first() {
            let meta = RunMetadata::read_part(first)?;
            for path in &paths[1..] {
                meta.check_same_run(
                    &RunMetadata::read_part(path)?,
                    path,
                    &first.display().to_string(),
                )?;
            }
        }
        paths
    };
    if paths.is_empty() {
        bail!("{}: no part-*.parquet predictions", dir.display());
    }
    let mut rows = Vec::new();
    let mut holder = std::collections::HashMap::new();
    for path in &paths {
        for row in read_predictions(path)? {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if let Some(other) = holder.insert(row.sample_key.clone(), name.into_owned()) {
                bail!(
                    "{}: sample {} is in {other} too",
                    path.display(),
                    row.sample_key
                );
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    for path in [&args.json, &args.markdown].into_iter().flatten() {
        check_file_target(path)?;
    }
    let scorer = args
        .scorer
        .as_deref()
        .map(Benchmark::from_name)
        .transpose()
        .context("--scorer")?;
    let rows = if args.predictions.is_dir() {
        read_run_dir(&args.predictions)?
    } else {
        read_predictions(&args.predictions)?
    };
    let table = score_predictions(&rows, scorer)
        .with_context(|| format!("--predictions {}", args.predictions.display()))?;
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
