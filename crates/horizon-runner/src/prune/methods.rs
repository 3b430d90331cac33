//! The selection rules of the pruning methods, on plain vectors of scores and similarities so that
//! each one reads like its published algorithm (`docs/pruning.md` names each paper and its code). Indices are
//! positions in the list of visual tokens left before the stage; results are ascending.

use anyhow::{bail, Result};
use horizon_data::window::{TokenGrid, WindowGrid};

/// The `k` largest scores (ties: the lower index first), ascending indices.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order = top_k_ranked(scores, k);
    order.sort_unstable();
    order
}

/// The `k` largest scores, best first (ties: the lower index first), as `torch.topk` lists them.
pub fn top_k_ranked(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The order in which 64-bit CPython iterates `set(keys)` (`list(set(keys))`) for non-negative
/// integers, whose hash is the integer modulo 2⁶¹ − 1 (the integer itself below that):
/// `Objects/setobject.c` (3.11) adds the keys in turn to an open-addressing table of 8 slots
/// (`set_add_entry`): slot `hash & mask`, then up to
/// 9 linear probes where they fit before the table's end, then the perturbed step `i = 5i + 1 +
/// perturb` (`perturb >>= 5` each round); when a key makes the table 3/5 full it is rebuilt
/// (`set_table_resize`) at the smallest power of two above 4 × the keys, the old slots re-inserted
/// in slot order (`set_insert_clean`). Iteration runs over the slots in order. DART walks its pivots
/// in this order (`docs/pruning.md`); duplicates are kept once, as a set keeps them.
pub fn python_set_order(keys: &[usize]) -> Vec<usize> {
    const MIN_SIZE: usize = 8;
    const LINEAR_PROBES: usize = 9;
    const PERTURB_SHIFT: u32 = 5;
    const HASH_MODULUS: usize = (1 << 61) - 1;

    /// The first free slot of `key`'s probe sequence, or `Err` with the slot already holding it.
    fn probe(table: &[Option<usize>], key: usize) -> std::result::Result<usize, usize> {
        let mask = table.len() - 1;
        let hash = key % HASH_MODULUS;
        let mut perturb = hash;
        let mut i = hash & mask;
        loop {
            let probes = if i + LINEAR_PROBES <= mask {
                LINEAR_PROBES
            } else {
                0
            };
            for (j, slot) in table.iter().enumerate().skip(i).take(probes + 1) {
                match *slot {
                    None => return Ok(j),
                    Some(k) if k == key => return Err(j),
                    Some(_) => {}
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb) & mask;
        }
    }

    let mut table: Vec<Option<usize>> = vec![None; MIN_SIZE];
    let mut used = 0usize;
    for &key in keys {
        let Ok(slot) = probe(&table, key) else {
            continue;
        };
        let mask = table.len() - 1;
        table[slot] = Some(key);
        used += 1;
        if used * 5 >= mask * 3 {
            let min_used = if used > 50_000 { used * 2 } else { used * 4 };
            let mut size = MIN_SIZE;
            while size <= min_used {
                size <<= 1;
            }
            let old = std::mem::replace(&mut table, vec![None; size]);
            for key in old.into_iter().flatten() {
                // The new table holds no duplicate: the first free slot is where it goes.
                let slot = probe(&table, key).unwrap_or_else(|s| s);
                table[slot] = Some(key);
            }
        }
    }
    table.into_iter().flatten().collect()
}

/// Window FastV: each window of `grid` keeps `⌊k·|W|/n⌋` of its best tokens by score, and what that
/// leaves of `k` goes to the best remaining tokens of the whole grid.
pub fn window_top_k(scores: &[f32], grid: &WindowGrid, k: usize) -> Vec<usize> {
    let n = scores.len();
    let mut kept = vec![false; n];
    let mut count = 0;
    for w in 0..grid.num_windows() {
        let tokens = grid.window_tokens(w);
        let quota = k * tokens.len() / n;
        let local: Vec<f32> = tokens.iter().map(|&t| scores[t]).collect();
        for i in top_k(&local, quota) {
            kept[tokens[i]] = true;
            count += 1;
        }
    }
    let mut rest: Vec<usize> = (0..n).filter(|&t| !kept[t]).collect();
    rest.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    for &t in rest.iter().take(k - count) {
        kept[t] = true;
    }
    (0..n).filter(|&t| kept[t]).collect()
}

/// DivPrune's greedy max–min solver over the cosine distances `dist` (`n × n`, row-major): first the
/// token whose nearest other token is farthest, then repeatedly the token farthest from the chosen set.
pub fn divprune(dist: &[f32], n: usize, k: usize) -> Vec<usize> {
    if k == 0 || n == 0 {
        return Vec::new();
    }
    let col = |i: usize| (0..n).map(move |r| dist[r * n + i]);
    // Second-smallest entry of each column (the smallest is the token's distance to itself).
    let first = (0..n)
        .map(|i| {
            let mut v: Vec<f32> = col(i).collect();
            v.sort_by(f32::total_cmp);
            v.get(1).copied().unwrap_or(v[0])
        })
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, s)| {
            if s > best.1 {
                (i, s)
            } else {
                best
            }
        })
        .0;
    let mut chosen = vec![first];
    let mut taken = vec![false; n];
    taken[first] = true;
    let mut nearest: Vec<f32> = (0..n).map(|i| dist[first * n + i]).collect();
    while chosen.len() < k.min(n) {
        let next = (0..n)
            .filter(|&i| !taken[i])
            .fold((usize::MAX, f32::NEG_INFINITY), |best, i| {
                if nearest[i] > best.1 || best.0 == usize::MAX {
                    (i, nearest[i])
                } else {
                    best
                }
            })
            .0;
        taken[next] = true;
        chosen.push(next);
        for i in 0..n {
            nearest[i] = nearest[i].min(dist[next * n + i]);
        }
    }
    chosen.sort_unstable();
    chosen
}

