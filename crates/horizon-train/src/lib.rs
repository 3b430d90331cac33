//! Training the bundled small LLaVA-format models from scratch on the synthetic benchmark.
//!
//! No special-cased model code: the trainer builds the same [`LlavaForConditionalGeneration`] the
//! runner loads, makes every tensor it read from the [`Weights`] a trainable parameter, and exports a
//! llava-hf checkpoint directory (legacy weight names, sparse `config.json`, `tokenizer.json`,
//! `preprocessor_config.json`) that the public loader and HF `LlavaForConditionalGeneration` read.
//!
//! Long runs checkpoint atomically (weights, AdamW moments, step) and resume exactly where they stopped.
//!
//! The parts: [`config`] (what a run is, also `horizon train`'s options), [`examples`] (the samples
//! of each step, tokenized), [`heads`] (the training-only heads), [`optimiser`], [`checkpoint`] (the
//! run directory) and [`trainer`] (the loop).
//!
//! [`LlavaForConditionalGeneration`]: horizon_runner::models::llava::LlavaForConditionalGeneration
//! [`Weights`]: horizon_runner::weights::Weights

pub mod attend;
pub mod aux;
pub mod checkpoint;
pub mod config;
pub mod examples;
pub mod heads;
pub mod optimiser;
pub mod tokenizer;
pub mod trainer;

pub use checkpoint::{extend_run, TrainerState};
pub use config::{
    early_answer_layer, question_probe_layer, DecoderLosses, Init, ModelArgs, PatchLosses, Samples,
    Schedule, SmallModelSpec, TrainConfig, VisionStage,
};
pub use examples::{asked_kind, prompt_text, scene_text};
pub use trainer::{train, StepLosses, StopAt};
