mod common;

use common::*;
use horizon_analysis::*;
use std::path::Path;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn params(metric: Metric, mode: InfoMode) -> AnalysisParams {
    AnalysisParams {
        metric,
        mode,
        bootstrap: 200,
        ..Default::default()
    }
}

fn read_analyze(path: &Path, p: &AnalysisParams) -> Analysis {
    let t = read_info_rows(path).unwrap();
    analyze(&t, p).unwrap()
}

/// Two samples, one layer, two windows: every number checked by hand.
fn tiny_rows() -> Vec<Row> {
    let mut rows = vec![];
    // sample a: text 0.1, windows 0.5, 0.3 -> I = 0.4, 0.2 -> I_a = 0.3
    // sample b: text 0.2, windows 0.2, 0.4 -> I = 0.0, 0.2 -> I_b = 0.1
    for (s, text, w0, w1, full, lo0, lo1) in [
        ("a", 0.1, 0.5, 0.3, 0.8, 0.4, 0.6),
        ("b", 0.2, 0.2, 0.4, 0.6, 0.6, 0.6),
    ] {
        rows.push(Row::new("m", "t", s, -1, "full").vals(full, 0.0));
        rows.push(Row::new("m", "t", s, 3, "text_only").vals(text, 1.0));
        rows.push(
            Row::new("m", "t", s, 3, "window")
                .win(0, 2, "keep-only")
                .vals(w0, 0.25),
        );
        rows.push(
            Row::new("m", "t", s, 3, "window")
                .win(1, 2, "keep-only")
                .vals(w1, 0.75),
        );
        rows.push(
            Row::new("m", "t", s, 3, "window")
                .win(0, 2, "leave-out")
                .vals(lo0, 0.5),
        );
        rows.push(
            Row::new("m", "t", s, 3, "window")
                .win(1, 2, "leave-out")
                .vals(lo1, 0.1),
        );
    }
    rows
}

#[test]
fn tiny_keep_only_p_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("info.parquet");
    write_rows(&f, &tiny_rows(), (1, 2));
    let a = read_analyze(&f, &params(Metric::P, InfoMode::KeepOnly));
    assert_eq!(a.groups.len(), 2); // task t and pooled
    let g = a.group("m", "t").unwrap();
    assert_eq!(g.n_samples, 2);
    assert_eq!(g.layers.len(), 1);
    let l = &g.layers[0];
    assert_eq!(l.layer, 3);
    assert_eq!(l.n_samples, 2);
    assert!(close(l.mean, 0.2, 1e-12), "{}", l.mean);
    assert!(close(g.window_means[[0, 0]], 0.2, 1e-12));
    assert!(close(g.window_means[[0, 1]], 0.2, 1e-12));
    // sd([0.3, 0.1]) = 0.1414.., / sqrt 2 = 0.1
    assert!(close(l.stderr, 0.1, 1e-12), "{}", l.stderr);
    assert!(l.std_windows.abs() < 1e-12);
    assert!(l.cv.abs() < 1e-10);
    assert!(l.gini.abs() < 1e-12);
    assert!(close(l.entropy_norm, 1.0, 1e-12));
    assert!(l.max_minus_min.abs() < 1e-12);
    // bootstrap means of two values lie in {0.1, 0.2, 0.3}
    assert!(l.ci_low >= 0.1 - 1e-12 && l.ci_high <= 0.3 + 1e-12 && l.ci_low <= l.ci_high);
    assert_eq!(a.grid.rows, 1);
    assert_eq!(a.grid.cols, 2);
    assert_eq!(a.grid.window_size, Some(2));
}

