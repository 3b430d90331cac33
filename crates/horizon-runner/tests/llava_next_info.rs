//! Information windows on LLaVA-NeXT's two token grids (docs/information-windows.md), on the tiny
//! fixtures of fixtures/make_llava_next_fixtures.py: the windows are the 2x2 blocks of the base grid
//! and of the unpadded high-resolution grid, no window holds a newline token (the packed features
//! say where `image_newline` sits), and the engine's rows equal the naive procedure (one cut forward
//! per variant) on keep-sets built here from the anyres layout alone, and a window of the
//! high-resolution grid cut as HF runs the same cut (reference/cut.*).

use std::path::{Path, PathBuf};
use tch::{Device, Kind};

use horizon_runner::info::{
    full_run, naive_variant, sweep_sample, variant_keep_sets, InfoMode, SweepConfig, Variant,
};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::VlModel;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llava_next")
}

/// Visual-list indices of the 2x2 windows of a `rows × cols` grid starting at `start` with row
/// stride `stride`, row-major on the window grid, each window's tokens ascending.
fn blocks(start: usize, rows: usize, cols: usize, stride: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for wr in (0..rows).step_by(2) {
        for wc in (0..cols).step_by(2) {
            let mut w = Vec::new();
            for r in wr..(wr + 2).min(rows) {
                for c in wc..(wc + 2).min(cols) {
                    w.push(start + r * stride + c);
                }
            }
            out.push(w);
        }
    }
    out
}

struct Case {
    model: VlModel,
    inputs: horizon_runner::ModelInputs,
    processor: Processor,
    /// Expected windows (visual-list indices) and the grid of each.
    windows: Vec<(usize, Vec<usize>)>,
    /// Visual-list indices of the newline tokens.
    newlines: Vec<usize>,
}

fn case(model_dir: &str, image: &str) -> Case {
    let dir = fixtures();
    let model_dir = dir.join("models").join(model_dir);
    let model = VlModel::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(&model_dir, &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            "What is in the image?",
            &dir.join("images").join(image),
            PromptTemplate::Auto,
        )
        .unwrap();
    let VlModel::LlavaNext(m) = &model else {
        panic!("not llava_next")
    };
    let [[_, h, w]] = inputs.image_grid_thw[..] else {
        panic!("one image size")
    };
    let layout = m.layout(h as u32, w as u32).unwrap();
    let (br, bc) = (layout.base_grid.0 as usize, layout.base_grid.1 as usize);
    let (hr, hc) = (
        layout.highres_grid.0 as usize,
        layout.highres_grid.1 as usize,
    );
    let base = br * bc;
    assert_eq!(inputs.visual.positions.len(), base + hr * (hc + 1));
    let mut windows: Vec<(usize, Vec<usize>)> =
        blocks(0, br, bc, bc).into_iter().map(|w| (0, w)).collect();
    windows.extend(blocks(base, hr, hc, hc + 1).into_iter().map(|w| (1, w)));
    let newlines: Vec<usize> = (0..hr).map(|r| base + r * (hc + 1) + hc).collect();
    // Where the packed features hold `image_newline` (and nowhere else: the tiny model's features
    // are random).
    let features = tch::no_grad(|| {
        m.image_features(inputs.pixel_values.as_ref().unwrap(), h as u32, w as u32)
    })
    .unwrap();
    let newline = m.image_newline.to_kind(features.kind());
    let is_newline: Vec<usize> = (0..features.size()[0] as usize)
        .filter(|&i| features.get(i as i64).equal(&newline))
        .collect();
    assert_eq!(is_newline, newlines, "{image}: newline tokens");
    Case {
        model,
        inputs,
        processor,
        windows,
        newlines,
    }
}

/// The family's windows are the blocks built from the layout; every other visual token is a newline.
fn check_windows(c: &Case, image: &str) {
    let grid = c.model.window_grid(&c.inputs, 2).unwrap();
    assert_eq!(grid.grids.len(), 2, "{image}");
    assert_eq!(grid.num_windows(), c.windows.len(), "{image}");
    for (w, (g, tokens)) in c.windows.iter().enumerate() {
        assert_eq!(grid.window_grid(w), *g, "{image}: grid of window {w}");
        assert_eq!(&grid.window_tokens(w), tokens, "{image}: window {w}");
    }
    let mut covered: Vec<usize> = c.windows.iter().flat_map(|(_, t)| t.clone()).collect();
    covered.extend(&c.newlines);
    covered.sort();
    assert_eq!(
        covered,
        (0..c.inputs.visual.positions.len()).collect::<Vec<_>>(),
        "{image}: windows and newlines tile the visual tokens once"
    );
}

