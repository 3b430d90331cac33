//! Greedy generation with a pruned KV cache against an HF greedy loop:
//! `fixtures/make_prune_generation_fixtures.py` runs HF's own decoder layers, `DynamicCache`, rotary
//! embedding and `lm_head` on the same kept (or built) tokens, on the tiny models of both families,
//! and writes each step's logits and the generated tokens. Its subset cases fix the kept tokens (a cut
//! at K = 0, at K ≥ 1 where the earlier layers cache the whole prompt, two cuts; kept and renumbered
//! positions), so the reference tests decoding, not selection; its method cases (`avg-pooling@0`,
//! the paper's `pooling@K`, `visionzip@0`) hold horizon first to the same built tokens, positions
//! and kept sets. Held to it: the tokens, every step's logits (within 1e-4), the number of tokens each
//! layer caches, and Qwen2.5-VL's renumbered 3-D ids and `rope_deltas` (HF's `get_rope_index` of the
//! shortened sequence).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::generate::{generate_greedy_with_logits, GenerationConfig};
use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::prune::{
    generate_pruned_with_logits, pruned_decoder_inputs, PruneOptions, PruneSpec,
};
use horizon_runner::{Intervention, ModelInputs, PositionPolicy, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Family {
    meta: serde_json::Value,
    reference: HashMap<String, Tensor>,
    model: VlModel,
    inputs: ModelInputs,
}

fn family(name: &str) -> Family {
    let dir = root().join("fixtures").join(name);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference/prune_generation.json")).unwrap(),
    )
    .unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference/prune_generation.safetensors"))
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
    assert_eq!(inputs.rope_deltas, meta["rope_deltas"].as_i64().unwrap());
    Family {
        meta,
        reference,
        model,
        inputs,
    }
}

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn policy(name: &str) -> PositionPolicy {
    match name {
        "keep" => PositionPolicy::Original,
        "renumber" => PositionPolicy::Renumbered,
        other => panic!("unknown position policy {other}"),
    }
}

/// The case's fixed cuts as a static intervention (one position policy for all of them).
fn intervention(case: &serde_json::Value) -> Intervention {
    let cuts = case["cuts"].as_array().unwrap();
    let mut iv = Intervention::none();
    for cut in cuts {
        iv = iv
            .then_cut_at(
                cut["layer"].as_u64().unwrap() as usize,
                usizes(&cut["kept"]),
            )
            .unwrap();
    }
    let policies: Vec<&str> = cuts.iter().map(|c| c["policy"].as_str().unwrap()).collect();
    assert!(
        policies.windows(2).all(|w| w[0] == w[1]),
        "one policy per case"
    );
    iv.with_positions(policy(policies[0]))
}

/// The case's `--positions` (`default`: each stage's convention).
fn options(case: &serde_json::Value) -> PruneOptions {
    PruneOptions {
        positions: match case["positions"].as_str().unwrap() {
            "default" => None,
            other => Some(policy(other)),
        },
        ..PruneOptions::default()
    }
}

/// Checks horizon's built decoder inputs (the new visual block, the position ids and the
/// `rope_deltas` decoding continues from) against the fixture's.
fn check_built_tokens(f: &Family, case: &str, c: &serde_json::Value, spec: &PruneSpec) {
    let name = case;
    let built = pruned_decoder_inputs(&f.model, &f.inputs, spec, &options(c)).unwrap();
    let want = &f.reference[&format!("{case}.visual_embeds")];
    let k = want.size()[0];
    let first = built.visual_positions[0] as i64;
    assert_eq!(
        built.visual_positions.len() as i64,
        k,
        "{name}: visual tokens built"
    );
    let block = built.embeds.select(0, 0).narrow(0, first, k);
    let d = max_abs_diff(&block, want);
    eprintln!("{name}: built visual block max |ours - HF| = {d:e}");
    assert!(d <= 1e-5, "{name}: built visual embeddings differ by {d}");
    let positions = built.positions.squeeze();
    assert!(
        positions.equal(&f.reference[&format!("{case}.position_ids")]),
        "{name}: position ids of the built sequence"
    );
    assert_eq!(
        built.rope_deltas,
        c["rope_deltas"].as_i64().unwrap(),
        "{name}: rope_deltas of the built sequence"
    );
}

