//! Qwen2.5-VL (`modeling_qwen2_5_vl.py`, transformers 5.17.0):
//! `Qwen2_5_VLForConditionalGeneration { model: Qwen2_5_VLModel { visual, language_model }, lm_head }`.
//!
//! - [`config`]: `Qwen2_5_VLConfig` (nested as transformers 5.x saves it, or flat as published).
//! - [`vision`]: `Qwen2_5_VisionTransformerPretrainedModel`: 14x14x2 patches through a conv3d, a 2-D
//!   (row, column) rotary embedding in f32, attention inside 8x8-patch windows (full attention in
//!   `fullatt_block_indexes`), 2x2 patches merged into one language-model token.
//! - [`model`]: the language model is the shared [`crate::decoder::Decoder`] (Qwen2: q/k/v bias, GQA)
//!   with M-RoPE, 3-D position ids (temporal, height, width) from `get_rope_index`; a kept token keeps
//!   its 3-D ids at a cut, or the shortened sequence is renumbered as `get_rope_index` indexes it
//!   (text consecutive, the kept visual tokens as the image of their kept rows and columns).
//! - [`processor`]: `Qwen2_5_VLProcessor`: the Qwen2-VL image processor and the chat template.
//! - `family`: the family's implementation of [`crate::models::family`] (docs/model-families.md).

pub mod config;
mod family;
pub mod model;
pub mod processor;
mod prune;
pub mod vision;

pub use config::{Qwen2_5VlConfig, Qwen2_5VlTextConfig, Qwen2_5VlVisionConfig};
pub use model::{get_rope_index, Qwen2_5VlForConditionalGeneration, QWEN2_5_VL_LAYOUTS};
pub use processor::{Qwen2_5VlProcessor, DEFAULT_SYSTEM_MESSAGE};
pub(crate) use prune::renumber_mrope;
pub use vision::Qwen2_5VisionTransformer;
