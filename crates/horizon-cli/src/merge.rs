//! `horizon merge`: the finished shards of one `horizon info` or `horizon eval` run (`--shard i/n`)
//! as one directory, after checking that each holds exactly the parts its `DONE.json` lists, with its
//! metadata, and that together they cover the selection exactly once with equal settings.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use horizon_runner::sweep::merge_shards;

#[derive(Args)]
pub struct MergeArgs {
    /// The shards' output directories (each finished: it holds DONE.json).
    #[arg(long, required = true, num_args = 1.., value_delimiter = ',')]
    pub shards: Vec<PathBuf>,
    /// New directory for the merged part files (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &MergeArgs) -> Result<()> {
    let report = merge_shards(&args.shards, &args.out)?;
    eprintln!(
        "merged {} shards: {} samples in {} part files into {}",
        report.shards,
        report.samples,
        report.part_files,
        args.out.display()
    );
    Ok(())
}
