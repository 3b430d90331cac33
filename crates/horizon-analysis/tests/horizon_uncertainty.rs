//! The horizon's bootstrap distribution, paired comparisons and the sensitivity table: against a
//! naive recomputation from the rows, and on hand-built rows whose horizon distribution is known.
mod common;

use common::*;
use horizon_analysis::uncertainty::{comparison_seed, horizon_seed};
use horizon_analysis::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

fn analyze_rows(rows: &[Row], p: &AnalysisParams) -> Analysis {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rows.parquet");
    write_rows(&f, rows, (2, 2));
    analyze(&read_info_rows(&f).unwrap(), p).unwrap()
}

/// Keep-only rows of one sample: text-only p = 0.1 at every layer, each of the 4 windows
/// p = 0.1 + level[K] (so I[K,w,s] = level[K]); kl mirrors p (KL_text = 1, KL_w = 1 − level).
fn sample_rows(model: &str, task: &str, sample: &str, levels: &[f64]) -> Vec<Row> {
    let mut rows = vec![Row::new(model, task, sample, -1, "full").vals(0.9, 0.0)];
    for (k, &lv) in levels.iter().enumerate() {
        rows.push(Row::new(model, task, sample, k as i32, "text_only").vals(0.1, 1.0));
        for w in 0..4 {
            rows.push(
                Row::new(model, task, sample, k as i32, "window")
                    .win(w, 2, "keep-only")
                    .vals(0.1 + lv, 1.0 - lv),
            );
        }
    }
    rows
}

/// Ten samples with information 0.5 at layers 0 and 1 and none at layer 2; at layer 3 only sample
/// 0 has information (0.5). With an absolute threshold 0.01 and no CI rule, a resample that draws
/// sample 0 (m*_3 ≥ 0.05) has no horizon and one that does not has H = 2:
/// P(no horizon) = 1 − 0.9¹⁰.
fn outlier_rows(model: &str, task: &str) -> Vec<Row> {
    (0..10)
        .flat_map(|s| {
            let last = if s == 0 { 0.5 } else { 0.0 };
            sample_rows(model, task, &format!("s{s}"), &[0.5, 0.5, 0.0, last])
        })
        .collect()
}

fn outlier_params(b: usize) -> AnalysisParams {
    AnalysisParams {
        bootstrap: b,
        threshold: Threshold::Absolute(0.01),
        require_ci_covers_zero: false,
        ..Default::default()
    }
}

#[test]
fn outlier_sample_gives_the_known_no_horizon_probability() {
    let b = 20_000;
    let a = analyze_rows(&outlier_rows("m", "t"), &outlier_params(b));
    let g = a.group("m", "t").unwrap();
    assert_eq!(g.horizon.horizon, None, "the full data draws sample 0");
    let hb = &g.horizon_bootstrap;
    assert_eq!(hb.resamples, b);
    let p = 1.0 - 0.9f64.powi(10);
    let se = (p * (1.0 - p) / b as f64).sqrt();
    assert!(
        (hb.p_no_horizon - p).abs() < 4.0 * se,
        "{} vs {p}",
        hb.p_no_horizon
    );
    // exactly two outcomes, ascending, "no horizon" last
    assert_eq!(hb.distribution.len(), 2, "{:?}", hb.distribution);
    assert_eq!(hb.distribution[0].horizon, Some(2));
    assert_eq!(hb.distribution[1].horizon, None);
    assert_eq!(hb.distribution[0].count + hb.distribution[1].count, b);
    assert_eq!(hb.distribution[1].fraction, hb.p_no_horizon);
    // 2.5 % and 97.5 % quantiles: P(H = 2) ≈ 0.35 lies on both sides of neither
    assert_eq!((hb.low, hb.high), (Some(2), None));
    assert_eq!(uncertainty::interval_text(hb), "layer 2 – no horizon");
}

