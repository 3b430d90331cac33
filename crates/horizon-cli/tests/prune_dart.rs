//! `--dart-pivot-order` end to end: `horizon forward --prune dart@2:12` on the tiny LLaVA fixture
//! keeps the tokens `fixtures/make_prune_fixtures.py` keeps with the released code's Python-set pivot
//! order (the default) and, under `--dart-pivot-order sequence`, those of its sequence-order case;
//! on this prompt the two orders keep different tokens.

mod common;
use common::{horizon, horizon_one_thread, root, s};

use horizon_runner::parity::max_abs_diff;
use std::collections::HashMap;
use tch::{Kind, Tensor};

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn dart_pivot_order_reaches_the_run() {
    let dir = root().join("fixtures/llava");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/prune.json")).unwrap())
            .unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference/prune.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let model = dir.join(meta["model_dir"].as_str().unwrap());
    let image = dir.join(meta["image"].as_str().unwrap());
    let (first, count) = (
        meta["visual_start"].as_i64().unwrap(),
        meta["num_visual"].as_i64().unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut kept_sets = Vec::new();
    for (case, order) in [
        ("dart@2:12", None),
        ("dart@2:12 dart-pivot-order=sequence", Some("sequence")),
        ("dart@2:12", Some("set")),
    ] {
        let c = &meta["cases"][case];
        let stage = &c["stages"][0];
        let out = tmp.path().join("logits.safetensors");
        let mut args = vec![
            "forward".to_string(),
            "--model".into(),
            s(&model),
            "--image".into(),
            s(&image),
            "--prompt".into(),
            meta["question"].as_str().unwrap().into(),
            "--prune".into(),
            "dart@2:12".into(),
            "--save-logits".into(),
            s(&out),
        ];
        if let Some(order) = order {
            args.extend(["--dart-pivot-order".to_string(), order.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = horizon_one_thread(&args);
        assert!(ok, "{case}: {stderr}");
        // The note names the pivots in the order they were walked.
        let pivots = format!("pivots {:?}", ints(&stage["pivots"]));
        assert!(stderr.contains(&pivots), "{case}: '{pivots}' in {stderr}");
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(&out)
            .unwrap()
            .into_iter()
            .collect();
        let kept: Vec<i64> = Vec::<i64>::try_from(&saved["kept"])
            .unwrap()
            .into_iter()
            .filter(|&i| (first..first + count).contains(&i))
            .collect();
        assert_eq!(kept, ints(&stage["kept_visual"]), "{case}: kept");
        let logits = saved["logits"].select(0, -1).to_kind(Kind::Float);
        let d = max_abs_diff(&logits, &reference[&format!("{case}.logits")]);
        assert!(d <= 1e-4, "{case}: logits differ from HF by {d}");
        kept_sets.push(kept);
    }
    assert_ne!(
        kept_sets[0], kept_sets[1],
        "the orders keep different tokens here"
    );

    let (ok, stdout, _) = horizon(&["forward", "--help"]);
    assert!(ok && stdout.contains("--dart-pivot-order"), "{stdout}");
}