#[test]
fn tiny_leave_out_and_kl_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("info.parquet");
    write_rows(&f, &tiny_rows(), (1, 2));
    // leave-out p: a: 0.8-0.4=0.4, 0.8-0.6=0.2; b: 0.6-0.6=0, 0.6-0.6=0
    let a = read_analyze(&f, &params(Metric::P, InfoMode::LeaveOut));
    let g = a.group("m", "t").unwrap();
    assert!(close(g.window_means[[0, 0]], 0.2, 1e-12));
    assert!(close(g.window_means[[0, 1]], 0.1, 1e-12));
    let l = &g.layers[0];
    assert!(close(l.mean, 0.15, 1e-12));
    // Ī = [0.2, 0.1]: max-min 0.1, std 0.05, cv 0.05/0.15, entropy of (2/3, 1/3), gini = |0.1|*2/(2*4*0.15)
    assert!(close(l.max_minus_min, 0.1, 1e-12));
    assert!(close(l.std_windows, 0.05, 1e-12));
    assert!(close(l.cv, 1.0 / 3.0, 1e-12));
    let h = -(2.0f64 / 3.0 * (2.0f64 / 3.0).ln() + 1.0 / 3.0 * (1.0f64 / 3.0).ln()) / 2f64.ln();
    assert!(close(l.entropy_norm, h, 1e-12));
    assert!(close(l.gini, 0.2 / (8.0 * 0.15), 1e-12));
    // keep-only kl: text 1.0 - [0.25, 0.75] for both samples -> [0.75, 0.25]
    let a = read_analyze(&f, &params(Metric::Kl, InfoMode::KeepOnly));
    let g = a.group("m", "t").unwrap();
    assert!(close(g.window_means[[0, 0]], 0.75, 1e-12));
    assert!(close(g.window_means[[0, 1]], 0.25, 1e-12));
    // leave-out kl: KL_{-w}: a [0.5, 0.1], b [0.5, 0.1]
    let a = read_analyze(&f, &params(Metric::Kl, InfoMode::LeaveOut));
    let g = a.group("m", "t").unwrap();
    assert!(close(g.window_means[[0, 0]], 0.5, 1e-12));
    assert!(close(g.window_means[[0, 1]], 0.1, 1e-12));
    assert!(close(g.layers[0].mean, 0.3, 1e-12));
    // keep-only logp: a: ln .5 - ln .1, ln .3 - ln .1; b: ln .2 - ln .2, ln .4 - ln .2
    let a = read_analyze(&f, &params(Metric::Logp, InfoMode::KeepOnly));
    let g = a.group("m", "t").unwrap();
    assert!(close(
        g.window_means[[0, 0]],
        (5f64.ln() + 0.0) / 2.0,
        1e-12
    ));
    assert!(close(
        g.window_means[[0, 1]],
        (3f64.ln() + 2f64.ln()) / 2.0,
        1e-12
    ));
}

#[test]
fn matches_naive_oracle_all_metrics_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gen(0x1234_5678_9abc_def1);
    let layers = [0, 2, 3, 7];
    let rows = random_rows(
        &mut g,
        &["m1", "m2"],
        &["count", "color"],
        5,
        &layers,
        (2, 3),
    );
    // split into two part files plus a temporary file that must be skipped
    let half = rows.len() / 2;
    write_rows(&dir.path().join("part-000.parquet"), &rows[..half], (2, 3));
    write_rows(&dir.path().join("part-001.parquet"), &rows[half..], (2, 3));
    std::fs::write(dir.path().join(".part-002.parquet.tmp9"), b"junk").unwrap();
    let table = read_info_rows(dir.path()).unwrap();
    assert_eq!(table.len(), rows.len());
    assert_eq!(table.files.len(), 2);
    for metric in Metric::ALL {
        for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
            let a = analyze(&table, &params(metric, mode)).unwrap();
            assert_eq!(a.groups.len(), 6);
            for grp in &a.groups {
                let task = (!grp.pooled).then_some(grp.task.as_str());
                assert_eq!(grp.n_samples, if grp.pooled { 10 } else { 5 });
                let got: Vec<i32> = grp.layers.iter().map(|l| l.layer).collect();
                assert_eq!(got, layers);
                for (li, l) in grp.layers.iter().enumerate() {
                    let o = oracle(
                        &rows,
                        &grp.model,
                        task,
                        l.layer,
                        metric.column(),
                        mode.as_str(),
                        6,
                    );
                    let ctx = format!("{metric} {mode} {} {} K={}", grp.model, grp.task, l.layer);
                    assert_eq!(l.n_samples, o.n, "{ctx}");
                    assert!(close(l.mean, o.mean, 1e-12), "{ctx}");
                    assert!(close(l.stderr, o.stderr, 1e-12), "{ctx}");
                    assert!(close(l.std_windows, o.std_windows, 1e-12), "{ctx}");
                    assert!(close(l.max_minus_min, o.max_minus_min, 1e-12), "{ctx}");
                    match o.gini {
                        Some(x) => assert!(close(l.gini, x, 1e-12), "{ctx}"),
                        None => assert!(l.gini.is_nan(), "{ctx}"),
                    }
                    match o.entropy {
                        Some(x) => assert!(close(l.entropy_norm, x, 1e-12), "{ctx}"),
                        None => assert!(l.entropy_norm.is_nan(), "{ctx}"),
                    }
                    for w in 0..6 {
                        assert!(
                            close(grp.window_means[[li, w]], o.window_means[w], 1e-12),
                            "{ctx}"
                        );
                    }
                    assert!(
                        l.ci_low <= l.mean + 1e-12 && l.mean <= l.ci_high + 1e-12,
                        "{ctx}"
                    );
                }
            }
        }
    }
}

