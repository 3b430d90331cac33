//! Where the answer should look: supervision of the decoder's attention during training (never
//! exported).
//!
//! Measured without it: the per-patch head ([`super::aux`]) makes the projected visual tokens carry
//! what the questions ask (per-patch loss ~0.07 within a few hundred steps), yet after 1,600 steps the
//! answers still ignore the question (colour of a *named* shape at 60%, which is what answering with the
//! colour of a random shape of the image scores: E[1/n] for 1-3 shapes). The decoder has to discover a
//! two-step lookup (carry the asked kind to the answer position, then attend to the patches holding it)
//! from one supervised token per sample, and on two CPU cores it does not within budget.
//!
//! The generator knows which patches decide each answer token (the asked shape, the circles, the
//! boxed glyph, the k-th glyph of a string). This module asks that, for every answer token with such
//! evidence, *some* attention head in *some* decoder layer puts its mass on those patches when it
//! predicts the token: the loss is `-log(max over layers and heads of the attention mass on the
//! evidence)`. The max leaves the model free to choose the layer and head, so the supervision does not
//! decide at which depth the visual information is read (which is what the information horizon
//! measures); it only shortens the search for the lookup circuit. The exported checkpoint is a plain
//! llava-hf model, and questions and images are as fine-grained as without it.

use horizon_data::synthetic::{Category, SynthSample};
use tch::{Device, Kind, Tensor};

/// For each of the `n_answer_tokens` tokens of `s.answer` (tokenized), the row-major patch indices that
/// decide it, or `None` where no image region does: the k-th glyph of a `read_text` string (one token
/// per glyph; all `None` if the tokenization disagrees), the asked shape / all circles / the boxed glyph
/// for the first token of the other categories, nothing for a `no` of `shape_exists`.
pub fn answer_token_evidence(
    s: &SynthSample,
    n_answer_tokens: usize,
    patch: u32,
) -> Vec<Option<Vec<usize>>> {
    let mut out = vec![None; n_answer_tokens];
    let size = s.meta.image_size;
    match s.category {
        Category::ReadText => {
            if s.meta.glyphs.len() == n_answer_tokens {
                for (slot, g) in out.iter_mut().zip(&s.meta.glyphs) {
                    *slot = Some(g.bbox.patches(patch, size));
                }
            }
        }
        _ => {
            let evidence = s.meta.evidence_patches(patch);
            if let Some(first) = out.first_mut() {
                if !evidence.is_empty() {
                    *first = Some(evidence);
                }
            }
        }
    }
    out
}

/// `-log` of the attention mass that one head puts on the evidence, averaged over the supervised query
/// positions of the batch; the head (layer and head index) is the one with the largest mean mass in this
/// batch, chosen anew each step. Also returns that mean mass (for progress reports).
///
/// One head for the whole batch, not the best head per query: measured, a per-query max is satisfied
/// without reading the question at all (with 32 heads, one head per shape kind attends to that kind in
/// every image, and the max picks the one the question names), and the answers then do worse than
/// without supervision (colour 10-30% vs 55% after 400 steps). A head shared by a batch that mixes
/// shape kinds, categories and glyph positions can only satisfy it by conditioning on the question.
///
/// `weights`: per layer `[B, H, S, S]` attention probabilities; `evidence`: `[B, S, S]` float, 1 where
/// key j is evidence for query t; `queries`: `[B, S]` float, 1 for the query positions supervised.
pub fn attention_loss(weights: &[Tensor], evidence: &Tensor, queries: &Tensor) -> (Tensor, f64) {
    attention_loss_with(weights, evidence, queries, false, None)
}

