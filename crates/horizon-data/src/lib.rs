//! Data side of horizon, free of libtorch: benchmark readers (HF parquet, LLaVA jsonl), PIL-exact image
//! preprocessing for the supported model families, and the seeded synthetic benchmark generator.

pub mod atomic;
pub mod bench;
pub mod imageproc;
pub mod info_rows;
pub mod predictions;
pub mod run_meta;
pub mod score;
pub mod synthetic;
pub mod window;