#[test]
fn missing_windows_and_baselines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = tiny_rows();
    // drop sample b's window 1 keep-only row, and add sample c with windows but no text_only
    rows.retain(|r| !(r.sample == "b" && r.window == 1 && r.mode == "keep-only"));
    rows.push(
        Row::new("m", "t", "c", 3, "window")
            .win(0, 2, "keep-only")
            .vals(0.9, 0.0),
    );
    let f = dir.path().join("x.parquet");
    write_rows(&f, &rows, (1, 2));
    let a = read_analyze(&f, &params(Metric::P, InfoMode::KeepOnly));
    let g = a.group("m", "t").unwrap();
    let l = &g.layers[0];
    // a: I_a = 0.3 (windows 0.4, 0.2); b: only window 0 -> I_b = 0.0; c: no baseline -> skipped
    assert_eq!(l.n_samples, 2);
    assert!(close(l.mean, 0.15, 1e-12));
    assert!(close(g.window_means[[0, 0]], 0.2, 1e-12));
    assert!(close(g.window_means[[0, 1]], 0.2, 1e-12));
    assert_eq!(a.input.window_values_without_baseline, 1);
}

#[test]
fn duplicate_rows_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rows = tiny_rows();
    write_rows(&dir.path().join("a.parquet"), &rows, (1, 2));
    write_rows(&dir.path().join("b.parquet"), &rows[..3], (1, 2));
    let t = read_info_rows(dir.path()).unwrap();
    let e = analyze(&t, &params(Metric::P, InfoMode::KeepOnly))
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate"), "{e}");
    assert!(e.contains("sample a"), "{e}");
}

/// Rows with information level `levels[K]` at layer K: per-sample values level ± 0.001 (an even
/// number of samples, so the mean is exactly the level and the spread is symmetric).
fn level_rows(levels: &[f64]) -> Vec<Row> {
    let mut rows = vec![];
    for s in 0..20 {
        let sid = format!("s{s}");
        let jitter = if s % 2 == 0 { 0.001 } else { -0.001 };
        for (k, &lv) in levels.iter().enumerate() {
            rows.push(Row::new("m", "t", &sid, k as i32, "text_only").vals(0.1, 0.0));
            for w in 0..4 {
                rows.push(
                    Row::new("m", "t", &sid, k as i32, "window")
                        .win(w, 2, "keep-only")
                        .vals(0.1 + lv + jitter, 0.0),
                );
            }
        }
    }
    rows
}

fn horizon_of(levels: &[f64]) -> HorizonResult {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("h.parquet");
    write_rows(&f, &level_rows(levels), (2, 2));
    let a = read_analyze(&f, &params(Metric::P, InfoMode::KeepOnly));
    a.group("m", "t").unwrap().horizon.clone()
}

