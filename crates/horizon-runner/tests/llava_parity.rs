//! Parity of the LLaVA runner with HF transformers 5.17.0 on the tiny random llava-hf fixtures
//! (fixtures/make_llava_fixtures.py): input ids and pixel values identical, logits within 1e-4 in f32
//! on CPU, greedy tokens identical; plus the intervention semantics against a naive recomputation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::generate::{generate_greedy, GenerationConfig};
use horizon_runner::parity::{f32_logits_tolerance, low_precision_logits_tolerance, max_abs_diff};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{Intervention, ModelInputs, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Case {
    question: String,
    model_dir: PathBuf,
    image: PathBuf,
    tensors: HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let dir = root().join("fixtures/llava");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("reference/{name}.json"))).unwrap(),
    )
    .unwrap();
    let tensors = Tensor::read_safetensors(dir.join(format!("reference/{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect();
    Case {
        question: meta["question"].as_str().unwrap().to_string(),
        model_dir: dir.join(meta["model_dir"].as_str().unwrap()),
        image: dir.join(meta["image"].as_str().unwrap()),
        tensors,
    }
}

fn load(c: &Case, kind: Kind) -> (VlModel, Processor, ModelInputs) {
    let model = VlModel::load(&c.model_dir, Device::Cpu, kind).unwrap();
    let processor = Processor::load(&c.model_dir, &model).unwrap();
    let inputs = processor
        .prepare(&model, &c.question, &c.image, PromptTemplate::LlavaHf)
        .unwrap();
    (model, processor, inputs)
}

fn all_logits(model: &VlModel, inputs: &ModelInputs, iv: &Intervention) -> Tensor {
    let out = model.prefill(inputs, &mut iv.clone(), None, None).unwrap();
    model
        .lm_head(&out.hidden)
        .squeeze_dim(0)
        .to_kind(Kind::Float)
}

fn check_case(name: &str) {
    let c = case(name);
    let (model, processor, inputs) = load(&c, Kind::Float);
    // Token ids and pixel values are exact: they feed everything else.
    assert!(
        inputs
            .input_ids
            .squeeze_dim(0)
            .equal(&c.tensors["input_ids"]),
        "{name}: input ids differ"
    );
    let pv = inputs.pixel_values.as_ref().unwrap().squeeze_dim(0);
    let ref_pv = &c.tensors["pixel_values"];
    assert_eq!(pv.size(), ref_pv.size(), "{name}: pixel value shape");
    assert!(
        pv.equal(ref_pv),
        "{name}: pixel values differ (max {})",
        max_abs_diff(&pv, ref_pv)
    );

    let logits = all_logits(&model, &inputs, &Intervention::none());
    let d = max_abs_diff(&logits, &c.tensors["logits"]);
    eprintln!("{name}: max |logits - HF| = {d:e}");
    let tol = f32_logits_tolerance(&c.tensors["logits"]);
    assert!(
        d <= tol,
        "{name}: max abs logits difference {d} (tolerance {tol})"
    );

    let reference: Vec<i64> = Vec::try_from(&c.tensors["generated_ids"]).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 16,
        eos_token_ids: processor.eos_token_ids().to_vec(),
    };
    let generated = generate_greedy(&model, &inputs, &mut Intervention::none(), &config).unwrap();
    assert_eq!(
        generated, reference,
        "{name}: greedy tokens differ from HF generate"
    );
}

#[test]
fn square_image_matches_hf() {
    check_case("square");
}

#[test]
fn non_square_image_matches_hf() {
    check_case("nonsquare");
}

#[test]
fn pad_to_square_matches_hf() {
    check_case("pad_nonsquare");
}

/// A checkpoint transformers 5.17's own `save_pretrained` wrote after loading a published one: legacy
/// names, and the image processor inside `processor_config.json` (no `preprocessor_config.json`).
#[test]
fn hf5_saved_checkpoint_matches_hf() {
    check_case("hf5_square");
}

/// What 5.17 `save_pretrained` writes for a model built from its config: the CLIP tower as
/// `vision_tower.embeddings.*` / `vision_tower.encoder.*`, without `vision_model.`.
#[test]
fn hf5_fresh_saved_checkpoint_matches_hf() {
    check_case("hf5_fresh_square");
}

/// Dropping tokens at layer K must equal a naive recomputation: run the full model to layer K by hand,
/// gather the kept rows and their original position ids, run the remaining layers.
#[test]
fn cut_at_layer_equals_naive_recomputation() {
    let c = case("square");
    let (model, _, inputs) = load(&c, Kind::Float);
    let s = inputs.seq_len();
    let vis = &inputs.visual.positions;
    // Keep every non-visual token and one 2x2 block of the visual grid (a keep-only window run).
    let cols = inputs.visual.grid.1;
    let window = [0, 1, cols, cols + 1].map(|i| vis[i]);
    let keep: Vec<usize> = (0..s)
        .filter(|p| !vis.contains(p) || window.contains(p))
        .collect();
    for k in [1, model.num_layers() - 1] {
        let mut iv = Intervention::cut_at(k, keep.iter().copied()).unwrap();
        let out = model.prefill(&inputs, &mut iv, None, None).unwrap();
        assert_eq!(out.kept, keep);

        let mut layer_inputs = Vec::new();
        model
            .prefill(
                &inputs,
                &mut Intervention::none(),
                None,
                Some(&mut layer_inputs),
            )
            .unwrap();
        let rows = Tensor::from_slice(&keep.iter().map(|&p| p as i64).collect::<Vec<_>>());
        let h = layer_inputs[k].index_select(1, &rows);
        let naive = model
            .forward_from_layer(k, &h, &rows.unsqueeze(0), &inputs)
            .unwrap();
        let d = max_abs_diff(&out.hidden, &naive);
        assert!(
            d <= 1e-5,
            "K={k}: cut differs from naive recomputation by {d}"
        );
    }
    // A cut keeping everything is the plain model, bit for bit.
    let all = Intervention::cut_at(2, 0..s).unwrap();
    let a = all_logits(&model, &inputs, &all);
    let b = all_logits(&model, &inputs, &Intervention::none());
    assert!(a.equal(&b));
}

/// bf16 and f16 on CPU against HF's own bf16 / f16 forward of the same weights
/// (reference/square_lowp.safetensors), and their distance from f32 reported.
#[test]
fn bf16_and_f16_match_hf_low_precision() {
    let c = case("square");
    let lowp: HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("fixtures/llava/reference/square_lowp.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let l32 = &c.tensors["logits"];
    for (kind, key) in [(Kind::BFloat16, "logits_bf16"), (Kind::Half, "logits_f16")] {
        let (m, _, inputs) = load(&c, kind);
        let l = all_logits(&m, &inputs, &Intervention::none());
        let d = max_abs_diff(&l, &lowp[key]);
        let rel = (l.to_kind(Kind::Double) - l32.to_kind(Kind::Double))
            .norm()
            .double_value(&[])
            / l32.to_kind(Kind::Double).norm().double_value(&[]);
        eprintln!("{kind:?}: max |logits - HF {key}| = {d:e}; relative L2 error vs f32 = {rel:e}");
        // Neither is bit-stable across CPUs: libtorch picks its CPU bf16 and f16 kernels by
        // instruction set (measured: HF's own logits of both kinds on a Sapphire Rapids Xeon differ
        // from the committed ones, made on another CPU, by 0.0625, while ours equal HF's on the
        // same machine). See `horizon_runner::parity`.
        let tol = low_precision_logits_tolerance(&lowp[key]);
        assert!(
            d <= tol,
            "{kind:?}: differs from HF {key} by {d} (tolerance {tol})"
        );
    }
}

/// An older-style Llama `tokenizer.json` (Prepend + Replace normalizer) tokenizes as HF 5.17's
/// AutoTokenizer does for a llava checkpoint: with the stored normalizer, which differs from the
/// Metaspace form right after special tokens (reference/legacy_tokenizer/expected.json, written by HF).
#[test]
fn legacy_llama_tokenizer_matches_hf_auto_tokenizer() {
    let dir = root().join("fixtures/llava/reference/legacy_tokenizer");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompt = expected["prompt"].as_str().unwrap();
    let want: Vec<u32> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
    let tokenizer = horizon_runner::checkpoint::load_tokenizer(&dir).unwrap();
    let got = tokenizer.encode(prompt, true).unwrap().get_ids().to_vec();
    assert_eq!(got, want);
    let square: Vec<i64> = Vec::try_from(&case("square").tensors["input_ids"]).unwrap();
    assert_ne!(
        got.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        square,
        "the legacy normalizer should change the ids after <image>"
    );
}
