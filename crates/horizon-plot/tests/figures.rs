use horizon_analysis::*;
use horizon_plot::*;
use ndarray::Array2;
use std::path::Path;

/// Synthetic results: information decays with depth and concentrates in the grid centre; task
/// "count" vanishes from layer 8 on, task "color" never vanishes, one layer (5) is missing.
fn synthetic() -> Analysis {
    let (gr, gc) = (6usize, 6usize);
    let grid = WindowLayout::row_major(gr, gc);
    let layers: Vec<i32> = (0..16).filter(|&k| k != 5).collect();
    let mut groups = vec![];
    for model in ["llava-1.5-7b", "qwen2.5-vl-3b"] {
        for (ti, task) in ["color", "count", POOLED_TASK].iter().enumerate() {
            let mut ls = vec![];
            let mut wm = Array2::<f64>::zeros((layers.len(), gr * gc));
            for (li, &k) in layers.iter().enumerate() {
                let level = match ti {
                    0 => 0.2 * (-(k as f64) / 6.0).exp() + 0.01,
                    1 if k >= 8 => 0.0005 * if k % 2 == 0 { 1.0 } else { -1.0 },
                    1 => 0.3 * (1.0 - k as f64 / 8.0),
                    _ => 0.15 * (-(k as f64) / 5.0).exp(),
                };
                for w in 0..gr * gc {
                    let (r, c) = ((w / gc) as f64 - 2.5, (w % gc) as f64 - 2.5);
                    wm[[li, w]] =
                        level * (1.5 - (r * r + c * c) / 12.5) + if w == 7 { -0.02 } else { 0.0 };
                }
                if model == "qwen2.5-vl-3b" && li == 3 {
                    wm[[li, 0]] = f64::NAN; // a missing window
                }
                let spread = 0.02 + level.abs() * 0.2;
                ls.push(LayerStats {
                    layer: k,
                    n_samples: 50,
                    mean: level,
                    ci_low: level - spread,
                    ci_high: level + spread,
                    stderr: spread / 2.0,
                    std_windows: 0.1,
                    cv: 0.3,
                    gini: 0.2,
                    entropy_norm: 0.9,
                    max_minus_min: 0.3,
                    vanishes: false,
                });
            }
            let horizon = find_horizon(
                &ls.iter()
                    .map(|l| (l.layer, l.mean, l.ci_low, l.ci_high))
                    .collect::<Vec<_>>(),
                Threshold::Relative(0.05),
                true,
            );
            groups.push(GroupResult {
                model: model.into(),
                task: task.to_string(),
                pooled: ti == 2,
                n_samples: if ti == 2 { 100 } else { 50 },
                layers: ls,
                window_means: wm,
                horizon,
                samples: SampleLevels::default(),
                // "count": H = 8 with interval 7–9; "color": no horizon, some resamples from 12 on;
                // pooled: no bootstrap (drawn as before the interval existed)
                horizon_bootstrap: match ti {
                    0 => HorizonBootstrap {
                        resamples: 100,
                        confidence: 0.95,
                        low: Some(12),
                        high: None,
                        p_no_horizon: 0.9,
                        distribution: vec![],
                    },
                    1 => HorizonBootstrap {
                        resamples: 100,
                        confidence: 0.95,
                        low: Some(7),
                        high: Some(9),
                        p_no_horizon: 0.0,
                        distribution: vec![],
                    },
                    _ => HorizonBootstrap::default(),
                },
            });
        }
    }
    Analysis {
        params: AnalysisParams::default(),
        grid,
        groups,
        input: InputSummary::default(),
        comparisons: vec![],
        sensitivity: vec![],
    }
}

fn check_png(path: &Path, min_w: u32, min_h: u32) {
    let img = image::open(path).unwrap().to_rgb8();
    assert!(
        img.width() >= min_w && img.height() >= min_h,
        "{}x{}",
        img.width(),
        img.height()
    );
    let first = *img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| **p != first).count();
    assert!(
        differing > (img.width() * img.height() / 50) as usize,
        "blank image"
    );
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 20, "only {} colours", colours.len());
}

