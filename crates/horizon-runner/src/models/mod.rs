//! One folder per model family (`config`, `model`, `processor`), mirroring the HF module tree and
//! weight names; the CLIP vision tower is shared by the families that use it.

pub mod clip;
pub mod llava;
pub mod qwen2_5_vl;
