//! `LlavaForConditionalGeneration`: CLIP features of the selected layer(s), projected, scattered into
//! the `<image>` positions; the shared decoder; `lm_head`.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::config::LlavaConfig;
use crate::decoder::Decoder;
use crate::inputs::ModelInputs;
use crate::intervention::VisualTokens;
use crate::models::clip::ClipVisionModel;
use crate::models::scatter_image_features;
use crate::nn::{Activation, Linear};
use crate::weights::{CheckpointLayout, KeyRename, Weights};

/// llava-hf as published (names from before transformers 4.52); HF renames them on load the same way.
pub const LLAVA_PUBLISHED: CheckpointLayout = CheckpointLayout {
    name: "published llava-hf (vision_tower.vision_model.*, language_model.model.*)",
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
            on_disk: "language_model.model.",
            in_model: "model.language_model.",
        },
        KeyRename {
            on_disk: "language_model.lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// What transformers 5.x `save_pretrained` writes for a model it built from a config: the legacy
/// names, except the CLIP tower's, which lose `vision_model.`.
pub const LLAVA_SAVED_5X: CheckpointLayout = CheckpointLayout {
    name: "transformers 5 save_pretrained (vision_tower.embeddings.*, language_model.model.*)",
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
            on_disk: "language_model.model.",
            in_model: "model.language_model.",
        },
        KeyRename {
            on_disk: "language_model.lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// transformers 5.x's in-memory module tree (`state_dict()`, `save_original_format=False`): the names
/// the model code uses.
pub const LLAVA_MODULE_TREE: CheckpointLayout = CheckpointLayout {
    name: "transformers 5 module tree (model.vision_tower.*, model.language_model.*)",
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
            on_disk: "model.language_model.",
            in_model: "model.language_model.",
        },
        KeyRename {
            on_disk: "lm_head.",
            in_model: "lm_head.",
        },
    ],
};

/// Every layout a LLaVA checkpoint may have, tried in this order.
pub const LLAVA_LAYOUTS: &[CheckpointLayout] =
    &[LLAVA_PUBLISHED, LLAVA_SAVED_5X, LLAVA_MODULE_TREE];

/// `LlavaMultiModalProjector`: linear, activation, linear.
pub struct LlavaMultiModalProjector {
    linear_1: Linear,
    act: Activation,
    linear_2: Linear,
}

