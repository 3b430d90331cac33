//! What a processor hands the model: one tokenized prompt with its image, on the model's device.

use tch::{Device, Tensor};

use crate::intervention::VisualTokens;

/// Tokenized prompt and preprocessed image, with the rotary position ids of the prompt.
pub struct ModelInputs {
    /// `[1, S]` int64.
    pub input_ids: Tensor,
    /// LLaVA: `[1, 3, H, W]` float32; LLaVA-NeXT: the base image and the tiles `[tiles, 3, H, W]`; Qwen2.5-VL: patches `[N, patch_dim]` float32. Cast to the vision
    /// tower's dtype inside.
    pub pixel_values: Option<Tensor>,
    /// Per image, what the family's vision side needs of its geometry: Qwen2.5-VL its patch grid
    /// `[t, h, w]`; LLaVA-NeXT `[1, height, width]`, the image size before processing
    /// (`image_sizes`); empty for LLaVA-1.5.
    pub image_grid_thw: Vec<[i64; 3]>,
    /// Where the visual tokens sit and their grid.
    pub visual: VisualTokens,
    /// Rotary position ids of the prompt: `[1, S]` (the sequence indices) for 1-D rotary models,
    /// `[3, 1, S]` from `get_rope_index` for Qwen2.5-VL's M-RoPE.
    pub position_ids: Tensor,
    /// M-RoPE: `max(position id) + 1 - S`, what decoding adds to its cache position (0 for 1-D).
    pub rope_deltas: i64,
}

impl ModelInputs {
    pub fn seq_len(&self) -> usize {
        self.input_ids.size()[1] as usize
    }

    pub fn input_ids_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(self.input_ids.reshape([-1]).to_device(Device::Cpu))
            .expect("int64 input ids")
    }
}