#[test]
fn identical_samples_give_a_point_distribution() {
    let rows: Vec<Row> = (0..8)
        .flat_map(|s| sample_rows("m", "t", &format!("s{s}"), &[0.5, 0.3, 0.0, 0.0]))
        .collect();
    let a = analyze_rows(
        &rows,
        &AnalysisParams {
            bootstrap: 300,
            ..Default::default()
        },
    );
    for task in ["t", POOLED_TASK] {
        let g = a.group("m", task).unwrap();
        assert_eq!(g.horizon.horizon, Some(2));
        let hb = &g.horizon_bootstrap;
        assert_eq!(hb.distribution.len(), 1);
        assert_eq!(
            (hb.distribution[0].horizon, hb.distribution[0].count),
            (Some(2), 300)
        );
        assert_eq!((hb.low, hb.high, hb.p_no_horizon), (Some(2), Some(2), 0.0));
        assert_eq!(uncertainty::interval_text(hb), "layer 2");
    }
}

#[test]
fn joint_resamples_of_shared_samples_and_independent_tasks() {
    // Two models with identical rows on the same samples: every joint resample gives both the same
    // horizon. Task "x" (outlier) against task "y" (always H = 2) of one model: x is deeper exactly
    // when its resample has no horizon.
    let mut rows = Vec::new();
    for m in ["m1", "m2"] {
        rows.extend(outlier_rows(m, "x"));
        for s in 0..10 {
            rows.extend(sample_rows(m, "y", &format!("y{s}"), &[0.5, 0.5, 0.0, 0.0]));
        }
    }
    let b = 20_000;
    let a = analyze_rows(&rows, &outlier_params(b));
    let find = |kind: &str, a_: (&str, &str), b_: (&str, &str)| {
        a.comparisons
            .iter()
            .find(|c| {
                c.kind == kind
                    && (c.a.model.as_str(), c.a.task.as_str()) == a_
                    && (c.b.model.as_str(), c.b.task.as_str()) == b_
            })
            .unwrap_or_else(|| panic!("no comparison {kind} {a_:?} {b_:?}: {:?}", a.comparisons))
            .clone()
    };
    for task in ["x", "y", POOLED_TASK] {
        let c = find("models", ("m1", task), ("m2", task));
        assert_eq!(c.shared_samples, if task == POOLED_TASK { 20 } else { 10 });
        assert_eq!(
            (c.p_equal, c.p_a_deeper, c.p_b_deeper),
            (1.0, 0.0, 0.0),
            "{c:?}"
        );
    }
    let c = find("tasks", ("m1", "x"), ("m1", "y"));
    assert_eq!(c.shared_samples, 0);
    assert_eq!(c.resamples, b);
    let p = 1.0 - 0.9f64.powi(10);
    let se = (p * (1.0 - p) / b as f64).sqrt();
    assert!((c.p_a_deeper - p).abs() < 4.0 * se, "{c:?}");
    assert_eq!(c.p_b_deeper, 0.0);
    assert!((c.p_equal + c.p_a_deeper - 1.0).abs() < 1e-12);
    assert_eq!(c.p_both_no_horizon, 0.0);
    // 2 models x 1 task pair, 3 tasks (with pooled) x 1 model pair
    assert_eq!(a.comparisons.len(), 5);
}

/// Rows whose horizon is uncertain: per sample s an offset o_s ~ N(0, 0.05²), information
/// level[K] + o_s·[K < 4] + noise per window; level = 0.3·max(0, 1 − K/4). With a relative
/// threshold 0.2 (ε ≈ 0.06) layer 3 (level 0.075) sometimes vanishes.
fn noisy_rows(g: &mut Gen, model: &str, task: &str, n: usize, shared_ids: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in 0..n {
        let id = if shared_ids {
            format!("s{s}")
        } else {
            format!("{task}{s}")
        };
        let off = 0.05 * g.normal();
        rows.push(Row::new(model, task, &id, -1, "full").vals(0.9, 0.0));
        for k in 0..8 {
            let level = 0.3 * (1.0 - k as f64 / 4.0).max(0.0) + if k < 4 { off } else { 0.0 };
            rows.push(Row::new(model, task, &id, k, "text_only").vals(0.2, 1.0));
            for w in 0..4 {
                let v = level + 0.01 * g.normal();
                rows.push(
                    Row::new(model, task, &id, k, "window")
                        .win(w, 2, "keep-only")
                        .vals(0.2 + v, 1.0 - v),
                );
            }
        }
    }
    rows
}

