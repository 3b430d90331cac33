//! The one decoder loop of both families, held to independent recomputations on the tiny fixtures:
//! - a selector deciding during the forward (from the attention probabilities it asked for at layer
//!   K − 1) gets exactly those probabilities, recomputed here from the stored layer input with the
//!   full attention matrix, and its cut equals the same static cut bit for bit; asking for attention
//!   changes no output;
//! - greedy decoding with a KV cache after a cut equals recomputing every step without a cache from
//!   the prompt plus the tokens so far under the same keep-set, with original and renumbered
//!   positions (decode positions follow the prefill's policy).

use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::generate::greedy_token;
use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{
    CutContext, Intervention, KvCache, ModelInputs, PositionPolicy, TokenSelector, VisualTokens,
    VlModel,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> Vec<(VlModel, ModelInputs)> {
    [
        (
            "fixtures/llava/models/llava-tiny",
            "fixtures/llava/images/square.png",
        ),
        (
            "fixtures/qwen2_5_vl/models/qwen-tiny",
            "fixtures/qwen2_5_vl/images/nonsquare.png",
        ),
    ]
    .iter()
    .map(|(dir, image)| {
        let dir = root().join(dir);
        let model = VlModel::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let processor = Processor::load(&dir, &model).unwrap();
        let inputs = processor
            .prepare(
                &model,
                "What color is the circle?",
                &root().join(image),
                PromptTemplate::Auto,
            )
            .unwrap();
        (model, inputs)
    })
    .collect()
}

fn last_logits(model: &VlModel, inputs: &ModelInputs, selector: &mut dyn TokenSelector) -> Tensor {
    let out = model.prefill(inputs, selector, None, None).unwrap();
    let last = out.hidden.select(1, out.hidden.size()[1] - 1);
    model.lm_head(&last).to_kind(Kind::Float)
}

/// FastV's shape of decision: at layer `k`, keep every text token and the `keep_visual` visual tokens
/// the last query attended to most at layer `k − 1` (head mean).
struct TopAttended {
    k: usize,
    keep_visual: usize,
    /// The probabilities the loop handed over, and the keep-set chosen.
    seen: Option<Tensor>,
    chosen: Vec<usize>,
}

impl TokenSelector for TopAttended {
    fn attention_rows(&self, layer: usize, kept: &[usize]) -> Option<Vec<usize>> {
        (layer + 1 == self.k).then(|| vec![*kept.last().unwrap()])
    }

    fn select(&mut self, ctx: &CutContext) -> anyhow::Result<Option<Vec<usize>>> {
        if ctx.layer != self.k {
            assert!(
                ctx.attention.is_none(),
                "attention handed at layer {}",
                ctx.layer
            );
            return Ok(None);
        }
        let att = ctx.attention.expect("attention asked for at k - 1");
        self.seen = Some(att.shallow_clone());
        let scores: Vec<f32> =
            Vec::try_from(att.mean_dim(0, false, Kind::Float).select(0, 0)).unwrap();
        let visual = &ctx.visual.positions;
        let mut ranked: Vec<usize> = visual.clone();
        ranked.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
        ranked.truncate(self.keep_visual);
        let keep: Vec<usize> = ctx
            .kept
            .iter()
            .copied()
            .filter(|p| !visual.contains(p) || ranked.contains(p))
            .collect();
        self.chosen = keep.clone();
        Ok(Some(keep))
    }
}

#[test]
fn selector_sees_exact_attention_and_cuts_like_the_static_intervention() {
    for (model, inputs) in fixtures() {
        let k = 2;
        let n_visual = inputs.visual.positions.len();
        let mut selector = TopAttended {
            k,
            keep_visual: n_visual / 3,
            seen: None,
            chosen: Vec::new(),
        };
        let dynamic = last_logits(&model, &inputs, &mut selector);

        // The oracle: the full attention matrix of layer k − 1 over its stored input, last row.
        let mut layer_inputs = Vec::new();
        model
            .prefill(
                &inputs,
                &mut Intervention::none(),
                None,
                Some(&mut layer_inputs),
            )
            .unwrap();
        let decoder = model.decoder();
        let layer = &decoder.layers[k - 1];
        let (cos, sin) = decoder
            .rotary_emb
            .cos_sin(&inputs.position_ids, Kind::Float);
        let full = {
            let _g = tch::no_grad_guard();
            layer.attention_probs(&layer_inputs[k - 1], &cos, &sin)
        };
        let s = inputs.seq_len() as i64;
        let want = full.select(0, 0).narrow(1, s - 1, 1);
        let seen = selector.seen.as_ref().expect("the selector ran at layer k");
        assert_eq!(seen.size(), want.size());
        let d = max_abs_diff(seen, &want);
        assert!(
            d <= 1e-6,
            "{}: attention rows differ by {d}",
            model.model_type()
        );

        // Its cut is the static cut of the same keep-set, bit for bit.
        assert_eq!(selector.chosen.len(), s as usize - n_visual + n_visual / 3);
        let mut fixed = Intervention::cut_at(k, selector.chosen.iter().copied()).unwrap();
        assert!(last_logits(&model, &inputs, &mut fixed).equal(&dynamic));

        // Asking for attention and keeping everything is the plain model, bit for bit.
        struct AskOnly;
        impl TokenSelector for AskOnly {
            fn attention_rows(&self, _: usize, kept: &[usize]) -> Option<Vec<usize>> {
                Some(kept.to_vec())
            }
            fn select(&mut self, _: &CutContext) -> anyhow::Result<Option<Vec<usize>>> {
                Ok(None)
            }
        }
        let plain = last_logits(&model, &inputs, &mut Intervention::none());
        assert!(last_logits(&model, &inputs, &mut AskOnly).equal(&plain));
    }
}

/// The prompt plus `generated` tokens as one longer prompt, its rotary positions continuing the
/// prompt's (`S + i + rope_deltas` on every axis, as decoding places them).
fn extended(inputs: &ModelInputs, generated: &[i64]) -> ModelInputs {
    let s = inputs.seq_len() as i64;
    let n = generated.len() as i64;
    let ids = Tensor::cat(
        &[
            &inputs.input_ids,
            &Tensor::from_slice(generated).unsqueeze(0),
        ],
        1,
    );
    let tail = Tensor::arange_start(s, s + n, (Kind::Int64, Device::Cpu)) + inputs.rope_deltas;
    let lead = inputs.position_ids.size();
    let tail = tail.view([1, n]).expand([lead[0], n], false);
    let position_ids = match lead.len() {
        2 => Tensor::cat(&[&inputs.position_ids, &tail], 1),
        _ => Tensor::cat(&[&inputs.position_ids, &tail.unsqueeze(1)], 2),
    };
    ModelInputs {
        input_ids: ids,
        pixel_values: inputs.pixel_values.as_ref().map(|p| p.shallow_clone()),
        image_grid_thw: inputs.image_grid_thw.clone(),
        visual: VisualTokens {
            positions: inputs.visual.positions.clone(),
            grid: inputs.visual.grid,
        },
        position_ids,
        rope_deltas: inputs.rope_deltas,
    }
}

#[test]
fn cached_decoding_after_a_cut_equals_recomputation() {
    for (model, inputs) in fixtures() {
        let s = inputs.seq_len();
        let vis = &inputs.visual.positions;
        // Drop every other visual token from layer 1 and all of them from layer 2.
        let first: Vec<usize> = (0..s)
            .filter(|p| !vis.contains(p) || vis.iter().position(|v| v == p).unwrap() % 2 == 0)
            .collect();
        let second: Vec<usize> = (0..s).filter(|p| !vis.contains(p)).collect();
        for policy in [PositionPolicy::Original, PositionPolicy::Renumbered] {
            let iv = Intervention::cut_at(1, first.iter().copied())
                .unwrap()
                .then_cut_at(2, second.iter().copied())
                .unwrap()
                .with_positions(policy);
            let mut cache = KvCache::new(model.num_layers());
            let out = model
                .prefill(&inputs, &mut iv.clone(), Some(&mut cache), None)
                .unwrap();
            let last = out.hidden.narrow(1, out.hidden.size()[1] - 1, 1);
            let mut next = greedy_token(&model.lm_head(&last));
            let mut generated = Vec::new();
            for j in 1..=5 {
                generated.push(next);
                let cached = model
                    .decode_step(next, s + j - 1, &mut cache)
                    .to_kind(Kind::Float);
                let longer = extended(&inputs, &generated);
                let appended = s..s + j;
                let mut cut =
                    Intervention::cut_at(1, first.iter().copied().chain(appended.clone()))
                        .unwrap()
                        .then_cut_at(2, second.iter().copied().chain(appended))
                        .unwrap()
                        .with_positions(policy);
                let recomputed = last_logits(&model, &longer, &mut cut);
                let d = max_abs_diff(&cached, &recomputed);
                let tol = f32_logits_tolerance(&recomputed);
                assert!(
                    d <= tol,
                    "{} {policy:?}: step {j}: cached decoding differs from recomputation by {d}",
                    model.model_type()
                );
                next = greedy_token(&cached);
            }
            // Each layer cached exactly the tokens it processed: its kept prompt and 5 decoded.
            assert_eq!(cache.len_at(0), (s + 5) as i64);
            assert_eq!(cache.len_at(1), (first.len() + 5) as i64);
            assert_eq!(cache.len_at(2), (second.len() + 5) as i64);
        }
    }
}
