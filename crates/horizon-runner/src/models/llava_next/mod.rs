//! LLaVA-NeXT (LLaVA-1.6, anyres) as published by llava-hf (`modeling_llava_next.py`, transformers
//! 5.17.0): `LlavaNextForConditionalGeneration { model: LlavaNextModel { vision_tower,
//! multi_modal_projector, image_newline, language_model }, lm_head }`.
//!
//! - [`config`]: `LlavaNextConfig`: LLaVA's config with `image_grid_pinpoints`; a Llama or Mistral
//!   `text_config`.
//! - [`model`]: LLaVA's CLIP tower and projector run on every tile, then `pack_image_features`
//!   (base grid, unpadded high-resolution grid, `image_newline` closing each row).
//! - [`processor`]: `LlavaNextProcessor`: the anyres image processor
//!   ([`horizon_data::imageproc::anyres`]) and the count of image tokens per image.
//! - `family`: the family's implementation of [`crate::models::family`] (docs/model-families.md).

pub mod config;
mod family;
pub mod model;
pub mod processor;
mod prune;

pub use config::LlavaNextConfig;
pub use model::{LlavaNextForConditionalGeneration, LLAVA_NEXT_LAYOUTS};
pub use processor::{ChatTemplate, LlavaNextProcessor};
