//! The one intervention value: which sequence positions each decoder layer processes.
//!
//! A [`Cut`] at layer K means decoder layers `< K` see every token they saw before and layers `>= K`
//! see only `keep`. Tokens are *dropped* (gathered out of the sequence), not masked, exactly as the
//! reference procedure of arXiv 2512.07580 does; kept tokens keep their original position ids unless the
//! intervention asks for renumbering (the two-stage pruning path of the reference renumbers). The empty
//! intervention is the plain model. Information sweeps, pruning methods and generation all pass one of
//! these into the same forward.

use anyhow::{bail, Result};
use tch::Tensor;

/// Where the visual tokens sit in the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VisualTokens {
    /// Sequence indices of the visual tokens, ascending (raster order of the grid).
    pub positions: Vec<usize>,
    /// Token grid (rows, cols); `positions[r * cols + c]` is token (r, c). For Qwen2.5-VL the merged
    /// grid of the image, which varies with its resolution.
    pub grid: (usize, usize),
}

impl VisualTokens {
    /// `mask[p]` says whether prompt position `p` (of `seq_len`) is a visual token.
    pub fn mask(&self, seq_len: usize) -> Vec<bool> {
        let mut m = vec![false; seq_len];
        for &p in &self.positions {
            if p < seq_len {
                m[p] = true;
            }
        }
        m
    }
}

/// What a [`TokenSelector`] sees before decoder layer `layer` runs.
pub struct CutContext<'a> {
    /// 0-based layer about to run.
    pub layer: usize,
    pub num_layers: usize,
    /// That layer's input `[1, S', D]`: the output of layer − 1 (the input embeddings at layer 0).
    pub hidden: &'a Tensor,
    /// Ids of the `S'` rows in sequence order: original prompt indices (ascending), and the ids of
    /// tokens built at earlier cuts ([`TokenSelector::built_tokens`]), which follow the prompt's.
    pub kept: &'a [usize],
    pub visual: &'a VisualTokens,
    /// When [`TokenSelector::attention_rows`] asked for them at layer − 1: that layer's attention
    /// probabilities `[heads, R, S']` (f32) of the requested query rows over the `S'` kept keys.
    pub attention: Option<&'a Tensor>,
    /// When [`TokenSelector::keys_at`] asked for them at layer − 1: that layer's post-rotary key
    /// states `[S', kv_heads · head_dim]` (model dtype), one row per kept token.
    pub keys: Option<&'a Tensor>,
    /// The decoder's final norm (DART compares tokens by their final-normed hidden states).
    pub final_norm: &'a crate::nn::RmsNorm,
}

/// Decides, during the forward, which prompt positions each decoder layer processes.
pub trait TokenSelector {
    /// Before layer `ctx.layer`: the positions it and the later layers keep (ids of `ctx.kept` in
    /// its order, holding the last prompt position, and the ids of the tokens this cut builds), or
    /// `None` to keep all.
    fn select(&mut self, ctx: &CutContext) -> Result<Option<Vec<usize>>>;

    /// Tokens built by the cut [`Self::select`] just returned: their hidden states `[1, m, D]`, the
    /// tokens of ids `next .. next + m`, where `next` is the prompt length plus the number of tokens
    /// built at earlier cuts; the keep-set places them. They count as visual tokens, and such a cut
    /// takes the first `S''` of the current position ids (SparseVLM v1.5's `position_ids[:, :n]`),
    /// whatever [`Self::positions_at`] says.
    fn built_tokens(&mut self) -> Option<Tensor> {
        None
    }

    /// Before layer `layer` runs over `kept`: the query rows (original indices) whose attention
    /// probabilities at `layer` the selection before `layer + 1` needs. Only that layer computes them.
    fn attention_rows(&self, _layer: usize, _kept: &[usize]) -> Option<Vec<usize>> {
        None
    }

    /// Whether the selection before `layer + 1` needs `layer`'s post-rotary keys.
    fn keys_at(&self, _layer: usize) -> bool {
        false
    }

    /// How kept tokens are numbered after a cut.
    fn positions(&self) -> PositionPolicy {
        PositionPolicy::Original
    }

    /// How kept tokens are numbered after the cut before `layer` (stages of one pruning spec may
    /// follow different conventions).
    fn positions_at(&self, _layer: usize) -> PositionPolicy {
        self.positions()
    }
}

/// How kept tokens are numbered for rotary embeddings after a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionPolicy {
    /// Kept tokens keep their original position ids, with gaps (the information runs of the reference).
    #[default]
    Original,
    /// Kept tokens are renumbered `0..len` after each cut (M-RoPE: as `get_rope_index` indexes the
    /// shortened sequence, the kept visual tokens an image of their kept rows and columns), and decoding
    /// continues after the last renumbered id (the reference's list-K two-stage pruning path).
    Renumbered,
}

/// From decoder layer `layer` on, only the sequence indices in `keep` are processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// 0-based decoder layer whose input is the first to be cut.
    pub layer: usize,
    /// Ascending indices into the *original* prompt sequence.
    pub keep: Vec<usize>,
}

/// Per-layer keep-sets as a list of nested cuts, ordered by layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Intervention {
    cuts: Vec<Cut>,
    positions: PositionPolicy,
}