/// The definitions, computed from the rows without the crate's arrays: per-sample levels from
/// nested maps, the full data's percentile CI per layer, the horizon rule written out.
struct Naive {
    /// sample id -> layer -> I_s
    levels: BTreeMap<String, BTreeMap<i32, f64>>,
    /// layer -> (m_K, ci_low, ci_high)
    ci: BTreeMap<i32, (f64, f64, f64)>,
}

impl Naive {
    fn new(rows: &[Row], model: &str, task: &str, order: &[String], p: &AnalysisParams) -> Naive {
        let mut text: BTreeMap<(String, i32), f64> = BTreeMap::new();
        let mut wins: BTreeMap<(String, i32), Vec<f64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.model == model && r.task == task) {
            match r.variant {
                "text_only" => {
                    text.insert((r.sample.clone(), r.layer), r.p);
                }
                "window" => wins
                    .entry((r.sample.clone(), r.layer))
                    .or_default()
                    .push(r.p),
                _ => {}
            }
        }
        let mut levels: BTreeMap<String, BTreeMap<i32, f64>> = BTreeMap::new();
        for ((s, k), ws) in &wins {
            let t = text[&(s.clone(), *k)];
            let info: Vec<f64> = ws.iter().map(|w| w - t).collect();
            levels
                .entry(s.clone())
                .or_default()
                .insert(*k, info.iter().sum::<f64>() / info.len() as f64);
        }
        let layers: Vec<i32> = levels.values().next().unwrap().keys().copied().collect();
        let ci = layers
            .iter()
            .map(|&k| {
                let x: Vec<f64> = order.iter().map(|s| levels[s][&k]).collect();
                let m = x.iter().sum::<f64>() / x.len() as f64;
                let (lo, hi) = stats::bootstrap_mean_ci(
                    &x,
                    p.bootstrap,
                    p.confidence,
                    stats::group_seed(p.seed, model, task, k),
                );
                (k, (m, lo, hi))
            })
            .collect();
        Naive { levels, ci }
    }

    /// The horizon of the resample `drawn` (sample ids, with repetition), relative threshold `f`,
    /// CI rule on.
    fn horizon(&self, drawn: &[&String], f: f64) -> Option<i32> {
        let mut means: Vec<(i32, f64)> = Vec::new();
        for &k in self.ci.keys() {
            let x: Vec<f64> = drawn.iter().map(|s| self.levels[*s][&k]).collect();
            means.push((k, x.iter().sum::<f64>() / x.len() as f64));
        }
        let eps = f * means.iter().map(|m| m.1.abs()).fold(0.0, f64::max);
        let vanishes = |&(k, m): &(i32, f64)| {
            let (m0, lo, hi) = self.ci[&k];
            m.abs() <= eps && m - (m0 - lo) <= 0.0 && m + (hi - m0) >= 0.0
        };
        let mut h = None;
        for l in means.iter().rev() {
            if vanishes(l) {
                h = Some(l.0);
            } else {
                break;
            }
        }
        h
    }
}