/// ToDRE's greedy max-sum diversification from `pivot` over cosine similarities `sim` (`n × n`):
/// repeatedly the token with the lowest summed similarity to the chosen set.
pub fn max_sum_diversity(sim: &[f32], n: usize, pivot: usize, k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let mut total: Vec<f32> = (0..n).map(|i| sim[pivot * n + i]).collect();
    total[pivot] = f32::INFINITY;
    let mut chosen = vec![pivot];
    while chosen.len() < k.min(n) {
        let c = (0..n)
            .fold((0, f32::INFINITY), |best, i| {
                if total[i] < best.1 {
                    (i, total[i])
                } else {
                    best
                }
            })
            .0;
        chosen.push(c);
        for i in 0..n {
            total[i] += sim[c * n + i];
        }
        total[c] = f32::INFINITY;
        for &s in &chosen {
            total[s] = f32::INFINITY;
        }
    }
    chosen.sort_unstable();
    chosen
}

/// DART's retained set: the image pivots plus, for each pivot in the order given (the order they are
/// walked in), its quota of the candidates not yet taken least similar to it (`pivot_sims[p][j]`:
/// cosine of pivot p and visual token j). Quotas are `(k − |image pivots|) / |pivots|`, the
/// remainder one each to the first pivots walked, so that exactly `k`
/// are kept (DART's own code keeps `4 + 8·⌊M/8⌋`; equal whenever `k − 4` is a multiple of 8).
pub fn dart(image_pivots: &[usize], pivot_sims: &[Vec<f32>], n: usize, k: usize) -> Vec<usize> {
    let mut kept = vec![false; n];
    for &p in image_pivots {
        kept[p] = true;
    }
    let budget = k.saturating_sub(image_pivots.len());
    let pivots = pivot_sims.len().max(1);
    let (quota, extra) = (budget / pivots, budget % pivots);
    for (i, sims) in pivot_sims.iter().enumerate() {
        let take = quota + usize::from(i < extra);
        let mut candidates: Vec<usize> = (0..n).filter(|&j| !kept[j]).collect();
        candidates.sort_by(|&a, &b| sims[a].total_cmp(&sims[b]).then(a.cmp(&b)));
        for &j in candidates.iter().take(take) {
            kept[j] = true;
        }
    }
    (0..n).filter(|&j| kept[j]).collect()
}

