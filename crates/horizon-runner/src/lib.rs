//! horizon-runner: the libtorch-backed model runner of horizon.
//!
//! It loads HF-format vision-language checkpoints as users have them (llava-hf LLaVA-1.5,
//! Qwen2.5-VL), reproduces HF transformers' outputs, and runs every forward through one decoder loop
//! ([`decoder`]) that asks a [`TokenSelector`] before each layer which prompt positions it processes.
//! A fixed [`Intervention`] is one selector; information sweeps ([`info`]), pruning methods and
//! generation ([`generate`]) are all callers of that one forward.
//!
//! Layout: [`checkpoint`] and [`weights`] read a checkpoint directory; [`nn`] and [`decoder`] are the
//! shared modules; [`models`] holds one folder per family (`config`, `model`, `processor`, as HF
//! splits them, and `family`, what it provides to horizon) plus the CLIP tower and the one registry
//! of families; [`model`] and [`processor`] dispatch over them.

pub mod checkpoint;
pub mod decoder;
pub mod device;
pub mod evaluate;
pub mod generate;
pub mod gradient;
pub mod info;
pub mod inputs;
pub mod intervention;
pub mod model;
pub mod models;
pub mod nn;
pub mod parity;
pub mod parts;
pub mod processing;
pub mod processor;
pub mod prune;
pub mod sweep;
pub mod weights;

pub use decoder::KvCache;
pub use inputs::ModelInputs;
pub use intervention::{
    Cut, CutContext, Intervention, PositionPolicy, TokenSelector, VisualTokens,
};
pub use model::VlModel;
