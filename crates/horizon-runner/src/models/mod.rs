//! One file per model family, mirroring the HF module tree and weight names.

pub mod clip;
pub mod llama;
pub mod llava;
pub mod qwen2_5_vl;
