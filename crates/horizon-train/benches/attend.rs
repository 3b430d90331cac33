//! Benchmark: the trainer's attention supervision (`train::attend`) over the supervised query rows only
//! (`LlamaAttention::attention_weights_at`, what training runs) against the full `[B, H, S, S]`
//! matrices (`attention_weights`, what it ran before), measured in the same run on the bundled
//! horizon-large decoder with a training batch's shapes. Each pass is the forward and the backward of
//! both hops' losses over all 12 layers.
//!
//! `cargo bench -p horizon-runner --bench attend [-- REPS]` (default 20 repetitions of each, alternated).

use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use horizon_runner::VlModel;
use horizon_train::{attend, early_answer_layer};

/// A training batch of the large model: 32 samples of 90 tokens, 64 of them image tokens from position
/// 5; per sample one shape-word query (position 75, evidence 4 patches) and three answer queries
/// (positions 86-88, each with 4 patches, the second hop from the answer to the shape word).
const BATCH: i64 = 32;
const SEQ: i64 = 90;

/// (batch row, query position, key position): one evidence key of one supervised query.
type Triple = (usize, usize, usize);

fn triples() -> (Vec<Triple>, Vec<Triple>) {
    let mut hop_one = Vec::new();
    let mut hop_two = Vec::new();
    for r in 0..BATCH as usize {
        for (q, first) in [
            (75, 5 + r % 40),
            (86, 10 + r % 30),
            (87, 20 + r % 30),
            (88, 30 + r % 30),
        ] {
            for p in 0..4 {
                hop_one.push((r, q, first + p));
            }
        }
        hop_two.push((r, 86, 75));
    }
    (hop_one, hop_two)
}

fn main() {
    let reps: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/models/horizon-large");
    let VlModel::Llava(model) = VlModel::load(&dir, Device::Cpu, Kind::Float).unwrap() else {
        panic!("{}: not a LLaVA model", dir.display());
    };
    let lm = &model.language_model;
    let hidden = lm.cfg.hidden_size;
    tch::manual_seed(0);
    let inputs: Vec<Tensor> = lm
        .layers
        .iter()
        .map(|_| {
            Tensor::randn([BATCH, SEQ, hidden], (Kind::Float, Device::Cpu)).set_requires_grad(true)
        })
        .collect();
    let positions = Tensor::arange(SEQ, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let (cos, sin) = lm.rotary_emb.cos_sin(&positions, Kind::Float);
    let split = early_answer_layer(lm.layers.len() as i64);
    let (hop_one, hop_two) = triples();

    // The full matrices are the rows version with every position a row.
    let full_rows = attend::QueryRows::new(vec![(0..SEQ as usize).collect(); BATCH as usize]);
    let few_rows = attend::QueryRows::new(vec![vec![75, 86, 87, 88]; BATCH as usize]);
    let at = few_rows.tensor(Device::Cpu);
    let evidence = |triples: &[Triple], rows: &attend::QueryRows| {
        attend::evidence_tensors(triples.iter().copied(), rows, SEQ as usize, Device::Cpu)
    };
    let full_ev = (
        evidence(&hop_one, &full_rows),
        evidence(&hop_two, &full_rows),
    );
    let few_ev = (evidence(&hop_one, &few_rows), evidence(&hop_two, &few_rows));

    let pass = |rows_only: bool| -> (f64, f64) {
        let started = Instant::now();
        let weights: Vec<Tensor> = lm
            .layers
            .iter()
            .zip(&inputs)
            .map(|(layer, x)| {
                if rows_only {
                    layer.attention_probs_at(x, &cos, &sin, &at)
                } else {
                    layer.attention_probs(x, &cos, &sin)
                }
            })
            .collect();
        let ((ev1, q1), (ev2, q2)) = if rows_only { &few_ev } else { &full_ev };
        let (l1, _) = attend::attention_loss_with(&weights[..split], ev1, q1, false, None);
        let (l2, _) = attend::attention_loss(&weights[split..], ev2, q2);
        let loss = l1 + l2;
        for x in &inputs {
            let mut g = x.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        (started.elapsed().as_secs_f64(), loss.double_value(&[]))
    };

    let (_, want) = pass(false);
    let (_, got) = pass(true);
    assert!(
        (want - got).abs() < 1e-5 * want.abs().max(1.0),
        "the two paths disagree: {want} vs {got}"
    );
    let (mut full, mut few) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        full.push(pass(false).0);
        few.push(pass(true).0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (full, few) = (median(&mut full), median(&mut few));
    println!(
        "attention supervision, {} layers, batch {BATCH} x {SEQ} tokens, {} threads, {reps} reps (median):",
        lm.layers.len(),
        tch::get_num_threads()
    );
    println!("  full [B, H, S, S] matrices: {full:.4} s per forward + backward");
    println!("  supervised rows [B, H, 4, S]: {few:.4} s per forward + backward");
    println!("  speed-up: {:.2}x (both losses {want:.6})", full / few);
}