#[test]
fn horizon_after_layer_five() {
    let h = horizon_of(&[0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(h.horizon, Some(5));
    assert_eq!(h.description, "layer 5");
    assert!(close(h.threshold_value, 0.025, 1e-9));
    assert_eq!(h.peak_layer, Some(0));
}

#[test]
fn horizon_never_vanishing() {
    let h = horizon_of(&[0.3, 0.2, 0.1, 0.1, 0.1, 0.1]);
    assert_eq!(h.horizon, None);
    assert_eq!(h.description, NO_HORIZON);
}

#[test]
fn horizon_dip_then_rise() {
    let h = horizon_of(&[0.5, 0.3, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0]);
    assert_eq!(h.horizon, Some(5));
}

#[test]
fn find_horizon_threshold_and_ci_rules() {
    // (layer, mean, ci_low, ci_high), unsorted on purpose
    let ls = [
        (3, 0.01, -0.01, 0.03),
        (0, 1.0, 0.9, 1.1),
        (1, 0.5, 0.4, 0.6),
        (2, 0.02, 0.01, 0.03), // small but CI excludes 0
    ];
    let h = find_horizon(&ls, Threshold::Relative(0.05), true);
    assert_eq!(h.horizon, Some(3));
    let h = find_horizon(&ls, Threshold::Relative(0.05), false);
    assert_eq!(h.horizon, Some(2));
    let h = find_horizon(&ls, Threshold::Absolute(0.6), false);
    assert_eq!(h.horizon, Some(1));
    assert_eq!(h.threshold_value, 0.6);
    let h = find_horizon(&ls, Threshold::Absolute(0.001), false);
    assert_eq!(h.horizon, None);
    assert_eq!(find_horizon(&[], Threshold::default(), true).horizon, None);
}

#[test]
fn pooled_group_pools_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = level_rows(&[0.4, 0.0, 0.0]);
    for r in level_rows(&[0.2, 0.2, 0.0]) {
        let mut r = r;
        r.task = "u".into();
        r.sample = format!("u-{}", r.sample);
        rows.push(r);
    }
    let f = dir.path().join("p.parquet");
    write_rows(&f, &rows, (2, 2));
    let a = read_analyze(&f, &params(Metric::P, InfoMode::KeepOnly));
    assert_eq!(a.group("m", "t").unwrap().horizon.horizon, Some(1));
    assert_eq!(a.group("m", "u").unwrap().horizon.horizon, Some(2));
    let p = a.group("m", POOLED_TASK).unwrap();
    assert_eq!(p.n_samples, 40);
    assert!(close(p.layers[0].mean, 0.3, 1e-12));
    assert!(close(p.layers[1].mean, 0.1, 1e-12));
    assert_eq!(p.horizon.horizon, Some(2));
}

#[test]
fn bootstrap_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gen(77);
    let rows = random_rows(&mut g, &["m"], &["a", "b"], 9, &[1, 4], (2, 2));
    let f = dir.path().join("r.parquet");
    write_rows(&f, &rows, (2, 2));
    let t = read_info_rows(&f).unwrap();
    let p = params(Metric::P, InfoMode::KeepOnly);
    let a1 = analyze(&t, &p).unwrap();
    let a2 = analyze(&t, &p).unwrap();
    assert_eq!(a1, a2);
    let a3 = analyze(
        &t,
        &AnalysisParams {
            seed: 1,
            ..p.clone()
        },
    )
    .unwrap();
    let ci = |a: &Analysis| -> Vec<(f64, f64)> {
        a.groups
            .iter()
            .flat_map(|g| g.layers.iter().map(|l| (l.ci_low, l.ci_high)))
            .collect()
    };
    assert_ne!(ci(&a1), ci(&a3));
    // the seed of one group does not depend on which other groups exist
    let only_a: Vec<Row> = rows.iter().filter(|r| r.task == "a").cloned().collect();
    let f2 = dir.path().join("a.parquet");
    write_rows(&f2, &only_a, (2, 2));
    let a4 = read_analyze(&f2, &p);
    assert_eq!(
        a4.group("m", "a").unwrap().layers,
        a1.group("m", "a").unwrap().layers
    );
}

#[test]
fn bootstrap_ci_covers_the_true_mean_about_95_percent() {
    let mut g = Gen(4242);
    let (mu, reps) = (0.05, 300);
    let mut covered = 0;
    for r in 0..reps {
        let x: Vec<f64> = (0..40).map(|_| mu + 0.1 * g.normal()).collect();
        let (lo, hi) = stats::bootstrap_mean_ci(&x, 1000, 0.95, r as u64);
        if lo <= mu && mu <= hi {
            covered += 1;
        }
    }
    let rate = covered as f64 / reps as f64;
    assert!((0.89..=0.99).contains(&rate), "coverage {rate}");
}

#[test]
fn stats_against_hand_values() {
    assert_eq!(stats::gini_clipped(&[0.0, 0.0, 1.0, 0.0]), Some(0.75));
    assert_eq!(stats::gini_clipped(&[2.0, 2.0]), Some(0.0));
    assert_eq!(stats::gini_clipped(&[-1.0, 0.0]), None);
    // negative values count as zero
    assert_eq!(stats::gini_clipped(&[-5.0, 1.0]), Some(0.5));
    assert!(close(
        stats::entropy_norm_clipped(&[1.0, 1.0, 1.0]).unwrap(),
        1.0,
        1e-15
    ));
    assert_eq!(stats::entropy_norm_clipped(&[0.0, 3.0, -1.0]), Some(0.0));
    assert_eq!(stats::percentile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
    assert_eq!(stats::percentile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.0), 1.0);
    assert!(close(stats::sample_std(&[1.0, 3.0]), 2f64.sqrt(), 1e-15));
    assert_eq!(stats::population_std(&[1.0, 3.0]), 1.0);
    let c = stats::bootstrap_mean_ci(&[5.0], 100, 0.95, 3);
    assert_eq!(c, (5.0, 5.0));
}

