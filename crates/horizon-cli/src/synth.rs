//! `horizon synth`: writes the seeded synthetic benchmark (HF-parquet layout of lmms-lab benchmarks).

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use horizon_data::synthetic::{self, GenConfig};

use crate::options::at_least_one;

#[derive(Args)]
pub struct SynthArgs {
    /// Output parquet file (HF-parquet layout of lmms-lab benchmarks).
    #[arg(long)]
    out: PathBuf,
    /// Samples per category.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    per_category: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=2048))]
    image_size: u32,
    /// Glyphs per text-reading sample: 1 to this many.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    max_glyphs: usize,
}

pub fn run(args: &SynthArgs) -> Result<()> {
    horizon_data::atomic::check_file_target(&args.out)?;
    let cfg = GenConfig::default()
        .with_image_size(args.image_size)
        .with_glyphs(1, args.max_glyphs);
    let n = synthetic::write_split(&args.out, &cfg, args.per_category, args.seed)?;
    eprintln!("wrote {n} samples to {}", args.out.display());
    Ok(())
}