/// [`attention_loss`], or with `per_query` the best head for each query on its own: right where the
/// query itself names what to look for (the question's shape word), so that a head per shape kind is
/// a correct answer rather than a way around the question. `fixed_head` (an index into the layers'
/// heads in order, layer-major) names the shared head instead of choosing the best one each step.
pub fn attention_loss_with(
    weights: &[Tensor],
    evidence: &Tensor,
    queries: &Tensor,
    per_query: bool,
    fixed_head: Option<usize>,
) -> (Tensor, f64) {
    let ev = evidence.unsqueeze(1);
    // [B, L*H, S]: mass on the evidence per layer and head, for every query.
    let mass = Tensor::cat(
        &weights
            .iter()
            .map(|w| (w * &ev).sum_dim_intlist(-1, false, Kind::Float))
            .collect::<Vec<_>>(),
        1,
    );
    let n = queries.sum(Kind::Float).clamp_min(1.0);
    let mean_per_head =
        (&mass * queries.unsqueeze(1)).sum_dim_intlist(&[0i64, 2][..], false, Kind::Float) / &n;
    if per_query {
        let best = mass.amax(&[1i64][..], false);
        let loss = (-(&best + 1e-6).log() * queries).sum(Kind::Float) / &n;
        let mean_mass = ((&best * queries).sum(Kind::Float) / &n).double_value(&[]);
        return (loss, mean_mass);
    }
    let head = match fixed_head {
        Some(h) => (h as i64).min(mean_per_head.size()[0] - 1),
        None => mean_per_head.argmax(0, false).int64_value(&[]),
    };
    let chosen = mass.select(1, head);
    let loss = (-(&chosen + 1e-6).log() * queries).sum(Kind::Float) / &n;
    let mean_mass = mean_per_head.double_value(&[head]);
    (loss, mean_mass)
}

/// The query positions the attention loss supervises, per batch row (sorted, distinct): the rows of the
/// attention matrices the trainer computes ([`horizon_runner::decoder::Attention::attention_weights_at`]).
pub struct QueryRows {
    positions: Vec<Vec<usize>>,
    width: usize,
}

impl QueryRows {
    pub fn new(mut positions: Vec<Vec<usize>>) -> Self {
        for p in &mut positions {
            p.sort_unstable();
            p.dedup();
        }
        // At least one slot, so that a batch without supervised queries still has valid shapes.
        let width = positions.iter().map(Vec::len).max().unwrap_or(0).max(1);
        Self { positions, width }
    }

    /// `[B, R]` positions; a row's unused slots repeat position 0 (no triple points at them, so their
    /// query flag stays 0).
    pub fn tensor(&self, device: Device) -> Tensor {
        let mut flat = vec![0i64; self.positions.len() * self.width];
        for (r, p) in self.positions.iter().enumerate() {
            for (slot, &t) in p.iter().enumerate() {
                flat[r * self.width + slot] = t as i64;
            }
        }
        Tensor::from_slice(&flat)
            .reshape([self.positions.len() as i64, self.width as i64])
            .to_device(device)
    }

    /// Slots per batch row (the longest row's query count, at least 1).
    pub fn width(&self) -> usize {
        self.width
    }

    fn slot(&self, row: usize, position: usize) -> usize {
        self.positions[row]
            .binary_search(&position)
            .expect("every supervised query position has a slot")
    }
}