impl Intervention {
    /// The plain model: every layer sees every token.
    pub fn none() -> Self {
        Self::default()
    }

    /// A single cut at `layer` keeping `keep` (original sequence indices, any order, no duplicates).
    pub fn cut_at(layer: usize, keep: impl IntoIterator<Item = usize>) -> Result<Self> {
        Self::none().then_cut_at(layer, keep)
    }

    /// Adds a deeper cut; its keep-set must be a subset of the previous cut's.
    pub fn then_cut_at(
        mut self,
        layer: usize,
        keep: impl IntoIterator<Item = usize>,
    ) -> Result<Self> {
        let mut keep: Vec<usize> = keep.into_iter().collect();
        keep.sort_unstable();
        if keep.windows(2).any(|w| w[0] == w[1]) {
            bail!("intervention: duplicate position in the keep-set of the cut at layer {layer}");
        }
        if keep.is_empty() {
            bail!("intervention: the cut at layer {layer} keeps no token");
        }
        if let Some(prev) = self.cuts.last() {
            if layer <= prev.layer {
                bail!(
                    "intervention: cuts must be at increasing layers ({} then {layer})",
                    prev.layer
                );
            }
            if let Some(p) = keep.iter().find(|p| prev.keep.binary_search(p).is_err()) {
                bail!(
                    "intervention: the cut at layer {layer} keeps position {p}, already dropped at layer {}",
                    prev.layer
                );
            }
        }
        self.cuts.push(Cut { layer, keep });
        Ok(self)
    }

    pub fn with_positions(mut self, policy: PositionPolicy) -> Self {
        self.positions = policy;
        self
    }

    pub fn positions(&self) -> PositionPolicy {
        self.positions
    }

    pub fn cuts(&self) -> &[Cut] {
        &self.cuts
    }

    pub fn is_none(&self) -> bool {
        self.cuts.is_empty()
    }

    /// The cut whose keep-set applies from `layer` on, if one starts exactly there.
    pub fn cut_starting_at(&self, layer: usize) -> Option<&Cut> {
        self.cuts.iter().find(|c| c.layer == layer)
    }

    /// The original sequence indices decoder layer `layer` processes, `None` meaning all of them.
    pub fn kept_at_layer(&self, layer: usize) -> Option<&[usize]> {
        self.cuts
            .iter()
            .rev()
            .find(|c| c.layer <= layer)
            .map(|c| c.keep.as_slice())
    }

    /// Checks the intervention against a prompt of `seq_len` tokens and a decoder of `num_layers` layers.
    /// The last prompt position must be kept: its output is the next-token distribution.
    pub fn validate(&self, seq_len: usize, num_layers: usize) -> Result<()> {
        for cut in &self.cuts {
            if cut.layer >= num_layers {
                bail!(
                    "intervention: cut at layer {} but the decoder has {num_layers} layers (0-based)",
                    cut.layer
                );
            }
            if let Some(&p) = cut.keep.last() {
                if p >= seq_len {
                    bail!("intervention: position {p} is outside the prompt of {seq_len} tokens");
                }
            }
            if cut.keep.last() != Some(&(seq_len - 1)) {
                bail!(
                    "intervention: the cut at layer {} drops the last prompt position {}, whose output is the answer",
                    cut.layer,
                    seq_len - 1
                );
            }
        }
        Ok(())
    }
}

/// The static intervention as a selector: the cut starting at each layer, checked against the prompt
/// at layer 0.
impl TokenSelector for Intervention {
    fn select(&mut self, ctx: &CutContext) -> Result<Option<Vec<usize>>> {
        if ctx.layer == 0 {
            self.validate(ctx.kept.len(), ctx.num_layers)?;
        }
        Ok(self.cut_starting_at(ctx.layer).map(|c| c.keep.clone()))
    }

    fn positions(&self) -> PositionPolicy {
        self.positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_cuts_and_lookup() {
        let iv = Intervention::cut_at(2, [0, 1, 2, 5, 9])
            .unwrap()
            .then_cut_at(4, [0, 5, 9])
            .unwrap();
        assert_eq!(iv.kept_at_layer(1), None);
        assert_eq!(iv.kept_at_layer(2), Some(&[0, 1, 2, 5, 9][..]));
        assert_eq!(iv.kept_at_layer(3), Some(&[0, 1, 2, 5, 9][..]));
        assert_eq!(iv.kept_at_layer(7), Some(&[0, 5, 9][..]));
        assert!(iv.validate(10, 8).is_ok());
        assert!(iv.validate(11, 8).is_err(), "last position 10 dropped");
        assert!(iv.validate(10, 4).is_err(), "layer 4 does not exist");
    }

    #[test]
    fn rejects_non_nested_and_duplicates() {
        let iv = Intervention::cut_at(2, [0, 1, 9]).unwrap();
        assert!(iv.clone().then_cut_at(3, [0, 4, 9]).is_err());
        assert!(iv.clone().then_cut_at(2, [0, 9]).is_err());
        assert!(Intervention::cut_at(1, [3, 3]).is_err());
        assert!(Intervention::cut_at(1, []).is_err());
    }
}
