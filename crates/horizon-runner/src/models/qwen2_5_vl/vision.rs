//! `Qwen2_5_VisionTransformerPretrainedModel`: patch embedding, windowed blocks, patch merger.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::config::Qwen2_5VlVisionConfig;
use crate::decoder::Mlp;
use crate::nn::{rotate_half, sdpa, Linear, RmsNorm};
use crate::weights::Weights;

/// `Qwen2_5_VisionPatchEmbed`: conv3d with stride = kernel, no bias.
struct Qwen2_5VisionPatchEmbed {
    proj: Tensor,
    in_channels: i64,
    temporal_patch_size: i64,
    patch_size: i64,
    embed_dim: i64,
}

impl Qwen2_5VisionPatchEmbed {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let (c, t, s, d) = (
            cfg.in_channels,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.hidden_size,
        );
        Ok(Self {
            proj: w.get(&format!("{p}.proj.weight"), &[d, c, t, s, s])?,
            in_channels: c,
            temporal_patch_size: t,
            patch_size: s,
            embed_dim: d,
        })
    }

    fn patch_dim(&self) -> i64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (t, s) = (self.temporal_patch_size, self.patch_size);
        x.view([-1, self.in_channels, t, s, s])
            .to_kind(self.proj.kind())
            .conv3d(
                &self.proj,
                None::<Tensor>,
                [t, s, s],
                [0, 0, 0],
                [1, 1, 1],
                1,
            )
            .view([-1, self.embed_dim])
    }
}

/// `Qwen2_5_VLVisionRotaryEmbedding`: axial rope, the same frequencies for rows and columns.
struct Qwen2_5VlVisionRotaryEmbedding {
    inv_freq: Tensor,
}

impl Qwen2_5VlVisionRotaryEmbedding {
    fn new(head_dim: i64, theta: f64, device: Device) -> Self {
        let spatial_dim = head_dim / 2;
        let exponent = Tensor::arange_start_step(0, spatial_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / spatial_dim as f64;
        Self {
            inv_freq: Tensor::pow_scalar(theta, &exponent).reciprocal(),
        }
    }

    /// cos and sin `[N, head_dim]` in f32 for (row, column) ids `[N, 2]`:
    /// `freqs = pos[..., None] * inv_freq` → `[N, 2, head_dim/4]`, then `cat(h, w)` twice.
    fn forward(&self, position_ids: &Tensor) -> (Tensor, Tensor) {
        let freqs = position_ids.unsqueeze(-1).to_kind(Kind::Float) * &self.inv_freq;
        let recompose = |f: Tensor| {
            let hw = Tensor::cat(&[f.select(1, 0), f.select(1, 1)], -1);
            Tensor::cat(&[&hw, &hw], -1)
        };
        (recompose(freqs.cos()), recompose(freqs.sin()))
    }
}

/// `Qwen2_5_VLVisionAttention` (SDPA path: one call per `cu_seqlens` chunk).
struct Qwen2_5VlVisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: i64,
    scaling: f64,
}

impl Qwen2_5VlVisionAttention {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            qkv: Linear::load(w, &format!("{p}.qkv"), d, 3 * d, true)?,
            proj: Linear::load(w, &format!("{p}.proj"), d, d, true)?,
            num_heads: cfg.num_heads,
            scaling: (cfg.head_dim() as f64).powf(-0.5),
        })
    }

    /// q, k, v `[seq, heads, head_dim]`.
    fn split_qkv(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let seq = x.size()[0];
        let qkv = self
            .qkv
            .forward(x)
            .reshape([seq, 3, self.num_heads, -1])
            .permute([1, 0, 2, 3]);
        (qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2))
    }

    fn forward(&self, x: &Tensor, chunk_lengths: &[i64], cos: &Tensor, sin: &Tensor) -> Tensor {
        let seq = x.size()[0];
        let (q, k, v) = self.split_qkv(x);
        // `apply_rotary_pos_emb_vision`: rotate in f32, cast back.
        let q = rotate_f32(&q, cos, sin).to_kind(q.kind());
        let k = rotate_f32(&k, cos, sin).to_kind(k.kind());
        let q = q.transpose(0, 1).unsqueeze(0);
        let k = k.transpose(0, 1).unsqueeze(0);
        let v = v.transpose(0, 1).unsqueeze(0);
        let qs = q.split_with_sizes(chunk_lengths, 2);
        let ks = k.split_with_sizes(chunk_lengths, 2);
        let vs = v.split_with_sizes(chunk_lengths, 2);
        let outs: Vec<Tensor> = qs
            .iter()
            .zip(&ks)
            .zip(&vs)
            .map(|((q, k), v)| {
                sdpa(q, k, v, false, self.scaling, false)
                    .transpose(1, 2)
                    .contiguous()
            })
            .collect();
        let out = Tensor::cat(&outs, 1).reshape([seq, -1]).contiguous();
        self.proj.forward(&out)
    }

    /// For VisionZip on an encoder without CLS (its SigLIP path): the attention each row receives,
    /// averaged over heads and queries (`[seq]`, eager softmax in f32 over one chunk), and the
    /// head-averaged keys before the rotary embedding (`[seq, head_dim]`).
    fn received_and_keys(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor) {
        let (q, k, _) = self.split_qkv(x);
        let keys = k.mean_dim(1, false, Kind::Float);
        let q = rotate_f32(&q, cos, sin).transpose(0, 1);
        let k = rotate_f32(&k, cos, sin).transpose(0, 1);
        let probs = (q.matmul(&k.transpose(1, 2)) * self.scaling).softmax(-1, Kind::Float);
        let received = probs
            .mean_dim(0, false, Kind::Float)
            .mean_dim(0, false, Kind::Float);
        (received, keys)
    }
}

