//! Times the checkpoint fingerprint (`horizon_runner::checkpoint::fingerprint`) on a checkpoint
//! directory: one cold call, one call in the same process (each shard's digest kept by path, size
//! and modification time), and reports the throughput of the first. BENCHMARKS.md records a 7B-size
//! run: `cargo run -p horizon-runner --example fingerprint -- DIR`.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: fingerprint CHECKPOINT_DIR"))?;
    let dir = std::path::Path::new(&dir);
    let bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let t = Instant::now();
    let first = horizon_runner::checkpoint::fingerprint(dir)?;
    let cold = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let again = horizon_runner::checkpoint::fingerprint(dir)?;
    let memo = t.elapsed().as_secs_f64();
    assert_eq!(first, again);
    println!(
        "{}: {:.2} GB of safetensors; first call {cold:.2} s ({:.2} GB/s), again in-process {memo:.4} s; {first}",
        dir.display(),
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / cold
    );
    Ok(())
}
