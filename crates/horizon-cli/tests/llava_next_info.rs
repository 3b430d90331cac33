//! `horizon info` → `horizon horizon` → `horizon plot` on the tiny LLaVA-NeXT fixture: window rows
//! carry their grid (0 the base image, 1 the unpadded high-resolution grid) and their place on it,
//! their values equal the naive procedure (one cut forward per variant) on keep-sets built from the
//! anyres layout, the analysis keys windows by (grid, row, col), and the window figures have one
//! panel per grid.

mod common;

use common::{horizon, root, s};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::{Device, Kind};

use horizon_analysis::read_info_rows;
use horizon_runner::info::{full_run, naive_variant};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::VlModel;

const IMAGES: [&str; 3] = ["square.png", "wide.png", "tall.png"];

fn bench(dir: &Path) -> std::path::PathBuf {
    for name in IMAGES {
        std::fs::copy(
            root().join("fixtures/llava_next/images").join(name),
            dir.join(name),
        )
        .unwrap();
    }
    let q = dir.join("q.jsonl");
    let lines: Vec<String> = IMAGES
        .iter()
        .enumerate()
        .map(|(i, image)| {
            format!(
                r#"{{"question_id": {i}, "image": "{image}", "text": "What color is shape {i}?", "answer": "red", "category": "c"}}"#
            )
        })
        .collect();
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    q
}

#[test]
fn info_horizon_plot_on_both_grids() {
    let tmp = tempfile::tempdir().unwrap();
    let q = bench(tmp.path());
    let model_dir = root().join("fixtures/llava_next/models/llava-next-tiny");
    let info = tmp.path().join("info");
    let (ok, _, err) = horizon(&[
        "info",
        "--model",
        &s(&model_dir),
        "--bench",
        &s(&q),
        "--image-dir",
        &s(tmp.path()),
        "--out",
        &s(&info),
        "--layers",
        "1,3",
    ]);
    assert!(ok, "{err}");

    // Rows against the family's windows and the naive procedure.
    let t = read_info_rows(&info).unwrap();
    let model = VlModel::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(&model_dir, &model).unwrap();
    let (rows, cols) = (t.window_row.clone().unwrap(), t.window_col.clone().unwrap());
    let p = t.p.clone().unwrap();
    let mut checked = 0;
    let mut high_res_shapes = BTreeSet::new();
    for (i, image) in IMAGES.iter().enumerate() {
        let inputs = processor
            .prepare(
                &model,
                &format!("What color is shape {i}?"),
                &tmp.path().join(image),
                PromptTemplate::Auto,
            )
            .unwrap();
        let grid = model.window_grid(&inputs, 2).unwrap();
        high_res_shapes.insert((grid.grids[1].rows, grid.grids[1].cols));
        let full = full_run(&model, &inputs).unwrap();
        let target = processor.first_answer_token("red").unwrap().unwrap();
        let visual = &inputs.visual.positions;
        let text: Vec<usize> = (0..inputs.seq_len())
            .filter(|p| !visual.contains(p))
            .collect();
        let mut windows_seen = BTreeMap::new();
        for r in 0..t.len() {
            if t.sample_id.get(r) != i.to_string() {
                continue;
            }
            if t.variant.get(r) != "window" {
                assert_eq!((t.grid[r], rows[r], cols[r]), (-1, -1, -1), "row {r}");
                continue;
            }
            let w = t.window[r] as usize;
            let (wr, wc) = grid.window_position(w);
            assert_eq!(
                (t.grid[r], rows[r], cols[r]),
                (grid.window_grid(w) as i32, wr as i32, wc as i32),
                "{image}: window {w}"
            );
            *windows_seen.entry(t.grid[r]).or_insert(0usize) += 1;
            if t.layer[r] == 1 {
                let mut keep: Vec<usize> = text.clone();
                keep.extend(grid.window_tokens(w).iter().map(|&v| visual[v]));
                keep.sort();
                let (naive_p, _, _) =
                    naive_variant(&model, &inputs, &full, target, 1, &keep).unwrap();
                assert!(
                    (naive_p - p[r]).abs() <= 1e-5,
                    "{image} window {w}: row p {} vs naive {naive_p}",
                    p[r]
                );
                checked += 1;
            }
        }
        // Two layers × each grid's windows.
        let per_grid: Vec<usize> = (0..2)
            .map(|g| {
                (0..grid.num_windows())
                    .filter(|&w| grid.window_grid(w) == g)
                    .count()
                    * 2
            })
            .collect();
        assert_eq!(
            windows_seen.values().copied().collect::<Vec<_>>(),
            per_grid,
            "{image}: window rows per grid"
        );
    }
    assert!(checked > 0);
    assert!(
        high_res_shapes.len() > 1,
        "the images give high-resolution grids of different shapes: {high_res_shapes:?}"
    );

    // The analysis keeps the two grids apart.
    let an = tmp.path().join("an");
    let (ok, _, err) = horizon(&[
        "horizon",
        "--info",
        &s(&info),
        "--out",
        &s(&an),
        "--bootstrap",
        "20",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(an.join("horizon.json")).unwrap()).unwrap();
    let grids = report["grid"]["grids"].as_array().expect("grid.grids");
    assert_eq!(grids.len(), 2, "{}", report["grid"]);
    let grid_of = report["grid"]["grid_of"].as_array().unwrap();
    assert!(grid_of.windows(2).all(|w| w[0].as_i64() <= w[1].as_i64()));

    // Figures: one panel per (layer, grid) in the heatmaps, one per grid in the layer × window map.
    let figs = tmp.path().join("figs");
    let (ok, _, err) = horizon(&[
        "plot",
        "--info",
        &s(&info),
        "--out",
        &s(&figs),
        "--bootstrap",
        "20",
        "--format",
        "svg",
    ]);
    assert!(ok, "{err}");
    let heatmaps = std::fs::read_to_string(figs.join("windows_llava-next-tiny_c.svg")).unwrap();
    for k in [1, 3] {
        for g in [0, 1] {
            let plain = format!("layer K = {k}, grid {g}\n");
            let past = format!("layer K = {k} (≥ horizon), grid {g}\n");
            assert_eq!(
                heatmaps.matches(&plain).count() + heatmaps.matches(&past).count(),
                1,
                "one panel for layer {k}, grid {g}"
            );
        }
    }
    let panels = heatmaps.matches(", grid 0\n").count() + heatmaps.matches(", grid 1\n").count();
    assert_eq!(panels, 4, "2 layers × 2 grids");
    let layer_window =
        std::fs::read_to_string(figs.join("layer_window_llava-next-tiny_c.svg")).unwrap();
    assert_eq!(
        (
            layer_window.matches(">\ngrid 0\n").count(),
            layer_window.matches(">\ngrid 1\n").count()
        ),
        (1, 1),
        "one layer × window panel per grid"
    );
}
