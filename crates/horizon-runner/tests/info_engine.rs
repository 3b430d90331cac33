//! The batched information engine equals the naive reference procedure (a full forward with the cut,
//! one variant at a time) within 1e-5 in f32, for both modes and both targets, with each of its
//! shortcuts (shared-prefix keys and values, last position only in the last layer, several K per batch)
//! on its own, all of them, and none.

use std::path::{Path, PathBuf};
use tch::{Device, Kind};

use horizon_runner::info::{
    full_run, naive_variant, sweep_sample, sweep_sample_with, variant_keep_sets, InfoMode,
    Shortcuts, SweepConfig, Variant, WindowGrid,
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
    // Not ascending: rows must come in the order given, whatever order the batches ran in.
    let layers: Vec<usize> = (0..model.num_layers()).rev().collect();
    // Window size 4 on the 6x6 grid leaves partial edge windows (4x4, 4x2, 2x4, 2x2): several lengths.
    let shortcut_sets = [
        Shortcuts::NONE,
        Shortcuts {
            prefix_kv: true,
            ..Shortcuts::NONE
        },
        Shortcuts {
            last_position_only: true,
            ..Shortcuts::NONE
        },
        Shortcuts {
            stack_layers: true,
            ..Shortcuts::NONE
        },
        Shortcuts::default(),
        Shortcuts::ALL,
    ];
    // The text before the image is the shared prefix of every keep-only variant; a leave-out variant's
    // runs to its window's first token.
    let first_visual = inputs.visual.positions[0];
    assert!(first_visual > 0, "the prompt has text before the image");
    for (mode, window_size, target) in [
        (InfoMode::KeepOnly, 2, gt),
        (InfoMode::LeaveOut, 2, full.greedy_token()),
        (InfoMode::KeepOnly, 4, full.greedy_token()),
        (InfoMode::LeaveOut, 4, gt),
    ] {
        let grid = WindowGrid::new(inputs.visual.grid, window_size).unwrap();
        let (text_only, windows) = variant_keep_sets(&inputs, &grid, mode);
        let naive = |k: usize, variant: Variant| {
            let keep = match variant {
                Variant::TextOnly => &text_only,
                Variant::Window(w) => &windows[w],
                Variant::Full => unreachable!(),
            };
            naive_variant(&model, &inputs, &full, target, k, keep).unwrap()
        };
        let mut reference = std::collections::HashMap::new();
        // Batch 5 leaves several batches per length (and one variant per batch when K are stacked);
        // 64 puts every K of a length into one stacked batch.
        for batch_size in [5, 64] {
            let cfg = SweepConfig {
                layers: layers.clone(),
                window_size,
                mode,
                batch_size: Some(batch_size),
                memory_budget_bytes: 1 << 30,
            };
            for shortcuts in shortcut_sets {
                let results =
                    sweep_sample_with(&model, &inputs, &full, target, &cfg, shortcuts).unwrap();
                assert_eq!(results.len(), 1 + layers.len() * (1 + grid.num_windows()));
                if shortcuts == Shortcuts::default() {
                    let plain = sweep_sample(&model, &inputs, &full, target, &cfg).unwrap();
                    assert_eq!(plain, results, "sweep_sample takes the default shortcuts");
                }
                let mut max_diff = 0f64;
                for (i, r) in results.iter().enumerate() {
                    let (p, lp, kl) = match (r.variant, r.layer) {
                        (Variant::Full, None) => {
                            assert_eq!(i, 0);
                            assert!(r.kl.abs() < 1e-12);
                            continue;
                        }
                        (v, Some(k)) => *reference
                            .entry((k, format!("{v:?}")))
                            .or_insert_with(|| naive(k, v)),
                        other => panic!("unexpected variant {other:?}"),
                    };
                    // Rows come K by K in the order of `layers`.
                    assert_eq!(r.layer, Some(layers[(i - 1) / (1 + grid.num_windows())]));
                    for (a, b) in [(r.p, p), (r.logp, lp), (r.kl, kl)] {
                        max_diff = max_diff.max((a - b).abs());
                    }
                }
                eprintln!(
                    "{mode:?} window {window_size} batch {batch_size} {shortcuts:?}: max |engine - naive| = {max_diff:e}"
                );
                assert!(
                    max_diff <= 1e-5,
                    "{mode:?} {shortcuts:?}: engine differs from naive by {max_diff}"
                );
            }
        }
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

/// `horizon bench`'s synthetic prompt on the bundled horizon-large, whose image token (id 4) lies
/// among its 110 text ids: the random text never adds a placeholder, so the prompt has exactly one
/// per visual feature and the prefill runs, whatever the seed.
#[test]
fn synthetic_prompt_has_one_placeholder_per_visual_token() {
    let dir = root().join("data/models/horizon-large");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let image_token = config["image_token_index"].as_i64().unwrap();
    let model = VlModel::load(&dir, Device::Cpu, Kind::Float).unwrap();
    for seed in 0..20 {
        tch::manual_seed(seed);
        let inputs = model.synthetic_inputs(40).unwrap();
        let ids: Vec<i64> = Vec::try_from(inputs.input_ids.squeeze_dim(0)).unwrap();
        let placeholders = ids.iter().filter(|&&t| t == image_token).count();
        assert_eq!(placeholders, inputs.visual.positions.len(), "seed {seed}");
        assert!(ids[inputs.visual.positions[0]..]
            .iter()
            .take(placeholders)
            .all(|&t| t == image_token));
        full_run(&model, &inputs).unwrap();
    }
}