impl LlavaMultiModalProjector {
    fn load(w: &Weights, p: &str, cfg: &LlavaConfig) -> Result<Self> {
        let v = cfg.vision_config.hidden_size * cfg.vision_feature_layers.len() as i64;
        let t = cfg.text_config.hidden_size;
        let bias = cfg.multimodal_projector_bias;
        Ok(Self {
            linear_1: Linear::load(w, &format!("{p}.linear_1"), v, t, bias)?,
            act: Activation::from_hf_name(&cfg.projector_hidden_act)?,
            linear_2: Linear::load(w, &format!("{p}.linear_2"), t, t, bias)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2
            .forward(&self.act.forward(&self.linear_1.forward(x)))
    }
}

pub struct LlavaForConditionalGeneration {
    pub config: LlavaConfig,
    pub vision_tower: ClipVisionModel,
    pub multi_modal_projector: LlavaMultiModalProjector,
    pub language_model: Decoder,
    pub lm_head: Linear,
    feature_indices: Vec<usize>,
}

impl LlavaForConditionalGeneration {
    /// Builds the model from `w` (a checkpoint, or random weights for benchmarks).
    pub fn from_weights(w: &Weights, config: LlavaConfig) -> Result<Self> {
        let feature_indices = config.feature_indices()?;
        let clip_layers = *feature_indices
            .iter()
            .max()
            .expect("at least one feature layer");
        let vision_tower =
            ClipVisionModel::load(w, "model.vision_tower", &config.vision_config, clip_layers)?;
        let multi_modal_projector =
            LlavaMultiModalProjector::load(w, "model.multi_modal_projector", &config)?;
        let language_model = Decoder::load(
            w,
            "model.language_model",
            &config.text_config.decoder_config(),
        )?;
        let tc = &config.text_config;
        let lm_head = if w.contains("lm_head.weight") || !config.tie_word_embeddings {
            Linear::load(w, "lm_head", tc.hidden_size, tc.vocab_size, false)?
        } else {
            Linear {
                weight: language_model.embed_tokens.shallow_clone(),
                bias: None,
            }
        };
        Ok(Self {
            config,
            vision_tower,
            multi_modal_projector,
            language_model,
            lm_head,
            feature_indices,
        })
    }

    /// Checkpoint tensors this model leaves unread on purpose: the CLIP layers past the deepest feature
    /// layer and CLIP's `post_layernorm` (HF's `hidden_states[-2]` never reaches them).
    pub fn unused_by_design(&self, name: &str) -> bool {
        if name.starts_with("model.vision_tower.post_layernorm.") {
            return true;
        }
        let run = self.feature_indices.iter().max().copied().unwrap_or(0);
        name.strip_prefix("model.vision_tower.encoder.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= run)
    }

    /// `get_image_features`: selected CLIP hidden states (CLS dropped for "default"), projected.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let states = self.vision_tower.hidden_states(pixel_values)?;
        let selected: Vec<Tensor> = self
            .feature_indices
            .iter()
            .map(|&i| {
                let s = &states[i];
                if self.config.vision_feature_select_strategy == "default" {
                    s.narrow(1, 1, s.size()[1] - 1)
                } else {
                    s.shallow_clone()
                }
            })
            .collect();
        let features = if selected.len() == 1 {
            selected.into_iter().next().expect("one")
        } else {
            Tensor::cat(&selected, -1)
        };
        Ok(self.multi_modal_projector.forward(&features))
    }

    /// What VisionZip and ToDRE read of the vision tower at LLaVA's feature layer (the single
    /// `vision_feature_layer`): that layer's output with CLS `[1, 1 + N, D_v]`, its attention
    /// probabilities `[1, heads, 1 + N, 1 + N]` and its head-averaged keys `[1, 1 + N, d]`.
    pub fn feature_layer_attention(
        &self,
        pixel_values: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let [index] = self.feature_indices[..] else {
            bail!(
                "config.json: vision_feature_layer selects {} layers; CLS-attention methods need a single feature layer",
                self.feature_indices.len()
            );
        };
        if index == 0 {
            bail!(
                "config.json: vision_feature_layer selects the embeddings, which have no attention"
            );
        }
        // hidden_states[i] is the output of encoder layer i - 1.
        self.vision_tower.layer_attention(pixel_values, index - 1)
    }

    /// `multi_modal_projector` over vision-tower states `[.., D_v]` (VisionZip's merged tokens).
    pub fn project(&self, features: &Tensor) -> Tensor {
        self.multi_modal_projector.forward(features)
    }

    /// Token embeddings with the image features scattered into the `<image>` positions.
    pub fn input_embeds(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some(pixel_values) = pixel_values else {
            return Ok(self.language_model.embed(input_ids));
        };
        let features = self.image_features(pixel_values)?;
        self.input_embeds_with_features(input_ids, &features)
    }

    /// Token embeddings with already computed [`Self::image_features`] scattered into the `<image>`
    /// positions (the trainer also supervises the features directly).
    pub fn input_embeds_with_features(
        &self,
        input_ids: &Tensor,
        features: &Tensor,
    ) -> Result<Tensor> {
        let embeds = self.language_model.embed(input_ids);
        let features = features.reshape([-1, self.config.text_config.hidden_size]);
        scatter_image_features(&embeds, input_ids, self.config.image_token_id, &features)
    }

    /// A prompt shaped like the llava-hf template's for timing random-weight models: BOS, up to 4
    /// random text tokens, the image placeholders, the rest of `text_tokens`, and a random image
    /// (tch's global generator, so a seeded run repeats it).
    pub fn synthetic_inputs(&self, text_tokens: usize, device: Device) -> Result<ModelInputs> {
        let n_img = self.config.num_image_tokens() as usize;
        let side = self.config.vision_config.image_size;
        let grid = (n_img as f64).sqrt() as usize;
        if grid * grid != n_img {
            bail!("{n_img} visual tokens do not form a square grid");
        }
        let pixel_values = Tensor::randn([1, 3, side, side], (Kind::Float, device));
        let mut inputs = synthetic_prompt(&self.config, text_tokens, n_img, pixel_values, device)?;
        inputs.visual.grid = (grid, grid);
        Ok(inputs)
    }
}

/// BOS, up to 4 random text tokens, `n_img` image placeholders, the rest of `text_tokens`, with
/// `pixel_values` (random text from tch's global generator, so a seeded run repeats it); the visual
/// tokens as one row.
pub(crate) fn synthetic_prompt(
    config: &LlavaConfig,
    text_tokens: usize,
    n_img: usize,
    pixel_values: Tensor,
    device: Device,
) -> Result<ModelInputs> {
    let vocab = config.text_config.vocab_size;
    let before = text_tokens.min(4);
    let (low, high, image) = (3, vocab.min(32000), config.image_token_id);
    // In a small vocabulary the image token lies among the text ids: draw from one id fewer and
    // step over it, so the prompt holds exactly `n_img` placeholders (where it lies above the range,
    // as in the 7B configurations, the draw is unchanged).
    let skip = (low..high).contains(&image);
    let text = Tensor::randint_low(
        low,
        high - i64::from(skip),
        [text_tokens as i64],
        (Kind::Int64, Device::Cpu),
    );
    let text: Vec<i64> = Vec::try_from(&text)?
        .into_iter()
        .map(|t| if skip && t >= image { t + 1 } else { t })
        .collect();
    let mut ids = vec![1i64];
    ids.extend_from_slice(&text[..before]);
    let first_visual = ids.len();
    ids.extend(std::iter::repeat_n(config.image_token_id, n_img));
    ids.extend_from_slice(&text[before..]);
    let n = ids.len() as i64;
    Ok(ModelInputs {
        input_ids: Tensor::from_slice(&ids).unsqueeze(0).to_device(device),
        pixel_values: Some(pixel_values),
        image_grid_thw: Vec::new(),
        visual: VisualTokens {
            positions: (first_visual..first_visual + n_img).collect(),
            grid: (1, n_img),
        },
        position_ids: Tensor::arange(n, (Kind::Int64, device)).unsqueeze(0),
        rope_deltas: 0,
    })
}