/// Keep-sets in sequence indices: text-only, then each window in `mode`.
fn expected_keep_sets(c: &Case, mode: InfoMode) -> (Vec<usize>, Vec<Vec<usize>>) {
    let seq = c.inputs.seq_len();
    let visual = &c.inputs.visual.positions;
    let text: Vec<usize> = (0..seq).filter(|p| !visual.contains(p)).collect();
    let windows = c
        .windows
        .iter()
        .map(|(_, tokens)| {
            let inside: Vec<usize> = tokens.iter().map(|&t| visual[t]).collect();
            let mut keep: Vec<usize> = match mode {
                InfoMode::KeepOnly => text.iter().copied().chain(inside).collect(),
                InfoMode::LeaveOut => (0..seq).filter(|p| !inside.contains(p)).collect(),
            };
            keep.sort();
            keep
        })
        .collect();
    (text, windows)
}

fn engine_equals_naive(model_dir: &str, image: &str) {
    let c = case(model_dir, image);
    check_windows(&c, image);
    let full = full_run(&c.model, &c.inputs).unwrap();
    let target = c.processor.first_answer_token("red").unwrap().unwrap();
    let grid = c.model.window_grid(&c.inputs, 2).unwrap();
    let layers: Vec<usize> = vec![1, c.model.num_layers() - 1];
    for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
        let (text_only, windows) = expected_keep_sets(&c, mode);
        assert_eq!(
            variant_keep_sets(&c.inputs, &grid, mode),
            (text_only.clone(), windows.clone()),
            "{image} {mode:?}: keep-sets"
        );
        let cfg = SweepConfig {
            layers: layers.clone(),
            window_size: 2,
            mode,
            batch_size: Some(7),
            memory_budget_bytes: 1 << 28,
        };
        let results = sweep_sample(&c.model, &c.inputs, &full, target, &cfg).unwrap();
        assert_eq!(results.len(), 1 + layers.len() * (1 + windows.len()));
        let mut max_diff = 0f64;
        for r in &results {
            let keep = match (r.variant, r.layer) {
                (Variant::Full, None) => continue,
                (Variant::TextOnly, Some(_)) => &text_only,
                (Variant::Window(w), Some(_)) => &windows[w],
                other => panic!("unexpected variant {other:?}"),
            };
            let k = r.layer.unwrap();
            let (p, lp, kl) = naive_variant(&c.model, &c.inputs, &full, target, k, keep).unwrap();
            for (a, b) in [(r.p, p), (r.logp, lp), (r.kl, kl)] {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        eprintln!("{image} {mode:?}: max |engine - naive| = {max_diff:e}");
        assert!(
            max_diff <= 1e-5,
            "{image} {mode:?}: engine differs from naive by {max_diff}"
        );
    }
}

#[test]
fn square_image_windows_on_both_grids_equal_naive() {
    engine_equals_naive("llava-next-tiny", "square.png");
}

/// The wide image is unpadded by columns... and the tall one by rows: odd high-resolution grids give
/// partial edge windows.
#[test]
fn wide_and_tall_images_windows_equal_naive() {
    engine_equals_naive("llava-next-tiny", "wide.png");
    engine_equals_naive("llava-next-tiny", "tall.png");
}

#[test]
fn windows_of_every_fixture_image_tile_the_grids() {
    for image in ["square.png", "wide.png", "tall.png", "small.png"] {
        let c = case("llava-next-tiny", image);
        check_windows(&c, image);
    }
}

/// HF transformers 5.17.0 running the same cuts with its own modules (`fixtures/hf_cut.py` via
/// make_llava_next_fixtures.py, reference/cut.*): on the tall image, the text-only baseline and the
/// window at row 1, column 1 of the high-resolution grid kept alone and dropped alone, K = 1 and 2.
/// Held to it: the family's window (which visual tokens, past the newlines), the keep-sets, the
/// logits of the cut forward, and the engine's p(y), log p(y) and KL as `horizon info` writes them.
#[test]
fn high_resolution_window_cut_matches_hf() {
    use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
    use horizon_runner::Intervention;
    use std::collections::HashMap;
    use tch::Tensor;

    let dir = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/cut.json")).unwrap())
            .unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference/cut.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let model_dir = dir.join(meta["model_dir"].as_str().unwrap());
    let model = VlModel::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(&model_dir, &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            meta["question"].as_str().unwrap(),
            &dir.join(meta["image"].as_str().unwrap()),
            PromptTemplate::Auto,
        )
        .unwrap();
    assert!(inputs
        .input_ids
        .squeeze_dim(0)
        .equal(&reference["input_ids"]));
    let target = meta["target_token_id"].as_i64().unwrap();
    assert_eq!(
        processor
            .first_answer_token(meta["answer"].as_str().unwrap())
            .unwrap(),
        Some(target)
    );
    // The window: grid 1, window (row, col) from the reference; its visual tokens are HF's.
    let grid = model.window_grid(&inputs, 2).unwrap();
    let place: Vec<usize> = serde_json::from_value(meta["window0_window_rc"].clone()).unwrap();
    let w = (0..grid.num_windows())
        .find(|&w| grid.window_grid(w) == 1 && grid.window_position(w) == (place[0], place[1]))
        .expect("the window on the high-resolution grid");
    let want: Vec<usize> =
        serde_json::from_value(meta["window0"]["visual_indices"].clone()).unwrap();
    assert_eq!(grid.window_tokens(w), want, "window {w}: visual tokens");

    let full = full_run(&model, &inputs).unwrap();
    let tol = f32_logits_tolerance(&reference["full.logits"]);
    let close = |what: &str, ours: f64, theirs: f64, bound: f64| {
        assert!(
            (ours - theirs).abs() <= bound,
            "{what}: ours {ours}, HF {theirs} (bound {bound})"
        );
    };
    close(
        "full log p(y)",
        full.log_probs.squeeze_dim(0).double_value(&[target]),
        reference["full.log_p_y"].double_value(&[0]),
        2.0 * tol,
    );
    let ks: Vec<usize> = serde_json::from_value(meta["ks"].clone()).unwrap();
    let mut checked = 0;
    for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
        let (text_only, windows) = variant_keep_sets(&inputs, &grid, mode);
        let cfg = SweepConfig {
            layers: ks.clone(),
            window_size: 2,
            mode,
            batch_size: None,
            memory_budget_bytes: 1 << 28,
        };
        for r in sweep_sample(&model, &inputs, &full, target, &cfg).unwrap() {
            let (name, keep) = match (r.variant, mode) {
                (Variant::TextOnly, _) => ("text_only", &text_only),
                (Variant::Window(v), InfoMode::KeepOnly) if v == w => ("keep_window0", &windows[w]),
                (Variant::Window(v), InfoMode::LeaveOut) if v == w => ("drop_window0", &windows[w]),
                _ => continue,
            };
            let k = r.layer.unwrap();
            let key = |field: &str| format!("K{k}.{name}.{field}");
            let kept: Vec<i64> = Vec::try_from(&reference[&key("kept")]).unwrap();
            let ours: Vec<i64> = keep.iter().map(|&p| p as i64).collect();
            assert_eq!(ours, kept, "K={k} {name}: keep-set");
            let mut iv = Intervention::cut_at(k, keep.iter().copied()).unwrap();
            let out = model.prefill(&inputs, &mut iv, None, None).unwrap();
            let last = out.hidden.select(1, out.hidden.size()[1] - 1);
            let logits = model.lm_head(&last).squeeze_dim(0).to_kind(Kind::Float);
            let d = max_abs_diff(&logits, &reference[&key("logits")]);
            assert!(
                d <= tol,
                "K={k} {name}: logits differ from HF by {d} (tolerance {tol})"
            );
            let p = reference[&key("p_y")].double_value(&[0]);
            close(
                &key("log_p_y"),
                r.logp,
                reference[&key("log_p_y")].double_value(&[0]),
                2.0 * tol,
            );
            close(&key("p_y"), r.p, p, p * 2.0 * tol + 1e-9);
            close(
                &key("kl_full"),
                r.kl,
                reference[&key("kl_full")].double_value(&[0]),
                4.0 * tol,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * ks.len(), "variants checked");
}