fn check_svg(path: &Path, labels: &[&str]) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    for l in labels {
        assert!(s.contains(l), "SVG lacks {l:?}");
    }
}

#[test]
fn window_heatmaps_png_and_svg() {
    let a = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("maps.png");
    plot_window_heatmaps(&a, "llava-1.5-7b", "count", &[0, 2, 4, 8, 12, 15], &png).unwrap();
    check_png(&png, 700, 500);
    let svg = dir.path().join("maps.svg");
    plot_window_heatmaps(&a, "llava-1.5-7b", "count", &[0, 2, 4, 8, 12, 15], &svg).unwrap();
    check_svg(
        &svg,
        &[
            "layer K = 0",
            "layer K = 15",
            "window column",
            "window row",
            "count",
            "information",
        ],
    );
    // all layers; a pooled group
    let all = dir.path().join("all.png");
    plot_window_heatmaps(&a, "qwen2.5-vl-3b", POOLED_TASK, &[], &all).unwrap();
    check_png(&all, 700, 700);
    let e = plot_window_heatmaps(&a, "llava-1.5-7b", "count", &[5], &png).unwrap_err();
    assert!(e.to_string().contains("layer 5 was not measured"), "{e}");
    assert!(plot_window_heatmaps(&a, "nope", "count", &[], &png).is_err());
    assert!(
        plot_window_heatmaps(&a, "llava-1.5-7b", "count", &[], &dir.path().join("x.jpg")).is_err()
    );
    // no temporary files left
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().starts_with('.')),
        "{left:?}"
    );
}

#[test]
fn information_vs_layer_png_and_svg() {
    let a = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("curves.png");
    plot_information_vs_layer(&a, &CurveOptions::default(), &png).unwrap();
    check_png(&png, 1000, 600);
    let svg = dir.path().join("curves.svg");
    plot_information_vs_layer(&a, &CurveOptions::default(), &svg).unwrap();
    check_svg(
        &svg,
        &[
            "Information versus layer",
            "cut layer K",
            "H = 8 (95%: 7–9)",
            "no H (95%: 12–none)",
            "no horizon",
            "llava-1.5-7b / count",
            "all tasks",
            "bootstrap CI",
        ],
    );
    let one = CurveOptions {
        models: vec!["qwen2.5-vl-3b".into()],
        pooled: false,
        ..Default::default()
    };
    let svg2 = dir.path().join("one.svg");
    plot_information_vs_layer(&a, &one, &svg2).unwrap();
    let s = std::fs::read_to_string(&svg2).unwrap();
    assert!(!s.contains("llava"));
    let none = CurveOptions {
        models: vec!["nope".into()],
        ..Default::default()
    };
    assert!(plot_information_vs_layer(&a, &none, &svg2).is_err());
}

#[test]
fn layer_window_heatmap_png_and_svg() {
    let a = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("lw.png");
    plot_layer_window_heatmap(&a, "llava-1.5-7b", "count", &png).unwrap();
    check_png(&png, 1000, 600);
    let svg = dir.path().join("lw.svg");
    plot_layer_window_heatmap(&a, "llava-1.5-7b", "count", &svg).unwrap();
    check_svg(
        &svg,
        &[
            "horizon H = 8",
            "window index",
            "cut layer K",
            "information",
        ],
    );
}

