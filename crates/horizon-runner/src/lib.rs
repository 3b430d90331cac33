//! horizon-runner: the libtorch-backed model runner of horizon.
//!
//! It loads HF-format vision-language checkpoints as users have them (llava-hf LLaVA-1.5), reproduces
//! HF transformers' outputs, and runs every forward under an explicit [`Intervention`]: which prompt
//! positions each decoder layer processes. Information sweeps, pruning methods and plain generation
//! are all callers of that one forward.

pub mod device;
pub mod generate;
pub mod info;
pub mod intervention;
pub mod model;
pub mod models;
pub mod nn;
pub mod parity;
pub mod processor;
pub mod train;
pub mod weights;

pub use intervention::{Cut, Intervention, PositionPolicy};
pub use model::{ModelInputs, VlModel};
