//! Parity of the Qwen2.5-VL runner with HF transformers 5.17.0 on the tiny random fixtures
//! (fixtures/make_qwen_fixtures.py): input ids, pixel values, grid and M-RoPE position ids identical,
//! image embeddings within 1e-5, logits within 1e-4 in f32 on CPU, 16 greedy tokens identical; plus the
//! intervention semantics (3-D positions gathered at a cut) against a naive recomputation.
//!
//! Everything goes through the family-independent [`VlModel`] and [`Processor`], as the CLI does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::generate::{generate_greedy, GenerationConfig};
use horizon_runner::models::qwen2_5_vl::vision::vision_window_index;
use horizon_runner::models::qwen2_5_vl::Qwen2_5VlProcessor;
use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{Intervention, ModelInputs, PositionPolicy, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Case {
    question: String,
    prompt: String,
    model_dir: PathBuf,
    image: PathBuf,
    tensors: HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let dir = root().join("fixtures/qwen2_5_vl");
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
        prompt: meta["prompt"].as_str().unwrap().to_string(),
        model_dir: dir.join(meta["model_dir"].as_str().unwrap()),
        image: dir.join(meta["image"].as_str().unwrap()),
        tensors,
    }
}

fn load(c: &Case, kind: Kind) -> (VlModel, Processor, ModelInputs) {
    let model = VlModel::load(&c.model_dir, Device::Cpu, kind).unwrap();
    let processor = Processor::load(&c.model_dir, &model).unwrap();
    let inputs = processor
        .prepare(&model, &c.question, &c.image, PromptTemplate::Auto)
        .unwrap();
    (model, processor, inputs)
}