#[test]
fn horizon_distribution_matches_a_naive_recomputation() {
    let mut g = Gen(0x5eed);
    let n = 12;
    let mut rows = noisy_rows(&mut g, "m1", "a", n, true);
    rows.extend(noisy_rows(&mut g, "m1", "b", n, false));
    rows.extend(noisy_rows(&mut g, "m2", "a", n, true));
    let p = AnalysisParams {
        bootstrap: 400,
        seed: 7,
        threshold: Threshold::Relative(0.2),
        ..Default::default()
    };
    let a = analyze_rows(&rows, &p);
    let ids = |task: &str| -> Vec<String> {
        (0..n)
            .map(|s| {
                if task == "a" {
                    format!("s{s}")
                } else {
                    format!("{task}{s}")
                }
            })
            .collect()
    };
    let mut nontrivial = 0;
    for (model, task) in [("m1", "a"), ("m1", "b"), ("m2", "a")] {
        let order = ids(task);
        let gr = a.group(model, task).unwrap();
        let keys: Vec<String> = gr.samples.keys.iter().map(|k| k.1.clone()).collect();
        assert_eq!(keys, order, "samples in the order they first appear");
        let naive = Naive::new(&rows, model, task, &order, &p);
        // the point estimate is the rule on the identity resample
        assert_eq!(
            naive.horizon(&order.iter().collect::<Vec<_>>(), 0.2),
            gr.horizon.horizon
        );
        let mut rng = ChaCha8Rng::seed_from_u64(horizon_seed(p.seed, model, task));
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for _ in 0..p.bootstrap {
            let drawn: Vec<&String> = (0..n).map(|_| &order[rng.gen_range(0..n)]).collect();
            let h = naive.horizon(&drawn, 0.2);
            *counts
                .entry(h.map(i64::from).unwrap_or(i64::MAX))
                .or_default() += 1;
        }
        let got: BTreeMap<i64, usize> = gr
            .horizon_bootstrap
            .distribution
            .iter()
            .map(|c| (c.horizon.map(i64::from).unwrap_or(i64::MAX), c.count))
            .collect();
        assert_eq!(got, counts, "{model}/{task}");
        if counts.len() > 1 {
            nontrivial += 1;
        }
    }
    assert!(
        nontrivial >= 2,
        "the rows should make the horizon uncertain"
    );

    // models on the shared task: joint draws; tasks of m1: independent draws, a's stratum first
    let check = |kind: &str, x: (&str, &str), y: (&str, &str)| {
        let c = a
            .comparisons
            .iter()
            .find(|c| c.kind == kind && (c.a.model.as_str(), c.a.task.as_str()) == x)
            .filter(|c| (c.b.model.as_str(), c.b.task.as_str()) == y)
            .unwrap()
            .clone();
        let (nx, ny) = (
            Naive::new(&rows, x.0, x.1, &ids(x.1), &p),
            Naive::new(&rows, y.0, y.1, &ids(y.1), &p),
        );
        let seed = comparison_seed(
            p.seed,
            &GroupRef {
                model: x.0.into(),
                task: x.1.into(),
            },
            &GroupRef {
                model: y.0.into(),
                task: y.1.into(),
            },
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (ox, oy) = (ids(x.1), ids(y.1));
        let (mut deeper, mut equal) = (0usize, 0usize);
        for _ in 0..p.bootstrap {
            let (dx, dy): (Vec<&String>, Vec<&String>) = if x.1 == y.1 {
                let d: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
                (
                    d.iter().map(|&i| &ox[i]).collect(),
                    d.iter().map(|&i| &oy[i]).collect(),
                )
            } else {
                let dx = (0..n).map(|_| &ox[rng.gen_range(0..n)]).collect();
                let dy = (0..n).map(|_| &oy[rng.gen_range(0..n)]).collect();
                (dx, dy)
            };
            let depth = |h: Option<i32>| h.map(i64::from).unwrap_or(i64::MAX);
            let (hx, hy) = (depth(nx.horizon(&dx, 0.2)), depth(ny.horizon(&dy, 0.2)));
            deeper += (hx > hy) as usize;
            equal += (hx == hy) as usize;
        }
        let b = p.bootstrap as f64;
        assert_eq!(c.shared_samples, if x.1 == y.1 { n } else { 0 });
        assert_eq!(
            (c.p_a_deeper, c.p_equal),
            (deeper as f64 / b, equal as f64 / b),
            "{c:?}"
        );
    };
    check("models", ("m1", "a"), ("m2", "a"));
    check("tasks", ("m1", "a"), ("m1", "b"));
}

#[test]
fn sensitivity_table_by_metric_and_threshold() {
    // I = 0.5, 0.3, 0.04, 0.008, 0 for p and kl; log p gives ln 6, ln 4, ln 1.4, ln 1.08, 0.
    let rows: Vec<Row> = (0..6)
        .flat_map(|s| sample_rows("m", "t", &format!("s{s}"), &[0.5, 0.3, 0.04, 0.008, 0.0]))
        .collect();
    let a = analyze_rows(
        &rows,
        &AnalysisParams {
            bootstrap: 50,
            require_ci_covers_zero: false,
            ..Default::default()
        },
    );
    let h = |metric: Metric, f: f64| {
        a.sensitivity
            .iter()
            .find(|r| {
                r.model == "m"
                    && r.task == "t"
                    && r.metric == metric
                    && r.threshold == Threshold::Relative(f)
            })
            .unwrap()
            .horizon
    };
    // ε = f·0.5 = 0.005, 0.01 (0.008 vanishes), 0.025, 0.05 (0.04 vanishes), 0.1
    for metric in [Metric::P, Metric::Kl] {
        assert_eq!(
            SENSITIVITY_THRESHOLDS.map(|f| h(metric, f)),
            [Some(4), Some(3), Some(3), Some(2), Some(2)],
            "{metric}"
        );
    }
    // log p relative to ln 6: 0.188 (layer 2) and 0.043 (layer 3)
    assert_eq!(
        SENSITIVITY_THRESHOLDS.map(|f| h(Metric::Logp, f)),
        [Some(4), Some(4), Some(3), Some(3), Some(2)]
    );
    assert_eq!(
        h(Metric::P, 0.05),
        a.group("m", "t").unwrap().horizon.horizon
    );
    // 2 groups x 3 metrics x 5 thresholds; the parameters' own 5 % is one of them
    assert_eq!(a.sensitivity.len(), 2 * 3 * 5);
    let abs = analyze_rows(
        &rows,
        &AnalysisParams {
            bootstrap: 50,
            threshold: Threshold::Absolute(0.02),
            ..Default::default()
        },
    );
    assert_eq!(abs.sensitivity.len(), 2 * 3 * 5 + 2);
    let own: Vec<_> = abs
        .sensitivity
        .iter()
        .filter(|r| r.threshold == Threshold::Absolute(0.02))
        .collect();
    assert!(own.iter().all(|r| r.metric == Metric::P));
    assert_eq!(own[0].horizon, abs.group("m", "t").unwrap().horizon.horizon);
}

#[test]
fn horizon_json_has_the_bootstrap_and_reads_files_without_it() {
    let a = analyze_rows(&outlier_rows("m", "t"), &outlier_params(500));
    let dir = tempfile::tempdir().unwrap();
    write_outputs(&a, dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join(HORIZON_JSON_FILE)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &json["models"][0]["tasks"][0];
    assert_eq!(entry["bootstrap"]["resamples"], 500);
    assert_eq!(entry["bootstrap"]["low"], 2);
    assert!(entry["bootstrap"]["high"].is_null());
    let dist = entry["bootstrap"]["distribution"].as_array().unwrap();
    assert_eq!(dist.len(), 2);
    assert!(dist[1]["horizon"].is_null());
    let line = &json["summary"][0];
    assert_eq!(line["horizon_low"], 2);
    assert_eq!(line["interval"], "layer 2 – no horizon");
    assert!(line["p_no_horizon"].as_f64().unwrap() > 0.5);
    assert!(json["comparisons"].as_array().unwrap().is_empty()); // one model, one task
    assert_eq!(json["sensitivity"].as_array().unwrap().len(), 2 * 3 * 5 + 2);
    assert!(json["definitions"]["horizon_bootstrap"].is_string());
    let back: HorizonReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, horizon_report(&a));

    // a horizon.json written before these fields existed still reads
    let mut old = json.clone();
    for key in ["comparisons", "sensitivity"] {
        old.as_object_mut().unwrap().remove(key);
    }
    for e in old["models"][0]["tasks"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("bootstrap");
    }
    old["models"][0]["pooled"]
        .as_object_mut()
        .unwrap()
        .remove("bootstrap");
    for l in old["summary"].as_array_mut().unwrap() {
        let l = l.as_object_mut().unwrap();
        for key in ["horizon_low", "horizon_high", "interval", "p_no_horizon"] {
            l.remove(key);
        }
    }
    let back: HorizonReport = serde_json::from_value(old).unwrap();
    assert_eq!(back.models[0].tasks[0].bootstrap.resamples, 0);
    assert!(back.comparisons.is_empty());
}