/// The paper's Pooling (Algorithm 4 of "Token Pruning in MLLMs: Are We Solving the Right Problem?"):
/// the `rows × cols` grid of `scores` (row-major) cut into `r × c` windows, rows `⌊i·rows/r⌋ ..
/// ⌊(i+1)·rows/r⌋` and likewise columns (its `a × a` windows when `a` divides the grid), and from each
/// the token with the largest score (ties: the first in raster order); ascending indices.
pub fn window_max(
    scores: &[f32],
    (rows, cols): (usize, usize),
    (r, c): (usize, usize),
) -> Vec<usize> {
    let mut kept = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            let mut best: Option<usize> = None;
            for y in i * rows / r..(i + 1) * rows / r {
                for x in j * cols / c..(j + 1) * cols / c {
                    let t = y * cols + x;
                    if best.is_none_or(|b| scores[t] > scores[b]) {
                        best = Some(t);
                    }
                }
            }
            kept.extend(best);
        }
    }
    kept.sort_unstable();
    kept
}

/// Pooling's target grid for `k` tokens from a `rows × cols` grid: the factorization `r × (k / r)`
/// that fits the grid with the aspect ratio closest to the grid's (ties: fewer rows).
pub fn pooled_grid(rows: usize, cols: usize, k: usize) -> Result<(usize, usize)> {
    let aspect = rows as f64 / cols as f64;
    let best = (1..=k.min(rows))
        .filter(|&r| k.is_multiple_of(r) && k / r <= cols)
        .map(|r| (r, k / r))
        .min_by(|a, b| {
            let da = (a.0 as f64 / a.1 as f64 - aspect).abs();
            let db = (b.0 as f64 / b.1 as f64 - aspect).abs();
            da.total_cmp(&db).then(a.0.cmp(&b.0))
        });
    match best {
        Some(g) => Ok(g),
        None => bail!(
            "{k} tokens is no rows × cols grid inside the {rows}×{cols} visual grid (e.g. {} or {})",
            (rows / 2) * (cols / 2),
            (rows / 3).max(1) * (cols / 3).max(1)
        ),
    }
}

/// Visual tokens the paper's Pooling keeps per grid with windows of side `s` (several grids:
/// LLaVA-NeXT's base and high-resolution grids): one per `s × s` window of each grid, edge windows
/// partial as [`WindowGrid::of_grids`] tiles them, and of each band of `s` grid rows the tokens that
/// close the band's last row (LLaVA-NeXT: its one `image_newline`).
pub fn per_grid_pool_count(grids: &[TokenGrid], s: usize) -> usize {
    grids
        .iter()
        .map(|g| g.rows.div_ceil(s) * (g.cols.div_ceil(s) + g.stride - g.cols))
        .sum()
}

