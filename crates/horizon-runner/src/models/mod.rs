//! One folder per model family (`config`, `model`, `processor`), mirroring the HF module tree and
//! weight names; the CLIP vision tower is shared by the families that use it.

pub mod clip;
pub mod llava;
pub mod llava_next;
pub mod qwen2_5_vl;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Token embeddings `[1, S, D]` with the image `features` `[N, D]` scattered, in order, into the
/// positions of `input_ids` that hold `image_token_id` (HF's `masked_scatter` merge); the counts
/// must agree.
pub fn scatter_image_features(
    embeds: &Tensor,
    input_ids: &Tensor,
    image_token_id: i64,
    features: &Tensor,
) -> Result<Tensor> {
    let features = features.to_kind(embeds.kind());
    let mask = input_ids.eq(image_token_id);
    let n_tokens = mask.sum(Kind::Int64).int64_value(&[]);
    let n_features = features.size()[0];
    if n_tokens != n_features {
        bail!(
            "the prompt has {n_tokens} image tokens (id {image_token_id}) but the image gives {n_features} features"
        );
    }
    let mask = mask.unsqueeze(-1).expand_as(embeds);
    Ok(embeds.masked_scatter(&mask, &features))
}
