//! Times leave-out's gradient estimate per sample on one libtorch thread, split into the forward
//! to the linearisation point and the backward pass with the QK fix and the rows, for batches of 1,
//! 4 and 8 samples (`LeaveOutPoint::from_embeds_batch`), two rounds. BENCHMARKS.md records a run:
//! `cargo run --release -p horizon-runner --example leave_out_profile -- MODEL_DIR BENCH [N]`
//! (default: `data/models/horizon-large`, `data/synthetic/test.parquet`, 48 samples).

use horizon_data::bench::prompts::{question_prompt, PromptStyle};
use horizon_data::bench::{read_all, OpenOptions};
use horizon_data::imageproc::to_rgb_like_pil;
use horizon_data::info_rows::KlEstimate;
use horizon_runner::gradient::{estimate_leave_out_batch, LeaveOutPoint};
use horizon_runner::info::{InfoMode, SweepConfig};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{ModelInputs, VlModel};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    tch::set_num_threads(1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let dir = std::path::PathBuf::from(arg(0, "data/models/horizon-large"));
    let dir = dir.as_path();
    let model = VlModel::load(dir, Device::Cpu, Kind::Float)?;
    let processor = Processor::load(dir, &model)?;
    let samples = read_all(
        arg(1, "data/synthetic/test.parquet"),
        &OpenOptions::default(),
    )?;
    let n: usize = arg(2, "48").parse()?;
    let n = n.min(samples.len());
    let t = Instant::now();
    let mut prepared: Vec<(ModelInputs, Tensor)> = Vec::new();
    for s in samples.iter().take(n) {
        let image = to_rgb_like_pil(s.image.decode()?);
        let prompt = question_prompt(s, PromptStyle::default());
        let inputs = processor.prepare_image(&model, &prompt, &image, PromptTemplate::Auto)?;
        prepared.push((inputs, Tensor::new()));
    }
    let prep = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in prepared.iter_mut() {
        p.1 = model.input_embeds(&p.0)?;
    }
    let emb = t.elapsed().as_secs_f64();
    let lens: Vec<usize> = prepared.iter().map(|p| p.0.seq_len()).collect();
    println!(
        "{n} samples, prompt lengths {}-{}",
        lens.iter().min().unwrap_or(&0),
        lens.iter().max().unwrap_or(&0)
    );
    println!(
        "per sample: prepare {:.2} ms, embeds {:.2} ms",
        prep / n as f64 * 1e3,
        emb / n as f64 * 1e3
    );
    let cfg = SweepConfig {
        layers: (1..model.num_layers()).collect(),
        window_size: 2,
        mode: InfoMode::LeaveOut,
        batch_size: None,
        memory_budget_bytes: 1 << 30,
    };
    for round in 0..2 {
        for b in [1usize, 4, 8] {
            let (mut fw, mut bw) = (0.0, 0.0);
            for chunk in prepared.chunks(b) {
                let t = Instant::now();
                let refs: Vec<(&ModelInputs, &Tensor)> =
                    chunk.iter().map(|(i, e)| (i, e)).collect();
                let point = LeaveOutPoint::from_embeds_batch(&model, &refs)?;
                let g = point.greedy_tokens();
                fw += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let tg: Vec<(&ModelInputs, i64)> =
                    chunk.iter().zip(&g).map(|((i, _), &y)| (i, y)).collect();
                let rows = estimate_leave_out_batch(&model, &tg, &point, &cfg, KlEstimate::Answer)?;
                assert_eq!(rows.len(), chunk.len());
                bw += t.elapsed().as_secs_f64();
            }
            println!(
                "round {round} batch {b}: forward {:.2} ms, backward+fix+rows {:.2} ms per sample",
                fw / n as f64 * 1e3,
                bw / n as f64 * 1e3
            );
        }
    }
    Ok(())
}
