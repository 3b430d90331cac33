//! The batched information engine equals the naive reference procedure (a full forward with the cut,
//! one variant at a time) within 1e-5 in f32, for both modes and both targets.

use std::path::{Path, PathBuf};
use tch::{Device, Kind};

use horizon_runner::info::{
    full_run, naive_variant, sweep_sample, variant_keep_sets, InfoMode, SweepConfig, Variant,
    WindowGrid,
};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::VlModel;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn engine_equals_naive_procedure_llava() {
    let dir = root().join("fixtures/llava");
    engine_equals_naive(
        &dir.join("models/llava-tiny"),
        &dir.join("images/square.png"),
        "What color is the circle?",
    );
}

/// Qwen2.5-VL: 3-D M-RoPE positions are gathered per kept token; the 3x5 merged grid of the non-square
/// image leaves partial windows at s = 2.
#[test]
fn engine_equals_naive_procedure_qwen2_5_vl() {
    let dir = root().join("fixtures/qwen2_5_vl");
    engine_equals_naive(
        &dir.join("models/qwen-tiny"),
        &dir.join("images/nonsquare.png"),
        "Describe the shape on the left.",
    );
}

fn engine_equals_naive(model_dir: &Path, image: &Path, question: &str) {
    let model = VlModel::load(model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(model_dir, &model).unwrap();
    let inputs = processor
        .prepare(&model, question, image, PromptTemplate::Auto)
        .unwrap();
    let full = full_run(&model, &inputs).unwrap();
    let gt = processor.first_answer_token("red").unwrap().unwrap();
    let layers: Vec<usize> = (0..model.num_layers()).collect();
    // Window size 4 on the 6x6 grid leaves partial edge windows (4x4, 4x2, 2x4, 2x2): several lengths.
    for (mode, window_size, target) in [
        (InfoMode::KeepOnly, 2, gt),
        (InfoMode::LeaveOut, 2, full.greedy_token()),
        (InfoMode::KeepOnly, 4, full.greedy_token()),
        (InfoMode::LeaveOut, 4, gt),
    ] {
        let cfg = SweepConfig {
            layers: layers.clone(),
            window_size,
            mode,
            batch_size: Some(5),
            memory_budget_bytes: 1 << 30,
        };
        let results = sweep_sample(&model, &inputs, &full, target, &cfg).unwrap();
        let grid = WindowGrid::new(inputs.visual.grid, window_size).unwrap();
        let (text_only, windows) = variant_keep_sets(&inputs, &grid, mode);
        assert_eq!(results.len(), 1 + layers.len() * (1 + grid.num_windows()));
        let mut max_diff = 0f64;
        for r in &results {
            let (p, lp, kl) = match (r.variant, r.layer) {
                (Variant::Full, None) => {
                    assert!(r.kl.abs() < 1e-12);
                    continue;
                }
                (Variant::TextOnly, Some(k)) => {
                    naive_variant(&model, &inputs, &full, target, k, &text_only).unwrap()
                }
                (Variant::Window(w), Some(k)) => {
                    naive_variant(&model, &inputs, &full, target, k, &windows[w]).unwrap()
                }
                other => panic!("unexpected variant {other:?}"),
            };
            for (a, b) in [(r.p, p), (r.logp, lp), (r.kl, kl)] {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        eprintln!("{mode:?} window {window_size}: max |engine - naive| = {max_diff:e}");
        assert!(
            max_diff <= 1e-5,
            "{mode:?}: engine differs from naive by {max_diff}"
        );
    }
}

#[test]
fn window_grid_partial_edges() {
    let g = WindowGrid::new((5, 3), 2).unwrap();
    assert_eq!((g.window_rows(), g.window_cols()), (3, 2));
    assert_eq!(g.window_tokens(0), vec![0, 1, 3, 4]);
    assert_eq!(g.window_tokens(1), vec![2, 5]);
    assert_eq!(g.window_tokens(4), vec![12, 13]);
    assert_eq!(g.window_tokens(5), vec![14]);
    let covered: usize = (0..g.num_windows()).map(|w| g.window_tokens(w).len()).sum();
    assert_eq!(covered, 15);
    // The reference's 24x24 grid with s = 2: window (x=2, y=1) covers {2, 3, 26, 27}.
    let r = WindowGrid::new((24, 24), 2).unwrap();
    assert_eq!(r.window_tokens(1), vec![2, 3, 26, 27]);
    assert_eq!(r.window_tokens(143), vec![550, 551, 574, 575]);
}