/// The inputs of [`attention_loss`] over the rows `rows` from `(row, query position, key
/// position)` triples: evidence `[B, R, S]` (1 at each key of each triple, in its query's slot) and the
/// supervised query slots `[B, R]`.
pub fn evidence_tensors(
    triples: impl Iterator<Item = (usize, usize, usize)>,
    rows: &QueryRows,
    max_len: usize,
    device: Device,
) -> (Tensor, Tensor) {
    let (b, w) = (rows.positions.len(), rows.width);
    let mut ev = vec![0f32; b * w * max_len];
    let mut queries = vec![0f32; b * w];
    for (r, t, key) in triples {
        let slot = rows.slot(r, t);
        queries[r * w + slot] = 1.0;
        ev[(r * w + slot) * max_len + key] = 1.0;
    }
    let (b, w, s) = (b as i64, w as i64, max_len as i64);
    (
        Tensor::from_slice(&ev).reshape([b, w, s]).to_device(device),
        Tensor::from_slice(&queries)
            .reshape([b, w])
            .to_device(device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use horizon_data::synthetic::{self, GenConfig};

    fn sample(cat: Category, index: u64) -> SynthSample {
        let gen = GenConfig::default().with_glyphs(1, 3);
        synthetic::generate(&gen, cat, 7, index).unwrap()
    }

    /// The centre pixel's patch of a rectangle (a patch that certainly shows it).
    fn centre_patch(r: &horizon_data::synthetic::Rect, size: u32) -> usize {
        let (cx, cy) = (r.x + r.w / 2, r.y + r.h / 2);
        ((cy / 8) * size.div_ceil(8) + cx / 8) as usize
    }

    #[test]
    fn read_text_tokens_look_at_their_own_glyph() {
        for i in 0..40 {
            let s = sample(Category::ReadText, i);
            let n = s.answer.chars().count();
            let ev = answer_token_evidence(&s, n, 8);
            for (k, e) in ev.iter().enumerate() {
                let e = e.as_ref().expect("every glyph token has evidence");
                let g = &s.meta.glyphs[k];
                assert_eq!(g.ch, s.answer.chars().nth(k).unwrap());
                assert!(e.contains(&centre_patch(&g.bbox, 64)));
            }
            // A tokenization that disagrees with the glyph count gets no supervision.
            assert!(answer_token_evidence(&s, n + 1, 8)
                .iter()
                .all(Option::is_none));
        }
    }

    #[test]
    fn other_answers_look_at_what_decides_them() {
        for i in 0..60 {
            let s = sample(Category::ShapeColor, i);
            let ev = answer_token_evidence(&s, 2, 8);
            let target = &s.meta.shapes[s.meta.target.unwrap()];
            assert_eq!(target.color.name(), s.answer);
            assert!(ev[0]
                .as_ref()
                .unwrap()
                .contains(&centre_patch(&target.bbox, 64)));
            assert!(ev[1].is_none());

            let s = sample(Category::ShapeExists, i);
            let ev = answer_token_evidence(&s, 1, 8);
            assert_eq!(ev[0].is_some(), s.answer == "yes");

            let s = sample(Category::BoxedChar, i);
            let ev = answer_token_evidence(&s, 1, 8);
            let boxed = &s.meta.glyphs[s.meta.target.unwrap()];
            assert_eq!(boxed.ch.to_string(), s.answer);
            assert!(ev[0]
                .as_ref()
                .unwrap()
                .contains(&centre_patch(&boxed.bbox, 64)));

            let s = sample(Category::CountCircles, i);
            let ev = answer_token_evidence(&s, 1, 8);
            for c in s
                .meta
                .shapes
                .iter()
                .filter(|x| x.kind == synthetic::ShapeKind::Circle)
            {
                assert!(ev[0].as_ref().unwrap().contains(&centre_patch(&c.bbox, 64)));
            }
        }
    }

    #[test]
    fn the_loss_takes_the_best_head_and_only_supervised_queries() {
        // One layer, two heads, S = 3. Query 2 is supervised with evidence at key 0; head 1 has more
        // mass there.
        let w = Tensor::from_slice(&[
            // head 0
            1.0f32, 0.0, 0.0, 0.5, 0.5, 0.0, 0.2, 0.3, 0.5, // head 1
            1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.8, 0.1, 0.1,
        ])
        .reshape([1, 2, 3, 3]);
        let mut ev = vec![0f32; 9];
        ev[2 * 3] = 1.0;
        let ev = Tensor::from_slice(&ev).reshape([1, 3, 3]);
        let q = Tensor::from_slice(&[0f32, 0.0, 1.0]).reshape([1, 3]);
        let (loss, best) = attention_loss(&[w], &ev, &q);
        assert!((best - 0.8).abs() < 1e-6);
        assert!((loss.double_value(&[]) + (0.8f64 + 1e-6).ln()).abs() < 1e-5);
    }

    /// One layer, two heads, S = 3; queries 1 and 2 supervised with evidence at key 0. Head 0 puts 0.9
    /// and 0.0 there, head 1 0.2 and 0.8. Returns (weights, evidence, queries).
    fn two_heads_two_queries() -> (Tensor, Tensor, Tensor) {
        let w = Tensor::from_slice(&[
            1.0f32, 0.0, 0.0, 0.9, 0.1, 0.0, 0.0, 0.5, 0.5, // head 0
            1.0, 0.0, 0.0, 0.2, 0.8, 0.0, 0.8, 0.1, 0.1, // head 1
        ])
        .reshape([1, 2, 3, 3]);
        let mut ev = vec![0f32; 9];
        ev[3] = 1.0; // query 1 -> key 0
        ev[2 * 3] = 1.0; // query 2 -> key 0
        let ev = Tensor::from_slice(&ev).reshape([1, 3, 3]);
        let q = Tensor::from_slice(&[0f32, 1.0, 1.0]).reshape([1, 3]);
        (w, ev, q)
    }

    #[test]
    fn one_head_serves_the_whole_batch() {
        // Two supervised queries of one sample, evidence at key 0: head 0 is the better head for
        // query 1 (0.9 vs 0.2), head 1 for query 2 (0.8 vs 0.0). The loss uses the head with the
        // larger mean (head 1) for both queries, not each query's best.
        let (w, ev, q) = two_heads_two_queries();
        let (loss, mass) = attention_loss(&[w], &ev, &q);
        // Head 0: (0.9 + 0.0) / 2 = 0.45; head 1: (0.2 + 0.8) / 2 = 0.5.
        assert!((mass - 0.5).abs() < 1e-6);
        let want = -((0.2f64 + 1e-6).ln() + (0.8f64 + 1e-6).ln()) / 2.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-5);
    }

    #[test]
    fn per_query_takes_each_querys_best_head() {
        // The batch of one_head_serves_the_whole_batch: per query, head 0 for query 1 (0.9) and
        // head 1 for query 2 (0.8).
        let (w, ev, q) = two_heads_two_queries();
        let (loss, mass) = attention_loss_with(&[w], &ev, &q, true, None);
        assert!((mass - (0.9 + 0.8) / 2.0).abs() < 1e-6);
        let want = -((0.9f64 + 1e-6).ln() + (0.8f64 + 1e-6).ln()) / 2.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-5);
    }

    #[test]
    fn a_fixed_head_is_used_whatever_its_mass() {
        // The batch of one_head_serves_the_whole_batch with head 0 named: (0.9, 0.0) for the two
        // queries, although head 1 has the larger mean.
        let (w, ev, q) = two_heads_two_queries();
        let (loss, mass) = attention_loss_with(&[w], &ev, &q, false, Some(0));
        assert!((mass - 0.45).abs() < 1e-6);
        let want = -((0.9f64 + 1e-6).ln() + (0.0f64 + 1e-6).ln()) / 2.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-4);
    }
}

