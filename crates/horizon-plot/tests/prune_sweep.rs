use horizon_analysis::{CurvePoint, SweepCurve};
use horizon_plot::*;

fn curve(method: &str, points: &[(usize, f64, f64, f64, usize)]) -> SweepCurve {
    SweepCurve {
        method: method.into(),
        points: points
            .iter()
            .map(|&(layer, mean, min, max, runs)| CurvePoint {
                layer,
                mean_relative: mean,
                std_relative: (max - min) / 2.0,
                min_relative: min,
                max_relative: max,
                runs,
            })
            .collect(),
    }
}

/// Random with a seed band, two methods, one of them missing layers 4 and 12.
fn curves() -> Vec<SweepCurve> {
    let layers = [0usize, 2, 4, 8, 12, 16, 24, 31];
    let rise = |k: usize| 100.0 - 60.0 * (-(k as f64) / 6.0).exp();
    let random = layers
        .iter()
        .map(|&k| (k, rise(k) - 3.0, rise(k) - 8.0, rise(k) + 1.0, 3))
        .collect::<Vec<_>>();
    let fastv = layers
        .iter()
        .filter(|&&k| k != 4 && k != 12)
        .map(|&k| (k, rise(k) - 6.0, rise(k) - 6.0, rise(k) - 6.0, 1))
        .collect::<Vec<_>>();
    let divprune = layers
        .iter()
        .map(|&k| (k, rise(k) + 2.0, rise(k) + 2.0, rise(k) + 2.0, 1))
        .collect::<Vec<_>>();
    vec![
        curve("fastv", &fastv),
        curve("random", &random),
        curve("divprune", &divprune),
    ]
}

fn opts() -> PruneSweepOptions {
    PruneSweepOptions {
        title: "llava-1.5-7b: pruning at layer K".into(),
        random_method: "random".into(),
        horizon_layer: Some(16.0),
        num_layers: Some(32),
        keep_label: "keep 50%".into(),
    }
}

fn check_png(path: &std::path::Path) {
    let img = image::open(path).unwrap().to_rgb8();
    assert!(img.width() >= 1000 && img.height() >= 600);
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 20, "only {} colours", colours.len());
}

/// Written to $HORIZON_PLOT_DEMO_DIR when set (for looking at them), else to a temporary directory.
#[test]
fn prune_sweep_png_and_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("HORIZON_PLOT_DEMO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let png = dir.join("sweep.png");
    plot_prune_sweep(&curves(), &opts(), &png).unwrap();
    check_png(&png);
    let svg = dir.join("sweep.svg");
    plot_prune_sweep(&curves(), &opts(), &svg).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    for l in [
        "fastv",
        "divprune",
        "random (mean, min–max over 3 seeds)",
        "horizon",
        "pruning layer K",
        "relative score (%)",
        "keep 50%",
        "unpruned (100%)",
        "llava-1.5-7b: pruning at layer K",
    ] {
        assert!(s.contains(l), "SVG lacks {l:?}");
    }
    // no horizon given: no horizon line or label
    let no_h = PruneSweepOptions {
        horizon_layer: None,
        ..opts()
    };
    let svg = dir.join("sweep_no_horizon.svg");
    plot_prune_sweep(&curves(), &no_h, &svg).unwrap();
    assert!(!std::fs::read_to_string(&svg).unwrap().contains("horizon"));
}

#[test]
fn prune_sweep_single_layer_and_single_method() {
    let dir = tempfile::tempdir().unwrap();
    // one layer: the random spread becomes an error bar
    let one_layer = vec![
        curve("random", &[(8, 80.0, 75.0, 86.0, 5)]),
        curve("fastv", &[(8, 90.0, 90.0, 90.0, 1)]),
    ];
    let o = PruneSweepOptions {
        num_layers: None,
        horizon_layer: Some(12.5),
        ..opts()
    };
    plot_prune_sweep(&one_layer, &o, &dir.path().join("one.png")).unwrap();
    let svg = dir.path().join("one.svg");
    plot_prune_sweep(&one_layer, &o, &svg).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains("over 5 seeds") && s.contains("horizon K = 12.5"));
    plot_prune_sweep(&one_layer, &o, &dir.path().join("one.png")).unwrap();
    // one method, no random curve, defaults
    let only = vec![curve(
        "divprune",
        &[(0, 40.0, 40.0, 40.0, 1), (3, 99.0, 99.0, 99.0, 1)],
    )];
    let svg = dir.path().join("only.svg");
    plot_prune_sweep(&only, &PruneSweepOptions::default(), &svg).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains("divprune") && !s.contains("seeds"));
}

#[test]
fn prune_sweep_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    let e = plot_prune_sweep(&[], &opts(), &path).unwrap_err();
    assert!(e.to_string().contains("empty.png"), "{e}");
    let no_points = vec![curve("random", &[])];
    let e = plot_prune_sweep(&no_points, &opts(), &path).unwrap_err();
    assert!(e.to_string().contains("empty.png"), "{e}");
    assert!(!path.exists());
    let e = plot_prune_sweep(&curves(), &opts(), &dir.path().join("x.jpg")).unwrap_err();
    assert!(e.to_string().contains("x.jpg"), "{e}");
}

/// 64-bit FNV-1a of a file's bytes.
fn fnv1a_file(path: &std::path::Path) -> u64 {
    std::fs::read(path)
        .unwrap()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
}

/// The sweep figure (seed band; one layer with an error bar), PNG and SVG, hashed: a refactoring
/// of the drawing code that changes no pixel and no SVG byte keeps these hashes (recorded before
/// the crate was split into one module per figure).
#[test]
fn prune_sweep_is_byte_identical_to_recorded_one() {
    let dir = tempfile::tempdir().unwrap();
    let one_layer = vec![
        curve("random", &[(8, 80.0, 75.0, 86.0, 5)]),
        curve("fastv", &[(8, 90.0, 90.0, 90.0, 1)]),
    ];
    let mut got = Vec::new();
    for ext in ["png", "svg"] {
        let p = |name: &str| dir.path().join(format!("{name}.{ext}"));
        plot_prune_sweep(&curves(), &opts(), &p("sweep")).unwrap();
        plot_prune_sweep(&one_layer, &opts(), &p("one")).unwrap();
        for name in ["sweep", "one"] {
            got.push((format!("{name}.{ext}"), fnv1a_file(&p(name))));
        }
    }
    let expected: &[(&str, u64)] = &[
        ("sweep.png", 0x171d314285495092),
        ("one.png", 0xe36e194327c4bc38),
        ("sweep.svg", 0x08054e7e30963c1f),
        ("one.svg", 0x5047d89233374d13),
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
