//! `LlavaNextForConditionalGeneration`: LLaVA's CLIP tower and projector on the base image and every
//! high-resolution tile, `pack_image_features`, the `<image>` merge, the shared decoder, `lm_head`.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::config::LlavaNextConfig;
use crate::inputs::ModelInputs;
use crate::models::llava::model::synthetic_prompt;
use crate::models::llava::LlavaForConditionalGeneration;
use crate::models::scatter_image_features;
use crate::weights::{CheckpointLayout, KeyRename, Weights};
use horizon_data::imageproc::AnyresLayout;
use horizon_data::window::{TokenGrid, WindowGrid};

const IMAGE_NEWLINE: &str = "model.image_newline";

/// llava-hf/llava-v1.6-*-hf as published; transformers 5.17 renames them on load the same way
/// (`conversion_mapping.py`, `llava_next`).
pub const LLAVA_NEXT_PUBLISHED: CheckpointLayout = CheckpointLayout {
    name: "published llava-hf (vision_tower.vision_model.*, language_model.model.*, image_newline)",
    renames: &[
        KeyRename {
            on_disk: "vision_tower.vision_model.",
            in_model: "model.vision_tower.",
        },
        KeyRename {
            on_disk: "multi_modal_projector.",
            in_model: "model.multi_modal_projector.",
        },
        KeyRename {
            on_disk: "image_newline",
            in_model: IMAGE_NEWLINE,
        },
        KeyRename {
            on_disk: "language_model.model.",
            in_model: "model.language_model.",
        },
        KeyRename {
            on_disk: "language_model.lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// transformers 5.x `save_pretrained` of a model built from its config: the published names except
/// the CLIP tower's, which lose `vision_model.` (as for LLaVA-1.5).
pub const LLAVA_NEXT_SAVED_5X: CheckpointLayout = CheckpointLayout {
    name: "transformers 5 save_pretrained (vision_tower.embeddings.*, language_model.model.*, image_newline)",
    renames: &[
        KeyRename {
            on_disk: "vision_tower.embeddings.",
            in_model: "model.vision_tower.embeddings.",
        },
        KeyRename {
            on_disk: "vision_tower.pre_layrnorm.",
            in_model: "model.vision_tower.pre_layrnorm.",
        },
        KeyRename {
            on_disk: "vision_tower.encoder.",
            in_model: "model.vision_tower.encoder.",
        },
        KeyRename {
            on_disk: "vision_tower.post_layernorm.",
            in_model: "model.vision_tower.post_layernorm.",
        },
        KeyRename {
            on_disk: "multi_modal_projector.",
            in_model: "model.multi_modal_projector.",
        },
        KeyRename {
            on_disk: "image_newline",
            in_model: IMAGE_NEWLINE,
        },
        KeyRename {
            on_disk: "language_model.model.",
            in_model: "model.language_model.",
        },
        KeyRename {
            on_disk: "language_model.lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// transformers 5.x's in-memory module tree (`state_dict()`).
pub const LLAVA_NEXT_MODULE_TREE: CheckpointLayout = CheckpointLayout {
    name: "transformers 5 module tree (model.vision_tower.*, model.image_newline, model.language_model.*)",
    renames: &[
        KeyRename {
            on_disk: "model.vision_tower.",
            in_model: "model.vision_tower.",
        },
        KeyRename {
            on_disk: "model.multi_modal_projector.",
            in_model: "model.multi_modal_projector.",
        },
        KeyRename {
            on_disk: IMAGE_NEWLINE,
            in_model: IMAGE_NEWLINE,
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

/// Every layout a LLaVA-NeXT checkpoint may have, tried in this order.
pub const LLAVA_NEXT_LAYOUTS: &[CheckpointLayout] = &[
    LLAVA_NEXT_PUBLISHED,
    LLAVA_NEXT_SAVED_5X,
    LLAVA_NEXT_MODULE_TREE,
];

pub struct LlavaNextForConditionalGeneration {
    pub config: LlavaNextConfig,
    /// The vision tower, projector, language model and `lm_head`, laid out as in LLaVA-1.5.
    pub llava: LlavaForConditionalGeneration,
    /// `[D]`, appended after every row of the high-resolution grid.
    pub image_newline: Tensor,
}

impl LlavaNextForConditionalGeneration {
    pub fn from_weights(w: &Weights, config: LlavaNextConfig) -> Result<Self> {
        let llava = LlavaForConditionalGeneration::from_weights(w, config.llava.clone())?;
        let image_newline = w.get(IMAGE_NEWLINE, &[config.llava.text_config.hidden_size])?;
        Ok(Self {
            config,
            llava,
            image_newline,
        })
    }

    /// Checkpoint tensors left unread on purpose (as LLaVA-1.5's).
    pub fn unused_by_design(&self, name: &str) -> bool {
        self.llava.unused_by_design(name)
    }

    /// The anyres layout of an image of `height×width` pixels (what the processor counts).
    pub fn layout(&self, height: u32, width: u32) -> Result<AnyresLayout> {
        let v = &self.config.llava.vision_config;
        AnyresLayout::new(
            height,
            width,
            &self.config.image_grid_pinpoints,
            v.image_size as u32,
            v.patch_size as u32,
            0,
        )
    }

    /// The windows of `horizon info` on the packed visual tokens of one image of `height×width`
    /// pixels (`visual_tokens` of them): grid 0 the base image's grid, grid 1 the unpadded
    /// high-resolution grid, its row stride one more than its width because every row is closed by
    /// `image_newline`, which no window holds (docs/information-windows.md).
    pub fn window_grid(
        &self,
        height: u32,
        width: u32,
        visual_tokens: usize,
        size: usize,
    ) -> Result<WindowGrid> {
        let layout = self.layout(height, width)?;
        if visual_tokens != layout.num_tokens() {
            bail!(
                "the prompt holds {visual_tokens} image tokens, a {width}x{height} image has {}",
                layout.num_tokens()
            );
        }
        let (br, bc) = (layout.base_grid.0 as usize, layout.base_grid.1 as usize);
        let (hr, hc) = (
            layout.highres_grid.0 as usize,
            layout.highres_grid.1 as usize,
        );
        WindowGrid::of_grids(
            vec![
                TokenGrid {
                    start: layout.base_extra as usize,
                    rows: br,
                    cols: bc,
                    stride: bc,
                },
                TokenGrid {
                    start: layout.base_tokens(),
                    rows: hr,
                    cols: hc,
                    stride: hc + 1,
                },
            ],
            size,
        )
    }

    /// `get_image_features` of one image: the projected features of its tiles `[tiles, side², D]`,
    /// packed by `pack_image_features` into `[tokens, D]`: the base image's grid, then the
    /// unpadded high-resolution grid row by row, each row closed by `image_newline`.
    pub fn image_features(&self, pixel_values: &Tensor, height: u32, width: u32) -> Result<Tensor> {
        let layout = self.layout(height, width)?;
        let tiles = pixel_values.size()[0];
        if tiles as usize != layout.num_tiles() {
            bail!(
                "pixel values hold {tiles} tiles, a {width}x{height} image needs {} (the base image and {}x{} tiles)",
                layout.num_tiles(),
                layout.tile_grid.0,
                layout.tile_grid.1
            );
        }
        let features = self.llava.image_features(pixel_values)?;
        let d = features.size()[2];
        let base = features.get(0);
        let (th, tw) = (layout.tile_grid.0 as i64, layout.tile_grid.1 as i64);
        let side = layout.base_grid.0 as i64;
        // [th·tw, side², D] -> [D, th·side, tw·side]: tile rows, then the rows inside a tile.
        let grid = features
            .narrow(0, 1, th * tw)
            .view([th, tw, side, side, d])
            .permute([4, 0, 2, 1, 3])
            .contiguous()
            .view([d, th * side, tw * side]);
        let (top, left) = layout.highres_offset;
        let (rows, cols) = layout.highres_grid;
        let grid = grid
            .narrow(1, top as i64, rows as i64)
            .narrow(2, left as i64, cols as i64);
        let newline = self
            .image_newline
            .to_kind(grid.kind())
            .view([d, 1, 1])
            .expand([d, rows as i64, 1], false);
        let highres = Tensor::cat(&[grid, newline], 2)
            .flatten(1, 2)
            .transpose(0, 1);
        Ok(Tensor::cat(&[base, highres], 0))
    }

    /// Token embeddings with the packed image features scattered into the `<image>` positions;
    /// `image_sizes` holds each image's `(height, width)` (one image per prompt here).
    pub fn input_embeds(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        image_sizes: &[[i64; 3]],
    ) -> Result<Tensor> {
        if let Some(window) = self.config.sliding_window {
            let s = input_ids.size()[1];
            if s > window {
                bail!("the prompt has {s} tokens, more than the Mistral sliding window of {window}, which the decoder does not implement");
            }
        }
        let embeds = self.llava.language_model.embed(input_ids);
        let Some(pixel_values) = pixel_values else {
            return Ok(embeds);
        };
        let [[_, h, w]] = image_sizes[..] else {
            bail!(
                "LLaVA-NeXT inputs need one image size per prompt, got {}",
                image_sizes.len()
            );
        };
        let features = self.image_features(pixel_values, h as u32, w as u32)?;
        scatter_image_features(
            &embeds,
            input_ids,
            self.config.llava.image_token_id,
            &features,
        )
    }

    /// A prompt shaped like llava-v1.6-vicuna's template for timing random-weight models (as
    /// LLaVA-1.5's) around a random square image of two tiles a side (672×672 on 336-px tiles): the
    /// base image and 2×2 tiles, the base grid's tokens then the high-resolution grid's with their
    /// newlines (576 + 48 × 49 on the 7B configs).
    pub fn synthetic_inputs(&self, text_tokens: usize, device: Device) -> Result<ModelInputs> {
        let tile = self.config.llava.vision_config.image_size;
        let side = 2 * tile as u32;
        let layout = self.layout(side, side)?;
        let pixel_values = Tensor::randn(
            [layout.num_tiles() as i64, 3, tile, tile],
            (Kind::Float, device),
        );
        let mut inputs = synthetic_prompt(
            &self.config.llava,
            text_tokens,
            layout.num_tokens(),
            pixel_values,
            device,
        )?;
        inputs.image_grid_thw = vec![[1, i64::from(side), i64::from(side)]];
        Ok(inputs)
    }
}