/// A renumbering cut's position ids (what the layers from K see) against HF's rope index of the
/// shortened sequence, through the function the prefill renumbers with.
fn check_renumbered_cut(f: &Family, case: &str, c: &serde_json::Value) {
    let cuts = c["cuts"].as_array().unwrap();
    assert_eq!(cuts.len(), 1, "{case}: one renumbering cut");
    let kept = usizes(&cuts[0]["kept"]);
    let rotary = &f.model.decoder().rotary_emb;
    let rows = Tensor::from_slice(&kept.iter().map(|&p| p as i64).collect::<Vec<_>>());
    let ids = rotary.gather_positions(&f.inputs.position_ids, &rows.unsqueeze(0));
    let visual = f.inputs.visual.mask(f.inputs.seq_len());
    let flags: Vec<bool> = kept.iter().map(|&p| visual[p]).collect();
    let (positions, next) =
        rotary.renumbered_positions(&rotary.grid_coordinates(&ids, &flags), Device::Cpu);
    assert!(
        positions
            .squeeze()
            .equal(&f.reference[&format!("{case}.cut0.position_ids")]),
        "{case}: renumbered position ids differ from HF's rope index of the shortened sequence"
    );
    assert_eq!(
        next,
        cuts[0]["next_position"].as_i64().unwrap(),
        "{case}: next position"
    );
}

fn check_against_reference(family_name: &str) {
    let f = family(family_name);
    let n = f.meta["num_new_tokens"].as_u64().unwrap() as usize;
    let config = GenerationConfig {
        max_new_tokens: n,
        eos_token_ids: vec![],
    };
    let cases = f.meta["cases"].as_object().unwrap();
    assert!(cases.len() >= 6, "{family_name}: {} cases", cases.len());
    for (case, c) in cases {
        let name = format!("{family_name} {case}");
        let cached = usizes(&c["cached_prompt_tokens_per_layer"]);
        let (tokens, logits, tokens_per_layer) = match c["kind"].as_str().unwrap() {
            "subset" => {
                if f.reference
                    .contains_key(&format!("{case}.cut0.position_ids"))
                {
                    check_renumbered_cut(&f, case, c);
                }
                let mut iv = intervention(c);
                let (tokens, logits, cache) =
                    generate_greedy_with_logits(&f.model, &f.inputs, &mut iv, &config).unwrap();
                let per_layer: Vec<usize> = (0..f.model.num_layers())
                    .map(|l| cache.len_at(l) as usize - (n - 1))
                    .collect();
                (tokens, logits, per_layer)
            }
            "method" => {
                let spec = PruneSpec::parse(c["spec"].as_str().unwrap()).unwrap();
                if spec.stages[0].method.creates_tokens() {
                    check_built_tokens(&f, case, c, &spec);
                } else {
                    let want = usizes(&c["cuts"][0]["kept_visual"]);
                    let run = horizon_runner::prune::prefill_pruned(
                        &f.model,
                        &f.inputs,
                        &spec,
                        &options(c),
                        0,
                        None,
                        None,
                    )
                    .unwrap();
                    assert_eq!(run.stages[0].kept_visual, want, "{name}: kept tokens");
                }
                let (run, logits) = generate_pruned_with_logits(
                    &f.model,
                    &f.inputs,
                    &spec,
                    &options(c),
                    0,
                    None,
                    &config,
                )
                .unwrap();
                (run.tokens, logits, run.tokens_per_layer)
            }
            other => panic!("{name}: unknown kind {other}"),
        };
        assert_eq!(tokens_per_layer, cached, "{name}: tokens cached per layer");
        let want_tokens: Vec<i64> = Vec::try_from(&f.reference[&format!("{case}.tokens")]).unwrap();
        let want_logits = &f.reference[&format!("{case}.logits")];
        let d = max_abs_diff(&logits, want_logits);
        // The pruning tests' bound (tests/prune.rs), tighter here than the parity tests' relative one.
        let tol = f32_logits_tolerance(want_logits).min(1e-4);
        eprintln!(
            "{name}: tokens {tokens:?}, max |logits - HF| over {n} steps = {d:e} (tolerance {tol:e})"
        );
        assert!(
            d <= tol,
            "{name}: logits differ from HF by {d} (tolerance {tol})"
        );
        assert_eq!(tokens, want_tokens, "{name}: generated tokens");
    }
}

#[test]
fn llava_pruned_generation_matches_hf_greedy_loop() {
    check_against_reference("llava");
}

#[test]
fn qwen2_5_vl_pruned_generation_matches_hf_greedy_loop() {
    check_against_reference("qwen2_5_vl");
}