/// `x` `[seq, heads, d]` rotated by the vision rotary tables `[seq, d]`, in f32.
fn rotate_f32(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let cos = cos.unsqueeze(-2).to_kind(Kind::Float);
    let sin = sin.unsqueeze(-2).to_kind(Kind::Float);
    &x * &cos + rotate_half(&x) * &sin
}

/// `Qwen2_5_VLVisionBlock`.
struct Qwen2_5VlVisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: Qwen2_5VlVisionAttention,
    mlp: Mlp,
}

impl Qwen2_5VlVisionBlock {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            norm1: RmsNorm::load(w, &format!("{p}.norm1"), d, 1e-6)?,
            norm2: RmsNorm::load(w, &format!("{p}.norm2"), d, 1e-6)?,
            attn: Qwen2_5VlVisionAttention::load(w, &format!("{p}.attn"), cfg)?,
            mlp: Mlp::load(
                w,
                &format!("{p}.mlp"),
                d,
                cfg.intermediate_size,
                &cfg.hidden_act,
                true,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, chunk_lengths: &[i64], cos: &Tensor, sin: &Tensor) -> Tensor {
        let x = x + self
            .attn
            .forward(&self.norm1.forward(x), chunk_lengths, cos, sin);
        let h = self.mlp.forward(&self.norm2.forward(&x));
        x + h
    }
}

/// `Qwen2_5_VLPatchMerger`: RMSNorm, then 2x2 patches concatenated, Linear, GELU, Linear.
struct Qwen2_5VlPatchMerger {
    ln_q: RmsNorm,
    mlp_0: Linear,
    mlp_2: Linear,
    hidden_size: i64,
}

impl Qwen2_5VlPatchMerger {
    fn load(w: &Weights, p: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        let context = cfg.hidden_size;
        let hidden = context * cfg.spatial_merge_size.pow(2);
        Ok(Self {
            ln_q: RmsNorm::load(w, &format!("{p}.ln_q"), context, 1e-6)?,
            mlp_0: Linear::load(w, &format!("{p}.mlp.0"), hidden, hidden, true)?,
            mlp_2: Linear::load(w, &format!("{p}.mlp.2"), hidden, cfg.out_hidden_size, true)?,
            hidden_size: hidden,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.ln_q.forward(x).view([-1, self.hidden_size]);
        self.mlp_2.forward(&self.mlp_0.forward(&x).gelu("none"))
    }
}

/// `get_vision_position_ids`: (row, column) of every patch `[N, 2]`, laid out block-major over 2x2
/// merge blocks and repeated `t` times.
pub fn vision_position_ids(grids: &[[i64; 3]], merge: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        let mut frame = Vec::with_capacity((2 * h * w) as usize);
        for bh in 0..h / merge {
            for bw in 0..w / merge {
                for mh in 0..merge {
                    for mw in 0..merge {
                        frame.push(bh * merge + mh);
                        frame.push(bw * merge + mw);
                    }
                }
            }
        }
        for _ in 0..t {
            out.extend_from_slice(&frame);
        }
    }
    out
}

/// `get_vision_window_index`: the order of merged units that makes each window contiguous, and the
/// cumulative window lengths in patches (`unique_consecutive` drops empty windows).
pub fn vision_window_index(grids: &[[i64; 3]], merge: i64, window: i64) -> (Vec<i64>, Vec<i64>) {
    let mut window_index = Vec::new();
    let mut cu_window_seqlens = vec![0i64];
    let mut offset = 0;
    let unit = merge * merge;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        let (nh, nw) = (
            (lh + window - (lh % window)) / window,
            (lw + window - (lw % window)) / window,
        );
        for ti in 0..t {
            for wh in 0..nh {
                for ww in 0..nw {
                    let mut valid = 0;
                    for r in wh * window..(wh + 1) * window {
                        for c in ww * window..(ww + 1) * window {
                            if r < lh && c < lw {
                                window_index.push(offset + ti * lh * lw + r * lw + c);
                                valid += 1;
                            }
                        }
                    }
                    let last = *cu_window_seqlens.last().expect("starts with 0");
                    cu_window_seqlens.push(last + valid * unit);
                }
            }
        }
        offset += t * lh * lw;
    }
    cu_window_seqlens.dedup();
    (window_index, cu_window_seqlens)
}