/// The three figure kinds of one group render to PNGs that decode, have the size asked for and are
/// not blank; written to $HORIZON_PLOT_DEMO_DIR when set (for looking at them), else to a temporary
/// directory.
#[test]
fn figures_render_to_non_blank_pngs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("HORIZON_PLOT_DEMO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let a = synthetic();
    let d = dir.as_path();
    plot_window_heatmaps(
        &a,
        "llava-1.5-7b",
        "count",
        &[0, 2, 4, 8, 12, 15],
        &d.join("maps.png"),
    )
    .unwrap();
    plot_information_vs_layer(&a, &CurveOptions::default(), &d.join("curves.png")).unwrap();
    plot_layer_window_heatmap(&a, "llava-1.5-7b", "count", &d.join("lw.png")).unwrap();
    for name in ["maps.png", "curves.png", "lw.png"] {
        let img = image::open(d.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_rgb8();
        assert!(
            img.width() >= 200 && img.height() >= 150,
            "{name}: {}x{}",
            img.width(),
            img.height()
        );
        let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 20, "{name}: only {} colours", colours.len());
    }
}

/// 64-bit FNV-1a of a file's bytes.
fn fnv1a_file(path: &Path) -> u64 {
    std::fs::read(path)
        .unwrap()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
}

/// Every figure kind of the synthetic results, PNG and SVG, hashed: a refactoring of the drawing
/// code that changes no pixel and no SVG byte keeps these hashes (recorded from the renderer before
/// the crate was split into one module per figure; the curves' since the horizon's bootstrap
/// interval is drawn). A deliberate change of a figure updates its hash.
#[test]
fn figures_are_byte_identical_to_recorded_ones() {
    let a = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let one_model = CurveOptions {
        models: vec!["qwen2.5-vl-3b".into()],
        ..Default::default()
    };
    let pooled = CurveOptions {
        tasks: false,
        bands: false,
        ..Default::default()
    };
    let mut got = Vec::new();
    for ext in ["png", "svg"] {
        let p = |name: &str| d.join(format!("{name}.{ext}"));
        plot_window_heatmaps(
            &a,
            "llava-1.5-7b",
            "count",
            &[0, 2, 4, 8, 12, 15],
            &p("maps"),
        )
        .unwrap();
        plot_window_heatmaps(&a, "qwen2.5-vl-3b", POOLED_TASK, &[], &p("maps_all")).unwrap();
        plot_information_vs_layer(&a, &CurveOptions::default(), &p("curves")).unwrap();
        plot_information_vs_layer(&a, &one_model, &p("curves_one")).unwrap();
        plot_information_vs_layer(&a, &pooled, &p("curves_pooled")).unwrap();
        plot_layer_window_heatmap(&a, "llava-1.5-7b", "count", &p("lw")).unwrap();
        plot_layer_window_heatmap(&a, "qwen2.5-vl-3b", "color", &p("lw_none")).unwrap();
        for name in [
            "maps",
            "maps_all",
            "curves",
            "curves_one",
            "curves_pooled",
            "lw",
            "lw_none",
        ] {
            got.push((format!("{name}.{ext}"), fnv1a_file(&p(name))));
        }
    }
    let expected: &[(&str, u64)] = &[
        ("maps.png", 0xe9f06aafe6de120d),
        ("maps_all.png", 0xe64a79219b133141),
        ("curves.png", 0x14ed106d36c5f823),
        ("curves_one.png", 0x564a74dc48abfb3f),
        ("curves_pooled.png", 0x8a60956d887f902a),
        ("lw.png", 0x4c6406d2b92cb45f),
        ("lw_none.png", 0x40605fccd8a807de),
        ("maps.svg", 0xae89239d8ae316b3),
        ("maps_all.svg", 0xfea98a57179445a2),
        ("curves.svg", 0x4c30ebfd76806ec0),
        ("curves_one.svg", 0xf1f0226a1f1a683a),
        ("curves_pooled.svg", 0xb051c9bd44f7f4bd),
        ("lw.svg", 0x37bc53056195e61d),
        ("lw_none.svg", 0x57afd8b99f54078f),
    ];
    let listing = got
        .iter()
        .map(|(n, h)| format!("(\"{n}\", 0x{h:016x}),"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(got.len(), expected.len(), "hashes:\n{listing}");
    for ((n, h), (en, eh)) in got.iter().zip(expected) {
        assert_eq!((n.as_str(), *h), (*en, *eh), "hashes:\n{listing}");
    }
}
