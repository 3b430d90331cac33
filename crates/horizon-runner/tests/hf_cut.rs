//! One cut forward of each family against HF transformers 5.17.0 running the same cut
//! (`fixtures/hf_cut.py`: HF's own modules, layers < K on the full prompt, the kept positions gathered
//! with their original position ids, layers ≥ K on them): the text-only baseline, a keep-only and a
//! leave-out 2x2 window at K = 1 and 2. Held to it: the keep-sets the engine builds, the logits of a
//! cut forward, and the engine's p(y), log p(y) and KL(full ‖ variant) — the values `horizon info`
//! writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::info::{
    full_run, sweep_sample, variant_keep_sets, InfoMode, SweepConfig, Variant, WindowGrid,
};
use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{Intervention, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check_family(family: &str) {
    let dir = root().join("fixtures").join(family);
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
        Some(target),
        "{family}: target token"
    );
    let full = full_run(&model, &inputs).unwrap();
    let full_logp = full.log_probs.squeeze_dim(0);
    let tol = f32_logits_tolerance(&reference["full.logits"]);
    // log_softmax moves by at most twice the largest logit difference.
    let close = |what: &str, ours: f64, theirs: f64, bound: f64| {
        assert!(
            (ours - theirs).abs() <= bound,
            "{family} {what}: ours {ours}, HF {theirs} (bound {bound})"
        );
    };
    close(
        "full log p(y)",
        full_logp.double_value(&[target]),
        reference["full.log_p_y"].double_value(&[0]),
        2.0 * tol,
    );

    let grid = WindowGrid::new(inputs.visual.grid, 2).unwrap();
    let (text_only, keep_only) = variant_keep_sets(&inputs, &grid, InfoMode::KeepOnly);
    let (_, leave_out) = variant_keep_sets(&inputs, &grid, InfoMode::LeaveOut);
    let ks: Vec<usize> = serde_json::from_value(meta["ks"].clone()).unwrap();
    let mut checked = 0;
    for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
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
                (Variant::Window(0), InfoMode::KeepOnly) => ("keep_window0", &keep_only[0]),
                (Variant::Window(0), InfoMode::LeaveOut) => ("drop_window0", &leave_out[0]),
                _ => continue,
            };
            let k = r.layer.unwrap();
            let key = |field: &str| format!("K{k}.{name}.{field}");
            let want: Vec<i64> = Vec::try_from(&reference[&key("kept")]).unwrap();
            let got: Vec<i64> = keep.iter().map(|&p| p as i64).collect();
            assert_eq!(got, want, "{family} K={k} {name}: keep-set");
            // The cut forward itself.
            let mut iv = Intervention::cut_at(k, keep.iter().copied()).unwrap();
            let out = model.prefill(&inputs, &mut iv, None, None).unwrap();
            let last = out.hidden.select(1, out.hidden.size()[1] - 1);
            let logits = model.lm_head(&last).squeeze_dim(0).to_kind(Kind::Float);
            let d = max_abs_diff(&logits, &reference[&key("logits")]);
            assert!(
                d <= tol,
                "{family} K={k} {name}: logits differ from HF by {d} (tolerance {tol})"
            );
            // The engine's scores, as `horizon info` writes them.
            let (p, logp, kl) = (
                reference[&key("p_y")].double_value(&[0]),
                reference[&key("log_p_y")].double_value(&[0]),
                reference[&key("kl_full")].double_value(&[0]),
            );
            close(&key("log_p_y"), r.logp, logp, 2.0 * tol);
            close(&key("p_y"), r.p, p, p * 2.0 * tol + 1e-9);
            // KL = Σ p_full (log p_full − log q) moves by at most 4 × the logit tolerance.
            close(&key("kl_full"), r.kl, kl, 4.0 * tol);
            checked += 1;
        }
    }
    // text_only appears in both modes' sweeps: 2 K × (2 + 2).
    assert_eq!(checked, 4 * ks.len(), "{family}: variants checked");
}

#[test]
fn llava_cut_matches_hf() {
    check_family("llava");
}

#[test]
fn qwen2_5_vl_cut_matches_hf() {
    check_family("qwen2_5_vl");
}