fn chunk_lengths(cu: &[i64]) -> Vec<i64> {
    cu.windows(2).map(|w| w[1] - w[0]).collect()
}

/// `Qwen2_5_VisionTransformerPretrainedModel`.
pub struct Qwen2_5VisionTransformer {
    pub cfg: Qwen2_5VlVisionConfig,
    patch_embed: Qwen2_5VisionPatchEmbed,
    rotary_pos_emb: Qwen2_5VlVisionRotaryEmbedding,
    blocks: Vec<Qwen2_5VlVisionBlock>,
    merger: Qwen2_5VlPatchMerger,
}

impl Qwen2_5VisionTransformer {
    /// Loads `{prefix}.patch_embed`, `{prefix}.blocks.N.*`, `{prefix}.merger`.
    pub fn load(w: &Weights, prefix: &str, cfg: &Qwen2_5VlVisionConfig) -> Result<Self> {
        Ok(Self {
            patch_embed: Qwen2_5VisionPatchEmbed::load(w, &format!("{prefix}.patch_embed"), cfg)?,
            rotary_pos_emb: Qwen2_5VlVisionRotaryEmbedding::new(
                cfg.head_dim(),
                cfg.rope_theta(),
                w.device(),
            ),
            blocks: (0..cfg.depth)
                .map(|i| Qwen2_5VlVisionBlock::load(w, &format!("{prefix}.blocks.{i}"), cfg))
                .collect::<Result<_>>()?,
            merger: Qwen2_5VlPatchMerger::load(w, &format!("{prefix}.merger"), cfg)?,
            cfg: cfg.clone(),
        })
    }

    pub fn dtype(&self) -> Kind {
        self.patch_embed.proj.kind()
    }

    /// `permute_input_for_window_attn`: rows grouped by merge unit, units reordered by `window_index`.
    fn permute(&self, x: &Tensor, window_index: &Tensor, seq: i64) -> Tensor {
        let unit = self.cfg.spatial_merge_size.pow(2);
        x.reshape([seq / unit, unit, -1])
            .index_select(0, window_index)
            .reshape([seq, -1])
    }

