use horizon_analysis::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn score(method: &str, layer: usize, seed: Option<u64>, score: f64) -> SweepScore {
    SweepScore {
        method: method.into(),
        layer,
        seed,
        score,
    }
}

/// Three random seeds at layer 2 scoring 50, 60, 70 against 80 unpruned: relative 62.5, 75, 87.5
/// → mean 75 %, sample std 12.5 %, min 62.5 %, max 87.5 %.
#[test]
fn sweep_curves_hand_computed() {
    let scores = vec![
        score("fastv", 4, None, 72.0),
        score("random", 2, Some(0), 50.0),
        score("random", 2, Some(1), 60.0),
        score("fastv", 2, None, 40.0),
        score("random", 2, Some(2), 70.0),
        score("random", 0, Some(0), 20.0),
    ];
    let curves = sweep_curves(&scores, 80.0).unwrap();
    // methods in first-appearance order, layers ascending
    let names: Vec<&str> = curves.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(names, ["fastv", "random"]);
    let layers: Vec<usize> = curves[0].points.iter().map(|p| p.layer).collect();
    assert_eq!(layers, [2, 4]);
    let r = &curves[1];
    assert_eq!(r.points.iter().map(|p| p.layer).collect::<Vec<_>>(), [0, 2]);
    let p = r.point(2).unwrap();
    assert_eq!(p.runs, 3);
    assert!(close(p.mean_relative, 75.0), "{p:?}");
    assert!(close(p.std_relative, 12.5), "{p:?}");
    assert!(
        close(p.min_relative, 62.5) && close(p.max_relative, 87.5),
        "{p:?}"
    );
    // one run: std 0, min = max = mean
    let q = r.point(0).unwrap();
    assert_eq!(q.runs, 1);
    assert!(close(q.mean_relative, 25.0));
    assert_eq!(q.std_relative, 0.0);
    assert!(close(q.min_relative, 25.0) && close(q.max_relative, 25.0));
    let f = curves[0].point(4).unwrap();
    assert!(close(f.mean_relative, 90.0));

    // gaps: fastv − random where both exist (layer 2 only): 50 − 75 = −25 points
    let gaps = gap_to_random(&curves, "random");
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].0.as_str(), gaps[0].1), ("fastv", 2));
    assert!(close(gaps[0].2, -25.0), "{gaps:?}");
    assert!(gap_to_random(&curves, "nope").is_empty());

    // the curves round-trip through JSON
    let json = serde_json::to_string(&curves).unwrap();
    let back: Vec<SweepCurve> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, curves);
    assert!(sweep_curves(&[], 80.0).unwrap().is_empty());
}

#[test]
fn sweep_curves_errors() {
    let ok = vec![score("random", 1, Some(0), 50.0)];
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = sweep_curves(&ok, bad).unwrap_err().to_string();
        assert!(
            e.contains("unpruned score") && e.contains("must be positive"),
            "{e}"
        );
    }
    let nan = vec![
        score("random", 1, Some(0), 50.0),
        score("divprune", 7, None, f64::NAN),
    ];
    let e = sweep_curves(&nan, 80.0).unwrap_err().to_string();
    assert!(e.contains("divprune") && e.contains("layer 7"), "{e}");
    let inf = vec![score("random", 3, Some(4), f64::INFINITY)];
    let e = sweep_curves(&inf, 80.0).unwrap_err().to_string();
    assert!(
        e.contains("random") && e.contains("layer 3") && e.contains("seed 4"),
        "{e}"
    );
}

fn row(
    spec: &str,
    label: &str,
    t_eq: f64,
    score_mean: f64,
    score_std: f64,
    repeats: usize,
) -> BudgetRow {
    BudgetRow {
        spec: spec.into(),
        label: label.into(),
        t_eq,
        retained_from_layer0: t_eq,
        retained_final: t_eq / 2.0,
        score_mean,
        score_std,
        repeats,
    }
}

