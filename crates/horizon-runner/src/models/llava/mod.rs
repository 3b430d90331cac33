//! LLaVA-1.5 as published by llava-hf (`modeling_llava.py`, transformers 5.17.0):
//! `LlavaForConditionalGeneration { model: LlavaModel { vision_tower, multi_modal_projector,
//! language_model }, lm_head }`.
//!
//! - [`config`]: `LlavaConfig` with its Llama `text_config` and CLIP `vision_config`.
//! - [`model`]: the CLIP tower ([`super::clip`]), the projector, and the shared
//!   [`crate::decoder::Decoder`] as the Llama language model (1-D rotary, biases per config).
//! - [`processor`]: `LlavaProcessor`: the CLIP image processor and the Llama tokenizer.
//! - `family`: the family's implementation of [`crate::models::family`] (docs/model-families.md).

pub mod config;
pub(crate) mod family;
pub mod model;
pub mod processor;
mod prune;

pub use config::{LlamaConfig, LlavaConfig};
pub use model::{
    LlavaForConditionalGeneration, LlavaMultiModalProjector, LLAVA_LAYOUTS, LLAVA_PUBLISHED,
};
pub use processor::LlavaProcessor;