    /// Patches `[N, C·T·P·P]` of images with grids `[t, h, w]` to merged features
    /// `[N / merge², out_hidden_size]` in raster order of the merged grid (the `pooler_output`).
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[i64; 3]]) -> Result<Tensor> {
        let p = self.prepare(pixel_values, grids)?;
        let mut h = p.hidden.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, p.lengths(&self.cfg, i), &p.cos, &p.sin);
        }
        Ok(self.merger.forward(&h).index_select(0, &p.reverse_indices))
    }

    /// VisionZip's scores where there is no CLS token, for one image: at the last full-attention
    /// block (the last block in the published configs), the attention each merged token's patches
    /// receive (mean over heads and queries, then over the merge unit; `[M]`) and their head-mean
    /// keys before rotary (mean over the merge unit; `[M, head_dim]`), in raster order.
    pub fn last_full_attention_received(
        &self,
        pixel_values: &Tensor,
        grids: &[[i64; 3]],
    ) -> Result<(Tensor, Tensor)> {
        if grids.len() != 1 || grids[0][0] != 1 {
            bail!("attention received is defined for one image, not grids {grids:?}");
        }
        let last = self.blocks.len() - 1;
        let at = self
            .cfg
            .fullatt_block_indexes
            .iter()
            .copied()
            .filter(|&b| b >= 0 && (b as usize) <= last)
            .max()
            .map_or(last, |b| b as usize);
        let p = self.prepare(&pixel_values.to_kind(self.dtype()), grids)?;
        let mut h = p.hidden.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate().take(at) {
            h = block.forward(&h, p.lengths(&self.cfg, i), &p.cos, &p.sin);
        }
        let block = &self.blocks[at];
        let (received, keys) =
            block
                .attn
                .received_and_keys(&block.norm1.forward(&h), &p.cos, &p.sin);
        let unit = self.cfg.spatial_merge_size.pow(2);
        let m = received.size()[0] / unit;
        let received = received
            .view([m, unit])
            .mean_dim(1, false, Kind::Float)
            .index_select(0, &p.reverse_indices);
        let keys = keys
            .view([m, unit, -1])
            .mean_dim(1, false, Kind::Float)
            .index_select(0, &p.reverse_indices);
        Ok((received, keys))
    }

    /// Everything before the blocks: patch embeddings and rotary tables in window order, the
    /// attention chunks, and the order that undoes the window permutation after the merger.
    fn prepare(&self, pixel_values: &Tensor, grids: &[[i64; 3]]) -> Result<Prepared> {
        let cfg = &self.cfg;
        let merge = cfg.spatial_merge_size;
        let size = pixel_values.size();
        let expected: i64 = grids.iter().map(|g| g.iter().product::<i64>()).sum();
        if size.len() != 2 || size[0] != expected || size[1] != self.patch_embed.patch_dim() {
            bail!(
                "pixel values have shape {size:?}, the grids {grids:?} need [{expected}, {}]",
                self.patch_embed.patch_dim()
            );
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g[1] % merge != 0 || g[2] % merge != 0)
        {
            bail!("image grid {g:?} is not a multiple of spatial_merge_size {merge}");
        }
        let device = pixel_values.device();
        let pos = vision_position_ids(grids, merge);
        let position_ids = Tensor::from_slice(&pos).view([-1, 2]).to_device(device);
        let cu_seqlens: Vec<i64> = std::iter::once(0)
            .chain(
                grids
                    .iter()
                    .flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t as usize))
                    .scan(0, |acc, n| {
                        *acc += n;
                        Some(*acc)
                    }),
            )
            .collect();
        let (window_index, cu_window_seqlens) =
            vision_window_index(grids, merge, cfg.vit_merger_window_size());
        let full_lengths = chunk_lengths(&cu_seqlens);
        let window_lengths = chunk_lengths(&cu_window_seqlens);
        let window_index = Tensor::from_slice(&window_index).to_device(device);

        let h = self.patch_embed.forward(pixel_values);
        let seq = h.size()[0];
        let hidden = self.permute(&h, &window_index, seq);
        let (cos, sin) = self.rotary_pos_emb.forward(&position_ids);
        let cos = self.permute(&cos, &window_index, seq);
        let sin = self.permute(&sin, &window_index, seq);
        let reverse_indices = window_index.argsort(0, false);
        Ok(Prepared {
            hidden,
            cos,
            sin,
            full_lengths,
            window_lengths,
            reverse_indices,
        })
    }
}

/// The vision tower's inputs to its blocks (see `Qwen2_5VisionTransformer::prepare`).
struct Prepared {
    hidden: Tensor,
    cos: Tensor,
    sin: Tensor,
    full_lengths: Vec<i64>,
    window_lengths: Vec<i64>,
    reverse_indices: Tensor,
}

impl Prepared {
    /// Block `i` attends over whole images (`fullatt_block_indexes`) or within windows.
    fn lengths(&self, cfg: &Qwen2_5VlVisionConfig, i: usize) -> &[i64] {
        if cfg.fullatt_block_indexes.contains(&(i as i64)) {
            &self.full_lengths
        } else {
            &self.window_lengths
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_index_pads_and_drops_empty_windows() {
        // 6x10 merged units with 4x4 windows: 2x3 windows, valid counts 16,16,8 / 8,8,4.
        let (idx, cu) = vision_window_index(&[[1, 12, 20]], 2, 4);
        assert_eq!(idx.len(), 60);
        assert_eq!(&idx[..5], &[0, 1, 2, 3, 10]);
        assert_eq!(cu, vec![0, 64, 128, 160, 192, 224, 240]);
        // Divisible grid: the extra padded window is empty and dropped by unique_consecutive.
        let (_, cu) = vision_window_index(&[[1, 8, 8]], 2, 4);
        assert_eq!(cu, vec![0, 64]);
    }
}