fn rows() -> Vec<BudgetRow> {
    vec![
        row("divprune@0:64", "divprune", 64.0, 50.0, 0.0, 1),
        row("divprune@0:192", "divprune", 192.0, 72.0, 0.0, 1),
        row(
            "divprune@0:284,random@20:38",
            "divprune+random",
            191.75,
            74.0,
            1.25,
            3,
        ),
        row(
            "divprune@0:96,random@20:24",
            "divprune+random",
            63.5,
            52.0,
            0.5,
            2,
        ),
    ]
}

/// 191.75 and 192 are one budget at 5 % tolerance, 64 and 63.5 another; budgets by descending
/// T_eq, rows in input order within a budget.
#[test]
fn table1_groups_budgets() {
    let md = table1_markdown(&rows(), 80.0, 0.05);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 2 + 1 + 4, "{md}");
    assert_eq!(
        lines[0],
        "| Budget (T_eq) | Spec | Method | T_eq | Retained from layer 0 | Retained at last layer | Score | Relative (%) |"
    );
    assert_eq!(lines[1], "|---|---|---|---|---|---|---|---|");
    assert_eq!(
        lines[2],
        "| all | — | unpruned | all | all | all | 80.00 | 100.0 |"
    );
    assert_eq!(
        lines[3],
        "| 192 | divprune@0:192 | divprune | 192 | 192 | 96 | 72.00 | 90.0 |"
    );
    assert_eq!(
        lines[4],
        "| 192 | divprune@0:284,random@20:38 | divprune+random | 191.75 | 191.75 | 95.88 | 74.00 ± 1.25 | 92.5 |"
    );
    assert_eq!(
        lines[5],
        "| 64 | divprune@0:64 | divprune | 64 | 64 | 32 | 50.00 | 62.5 |"
    );
    assert_eq!(
        lines[6],
        "| 64 | divprune@0:96,random@20:24 | divprune+random | 63.5 | 63.5 | 31.75 | 52.00 ± 0.50 | 65.0 |"
    );

    // a tight tolerance separates 191.75 from 192 (and 63.5 from 64)
    let md = table1_markdown(&rows(), 80.0, 0.001);
    let budgets: Vec<&str> = md
        .lines()
        .skip(3)
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(budgets, ["192", "191.75", "64", "63.5"], "{md}");

    // scores in fractions get four significant digits
    let md = table1_markdown(
        &[row("random@2:10", "random", 10.0, 0.4, 0.0, 1)],
        0.8,
        0.05,
    );
    assert!(
        md.contains("| 0.8000 | 100.0 |") && md.contains("| 0.4000 | 50.0 |"),
        "{md}"
    );
}

#[test]
fn table1_json_matches_markdown() {
    let v = table1_json(&rows(), 80.0, 0.05);
    assert_eq!(v["unpruned"]["score"], 80.0);
    assert_eq!(v["unpruned"]["relative"], 100.0);
    assert_eq!(v["budget_tolerance"], 0.05);
    let budgets = v["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    assert_eq!(budgets[0]["t_eq"], 192.0);
    assert_eq!(budgets[1]["t_eq"], 64.0);
    let first = budgets[0]["rows"].as_array().unwrap();
    let specs: Vec<&str> = first.iter().map(|r| r["spec"].as_str().unwrap()).collect();
    assert_eq!(specs, ["divprune@0:192", "divprune@0:284,random@20:38"]);
    assert_eq!(first[1]["repeats"], 3);
    assert_eq!(first[1]["score_std"], 1.25);
    assert_eq!(first[1]["relative"], 92.5);
    assert_eq!(budgets[1]["rows"].as_array().unwrap().len(), 2);
    // an unusable unpruned score leaves the relative values undefined
    let v = table1_json(&rows(), 0.0, 0.05);
    assert!(v["budgets"][0]["rows"][0]["relative"].is_null());
    assert!(table1_markdown(&rows(), 0.0, 0.05).contains("| 72.000 | — |"));
}