/// The window side `s` whose per-grid Pooling keeps exactly `k` tokens ([`per_grid_pool_count`];
/// sides that keep the same count: the smallest), or the error listing the counts this image offers.
pub fn per_grid_pool_side(grids: &[TokenGrid], k: usize) -> Result<usize> {
    let largest = grids.iter().map(|g| g.rows.max(g.cols)).max().unwrap_or(1);
    let sides = 1..=largest.max(1);
    if let Some(s) = sides.clone().find(|&s| per_grid_pool_count(grids, s) == k) {
        return Ok(s);
    }
    let mut offered: Vec<String> = Vec::new();
    let mut last = None;
    for s in sides {
        let c = per_grid_pool_count(grids, s);
        if last != Some(c) {
            offered.push(format!("{c} (s = {s})"));
            last = Some(c);
        }
    }
    let shapes: Vec<String> = grids
        .iter()
        .map(|g| {
            let closers = g.stride - g.cols;
            if closers > 0 {
                format!("{}×{} with {closers} newline per row", g.rows, g.cols)
            } else {
                format!("{}×{}", g.rows, g.cols)
            }
        })
        .collect();
    bail!(
        "pooling pools each grid ({}) into s×s windows, one token per window and one newline per s rows: {k} tokens is no such count; this image offers {}",
        shapes.join(", "),
        offered.join(", ")
    )
}

/// The windows of the per-grid pooling with side `s`, in the order the pooled block packs them: of
/// each grid, band by band (`s` rows), the band's windows left to right (`Window`, the token indices
/// of the window in raster order), then the tokens closing the band's last row (`Closer`: LLaVA-NeXT's
/// `image_newline`), as `pack_image_features` closes each row of the grid the LLM sees.
pub fn per_grid_pool_layout(grids: &[TokenGrid], s: usize) -> Vec<PooledToken> {
    // The windows are `horizon info`'s and window FastV's (row-major on each grid, so a band's
    // windows are consecutive); only the row closers are added here.
    let windows = WindowGrid {
        grids: grids.to_vec(),
        size: s,
    };
    let mut out = Vec::with_capacity(per_grid_pool_count(grids, s));
    for w in 0..windows.num_windows() {
        out.push(PooledToken::Window(windows.window_tokens(w)));
        let g = windows.grids[windows.window_grid(w)];
        let (band, col) = windows.window_position(w);
        if col + 1 == g.cols.div_ceil(s) {
            let last_row = g.start + (((band + 1) * s).min(g.rows) - 1) * g.stride;
            out.extend((last_row + g.cols..last_row + g.stride).map(PooledToken::Closer));
        }
    }
    out
}

/// One token of a per-grid pooled block ([`per_grid_pool_layout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PooledToken {
    /// A window's token indices, raster order.
    Window(Vec<usize>),
    /// A row closer kept as it is.
    Closer(usize),
}

/// The paper's Pooling per grid (Algorithm 4 of "Token Pruning in MLLMs: Are We Solving the Right
/// Problem?" applied to each grid on its own): from each `s × s` window of each grid the token with
/// the largest score (ties: the first in raster order), and the row closers of
/// [`per_grid_pool_count`]; ascending indices into the visual token list.
pub fn window_max_per_grid(scores: &[f32], grids: &[TokenGrid], s: usize) -> Vec<usize> {
    let mut kept: Vec<usize> = per_grid_pool_layout(grids, s)
        .into_iter()
        .filter_map(|token| match token {
            PooledToken::Window(members) => {
                members
                    .into_iter()
                    .reduce(|b, t| if scores[t] > scores[b] { t } else { b })
            }
            PooledToken::Closer(t) => Some(t),
        })
        .collect();
    kept.sort_unstable();
    kept
}

/// ToDRE's cross-modal attention ratios from head-mean probabilities `att` (`s × s`, row-major,
/// causal). Both measure the text-query × visual-key block, the only cross-modal attention a causal
/// decoder has when the image precedes the text: `α_{t→v}` as a share of what the text rows attend
/// to (text-to-visual), `α_{v→t}` as a share of what the visual keys receive from every query
/// (visual-to-text: how much of the visual tokens' attention mass flows to the text). Both are high
/// in early layers and decay with depth, as the paper's Figure 2 shows for both.
pub fn cross_modal_ratios(att: &[f32], s: usize, visual: &[usize], text: &[usize]) -> (f64, f64) {
    let block: f64 = text
        .iter()
        .flat_map(|&i| visual.iter().map(move |&j| att[i * s + j] as f64))
        .sum();
    let text_rows: f64 = text
        .iter()
        .flat_map(|&i| (0..s).map(move |j| att[i * s + j] as f64))
        .sum();
    let visual_cols: f64 = (0..s)
        .flat_map(|i| visual.iter().map(move |&j| att[i * s + j] as f64))
        .sum();
    let share = |part: f64, total: f64| if total > 0.0 { part / total } else { 0.0 };
    (share(block, text_rows), share(block, visual_cols))
}

