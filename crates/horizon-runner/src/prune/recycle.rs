//! SparseVLM v1.5's recycling of dropped visual tokens, as Gumpest/SparseVLMs releases it
//! (`llava/model/language_model/modelling_sparse_llama.py`, `LlamaDynamicvitModel.forward`;
//! `llava/model/language_model/utils.py`, `cluster_and_merge`): of the visual tokens a stage drops,
//! the `int(0.3 · dropped) + 1` with the highest relation score are clustered by DPC-kNN into
//! `int(n / 10) + 1` groups, and each group's mean becomes a new visual token.
//!
//! These are the building blocks; the decoder does not yet carry built tokens mid-way, so no spec
//! runs them (`docs/pruning.md`, SparseVLM).

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// How many of `dropped` tokens are recycled (`int(dropped · 0.3) + 1`, the product in f64 as
/// Python computes it) and into how many clusters (`int(recycled / 10) + 1`); `None` when nothing
/// was dropped (the released code then merges nothing).
pub fn recycle_counts(dropped: usize) -> Option<(usize, usize)> {
    if dropped == 0 {
        return None;
    }
    let recycled = ((dropped as f64 * 0.3) as usize + 1).min(dropped);
    Some((recycled, recycled / 10 + 1))
}

/// The dropped tokens that are recycled: indices into `relation` (one score per dropped token, in
/// sequence order), the `recycle_counts` highest first; equal scores keep the earlier token first.
pub fn recycled_tokens(relation: &[f32]) -> Vec<usize> {
    let Some((recycled, _)) = recycle_counts(relation.len()) else {
        return Vec::new();
    };
    let mut order: Vec<usize> = (0..relation.len()).collect();
    order.sort_by(|&a, &b| relation[b].total_cmp(&relation[a]));
    order.truncate(recycled);
    order
}

/// What [`dpc_knn_merge`] built.
pub struct Merged {
    /// One token per cluster `[clusters, C]`, in the order of the centres.
    pub tokens: Tensor,
    /// The centres (rows of the input), highest `distance · density` first.
    pub centres: Vec<usize>,
    /// Each input row's cluster (an index into `centres`).
    pub assign: Vec<usize>,
}

/// `cluster_and_merge` on one sequence `x` `[n, C]`: distances `‖x_i − x_j‖ / √C`; density
/// `exp(−mean of the squared distances to the `clusters` nearest)` (itself included); each token's
/// distance to the nearest denser token (the largest distance for the densest); the centres are the
/// `clusters` largest `distance · density`; every token joins its nearest centre (the first on a
/// tie), a centre itself; each cluster is averaged.
///
/// The released density adds `torch.rand · 1e-6` so that no two densities are equal. Exact ties are
/// systematic (mutual nearest neighbours tie when `clusters` = 2), so omitting the noise would change
/// the clustering; a tie is broken by order instead, the earlier token (higher relation) being the
/// denser, which is what a noise strictly decreasing along the sequence gives. On the bundled
/// fixtures this gives the released partition under every one of 1000 noise draws
/// (`docs/pruning.md`).
pub fn dpc_knn_merge(x: &Tensor, clusters: usize) -> Result<Merged> {
    let (n, c) = x.size2()?;
    let n = n as usize;
    if clusters == 0 || clusters > n {
        bail!("cluster_and_merge: {clusters} clusters of {n} tokens");
    }
    let x = x.to_kind(Kind::Float);
    let dist = (x.unsqueeze(1) - x.unsqueeze(0)).norm_scalaropt_dim(2, [-1i64].as_slice(), false)
        / (c as f64).sqrt();
    let (near, _) = dist.topk(clusters as i64, -1, false, true);
    let density = (-near.square().mean_dim(-1, false, Kind::Float)).exp();
    let density = Vec::<f32>::try_from(&density)?;
    let d = Vec::<f32>::try_from(&dist.reshape([-1]))?;
    let at = |i: usize, j: usize| d[i * n + j];
    let dmax = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denser =
        |j: usize, i: usize| density[j] > density[i] || (density[j] == density[i] && j < i);
    let score: Vec<f32> = (0..n)
        .map(|i| {
            let delta = (0..n)
                .filter(|&j| denser(j, i))
                .map(|j| at(i, j))
                .fold(dmax, f32::min);
            delta * density[i]
        })
        .collect();
    let mut centres: Vec<usize> = (0..n).collect();
    centres.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    centres.truncate(clusters);
    let mut assign: Vec<usize> = (0..n)
        .map(|i| {
            (0..clusters)
                .min_by(|&a, &b| at(centres[a], i).total_cmp(&at(centres[b], i)))
                .expect("at least one cluster")
        })
        .collect();
    for (k, &centre) in centres.iter().enumerate() {
        assign[centre] = k;
    }
    // The released weights: 1 / (members + 1e-6) per token, summed into its cluster.
    let mut members = vec![0f32; clusters];
    for &a in &assign {
        members[a] += 1.0;
    }
    let weight: Vec<f32> = assign.iter().map(|&a| 1.0 / (members[a] + 1e-6)).collect();
    let index = Tensor::from_slice(&assign.iter().map(|&a| a as i64).collect::<Vec<_>>());
    let source = &x * Tensor::from_slice(&weight).unsqueeze(1);
    let tokens = Tensor::zeros([clusters as i64, c], (Kind::Float, x.device())).index_add(
        0,
        &index.to_device(x.device()),
        &source,
    );
    Ok(Merged {
        tokens,
        centres,
        assign,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_the_192_preset() {
        // The 192 preset drops 576 − 300, 309 − 200 and 204 − 110 tokens: Python's
        // `int(0.3 · n) + 1` and `int(m / 10) + 1` give these.
        assert_eq!(recycle_counts(276), Some((83, 9)));
        assert_eq!(recycle_counts(109), Some((33, 4)));
        assert_eq!(recycle_counts(94), Some((29, 3)));
        assert_eq!(recycle_counts(1), Some((1, 1)));
        assert_eq!(recycle_counts(0), None);
    }

    #[test]
    fn recycled_tokens_rank_by_relation_then_order() {
        // 10 dropped → 4 recycled, highest relation first, a tie kept in sequence order.
        let relation = [0.1, 0.5, 0.3, 0.5, 0.0, 0.2, 0.9, 0.05, 0.3, 0.1];
        assert_eq!(recycled_tokens(&relation), vec![6, 1, 3, 2]);
    }
}
