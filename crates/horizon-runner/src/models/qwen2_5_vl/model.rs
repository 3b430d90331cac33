//! `Qwen2_5_VLForConditionalGeneration`: the vision tower's merged tokens scattered into the prompt,
//! M-RoPE position ids from `get_rope_index`, the shared decoder, `lm_head`.

use anyhow::{anyhow, bail, Result};
use tch::{Device, Tensor};

use super::config::Qwen2_5VlConfig;
use super::vision::Qwen2_5VisionTransformer;
use crate::decoder::Decoder;
use crate::models::scatter_image_features;
use crate::nn::Linear;
use crate::weights::{CheckpointLayout, KeyRename, Weights};

/// Qwen2.5-VL as published, and as transformers 5.x `save_pretrained` still writes it (it restores the
/// original names); HF renames them on load the same way.
pub const QWEN2_5_VL_PUBLISHED: CheckpointLayout = CheckpointLayout {
    name: "published Qwen2.5-VL (visual.*, model.layers.*)",
    renames: &[
        KeyRename {
            on_disk: "visual.",
            in_model: "model.visual.",
        },
        KeyRename {
            on_disk: "model.embed_tokens.",
            in_model: "model.language_model.embed_tokens.",
        },
        KeyRename {
            on_disk: "model.layers.",
            in_model: "model.language_model.layers.",
        },
        KeyRename {
            on_disk: "model.norm.",
            in_model: "model.language_model.norm.",
        },
        KeyRename {
            on_disk: "lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// transformers 5.x's in-memory module tree (`state_dict()`, `save_original_format=False`): the names
/// the model code uses.
pub const QWEN2_5_VL_MODULE_TREE: CheckpointLayout = CheckpointLayout {
    name: "transformers 5 module tree (model.visual.*, model.language_model.*)",
    renames: &[
        KeyRename {
            on_disk: "model.visual.",
            in_model: "model.visual.",
        },
        KeyRename {
            on_disk: "model.language_model.",
            in_model: "model.language_model.",
        },
        KeyRename {
            on_disk: "lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// Every layout a Qwen2.5-VL checkpoint may have, tried in this order.
pub const QWEN2_5_VL_LAYOUTS: &[CheckpointLayout] = &[QWEN2_5_VL_PUBLISHED, QWEN2_5_VL_MODULE_TREE];

/// `get_rope_index` for one sequence: 3-D position ids `[3, S]` (row-major) and `rope_deltas`.
///
/// Tokens are grouped into runs of text and of image tokens (HF's `mm_token_type_ids`); a text run gets
/// `arange(n) + current` on all axes, an image run with grid `[t, h, w]` gets the merged grid's
/// (t, row, col) plus `current`, after which `current` advances by `max(h, w) / merge`. Without images
/// the ids are `arange(S)` on all axes and `rope_deltas` is 0.
pub fn get_rope_index(
    input_ids: &[i64],
    grids: &[[i64; 3]],
    image_token_id: i64,
    spatial_merge_size: i64,
) -> Result<(Vec<[i64; 3]>, i64)> {
    let s = input_ids.len() as i64;
    if grids.is_empty() {
        return Ok(((0..s).map(|p| [p; 3]).collect(), 0));
    }
    let mut positions: Vec<[i64; 3]> = Vec::with_capacity(input_ids.len());
    let mut grid_iter = grids.iter();
    let mut current = 0i64;
    let mut i = 0;
    while i < input_ids.len() {
        let is_image = input_ids[i] == image_token_id;
        let end = (i..input_ids.len())
            .find(|&j| (input_ids[j] == image_token_id) != is_image)
            .unwrap_or(input_ids.len());
        let n = (end - i) as i64;
        if !is_image {
            positions.extend((0..n).map(|p| [p + current; 3]));
            current += n;
        } else {
            let &[t, h, w] = grid_iter.next().ok_or_else(|| {
                anyhow!(
                    "the prompt has more image-token runs than images ({})",
                    grids.len()
                )
            })?;
            let (lh, lw) = (h / spatial_merge_size, w / spatial_merge_size);
            if t * lh * lw != n {
                bail!("an image-token run of {n} tokens does not match image grid [{t}, {h}, {w}] ({} tokens)", t * lh * lw);
            }
            for ti in 0..t {
                for r in 0..lh {
                    for c in 0..lw {
                        positions.push([ti + current, r + current, c + current]);
                    }
                }
            }
            current += h.max(w) / spatial_merge_size;
        }
        i = end;
    }
    if grid_iter.next().is_some() {
        bail!(
            "the prompt has fewer image-token runs than images ({})",
            grids.len()
        );
    }
    let max = positions.iter().flatten().copied().max().unwrap_or(-1);
    Ok((positions, max + 1 - s))
}

/// `Qwen2_5_VLForConditionalGeneration`, with `model.visual` and `model.language_model` flattened.
pub struct Qwen2_5VlForConditionalGeneration {
    pub config: Qwen2_5VlConfig,
    pub visual: Qwen2_5VisionTransformer,
    pub language_model: Decoder,
    pub lm_head: Linear,
}

impl Qwen2_5VlForConditionalGeneration {
    /// Builds the model from `w` (a checkpoint, or random weights for benchmarks).
    pub fn from_weights(w: &Weights, config: Qwen2_5VlConfig) -> Result<Self> {
        let visual = Qwen2_5VisionTransformer::load(w, "model.visual", &config.vision_config)?;
        let language_model = Decoder::load(
            w,
            "model.language_model",
            &config.text_config.decoder_config()?,
        )?;
        let tc = &config.text_config;
        if config.vision_config.out_hidden_size != tc.hidden_size {
            bail!(
                "config.json: field vision_config.out_hidden_size: {} differs from the text hidden_size {}",
                config.vision_config.out_hidden_size,
                tc.hidden_size
            );
        }
        // HF ties `lm_head.weight` to `model.language_model.embed_tokens.weight` when asked to.
        let lm_head = if config.tie_word_embeddings {
            Linear {
                weight: language_model.embed_tokens.shallow_clone(),
                bias: None,
            }
        } else {
            Linear::load(w, "lm_head", tc.hidden_size, tc.vocab_size, false)?
        };
        Ok(Self {
            config,
            visual,
            language_model,
            lm_head,
        })
    }

    /// Checkpoint tensors this model leaves unread on purpose: a stored `lm_head` when the config ties
    /// it to the embeddings (HF ties it too).
    pub fn unused_by_design(&self, name: &str) -> bool {
        self.config.tie_word_embeddings && name == "lm_head.weight"
    }

    pub fn num_layers(&self) -> usize {
        self.language_model.num_layers()
    }

    pub fn device(&self) -> Device {
        self.language_model.embed_tokens.device()
    }

    /// `get_image_features`: patches `[N, patch_dim]` (any float kind; cast to the vision dtype) to
    /// merged image embeddings `[N / merge², hidden]`, images concatenated.
    pub fn image_features(&self, pixel_values: &Tensor, grid_thw: &[[i64; 3]]) -> Result<Tensor> {
        self.visual
            .forward(&pixel_values.to_kind(self.visual.dtype()), grid_thw)
    }

    /// Token embeddings `[1, S, D]` with the image embeddings scattered into the image-token positions.
    pub fn input_embeds(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        grid_thw: &[[i64; 3]],
    ) -> Result<Tensor> {
        let embeds = self.language_model.embed(input_ids);
        let Some(pixel_values) = pixel_values else {
            return Ok(embeds);
        };
        let features = self.image_features(pixel_values, grid_thw)?;
        scatter_image_features(&embeds, input_ids, self.config.image_token_id, &features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_index_of_one_image() {
        // text(2) image(2x3 merged) text(2)
        let img = 9;
        let ids = [1, 2, img, img, img, img, img, img, 3, 4];
        let (pos, delta) = get_rope_index(&ids, &[[1, 4, 6]], img, 2).unwrap();
        assert_eq!(pos[0], [0, 0, 0]);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[5], [2, 3, 2]);
        assert_eq!(pos[7], [2, 3, 4]);
        assert_eq!(pos[8], [5, 5, 5]);
        assert_eq!(delta, 7 - 10);
        let (pos, delta) = get_rope_index(&[5, 6, 7], &[], img, 2).unwrap();
        assert_eq!(pos, vec![[0; 3], [1; 3], [2; 3]]);
        assert_eq!(delta, 0);
    }
}