#[cfg(test)]
mod query_row_tests {
    use super::*;

    /// The naive inputs of the attention loss: every query position is a row, `[B, S, S]` and `[B, S]`.
    fn dense_evidence(triples: &[(usize, usize, usize)], b: usize, s: usize) -> (Tensor, Tensor) {
        let mut ev = vec![0f32; b * s * s];
        let mut queries = vec![0f32; b * s];
        for &(r, t, key) in triples {
            queries[r * s + t] = 1.0;
            ev[(r * s + t) * s + key] = 1.0;
        }
        let (b, s) = (b as i64, s as i64);
        (
            Tensor::from_slice(&ev).reshape([b, s, s]),
            Tensor::from_slice(&queries).reshape([b, s]),
        )
    }

    /// The loss over the supervised rows only equals the loss over the full attention matrices, in
    /// every head-choice mode and for both hops' sets of triples (which share the rows).
    #[test]
    fn the_loss_over_supervised_rows_equals_the_full_matrix_loss() {
        let (b, h, s) = (3usize, 4i64, 11usize);
        tch::manual_seed(11);
        let full: Vec<Tensor> = (0..3)
            .map(|_| {
                Tensor::randn(
                    [b as i64, h, s as i64, s as i64],
                    (Kind::Float, Device::Cpu),
                )
                .softmax(-1, Kind::Float)
            })
            .collect();
        // Hop one: several keys per query, several queries in row 0, none in row 2.
        let hop_one = [
            (0, 9, 1),
            (0, 9, 2),
            (0, 10, 3),
            (0, 7, 4),
            (1, 8, 0),
            (1, 8, 5),
        ];
        // Hop two: a query shared with hop one (row 0, position 10) and one of its own.
        let hop_two = [(0, 10, 6), (1, 10, 2)];
        let mut positions = vec![Vec::new(); b];
        for &(r, t, _) in hop_one.iter().chain(&hop_two) {
            positions[r].push(t);
        }
        let rows = QueryRows::new(positions);
        assert_eq!(rows.width(), 3);
        let at = rows.tensor(Device::Cpu);
        let index = at
            .view([b as i64, 1, rows.width as i64, 1])
            .expand([b as i64, h, rows.width as i64, s as i64], false);
        let compact: Vec<Tensor> = full.iter().map(|w| w.gather(2, &index, false)).collect();
        for hop in [&hop_one[..], &hop_two[..]] {
            let (ev_full, q_full) = dense_evidence(hop, b, s);
            let (ev, q) = evidence_tensors(hop.iter().copied(), &rows, s, Device::Cpu);
            for (per_query, head) in [(false, None), (true, None), (false, Some(5))] {
                let (want, want_mass) =
                    attention_loss_with(&full, &ev_full, &q_full, per_query, head);
                let (got, mass) = attention_loss_with(&compact, &ev, &q, per_query, head);
                let (want, got) = (want.double_value(&[]), got.double_value(&[]));
                assert!(
                    (want - got).abs() < 1e-6,
                    "{per_query} {head:?}: {want} vs {got}"
                );
                assert!((want_mass - mass).abs() < 1e-6);
            }
        }
    }
}