#[test]
fn target_and_mode_selection() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = tiny_rows();
    // greedy rows with other values must not leak into gt
    for r in tiny_rows() {
        let mut r = r;
        r.target = "greedy";
        r.p = 0.5;
        rows.push(r);
    }
    let f = dir.path().join("t.parquet");
    write_rows(&f, &rows, (1, 2));
    let a = read_analyze(&f, &params(Metric::P, InfoMode::KeepOnly));
    assert!(close(a.group("m", "t").unwrap().layers[0].mean, 0.2, 1e-12));
    assert_eq!(a.input.rows_other_target, 12);
    assert_eq!(a.input.rows_other_mode, 4);
    let g = read_analyze(
        &f,
        &AnalysisParams {
            target: "greedy".into(),
            ..params(Metric::P, InfoMode::KeepOnly)
        },
    );
    assert!(g.group("m", "t").unwrap().layers[0].mean.abs() < 1e-12);
    let t = read_info_rows(&f).unwrap();
    let e = analyze(
        &t,
        &AnalysisParams {
            target: "nope".into(),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("target `nope`") && e.contains("gt"), "{e}");
}

/// No information anywhere: every layer vanishes (ε = 5% of 0 = 0 and |m_K| = 0), so the horizon is
/// the first measured layer.
#[test]
fn horizon_when_all_information_is_zero() {
    let h = horizon_of(&[0.0, 0.0, 0.0, 0.0]);
    assert_eq!(h.threshold_value, 0.0);
    assert_eq!(h.horizon, Some(0));
}

/// A layer with no finite mean is left out: it neither breaks the vanishing run after it nor counts
/// as informative; the horizon is a measured layer.
#[test]
fn horizon_skips_a_nan_layer() {
    let r = find_horizon(
        &[
            (0, 0.4, 0.3, 0.5),
            (1, 0.2, 0.1, 0.3),
            (2, 0.0, -0.01, 0.01),
            (3, f64::NAN, f64::NAN, f64::NAN),
            (4, 0.001, -0.01, 0.01),
        ],
        Threshold::Relative(0.05),
        true,
    );
    assert_eq!(r.horizon, Some(2));
    assert_eq!(
        r.vanishing.iter().map(|v| v.0).collect::<Vec<_>>(),
        [0, 1, 2, 4]
    );
    // A NaN last layer does not make a horizon either.
    let r = find_horizon(
        &[
            (0, 0.4, 0.3, 0.5),
            (1, 0.2, 0.1, 0.3),
            (2, f64::NAN, 0.0, 0.0),
        ],
        Threshold::Relative(0.05),
        true,
    );
    assert_eq!(r.horizon, None);
}

/// Layers measured with gaps (1, 4, 8, 16): the horizon is the first measured layer of the final
/// vanishing run, not a layer in between.
#[test]
fn horizon_with_gaps_between_measured_layers() {
    let r = find_horizon(
        &[
            (1, 0.3, 0.2, 0.4),
            (4, 0.1, 0.05, 0.15),
            (8, 0.002, -0.01, 0.01),
            (16, 0.0, -0.01, 0.01),
        ],
        Threshold::Relative(0.05),
        true,
    );
    assert_eq!(r.horizon, Some(8));
    assert_eq!(r.peak_layer, Some(1));
}

/// Negative means count by their magnitude: a layer at −0.2 is informative (a window that lowers
/// p(y) carries information too), and ε comes from the largest |m_K|.
#[test]
fn horizon_with_negative_means() {
    let r = find_horizon(
        &[
            (0, 0.1, 0.05, 0.15),
            (1, -0.4, -0.5, -0.3),
            (2, -0.2, -0.3, -0.1),
            (3, -0.01, -0.03, 0.01),
            (4, 0.005, -0.01, 0.02),
        ],
        Threshold::Relative(0.05),
        true,
    );
    assert!(close(r.threshold_value, 0.02, 1e-12));
    assert_eq!(r.peak_layer, Some(1));
    assert_eq!(r.horizon, Some(3));
}
