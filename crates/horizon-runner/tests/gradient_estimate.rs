//! `--estimate gradient` (horizon_runner::gradient): the soft key mask is the cut it linearises
//! (m = 1 the unpruned model, m = 0 the naive procedure's cut), its autograd gradient equals
//! central finite differences in f64, and the estimate writes exactly the rows the exact sweep
//! writes, with the linearisation point's rows exact. Keep-only's forward that leaves the tokens up
//! to the image's end out of autograd gives the whole soft-masked forward's value and gradient, and
//! each QK fix equals the gradient with respect to each layer's attention times that attention's
//! change when a group of keys is really added (keep-only) or removed (leave-out). Leave-out rows
//! move the target's log-odds by the QK fix of the log-odds, differentiated through autograd, and
//! their KL is the Fisher sum over the unpruned run's most likely tokens of each token's own QK
//! fix, or the answer-versus-rest KL of the rows' own p.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_data::info_rows::KlEstimate;
use horizon_runner::decoder::AttentionProbe;
use horizon_runner::gradient::{
    estimate_keep_only_per_cut, estimate_leave_out, estimate_leave_out_batch, estimate_sample,
    group_columns, keep_only_log_probs, last_log_probs, leave_out_batches, own_window_queries,
    qk_fixed_addition, qk_fixed_removal, soft_log_probs, stacked_batches, LeaveOutPoint, KL_TOKENS,
};
use horizon_runner::info::{
    full_run, naive_variant, sweep_sample, variant_keep_sets, FullRun, InfoMode, SweepConfig,
    Variant, WindowGrid,
};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{ModelInputs, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(kind: Kind) -> (VlModel, ModelInputs, i64) {
    let dir = root().join("fixtures/llava");
    let model_dir = dir.join("models/llava-tiny");
    let model = VlModel::load(&model_dir, Device::Cpu, kind).unwrap();
    let processor = Processor::load(&model_dir, &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            "What color is the circle?",
            &dir.join("images/square.png"),
            PromptTemplate::Auto,
        )
        .unwrap();
    let gt = processor.first_answer_token("red").unwrap().unwrap();
    (model, inputs, gt)
}

/// Key weights `[L − from, S]`: 1, and 0 on `dropped` positions.
fn weights(layers: usize, s: usize, dropped: &[usize]) -> Vec<f64> {
    let mut m = vec![1.0; layers * s];
    for l in 0..layers {
        for &j in dropped {
            m[l * s + j] = 0.0;
        }
    }
    m
}

fn tensor(m: &[f64], layers: usize, s: usize) -> Tensor {
    Tensor::from_slice(m)
        .view([layers as i64, s as i64])
        .to_kind(Kind::Double)
}

#[test]
fn soft_mask_gradient_equals_central_finite_differences_f64() {
    let (model, inputs, gt) = fixture(Kind::Double);
    let full = full_run(&model, &inputs).unwrap();
    let (s, n) = (inputs.seq_len(), model.num_layers());
    let visual = inputs.visual.positions.clone();
    // Leave-out's point (all keys present, from layer 0) and keep-only's (visual keys removed
    // from layer 2 on, resumed from layer 2's stored input), there also with the visual queries
    // fixed to their own windows as the estimate runs it.
    let queries = own_window_queries(
        &inputs,
        &window_positions(&model, &inputs),
        Kind::Double,
        Device::Cpu,
    );
    for (from, dropped, fixed) in [
        (0usize, vec![], None),
        (2, visual.clone(), None),
        (2, visual.clone(), Some(&queries)),
    ] {
        let layers = n - from;
        let base = weights(layers, s, &dropped);
        let hidden = &full.layer_inputs[from];
        let m = tensor(&base, layers, s).set_requires_grad(true);
        let logp = soft_log_probs(&model, &inputs, from, hidden, &m, fixed);
        let g = Tensor::run_backward(&[logp.get(gt)], &[&m], false, false).remove(0);
        // Small steps: at keep-only's point (m = 0) a key of large score makes log p strongly
        // curved in its weight.
        let eps = 1e-6;
        let mut checked = 0;
        let mut largest = 0f64;
        for l in 0..layers {
            for &j in [visual[0], visual[7], visual[20], visual[35], 3]
                .iter()
                .take(if dropped.is_empty() { 5 } else { 4 })
            {
                let at = |delta: f64| {
                    let mut m = base.clone();
                    m[l * s + j] += delta;
                    let _guard = tch::no_grad_guard();
                    soft_log_probs(&model, &inputs, from, hidden, &tensor(&m, layers, s), fixed)
                        .get(gt)
                        .double_value(&[])
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                let ad = g.double_value(&[l as i64, j as i64]);
                largest = largest.max(ad.abs());
                assert!(
                    (fd - ad).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "from {from}, layer {l}, key {j}: autograd {ad} vs finite differences {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 8);
        assert!(
            largest > 1e-4,
            "the gradients checked are not all zero ({largest})"
        );
    }
}

/// The LLaVA and Qwen2.5-VL fixture models (under fixtures/) with an image each.
const LLAVA_AND_QWEN: [(&str, &str); 2] = [
    ("llava/models/llava-tiny", "llava/images/square.png"),
    (
        "qwen2_5_vl/models/qwen-tiny",
        "qwen2_5_vl/images/nonsquare.png",
    ),
];

/// [`LLAVA_AND_QWEN`] and the LLaVA-NeXT fixture.
const EVERY_FAMILY: [(&str, &str); 3] = [
    LLAVA_AND_QWEN[0],
    LLAVA_AND_QWEN[1],
    (
        "llava_next/models/llava-next-tiny",
        "llava_next/images/wide.png",
    ),
];

/// A fixture model in f64 with its prompt "What is in the image?" over `image` (both under
/// fixtures/), the unpruned run, and the unpruned model's most likely next token.
fn f64_case(model_dir: &str, image: &str) -> (VlModel, ModelInputs, FullRun, i64) {
    let dir = root().join("fixtures");
    let model = VlModel::load(&dir.join(model_dir), Device::Cpu, Kind::Double).unwrap();
    let processor = Processor::load(&dir.join(model_dir), &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            "What is in the image?",
            &dir.join(image),
            PromptTemplate::Auto,
        )
        .unwrap();
    let full = full_run(&model, &inputs).unwrap();
    let token = full
        .log_probs
        .squeeze_dim(0)
        .argmax(0, false)
        .int64_value(&[]);
    (model, inputs, full, token)
}

/// The prompt positions of each 2×2 window's visual tokens.
fn window_positions(model: &VlModel, inputs: &ModelInputs) -> Vec<Vec<usize>> {
    let grid = model.window_grid(inputs, 2).unwrap();
    let visual = &inputs.visual.positions;
    (0..grid.num_windows())
        .map(|w| grid.window_tokens(w).iter().map(|&t| visual[t]).collect())
        .collect()
}

/// `[S, G]` f64 membership columns of `groups` (`gradient::group_columns`).
fn f64_groups(s: usize, groups: &[Vec<usize>]) -> Tensor {
    group_columns(
        s,
        groups.iter().map(|g| g.as_slice()),
        Kind::Double,
        Device::Cpu,
    )
}

/// Leave-out's soft-masked forward of every layer from the unpruned layer-0 input with key
/// weights `m` `[L, S]`: the next-token log-probabilities and each layer's attention probe.
fn probed_from_layer_0(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &FullRun,
    m: &Tensor,
) -> (Tensor, Vec<AttentionProbe>) {
    let (out, probes) = model.decoder().forward_key_weighted_probed(
        0,
        &full.layer_inputs[0],
        &inputs.position_ids,
        m,
    );
    (last_log_probs(model, &out), probes)
}

/// The attention probabilities of `probes`, the same tensors of the graph.
fn graph_probs(probes: &[AttentionProbe]) -> Vec<Tensor> {
    probes.iter().map(|p| p.probs.shallow_clone()).collect()
}

/// Value and gradient rows `[L − from][S]` of log p(`token`) under key weights `m`.
fn value_and_gradient(
    forward: impl Fn(&Tensor) -> Tensor,
    m: &[f64],
    layers: usize,
    s: usize,
    token: i64,
) -> (f64, Vec<Vec<f64>>) {
    let m = tensor(m, layers, s).set_requires_grad(true);
    let logp = forward(&m).get(token);
    let g = Tensor::run_backward(&[&logp], &[&m], false, false).remove(0);
    let rows = (0..layers)
        .map(|l| Vec::<f64>::try_from(&g.get(l as i64)).unwrap())
        .collect();
    (logp.double_value(&[]), rows)
}

#[test]
fn keep_only_forward_without_autograd_up_to_the_image_end_equals_the_whole_soft_forward() {
    let cases = [
        ("llava/models/llava-tiny", "llava/images/square.png", false),
        (
            "qwen2_5_vl/models/qwen-tiny",
            "qwen2_5_vl/images/nonsquare.png",
            false,
        ),
        (
            "llava_next/models/llava-next-tiny",
            "llava_next/images/wide.png",
            false,
        ),
        // One visual token in the middle of the image treated as text: the context then ends
        // there and the visual tokens after it are differentiated with the text.
        ("llava/models/llava-tiny", "llava/images/square.png", true),
    ];
    for (model_dir, image, split_image) in cases {
        let (model, mut inputs, full, token) = f64_case(model_dir, image);
        let mut windows = window_positions(&model, &inputs);
        if split_image {
            let middle = inputs
                .visual
                .positions
                .remove(inputs.visual.positions.len() / 2);
            for w in &mut windows {
                w.retain(|&p| p != middle);
            }
        }
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let visual = inputs.visual.positions.clone();
        let queries = own_window_queries(&inputs, &windows, Kind::Double, Device::Cpu);
        for from in 1..n {
            let layers = n - from;
            let base = weights(layers, s, &visual);
            let hidden = &full.layer_inputs[from];
            let (whole, g_whole) = value_and_gradient(
                |m| soft_log_probs(&model, &inputs, from, hidden, m, Some(&queries)),
                &base,
                layers,
                s,
                token,
            );
            let (split, g_split) = value_and_gradient(
                |m| keep_only_log_probs(&model, &inputs, from, hidden, m, &queries).0,
                &base,
                layers,
                s,
                token,
            );
            assert!(
                (whole - split).abs() < 1e-12,
                "{model_dir} from {from}: log p {whole} vs {split}"
            );
            let mut largest = 0f64;
            for l in 0..layers {
                for &j in &visual {
                    let (a, b) = (g_whole[l][j], g_split[l][j]);
                    largest = largest.max(a.abs());
                    assert!(
                        (a - b).abs() <= 1e-10 * (1.0 + a.abs()),
                        "{model_dir} from {from}, layer {l}, key {j}: {a} vs {b}"
                    );
                }
            }
            assert!(
                largest > 1e-6,
                "{model_dir} from {from}: zero gradients ({largest})"
            );
        }
    }
}

#[test]
fn keep_only_qk_fix_is_the_attention_gradient_times_the_attention_change_of_adding_the_window() {
    for (model_dir, image) in LLAVA_AND_QWEN {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let visual = inputs.visual.positions.clone();
        let queries = own_window_queries(
            &inputs,
            &window_positions(&model, &inputs),
            Kind::Double,
            Device::Cpu,
        );
        // Three groups of visual keys: the first 2x2-ish block, a middle run, the last token.
        let nv = visual.len();
        let groups_of: Vec<Vec<usize>> = vec![
            visual[..4].to_vec(),
            visual[nv / 2..nv / 2 + 3].to_vec(),
            vec![visual[nv - 1]],
        ];
        let groups = f64_groups(s, &groups_of);
        for from in [1, n - 1] {
            let layers = n - from;
            let hidden = &full.layer_inputs[from];
            let base = weights(layers, s, &visual);
            let m = tensor(&base, layers, s).set_requires_grad(true);
            let (logq, probes) = keep_only_log_probs(&model, &inputs, from, hidden, &m, &queries);
            assert_eq!(probes.len(), layers);
            let fixed = qk_fixed_addition(&logq.get(token), &probes, &groups).unwrap();
            // The oracle: ∂log p/∂A of each layer, dotted with the change of that layer's attention
            // when the group's keys are weighed 1 in that layer alone (its input is unchanged).
            let probs: Vec<&Tensor> = probes.iter().map(|p| &p.probs).collect();
            let grads = Tensor::run_backward(&[logq.get(token)], &probs, false, false);
            for (w, g) in groups_of.iter().enumerate() {
                let mut oracle = 0.0;
                for l in 0..layers {
                    let mut added = base.clone();
                    for &j in g {
                        added[l * s + j] = 1.0;
                    }
                    let _guard = tch::no_grad_guard();
                    let (_, with_group) = keep_only_log_probs(
                        &model,
                        &inputs,
                        from,
                        hidden,
                        &tensor(&added, layers, s),
                        &queries,
                    );
                    let change = &with_group[l].probs - probes[l].probs.detach();
                    oracle += (&grads[l] * change).sum(Kind::Double).double_value(&[]);
                }
                assert!(
                    (fixed[w] - oracle).abs() <= 1e-9 * (1.0 + oracle.abs()),
                    "{model_dir} from {from}, group {w}: QK fix {} vs oracle {oracle}",
                    fixed[w]
                );
                assert!(
                    oracle.abs() > 1e-8,
                    "{model_dir} from {from}, group {w}: {oracle}"
                );
            }
        }
    }
}

#[test]
fn leave_out_qk_fix_is_the_attention_gradient_times_the_attention_change_of_removing_the_group() {
    for (model_dir, image) in LLAVA_AND_QWEN {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let visual = inputs.visual.positions.clone();
        let nv = visual.len();
        let groups_of: Vec<Vec<usize>> = vec![
            visual.clone(),
            visual[..4].to_vec(),
            visual[nv / 2..nv / 2 + 3].to_vec(),
        ];
        let groups = f64_groups(s, &groups_of);
        let base = weights(n, s, &[]);
        let forward = |m: &Tensor| probed_from_layer_0(&model, &inputs, &full, m);
        let (logp, probes) = forward(&tensor(&base, n, s).set_requires_grad(true));
        assert_eq!(probes.len(), n);
        let fixed = qk_fixed_removal(&logp.get(token), &graph_probs(&probes), &groups).unwrap();
        let probs: Vec<&Tensor> = probes.iter().map(|p| &p.probs).collect();
        let grads = Tensor::run_backward(&[logp.get(token)], &probs, false, false);
        for l in 0..n {
            for (w, g) in groups_of.iter().enumerate() {
                let mut removed = base.clone();
                for &j in g {
                    removed[l * s + j] = 0.0;
                }
                let _guard = tch::no_grad_guard();
                let (_, without) = forward(&tensor(&removed, n, s));
                let change = &without[l].probs - probes[l].probs.detach();
                let oracle = (&grads[l] * change).sum(Kind::Double).double_value(&[]);
                assert!(
                    (fixed[l][w] - oracle).abs() <= 1e-9 * (1.0 + oracle.abs()),
                    "{model_dir} layer {l}, group {w}: QK fix {} vs oracle {oracle}",
                    fixed[l][w]
                );
                assert!(
                    oracle.abs() > 1e-9,
                    "{model_dir} layer {l}, group {w}: {oracle}"
                );
            }
        }
    }
}

#[test]
fn leave_out_point_forward_equals_the_soft_forward_at_weight_one_in_value_and_attention_gradient() {
    // `Decoder::forward_probed` (the point leave-out is linearised at: plain softmax, the last
    // layer's last query only) against the key-weighted forward at m = 1 on every key.
    for (model_dir, image) in EVERY_FAMILY {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let m = tensor(&weights(n, s, &[]), n, s).set_requires_grad(true);
        let (soft_logp, probes) = probed_from_layer_0(&model, &inputs, &full, &m);
        let soft = graph_probs(&probes);
        let soft_grads = Tensor::run_backward(&[soft_logp.get(token)], &soft, false, false);
        let embeds = full.layer_inputs[0].detach().set_requires_grad(true);
        let (out, probs) = model
            .decoder()
            .forward_probed(&embeds, &inputs.position_ids);
        assert_eq!(out.size()[1], 1, "{model_dir}: the last position only");
        let logp = last_log_probs(&model, &out);
        let grads = Tensor::run_backward(&[logp.get(token)], &probs, false, false);
        let largest = |t: &Tensor| t.abs().max().double_value(&[]);
        let logp_gap = largest(&(&logp - &soft_logp.detach()));
        assert!(logp_gap <= 1e-12, "{model_dir}: log-probs {logp_gap}");
        assert_eq!(probs.len(), n);
        for l in 0..n {
            // The last layer's last query, the other layers' every query.
            let rows = |t: &Tensor| {
                if l == n - 1 {
                    t.narrow(2, s as i64 - 1, 1)
                } else {
                    t.shallow_clone()
                }
            };
            assert_eq!(
                probs[l].size(),
                rows(&soft[l]).size(),
                "{model_dir} layer {l}"
            );
            let gap = largest(&(&probs[l].detach() - rows(&soft[l].detach())));
            assert!(gap <= 1e-12, "{model_dir} layer {l}: probabilities {gap}");
            let scale = largest(&soft_grads[l]);
            let gap = largest(&(&grads[l] - rows(&soft_grads[l])));
            assert!(
                scale > 1e-6 && gap <= 1e-9 * scale,
                "{model_dir} layer {l}: attention gradient {gap} of {scale}"
            );
        }
        // The last layer's other queries do not reach the output.
        let others = soft_grads[n - 1].narrow(2, 0, s as i64 - 1);
        assert_eq!(largest(&others), 0.0, "{model_dir}");
    }
}

/// A leave-out sweep of 2×2 windows cut at every one of `n` layers.
fn leave_out_at_every_layer(n: usize) -> SweepConfig {
    SweepConfig {
        layers: (0..n).collect(),
        window_size: 2,
        mode: InfoMode::LeaveOut,
        batch_size: None,
        memory_budget_bytes: 1 << 30,
    }
}

#[test]
fn leave_out_rows_move_the_target_log_odds_by_the_qk_fix_of_the_log_odds() {
    for (model_dir, image) in LLAVA_AND_QWEN {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let cfg = leave_out_at_every_layer(n);
        let rows =
            estimate_sample(&model, &inputs, &full, token, &cfg, KlEstimate::Fisher).unwrap();
        // The oracle differentiates the log-odds itself, log p(y) − log Σ_{i≠y} p(i), through
        // autograd, where the estimate scales the change of log p(y) by 1 / (1 − p(y)).
        let groups_of: Vec<Vec<usize>> = std::iter::once(inputs.visual.positions.clone())
            .chain(window_positions(&model, &inputs))
            .collect();
        let groups = f64_groups(s, &groups_of);
        let m = tensor(&weights(n, s, &[]), n, s).set_requires_grad(true);
        let (logp, probes) = probed_from_layer_0(&model, &inputs, &full, &m);
        let vocab = logp.size()[0];
        let others = Tensor::cat(
            &[
                logp.narrow(0, 0, token),
                logp.narrow(0, token + 1, vocab - token - 1),
            ],
            0,
        );
        let log_odds = logp.get(token) - others.logsumexp([0i64].as_slice(), false);
        let fixed = qk_fixed_removal(&log_odds, &graph_probs(&probes), &groups).unwrap();
        // The starting point is the unpruned row's, which the engine scores in f32.
        let scored = full.log_probs.squeeze_dim(0).to_kind(Kind::Double);
        let p0 = scored.get(token).exp().double_value(&[]);
        let lo0 = (p0 / (1.0 - p0)).ln();
        // Linear in log p(y) would differ from the log-odds by a factor 1 − p(y) in the change.
        assert!(
            p0 > 0.05,
            "{model_dir}: p(y) = {p0} too small to tell them apart"
        );
        let mut largest = 0.0f64;
        for r in rows.iter().filter(|r| r.layer.is_some()) {
            let k = r.layer.unwrap();
            let g = match r.variant {
                Variant::TextOnly => 0,
                Variant::Window(w) => w + 1,
                Variant::Full => unreachable!(),
            };
            let change: f64 = fixed[k..].iter().map(|layer| layer[g]).sum();
            let expected = lo0 + change;
            let got = r.logp - (-r.logp.exp_m1()).ln();
            assert!(
                (got - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
                "{model_dir} K={k} {:?}: row log-odds {got} vs oracle {expected}",
                r.variant
            );
            largest = largest.max(change.abs());
        }
        assert!(largest > 1e-3, "{model_dir}: every change ≈ 0 ({largest})");
    }
}

#[test]
fn leave_out_kl_is_the_fisher_sum_of_each_tokens_qk_fix_or_the_answer_split_of_the_rows_p() {
    for (model_dir, image) in LLAVA_AND_QWEN {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let cfg = leave_out_at_every_layer(n);
        let fisher_rows = estimate_sample(&model, &inputs, &full, token, &cfg, KlEstimate::Fisher);
        let answer_rows = estimate_sample(&model, &inputs, &full, token, &cfg, KlEstimate::Answer);
        let (fisher_rows, answer_rows) = (fisher_rows.unwrap(), answer_rows.unwrap());
        assert_eq!(fisher_rows.len(), answer_rows.len());
        // `horizon info` starts from the input embeddings, with no unpruned prefill: the same rows.
        let embeds = model.input_embeds(&inputs).unwrap();
        let point = LeaveOutPoint::from_embeds(&model, &inputs, &embeds).unwrap();
        let from_embeds =
            estimate_leave_out(&model, &inputs, &point, token, &cfg, KlEstimate::Fisher).unwrap();
        assert_eq!(from_embeds, fisher_rows, "{model_dir}");
        // The oracle: each of the unpruned run's most likely tokens differentiated on its own.
        let groups_of: Vec<Vec<usize>> = std::iter::once(inputs.visual.positions.clone())
            .chain(window_positions(&model, &inputs))
            .collect();
        let groups = f64_groups(s, &groups_of);
        // The unpruned distribution in f64, as the estimate's own unpruned forward has it (the
        // engine's full run scores in f32).
        let unpruned = tch::no_grad(|| {
            let m = tensor(&weights(n, s, &[]), n, s);
            probed_from_layer_0(&model, &inputs, &full, &m).0
        });
        let top: Vec<i64> =
            Vec::try_from(&unpruned.topk(KL_TOKENS as i64, 0, true, true).1).unwrap();
        let per_token: Vec<(f64, Vec<Vec<f64>>)> = top
            .iter()
            .map(|&y| {
                let m = tensor(&weights(n, s, &[]), n, s).set_requires_grad(true);
                let (logp, probes) = probed_from_layer_0(&model, &inputs, &full, &m);
                let p = unpruned.get(y).exp().double_value(&[]);
                (
                    p,
                    qk_fixed_removal(&logp.get(y), &graph_probs(&probes), &groups).unwrap(),
                )
            })
            .collect();
        let lp0 = unpruned.get(token).double_value(&[]);
        assert!(
            (fisher_rows[0].logp - lp0).abs() <= 1e-12,
            "{model_dir}: full row {:?} vs the unpruned {lp0}",
            fisher_rows[0]
        );
        let (p0, rest0) = (lp0.exp(), -lp0.exp_m1());
        let (mut largest_fisher, mut largest_answer) = (0.0f64, 0.0f64);
        for (f, a) in fisher_rows.iter().zip(&answer_rows) {
            assert_eq!((f.layer, f.variant), (a.layer, a.variant));
            // The same p and log p either way.
            assert_eq!((f.p, f.logp), (a.p, a.logp), "{model_dir} {f:?} vs {a:?}");
            let Some(k) = f.layer else {
                assert_eq!((f.kl, a.kl), (0.0, 0.0));
                continue;
            };
            let g = match f.variant {
                Variant::TextOnly => 0,
                Variant::Window(w) => w + 1,
                Variant::Full => unreachable!(),
            };
            let fisher: f64 = 0.5
                * per_token
                    .iter()
                    .map(|(p, d)| p * d[k..].iter().map(|layer| layer[g]).sum::<f64>().powi(2))
                    .sum::<f64>();
            assert!(
                (f.kl - fisher).abs() <= 1e-9 * (1.0 + fisher),
                "{model_dir} K={k} {:?}: row KL {} vs Fisher sum {fisher}",
                f.variant,
                f.kl
            );
            // p ln(p / p') + (1 − p) ln((1 − p) / (1 − p')) of the row's own p'.
            let rest = -a.logp.exp_m1();
            let answer = p0 * (lp0 - a.logp) + rest0 * (rest0.ln() - rest.ln());
            assert!(
                (a.kl - answer).abs() <= 1e-6 * (1.0 + answer),
                "{model_dir} K={k} {:?}: row KL {} vs answer split {answer}",
                a.variant,
                a.kl
            );
            largest_fisher = largest_fisher.max(fisher);
            largest_answer = largest_answer.max(answer);
        }
        assert!(
            largest_fisher > 1e-6 && largest_answer > 1e-6,
            "{model_dir}: every KL ≈ 0 ({largest_fisher}, {largest_answer})"
        );
    }
}

#[test]
fn leave_out_estimate_of_a_padded_batch_of_samples_equals_one_sample_at_a_time() {
    let families = [
        ("llava/models/llava-tiny", ["llava/images/square.png"; 3]),
        (
            "qwen2_5_vl/models/qwen-tiny",
            [
                "qwen2_5_vl/images/nonsquare.png",
                "qwen2_5_vl/images/square.png",
                "qwen2_5_vl/images/nonsquare.png",
            ],
        ),
        (
            "llava_next/models/llava-next-tiny",
            [
                "llava_next/images/wide.png",
                "llava_next/images/tall.png",
                "llava_next/images/small.png",
            ],
        ),
    ];
    let questions = [
        "What is in the image?",
        "Describe the picture in one short sentence, naming every shape and its colour.",
        "Colour?",
    ];
    let dir = root().join("fixtures");
    for (model_dir, images) in families {
        let model = VlModel::load(&dir.join(model_dir), Device::Cpu, Kind::Double).unwrap();
        let processor = Processor::load(&dir.join(model_dir), &model).unwrap();
        let prepared: Vec<(ModelInputs, Tensor)> = images
            .iter()
            .zip(questions)
            .map(|(image, question)| {
                let inputs = processor
                    .prepare(&model, question, &dir.join(image), PromptTemplate::Auto)
                    .unwrap();
                let embeds = model.input_embeds(&inputs).unwrap();
                (inputs, embeds)
            })
            .collect();
        let lengths: BTreeSet<usize> = prepared.iter().map(|(i, _)| i.seq_len()).collect();
        assert_eq!(
            lengths.len(),
            3,
            "{model_dir}: three prompt lengths, so the batch pads"
        );
        let lens: Vec<usize> = prepared.iter().map(|(i, _)| i.seq_len()).collect();
        assert_eq!(
            leave_out_batches(&model, &lens, 1),
            vec![vec![0], vec![1], vec![2]]
        );
        assert_eq!(
            leave_out_batches(&model, &lens, 1 << 30),
            vec![vec![0, 1, 2]]
        );
        let cfg = leave_out_at_every_layer(model.num_layers());
        let refs: Vec<(&ModelInputs, &Tensor)> = prepared.iter().map(|(i, e)| (i, e)).collect();
        let batch = LeaveOutPoint::from_embeds_batch(&model, &refs).unwrap();
        let greedy = batch.greedy_tokens();
        // A target that is not the greedy one for the middle sample: its Fisher sum then has one
        // more token of its own than the others' (the target outside the most likely four).
        let targets: Vec<i64> = greedy
            .iter()
            .enumerate()
            .map(|(b, &g)| if b == 1 { (g + 7) % 50 } else { g })
            .collect();
        let with_targets: Vec<(&ModelInputs, i64)> = prepared
            .iter()
            .zip(&targets)
            .map(|((i, _), &t)| (i, t))
            .collect();
        for kl in [KlEstimate::Fisher, KlEstimate::Answer] {
            let batched =
                estimate_leave_out_batch(&model, &with_targets, &batch, &cfg, kl).unwrap();
            let mut largest = 0f64;
            for (b, (inputs, embeds)) in prepared.iter().enumerate() {
                let point = LeaveOutPoint::from_embeds(&model, inputs, embeds).unwrap();
                assert_eq!(point.greedy_token(), greedy[b], "{model_dir} sample {b}");
                let alone =
                    estimate_leave_out(&model, inputs, &point, targets[b], &cfg, kl).unwrap();
                assert_eq!(batched[b].len(), alone.len());
                for (x, y) in batched[b].iter().zip(&alone) {
                    assert_eq!((x.layer, x.variant), (y.layer, y.variant));
                    for (u, v) in [(x.logp, y.logp), (x.kl, y.kl), (x.p, y.p)] {
                        assert!(
                            (u - v).abs() <= 1e-9 * (1.0 + v.abs()),
                            "{model_dir} sample {b} {kl:?}: {x:?} vs {y:?}"
                        );
                    }
                    largest = largest.max((x.logp - alone[0].logp).abs());
                }
            }
            assert!(
                largest > 1e-6,
                "{model_dir}: every row is the full row ({largest})"
            );
        }
    }
}

#[test]
fn soft_mask_at_one_and_zero_is_the_plain_model_and_the_cut() {
    let (model, inputs, gt) = fixture(Kind::Double);
    let full = full_run(&model, &inputs).unwrap();
    let (s, n) = (inputs.seq_len(), model.num_layers());
    let _guard = tch::no_grad_guard();
    let plain = soft_log_probs(
        &model,
        &inputs,
        0,
        &full.layer_inputs[0],
        &tensor(&weights(n, s, &[]), n, s),
        None,
    );
    let diff = (&plain - full.log_probs.squeeze_dim(0))
        .abs()
        .max()
        .double_value(&[]);
    // The engine scores in f32 (`next_token_log_probs`).
    assert!(diff < 1e-5, "m = 1 vs the plain model: {diff}");
    let grid = WindowGrid::new(inputs.visual.grid, 2).unwrap();
    for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
        let (_, windows) = variant_keep_sets(&inputs, &grid, mode);
        for (k, w) in [(1usize, 0usize), (2, 4), (3, 8)] {
            let keep = &windows[w];
            let dropped: Vec<usize> = (0..s).filter(|p| !keep.contains(p)).collect();
            let soft = soft_log_probs(
                &model,
                &inputs,
                k,
                &full.layer_inputs[k],
                &tensor(&weights(n - k, s, &dropped), n - k, s),
                None,
            )
            .get(gt)
            .double_value(&[]);
            let (_, cut, _) = naive_variant(&model, &inputs, &full, gt, k, keep).unwrap();
            assert!(
                (soft - cut).abs() < 1e-5,
                "{mode:?} K={k} window {w}: soft mask {soft} vs cut {cut}"
            );
        }
    }
}

#[test]
fn keep_only_with_visual_queries_fixed_to_their_window_is_the_cut_at_weight_one_on_the_window() {
    for (model_dir, image) in EVERY_FAMILY {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        let windows = window_positions(&model, &inputs);
        let queries = own_window_queries(&inputs, &windows, Kind::Double, Device::Cpu);
        // The fault this guards against: visual queries that see the text only, so that a kept
        // window's tokens no longer attend to each other.
        let text_only_queries = own_window_queries(&inputs, &[], Kind::Double, Device::Cpu);
        let grid = model.window_grid(&inputs, 2).unwrap();
        let (_, keep_sets) = variant_keep_sets(&inputs, &grid, InfoMode::KeepOnly);
        let visual = inputs.visual.positions.clone();
        let mut largest_fault = 0f64;
        for k in [1, n / 2, n - 1] {
            let layers = n - k;
            let hidden = &full.layer_inputs[k];
            for w in [0, windows.len() / 2, windows.len() - 1] {
                let others: Vec<usize> = visual
                    .iter()
                    .copied()
                    .filter(|p| !windows[w].contains(p))
                    .collect();
                let m = tensor(&weights(layers, s, &others), layers, s);
                let _guard = tch::no_grad_guard();
                let value = |q| {
                    keep_only_log_probs(&model, &inputs, k, hidden, &m, q)
                        .0
                        .get(token)
                        .double_value(&[])
                };
                let (_, cut, _) =
                    naive_variant(&model, &inputs, &full, token, k, &keep_sets[w]).unwrap();
                let soft = value(&queries);
                // The engine scores in f32 (`next_token_log_probs`).
                assert!(
                    (soft - cut).abs() < 1e-5,
                    "{model_dir} K={k} window {w}: key weights 1 on the window {soft} vs cut {cut}"
                );
                largest_fault = largest_fault.max((value(&text_only_queries) - cut).abs());
            }
        }
        assert!(
            largest_fault > 1e-4,
            "{model_dir}: visual queries on the text only change nothing ({largest_fault})"
        );
    }
}

#[test]
fn keep_only_estimate_of_several_cut_layers_in_one_batch_equals_one_cut_at_a_time() {
    for (model_dir, image) in EVERY_FAMILY {
        let (model, inputs, full, token) = f64_case(model_dir, image);
        let (s, n) = (inputs.seq_len(), model.num_layers());
        // Every layer, and a gap between two cut layers; a budget for all of them at once, and one
        // that puts each cut layer in a batch of its own.
        for layers in [(0..n).collect::<Vec<_>>(), vec![1, n - 1]] {
            for budget in [1usize << 30, 1] {
                let cfg = SweepConfig {
                    layers: layers.clone(),
                    window_size: 2,
                    mode: InfoMode::KeepOnly,
                    batch_size: None,
                    memory_budget_bytes: budget,
                };
                let context = inputs.visual.positions.last().unwrap() + 1;
                let batches = stacked_batches(&model, s, context, &layers, budget).len();
                assert_eq!(batches, if budget == 1 { layers.len() } else { 1 });
                let stacked =
                    estimate_sample(&model, &inputs, &full, token, &cfg, KlEstimate::Fisher)
                        .unwrap();
                let one_at_a_time =
                    estimate_keep_only_per_cut(&model, &inputs, &full, token, &cfg).unwrap();
                assert_eq!(stacked.len(), one_at_a_time.len());
                let mut largest = 0f64;
                for (a, b) in stacked.iter().zip(&one_at_a_time) {
                    assert_eq!((a.layer, a.variant), (b.layer, b.variant));
                    for (x, y) in [(a.logp, b.logp), (a.kl, b.kl), (a.p, b.p)] {
                        assert!(
                            (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                            "{model_dir} {layers:?} budget {budget}: {a:?} vs {b:?}"
                        );
                    }
                    if matches!(a.variant, Variant::Window(_)) {
                        largest = largest.max((a.logp - one_at_a_time[1].logp).abs());
                    }
                }
                assert!(
                    largest > 1e-6,
                    "{model_dir}: windows change nothing ({largest})"
                );
            }
        }
    }
}

#[test]
fn a_bf16_model_is_estimated_in_both_modes_with_its_linearisation_points_near_f32() {
    let (bf16, inputs, gt) = fixture(Kind::BFloat16);
    let (f32_model, f32_inputs, _) = fixture(Kind::Float);
    let (full, f32_full) = (
        full_run(&bf16, &inputs).unwrap(),
        full_run(&f32_model, &f32_inputs).unwrap(),
    );
    for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
        let cfg = SweepConfig {
            layers: (1..bf16.num_layers()).collect(),
            window_size: 2,
            mode,
            batch_size: None,
            memory_budget_bytes: 1 << 30,
        };
        for kl in [KlEstimate::Fisher, KlEstimate::Answer] {
            if mode == InfoMode::KeepOnly && kl == KlEstimate::Answer {
                continue;
            }
            let rows = estimate_sample(&bf16, &inputs, &full, gt, &cfg, kl).unwrap();
            let reference = estimate_sample(&f32_model, &f32_inputs, &f32_full, gt, &cfg, kl);
            let reference = reference.unwrap();
            assert_eq!(rows.len(), reference.len());
            for (r, x) in rows.iter().zip(&reference) {
                assert!(
                    r.p.is_finite()
                        && (0.0..=1.0).contains(&r.p)
                        && r.kl.is_finite()
                        && r.kl >= 0.0,
                    "{mode:?} {kl:?}: {r:?}"
                );
                // The rows computed, not linearised, stay within bf16's rounding of f32's.
                let point = r.layer.is_none()
                    || (mode == InfoMode::KeepOnly && matches!(r.variant, Variant::TextOnly));
                if point {
                    assert!(
                        (r.p - x.p).abs() < 0.05,
                        "{mode:?} {kl:?}: {r:?} vs f32 {x:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_estimate_writes_the_exact_sweeps_rows_and_its_linearisation_points_exactly() {
    let (model, inputs, gt) = fixture(Kind::Float);
    let full = full_run(&model, &inputs).unwrap();
    let layers: Vec<usize> = (0..model.num_layers()).collect();
    for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
        let cfg = SweepConfig {
            layers: layers.clone(),
            window_size: 2,
            mode,
            batch_size: None,
            memory_budget_bytes: 1 << 30,
        };
        let exact = sweep_sample(&model, &inputs, &full, gt, &cfg).unwrap();
        let estimate =
            estimate_sample(&model, &inputs, &full, gt, &cfg, KlEstimate::Fisher).unwrap();
        let keys = |rows: &[horizon_runner::info::VariantResult]| {
            rows.iter()
                .map(|r| format!("{:?} {:?}", r.layer, r.variant))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(estimate.len(), exact.len());
        assert_eq!(keys(&estimate), keys(&exact));
        for e in &estimate {
            assert!(
                (0.0..=1.0).contains(&e.p) && e.logp <= 0.0 && e.kl >= 0.0,
                "{e:?}"
            );
            let x = exact
                .iter()
                .find(|x| x.layer == e.layer && x.variant == e.variant)
                .unwrap();
            let point = match mode {
                InfoMode::KeepOnly => {
                    matches!(e.variant, horizon_runner::info::Variant::TextOnly)
                        || e.layer.is_none()
                }
                InfoMode::LeaveOut => e.layer.is_none(),
            };
            if point {
                for (a, b) in [(e.p, x.p), (e.logp, x.logp), (e.kl, x.kl)] {
                    assert!((a - b).abs() < 1e-5, "{mode:?} {e:?} vs exact {x:?}");
                }
            }
        }
    }
}