fn qwen(model: &VlModel) -> &horizon_runner::models::qwen2_5_vl::Qwen2_5VlForConditionalGeneration {
    match model {
        VlModel::Qwen2_5Vl(m) => m,
        _ => panic!("not a Qwen2.5-VL model"),
    }
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
    let m = qwen(&model);
    assert_eq!(
        Qwen2_5VlProcessor::prompt(&c.question, None),
        c.prompt,
        "{name}: chat template"
    );
    // Processor outputs are exact: they feed everything else.
    assert!(
        inputs
            .input_ids
            .squeeze_dim(0)
            .equal(&c.tensors["input_ids"]),
        "{name}: input ids differ"
    );
    let pv = inputs.pixel_values.as_ref().unwrap();
    let ref_pv = &c.tensors["pixel_values"];
    assert_eq!(pv.size(), ref_pv.size(), "{name}: pixel value shape");
    assert!(
        pv.equal(ref_pv),
        "{name}: pixel values differ (max {})",
        max_abs_diff(pv, ref_pv)
    );
    let grid: Vec<i64> = Vec::try_from(c.tensors["image_grid_thw"].reshape([-1])).unwrap();
    assert_eq!(inputs.image_grid_thw, vec![[grid[0], grid[1], grid[2]]]);
    assert_eq!(
        inputs.visual.grid,
        ((grid[1] / 2) as usize, (grid[2] / 2) as usize)
    );

    // Window index and cumulative window lengths of the vision tower.
    let (wi, cu) = vision_window_index(
        &inputs.image_grid_thw,
        2,
        m.config.vision_config.vit_merger_window_size(),
    );
    let ref_wi: Vec<i64> = Vec::try_from(&c.tensors["vision_window_index"]).unwrap();
    let ref_cu: Vec<i64> = Vec::try_from(&c.tensors["vision_cu_window_seqlens"]).unwrap();
    assert_eq!(wi, ref_wi, "{name}: window index");
    assert_eq!(cu, ref_cu, "{name}: cu_window_seqlens");

    // M-RoPE position ids and rope_deltas.
    assert!(
        inputs
            .position_ids
            .squeeze_dim(1)
            .equal(&c.tensors["position_ids"]),
        "{name}: position ids differ"
    );
    assert_eq!(
        inputs.rope_deltas,
        c.tensors["rope_deltas"].int64_value(&[0]),
        "{name}: rope_deltas"
    );

    // Image embeddings.
    let embeds = {
        let _g = tch::no_grad_guard();
        m.image_features(pv, &inputs.image_grid_thw).unwrap()
    };
    let d = max_abs_diff(&embeds, &c.tensors["image_embeds"]);
    eprintln!(
        "{name}: max |image_embeds - HF| = {d:e} (bit-equal: {})",
        embeds.equal(&c.tensors["image_embeds"])
    );
    assert!(d <= 1e-5, "{name}: image embeddings differ by {d}");

    // Logits of the whole prompt.
    let logits = all_logits(&model, &inputs, &Intervention::none());
    let d = max_abs_diff(&logits, &c.tensors["logits"]);
    eprintln!(
        "{name}: max |logits - HF| = {d:e} (bit-equal: {})",
        logits.equal(&c.tensors["logits"])
    );
    let tol = f32_logits_tolerance(&c.tensors["logits"]);
    assert!(
        d <= tol,
        "{name}: max abs logits difference {d} (tolerance {tol})"
    );

    // Greedy generation with a KV cache.
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
fn tied_flat_config_non_square_matches_hf() {
    check_case("tied_nonsquare");
}

/// A checkpoint transformers 5.17's own `save_pretrained` wrote (nested config, image processor
/// inside `processor_config.json`).
#[test]
fn hf5_saved_checkpoint_matches_hf() {
    check_case("hf5_square");
}

/// Dropping tokens at layer K equals a naive recomputation: the full model's input to layer K, the kept
/// rows gathered with their 3-D position ids (or renumbered as `get_rope_index` indexes the shortened
/// prompt), the remaining layers run.
#[test]
fn cut_at_layer_equals_naive_recomputation() {
    let c = case("nonsquare");
    let (model, _, inputs) = load(&c, Kind::Float);
    let lm = model.decoder();
    let s = inputs.seq_len();
    let vis = &inputs.visual.positions;
    // Keep every non-visual token and one 2x2 block of the visual grid.
    let cols = inputs.visual.grid.1;
    let window = [0, 1, cols, cols + 1].map(|i| vis[i]);
    let keep: Vec<usize> = (0..s)
        .filter(|p| !vis.contains(p) || window.contains(p))
        .collect();
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
    // Renumbered: the ids `get_rope_index` gives the shortened prompt with the window as a 2x2 image
    // (text before it unchanged, the window at (v0, v0 + row, v0 + col), the text after from v0 + 2).
    let n = keep.len() as i64;
    let v0 = vis[0] as i64;
    let ids: Vec<[i64; 3]> = keep
        .iter()
        .enumerate()
        .map(|(i, &p)| match window.iter().position(|&w| w == p) {
            Some(j) => [v0, v0 + j as i64 / 2, v0 + j as i64 % 2],
            None if (p as i64) < v0 => [p as i64; 3],
            None => [v0 + 2 + (i as i64 - v0 - 4); 3],
        })
        .collect();
    let axes: Vec<i64> = (0..3).flat_map(|a| ids.iter().map(move |t| t[a])).collect();
    let renumbered = Tensor::from_slice(&axes).view([3, 1, n]);
    for k in [1, lm.num_layers() - 1] {
        for (policy, positions) in [
            (
                PositionPolicy::Original,
                inputs.position_ids.index_select(2, &rows),
            ),
            (PositionPolicy::Renumbered, renumbered.shallow_clone()),
        ] {
            let mut iv = Intervention::cut_at(k, keep.iter().copied())
                .unwrap()
                .with_positions(policy);
            let out = model.prefill(&inputs, &mut iv, None, None).unwrap();
            assert_eq!(out.kept, keep);
            let h = layer_inputs[k].index_select(1, &rows);
            let naive = {
                let _g = tch::no_grad_guard();
                lm.forward_from_layer(k, &h, &positions)
            };
            let d = max_abs_diff(&out.hidden, &naive);
            eprintln!("K={k} {policy:?}: max |cut - naive| = {d:e}");
            assert!(
                d <= 1e-5,
                "K={k} {policy:?}: cut differs from naive recomputation by {d}"
            );
        }
    }
    // A cut keeping everything is the plain model, bit for bit.
    let all = Intervention::cut_at(1, 0..s).unwrap();
    let a = all_logits(&model, &inputs, &all);
    let b = all_logits(&model, &inputs, &Intervention::none());
    assert!(a.equal(&b));
}

/// The published key names (`visual.*`, `model.layers.*`) load into the 5.17 module tree, and a tied
/// flat config shares `lm_head` with the embeddings.
#[test]
fn tied_checkpoint_shares_lm_head_with_embeddings() {
    let c = case("tied_nonsquare");
    let model = VlModel::load(&c.model_dir, Device::Cpu, Kind::Float).unwrap();
    let m = qwen(&model);
    assert!(m.config.tie_word_embeddings);
    assert!(m.lm_head.weight.equal(&m.language_model.embed_tokens));
}