/// ToDRE's relevance rule at one layer: every visual token is withdrawn once both cross-modal
/// ratios are below `tau`.
pub fn todre_withdraws(alpha_tv: f64, alpha_vt: f64, tau: f64) -> bool {
    alpha_tv < tau && alpha_vt < tau
}

/// The layer ToDRE's relevance stage withdraws the visual tokens before: the first of `from..` whose
/// ratios (`ratios[l]`, computed from layer `l − 1`'s attention) are both below `tau`.
pub fn todre_layer(ratios: &[(f64, f64)], from: usize, tau: f64) -> Option<usize> {
    (from..ratios.len()).find(|&l| todre_withdraws(ratios[l].0, ratios[l].1, tau))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 2), vec![1, 2]);
        assert_eq!(top_k(&[0.3, 0.3, 0.3], 2), vec![0, 1]);
        assert_eq!(top_k(&[1.0, 2.0], 0), Vec::<usize>::new());
    }

    #[test]
    fn window_quota_and_leftover() {
        // 4x4 grid, 2x2 windows, k = 6: one token per window (⌊6·4/16⌋ = 1), two left over to the best.
        let grid = WindowGrid::new((4, 4), 2).unwrap();
        let scores: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let kept = window_top_k(&scores, &grid, 6);
        // Window bests: 5, 7, 13, 15; leftover: 14, 12.
        assert_eq!(kept, vec![5, 7, 12, 13, 14, 15]);
    }

    #[test]
    fn divprune_picks_spread_tokens() {
        // Points on a line at 0, 0.1, 1, 2: distance |a - b|. The most isolated first (2: nearest 1
        // away), then the farthest from it (0), then 1.
        let x = [0.0f32, 0.1, 1.0, 2.0];
        let dist: Vec<f32> = (0..16).map(|i| (x[i / 4] - x[i % 4]).abs()).collect();
        assert_eq!(divprune(&dist, 4, 2), vec![0, 3]);
        assert_eq!(divprune(&dist, 4, 3), vec![0, 2, 3]);
    }

    #[test]
    fn max_sum_prefers_least_similar() {
        let sim = [1.0, 0.9, 0.1, 0.9, 1.0, 0.2, 0.1, 0.2, 1.0];
        assert_eq!(max_sum_diversity(&sim, 3, 0, 2), vec![0, 2]);
        assert_eq!(max_sum_diversity(&sim, 3, 0, 3), vec![0, 1, 2]);
    }

    #[test]
    fn dart_quota_is_exact() {
        // 6 tokens, image pivot 0, two pivots; k = 4: budget 3 → quotas 2, 1.
        let sims = vec![
            vec![1.0, 0.9, 0.1, 0.2, 0.8, 0.7],
            vec![0.0, 0.1, 0.9, 0.9, 0.0, 0.5],
        ];
        // Pivot 1 takes 2, 3 (least similar); pivot 2 then takes 4 (0.0 < 0.1 of 1).
        assert_eq!(dart(&[0], &sims, 6, 4), vec![0, 2, 3, 4]);
    }

    /// Hand-worked cases of CPython's set order; `tests/prune.rs` compares many more with Python's.
    #[test]
    fn python_set_order_follows_the_table() {
        // 8 slots: each key in slot key mod 8, iterated by slot.
        assert_eq!(python_set_order(&[5, 1, 3]), vec![1, 3, 5]);
        assert_eq!(python_set_order(&[9, 2]), vec![9, 2]);
        // No room for linear probes in 8 slots: 9 meets 1 in slot 1 and steps to 5·1 + 1 = 6.
        assert_eq!(python_set_order(&[1, 9, 2]), vec![1, 2, 9]);
        // 11 meets 3 and steps to (5·3 + 1) mod 8 = 0; the second 3 is not added.
        assert_eq!(python_set_order(&[3, 3, 11]), vec![11, 3]);
        // In 32 slots 32 meets 0 and probes linearly to slot 5, so 5 goes on to slot 6.
        assert_eq!(
            python_set_order(&[0, 1, 2, 3, 4, 32, 5]),
            vec![0, 1, 2, 3, 4, 32, 5]
        );
        // 62 meets 30 near the end (no linear probes) and steps to (5·30 + 1 + 62 >> 5) mod 32 = 24.
        assert_eq!(
            python_set_order(&[1, 2, 3, 4, 5, 30, 62]),
            vec![1, 2, 3, 4, 5, 62, 30]
        );
        // The fifth key rebuilds the table at 32 slots: 34 → slot 2, 18 → 18, 27 → 27.
        assert_eq!(
            python_set_order(&[18, 27, 34, 35, 42, 44, 45, 47]),
            vec![34, 35, 42, 44, 45, 47, 18, 27]
        );
    }

    #[test]
    fn pooled_grids() {
        assert_eq!(pooled_grid(24, 24, 144).unwrap(), (12, 12));
        assert_eq!(pooled_grid(24, 24, 64).unwrap(), (8, 8));
        assert_eq!(pooled_grid(6, 6, 9).unwrap(), (3, 3));
        assert_eq!(pooled_grid(24, 24, 192).unwrap(), (12, 16));
        assert!(pooled_grid(6, 6, 7).is_err());
    }

    /// LLaVA-NeXT's tall tiny image: a 6×6 base grid, then 14 rows of 6 each closed by a newline.
    fn tall_grids() -> Vec<TokenGrid> {
        vec![
            TokenGrid::whole(6, 6),
            TokenGrid {
                start: 36,
                rows: 14,
                cols: 6,
                stride: 7,
            },
        ]
    }

    #[test]
    fn per_grid_pooling_counts_and_windows() {
        let grids = tall_grids();
        // s = 1 keeps everything; s = 2: 9 + 7·3 windows and 7 newlines; s = 3: 4 + 5·2 and 5.
        assert_eq!(per_grid_pool_count(&grids, 1), 36 + 14 * 7);
        assert_eq!(per_grid_pool_side(&grids, 37).unwrap(), 2);
        assert_eq!(per_grid_pool_side(&grids, 19).unwrap(), 3);
        // s = 7 … 13 all keep 5 tokens: the smallest side is the rule.
        assert_eq!(per_grid_pool_side(&grids, 5).unwrap(), 7);
        // llava-v1.6 on a square 672×672 image: 24×24 base, 48×48 high-resolution and 48 newlines.
        let square = [
            TokenGrid::whole(24, 24),
            TokenGrid {
                start: 576,
                rows: 48,
                cols: 48,
                stride: 49,
            },
        ];
        assert_eq!(per_grid_pool_count(&square, 1), 2928);
        assert_eq!(per_grid_pool_count(&square, 2), 144 + 576 + 24);
        let e = per_grid_pool_side(&grids, 20).unwrap_err().to_string();
        assert!(e.contains("134 (s = 1), 37 (s = 2), 19 (s = 3)"), "{e}");
        // Scores rising with the index: each window keeps its last token.
        let scores: Vec<f32> = (0..134).map(|i| i as f32).collect();
        let kept = window_max_per_grid(&scores, &grids, 3);
        let newlines: Vec<usize> = [2, 5, 8, 11, 13].iter().map(|r| 36 + r * 7 + 6).collect();
        let base = [14, 17, 32, 35];
        // High-resolution windows: rows 0–2, 3–5, 6–8, 9–11, 12–13 (partial) × columns 0–2, 3–5.
        let high: Vec<usize> = [2, 5, 8, 11, 13]
            .iter()
            .flat_map(|r| [36 + r * 7 + 2, 36 + r * 7 + 5])
            .collect();
        let mut want: Vec<usize> = base.iter().copied().chain(high).chain(newlines).collect();
        want.sort_unstable();
        assert_eq!(kept, want);
        // The block's order: base windows, then each high-resolution band's windows and newline.
        let layout = per_grid_pool_layout(&grids, 3);
        assert_eq!(layout.len(), 19);
        assert_eq!(
            layout[0],
            PooledToken::Window(vec![0, 1, 2, 6, 7, 8, 12, 13, 14])
        );
        assert_eq!(layout[6], PooledToken::Closer(36 + 2 * 7 + 6));
        assert_eq!(
            layout[17],
            PooledToken::Window(vec![
                36 + 84 + 3,
                36 + 84 + 4,
                36 + 84 + 5,
                36 + 91 + 3,
                36 + 91 + 4,
                36 + 91 + 5
            ])
        );
        assert_eq!(layout[18], PooledToken::Closer(133));
        // Its windows are those of `VlModel::window_grid` at side 3.
        let tiled = WindowGrid::of_grids(grids.clone(), 3).unwrap();
        let mut windows: Vec<Vec<usize>> = layout
            .iter()
            .filter_map(|t| match t {
                PooledToken::Window(m) => Some(m.clone()),
                PooledToken::Closer(_) => None,
            })
            .collect();
        windows.sort();
        let mut want: Vec<Vec<usize>> = (0..tiled.num_windows())
            .map(|w| tiled.window_tokens(w))
            .collect();
        want.sort();
        assert_eq!(windows, want);
        // Ties: the first token of the window in raster order.
        let flat = vec![1.0f32; 134];
        let kept = window_max_per_grid(&flat, &grids, 3);
        assert!(kept.contains(&0) && kept.contains(&3) && kept.contains(&18));
    }

    #[test]
    fn ratios() {
        // 3 tokens: 0 text-before, 1 visual, 2 text-after; row 2 gives 0.25 to the visual token.
        let att = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.5, 0.25, 0.25];
        let (tv, vt) = cross_modal_ratios(&att, 3, &[1], &[2]);
        // Text row 2 gives a quarter of its attention to the visual token.
        assert!((tv - 0.25).abs() < 1e-12);
        // The visual key receives 0.5 (from itself) + 0.25 (from the text): a third from the text.
        assert!((vt - 0.25 / 0.75).abs() < 1e-12);
    }

    /// The relevance stage waits for both ratios: raising either one above τ at the layer it picks
    /// moves the pick to the next layer where both are below again.
    #[test]
    fn todre_layer_moves_with_either_ratio() {
        let tau = 0.1;
        let ratios = vec![
            (0.5, 0.4),
            (0.3, 0.2),
            (0.08, 0.2),
            (0.05, 0.06),
            (0.04, 0.05),
            (0.02, 0.03),
        ];
        assert_eq!(todre_layer(&ratios, 1, tau), Some(3));
        let mut tv_up = ratios.clone();
        tv_up[3].0 = 0.12;
        assert_eq!(todre_layer(&tv_up, 1, tau), Some(4));
        let mut vt_up = ratios.clone();
        vt_up[3].1 = 0.12;
        vt_up[4].1 = 0.11;
        assert_eq!(todre_layer(&vt_up, 1, tau), Some(5));
        // Layer 2 has the text-to-visual ratio below τ but not the other: no withdrawal there.
        assert_eq!(todre_layer(&ratios, 2, tau), Some(3));
        assert_eq!(todre_layer(&ratios, 1, 0.01), None);
    }
}
