//! The attention probabilities the trainer supervises (`LlamaAttention::attention_weights`, an eager
//! recomputation) are the ones the SDPA forward uses: recombined with the values and `o_proj` they give
//! the layer's attention output, for a model with grouped kv heads (4 query heads over 2 kv heads).

use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::models::llava::LlavaForConditionalGeneration;
use horizon_runner::parity::max_abs_diff;
use horizon_runner::VlModel;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The llava-tiny fixture through the public loader.
fn llava_tiny() -> Box<LlavaForConditionalGeneration> {
    let dir = root().join("fixtures/llava/models/llava-tiny");
    match VlModel::load(&dir, Device::Cpu, Kind::Float).unwrap() {
        VlModel::Llava(model) => model,
        _ => panic!("{}: not a LLaVA model", dir.display()),
    }
}

#[test]
fn attention_weights_recombine_into_the_forward() {
    let model = llava_tiny();
    let lm = &model.language_model;
    let (b, s) = (2i64, 9i64);
    tch::manual_seed(3);
    let x = Tensor::randn([b, s, lm.cfg.hidden_size], (Kind::Float, Device::Cpu));
    let positions = Tensor::arange(s, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let (cos, sin) = lm.rotary_emb.cos_sin(&positions, Kind::Float);
    for layer in &lm.layers {
        let attn = layer.attention();
        let w = attn.attention_weights(&x, &cos, &sin);
        assert_eq!(w.size(), [b, lm.cfg.num_attention_heads, s, s]);
        // Rows are distributions and nothing attends to a later token.
        let row_sums = w.sum_dim_intlist(-1, false, Kind::Float);
        assert!((row_sums - 1.0).abs().max().double_value(&[]) < 1e-6);
        let future = Tensor::ones([s, s], (Kind::Bool, Device::Cpu)).triu(1);
        assert_eq!(
            w.masked_select(&future.expand([b, lm.cfg.num_attention_heads, s, s], false))
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        let recombined = attn.project_out(&w.matmul(&attn.values(&x)));
        let forward = attn.forward_causal(&x, &cos, &sin);
        let diff = max_abs_diff(&recombined, &forward);
        assert!(diff < 1e-5, "max |diff| = {diff}");
    }
}

/// `attention_weights_at` gives the rows of `attention_weights` it is asked for, in any order and with
/// repeats (a trainer's padded slots repeat position 0).
#[test]
fn attention_weights_at_rows_are_the_full_matrix_rows() {
    let model = llava_tiny();
    let lm = &model.language_model;
    let (b, s) = (2i64, 9i64);
    tch::manual_seed(5);
    let x = Tensor::randn([b, s, lm.cfg.hidden_size], (Kind::Float, Device::Cpu));
    let positions = Tensor::arange(s, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let (cos, sin) = lm.rotary_emb.cos_sin(&positions, Kind::Float);
    let rows = [[8i64, 3, 0, 0], [0, 5, 6, 8]];
    let at = Tensor::from_slice(rows.as_flattened()).reshape([b, 4]);
    for layer in &lm.layers {
        let attn = layer.attention();
        let full = attn.attention_weights(&x, &cos, &sin);
        let got = attn.attention_weights_at(&x, &cos, &sin, &at);
        assert_eq!(got.size(), [b, lm.cfg.num_attention_heads, 4, s]);
        for (bi, row) in rows.iter().enumerate() {
            for (slot, &p) in row.iter().enumerate() {
                let want = full.get(bi as i64).select(1, p);
                let diff = max_abs_diff(&got.get(bi as i64).select(1, slot as i64), &want);
                assert!(diff < 1e-6, "row {bi} position {p}: max |diff| = {diff}");
            }
        }
    }
}
