//! Windows on several token grids (LLaVA-NeXT's base and high-resolution grids,
//! docs/information-windows.md): the analysis keys them by (grid, window_row, window_col), so a
//! window map cell averages the samples whose grid has that place, while each sample's level is the
//! mean over all of its windows on every grid. Checked against the means computed here by hand.

use horizon_analysis::{analyze, read_info_rows, AnalysisParams};
use horizon_data::info_rows::{write_info_rows, InfoMode, InfoRow, RowVariant, Target};

/// (window, grid, window_row, window_col, p) of one window row.
type WindowRow = (i32, i32, i32, i32, f64);

fn row(
    sample: &str,
    variant: RowVariant,
    layer: i32,
    place: (i32, i32, i32, i32),
    p: f64,
) -> InfoRow {
    let (window, grid, window_row, window_col) = place;
    InfoRow {
        model: "m".into(),
        task: "t".into(),
        sample_id: sample.into(),
        layer,
        variant,
        window,
        window_row,
        window_col,
        grid,
        mode: InfoMode::KeepOnly,
        target: Target::Gt,
        target_token: 7,
        p,
        logp: p.ln(),
        kl: 0.0,
    }
}

#[test]
fn windows_on_two_grids_are_keyed_by_place() {
    // Both samples: base grid of 1 x 2 windows. High-resolution grid: sample a 1 x 2 windows,
    // sample b 2 x 1 (another aspect ratio). Window indices are per sample, base first.
    // (sample, [(window, grid, row, col, p)])
    let windows: [(&str, Vec<WindowRow>); 2] = [
        (
            "a",
            vec![
                (0, 0, 0, 0, 0.30),
                (1, 0, 0, 1, 0.20),
                (2, 1, 0, 0, 0.50),
                (3, 1, 0, 1, 0.40),
            ],
        ),
        (
            "b",
            vec![
                (0, 0, 0, 0, 0.10),
                (1, 0, 0, 1, 0.60),
                (2, 1, 0, 0, 0.70),
                (3, 1, 1, 0, 0.15),
            ],
        ),
    ];
    let text_p = 0.05;
    let mut rows = Vec::new();
    for (sample, ws) in &windows {
        rows.push(row(sample, RowVariant::Full, -1, (-1, -1, -1, -1), 0.9));
        rows.push(row(
            sample,
            RowVariant::TextOnly,
            1,
            (-1, -1, -1, -1),
            text_p,
        ));
        for &(w, g, r, c, p) in ws {
            rows.push(row(sample, RowVariant::Window, 1, (w, g, r, c), p));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    write_info_rows(&dir.path().join("part-000000.parquet"), &rows, &[]).unwrap();
    let t = read_info_rows(dir.path()).unwrap();
    let a = analyze(
        &t,
        &AnalysisParams {
            bootstrap: 10,
            ..AnalysisParams::default()
        },
    )
    .unwrap();

    // Places, sorted: base (0,0), (0,1); high-res (0,0), (0,1), (1,0).
    assert_eq!(a.grid.n_windows, 5);
    assert_eq!(a.grid.grid_of, vec![0, 0, 1, 1, 1]);
    assert_eq!(a.grid.row_of, vec![0, 0, 0, 0, 1]);
    assert_eq!(a.grid.col_of, vec![0, 1, 0, 1, 0]);
    assert_eq!(a.grid.grids, vec![(1, 2), (2, 2)]);

    let g = a.group("m", "t").unwrap();
    let li = g.layer_index(1).unwrap();
    let info = |p: f64| p - text_p;
    let want_map = [
        (info(0.30) + info(0.10)) / 2.0,
        (info(0.20) + info(0.60)) / 2.0,
        (info(0.50) + info(0.70)) / 2.0,
        info(0.40),
        info(0.15),
    ];
    for (w, want) in want_map.iter().enumerate() {
        let got = g.window_means[[li, w]];
        assert!((got - want).abs() < 1e-12, "window {w}: {got} vs {want}");
    }
    // Grid-agnostic level: the mean over each sample's four windows, then over the samples.
    let level = |s: usize| windows[s].1.iter().map(|w| info(w.4)).sum::<f64>() / 4.0;
    let want_mean = (level(0) + level(1)) / 2.0;
    let got = g.layers[li].mean;
    assert!((got - want_mean).abs() < 1e-12, "{got} vs {want_mean}");
}
