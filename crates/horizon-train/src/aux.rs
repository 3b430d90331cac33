//! Dense per-patch supervision of the vision side during training (never exported).
//!
//! From scratch, a language-model loss on one-word answers reaches the vision tower only through a long,
//! sparse path: the decoder must first learn where to look before the tower gets a useful gradient, so
//! text reading barely starts within a CPU budget (measured: 0% after 2,800 steps). The generator knows
//! what it drew, so each projected visual token also gets small classification targets about its own
//! patch: which glyph has its centre in each 4x4-pixel quadrant of the patch, that glyph's place in the
//! reading order and whether it is the boxed one, and which shape covers / is centred in the patch. A
//! linear head on the projector output (the tokens the decoder reads) predicts them; the head is dropped
//! at export, so the bundled checkpoint is a plain llava-hf model and the questions stay as fine-grained
//! as before (the decoder still has to find and read 5x7-pixel glyphs that straddle patch borders).

use horizon_data::synthetic::{font, shape_contains, NamedColor, SampleMeta, ShapeKind};
use tch::{Kind, Tensor};

/// Quadrants per patch (2x2).
const QUADS: usize = 4;
/// Classes of each target group, in the head's output order: glyph per quadrant (none + alphabet),
/// reading-order index per quadrant (none, 0..=3), boxed flag per quadrant, covering shape kind (none +
/// 3), covering shape colour (none + 8), kind of the shape centred in the patch (none + 3).
pub fn group_classes() -> Vec<usize> {
    let glyphs = 1 + font::ALPHABET.chars().count();
    let mut g = Vec::new();
    g.extend([glyphs; QUADS]);
    g.extend([5; QUADS]);
    g.extend([2; QUADS]);
    g.extend([
        1 + ShapeKind::ALL.len(),
        1 + NamedColor::ALL.len(),
        1 + ShapeKind::ALL.len(),
    ]);
    g
}

/// Width of the head's output.
pub fn head_width() -> i64 {
    group_classes().iter().sum::<usize>() as i64
}

fn kind_class(k: ShapeKind) -> i64 {
    1 + ShapeKind::ALL.iter().position(|&x| x == k).expect("listed") as i64
}

fn color_class(c: NamedColor) -> i64 {
    1 + NamedColor::ALL
        .iter()
        .position(|&x| x == c)
        .expect("listed") as i64
}

/// Targets of one image: `[num_patches * groups]`, row-major patches, groups in [`group_classes`] order.
pub fn patch_targets(meta: &SampleMeta, patch: u32) -> Vec<i64> {
    let groups = group_classes().len();
    let per_row = meta.image_size / patch;
    let n = (per_row * per_row) as usize;
    let mut t = vec![0i64; n * groups];
    let half = patch / 2;
    for (gi, g) in meta.glyphs.iter().enumerate() {
        let (cx, cy) = (g.bbox.x + g.bbox.w / 2, g.bbox.y + g.bbox.h / 2);
        let (pc, pr) = (cx / patch, cy / patch);
        if pc >= per_row || pr >= per_row {
            continue;
        }
        let quad = (((cy % patch) / half) * 2 + (cx % patch) / half) as usize;
        let base = (pr * per_row + pc) as usize * groups;
        if t[base + quad] != 0 {
            continue; // two centres in one quadrant: keep the first
        }
        let Some(ci) = font::ALPHABET.chars().position(|c| c == g.ch) else {
            continue;
        };
        t[base + quad] = 1 + ci as i64;
        let boxed = meta.red_box.is_some() && meta.target == Some(gi);
        if meta.red_box.is_none() {
            t[base + QUADS + quad] = 1 + gi.min(3) as i64;
        }
        t[base + 2 * QUADS + quad] = boxed as i64;
    }
    for pr in 0..per_row {
        for pc in 0..per_row {
            let (x, y) = (pc * patch + half, pr * patch + half);
            let base = (pr * per_row + pc) as usize * groups;
            if let Some(s) = meta
                .shapes
                .iter()
                .rev()
                .find(|s| shape_contains(s.kind, s.bbox, x, y))
            {
                t[base + 3 * QUADS] = kind_class(s.kind);
                t[base + 3 * QUADS + 1] = color_class(s.color);
            }
        }
    }
    for s in &meta.shapes {
        let (pc, pr) = (s.center[0] / patch, s.center[1] / patch);
        if pc < per_row && pr < per_row {
            t[(pr * per_row + pc) as usize * groups + 3 * QUADS + 2] = kind_class(s.kind);
        }
    }
    t
}

/// Classes of each group of the pooled count head: 0 to [`MAX_POOLED_COUNT`] shapes of one kind.
pub const MAX_POOLED_COUNT: i64 = 5;

/// Width of the pooled count head: one group of counts per shape kind, in `ShapeKind::ALL` order.
pub fn pooled_count_width() -> i64 {
    ShapeKind::ALL.len() as i64 * (MAX_POOLED_COUNT + 1)
}

/// How many shapes of each kind the image has (`ShapeKind::ALL` order, at most [`MAX_POOLED_COUNT`]):
/// the targets of the pooled count head.
pub fn kind_counts(meta: &SampleMeta) -> Vec<i64> {
    ShapeKind::ALL
        .iter()
        .map(|&k| {
            let n = meta.shapes.iter().filter(|s| s.kind == k).count() as i64;
            n.min(MAX_POOLED_COUNT)
        })
        .collect()
}

/// The pooled count loss: a linear head on the *mean* of the images' RMS-normalized visual tokens
/// must name how many shapes of each kind the image has (cross-entropy, mean over images and kinds).
///
/// Why the mean: a decoder head that attends evenly over the image receives the mean of its tokens
/// (through a linear value map of their normalized form), so a count the mean encodes linearly is one
/// head away from the answer. Measured on `large-glyph`'s second extension (docs/training.md): a
/// linear probe on that mean names the circle count in only 55% of held-out images, and the
/// per-patch head's "centre of a circle" marks cover ~2.5 patches per circle, an area like the covering
/// marks, so the tokens offer the decoder a mass rather than a count.
///
/// `normalized`: `[B, N, D]` RMS-normalized tokens; `targets`: `[B, kinds]`. Also returns, of the
/// images with circles, how many the head's circle count names right (before this step's update) and
/// how many there are (images without shapes are most of a reading-heavy batch and trivially right).
pub fn pooled_count_loss(
    normalized: &Tensor,
    w: &Tensor,
    b: &Tensor,
    targets: &Tensor,
) -> (Tensor, (i64, i64)) {
    let logits = normalized
        .mean_dim(1, false, Kind::Float)
        .linear(w, Some(b))
        .reshape([-1, MAX_POOLED_COUNT + 1]);
    let flat = targets.reshape([-1]);
    let loss = logits.cross_entropy_for_logits(&flat);
    let kinds = ShapeKind::ALL.len() as i64;
    let circles = ShapeKind::ALL
        .iter()
        .position(|&k| k == ShapeKind::Circle)
        .expect("listed") as i64;
    let named = logits
        .argmax(-1, false)
        .reshape([-1, kinds])
        .select(1, circles);
    let truth = targets.select(1, circles);
    let with_circles = truth.gt(0);
    let right = named
        .eq_tensor(&truth)
        .logical_and(&with_circles)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let total = with_circles.sum(Kind::Int64).int64_value(&[]);
    (loss, (right, total))
}

/// Each target group's logits `[B*N, classes]` and targets `[B*N]`, in [`group_classes`] order.
/// `logits`: `[B, N, head_width]`; `targets`: `[B, N, groups]`.
fn groups<'a>(logits: &Tensor, targets: &'a Tensor) -> impl Iterator<Item = (Tensor, Tensor)> + 'a {
    groups_of(logits, targets, group_classes())
}

/// [`groups`] for any head: `classes` lists the width of each target group in the head's output order.
fn groups_of<'a>(
    logits: &Tensor,
    targets: &'a Tensor,
    classes: Vec<usize>,
) -> impl Iterator<Item = (Tensor, Tensor)> + 'a {
    let flat = logits.reshape([-1, logits.size()[2]]);
    let tflat = targets.reshape([-1, classes.len() as i64]);
    let offsets: Vec<i64> = classes
        .iter()
        .scan(0i64, |o, &c| {
            let start = *o;
            *o += c as i64;
            Some(start)
        })
        .collect();
    classes
        .into_iter()
        .zip(offsets)
        .enumerate()
        .map(move |(g, (c, offset))| (flat.narrow(1, offset, c as i64), tflat.select(1, g as i64)))
}

/// Mean cross-entropy over the target groups. `logits`: `[B, N, head_width]`; `targets`: `[B, N, groups]`.
/// "Nothing here" (class 0) is by far the most common target, so it weighs 0.2.
pub fn aux_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (group_logits, target) in groups(logits, targets) {
        let mut w = vec![1f32; group_logits.size()[1] as usize];
        w[0] = 0.2;
        let weight = Tensor::from_slice(&w).to_device(logits.device());
        let l = group_logits.cross_entropy_loss::<Tensor>(
            &target,
            Some(weight),
            tch::Reduction::Mean,
            -100,
            0.0,
        );
        total = Some(match total {
            None => l,
            Some(t) => t + l,
        });
    }
    total.expect("groups") / group_classes().len() as f64
}

/// Like [`aux_loss`], but each group's loss is half the mean cross-entropy of its "nothing here"
/// targets and half that of the others (a half is dropped when a batch has none of its kind).
/// Measured with [`aux_loss`]: a glyph centre is ~3 of an image's 256 quadrants, so even at weight
/// 0.2 "nothing here" carries ~95% of a glyph group's loss and the head answers "none" everywhere
/// (0.5% of test glyphs named after a 3,000-step vision stage); the shape kind, on ~9 of 64
/// patches, was learned as "circle" everywhere.
pub fn aux_loss_balanced(logits: &Tensor, targets: &Tensor) -> Tensor {
    balanced_loss(groups(logits, targets)) / group_classes().len() as f64
}

/// Sum over target groups of half the mean cross-entropy of the "nothing here" targets and half that
/// of the named ones ([`aux_loss_balanced`]).
fn balanced_loss(groups: impl Iterator<Item = (Tensor, Tensor)>) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (group_logits, target) in groups {
        let per_target = group_logits.cross_entropy_loss::<Tensor>(
            &target,
            None,
            tch::Reduction::None,
            -100,
            0.0,
        );
        let none = target.eq(0).to_kind(Kind::Float);
        for mask in [&none, &(1.0 - &none)] {
            let count = mask.sum(Kind::Float);
            let mean = (&per_target * mask).sum(Kind::Float) / count.clamp_min(1.0) * 0.5;
            total = Some(match total {
                None => mean,
                Some(t) => t + mean,
            });
        }
    }
    total.expect("groups")
}

/// Classes of each group of the glyph-cover head: for each quadrant of the patch, the glyph whose box
/// holds the quadrant's centre (none + alphabet).
pub fn cover_classes() -> Vec<usize> {
    vec![1 + font::ALPHABET.chars().count(); QUADS]
}

/// Width of the glyph-cover head's output.
pub fn cover_width() -> i64 {
    cover_classes().iter().sum::<usize>() as i64
}

/// Glyph-cover targets of one image: `[num_patches * 4]`, row-major patches, quadrants row-major. The
/// centre targets of [`patch_targets`] name each glyph once (its centre's quadrant); a 5x7 glyph covers
/// ~2 quadrant centres and a 10x14 one ~9, so these give every patch that holds a piece of a glyph the
/// glyph's name: several times the signal per image for learning to recognize glyphs from their parts.
/// Glyphs are at least one font pixel apart, so no quadrant centre lies in two glyph boxes.
pub fn cover_targets(meta: &SampleMeta, patch: u32) -> Vec<i64> {
    quadrant_targets(meta, patch, |gi| {
        let ch = meta.glyphs[gi].ch;
        font::ALPHABET
            .chars()
            .position(|c| c == ch)
            .map_or(0, |ci| 1 + ci as i64)
    })
}

/// Reading-order cover targets of one image: `[num_patches * 4]` like [`cover_targets`], but each
/// quadrant whose centre lies in a glyph's box is named by that glyph's place in the reading order
/// (1 to 4; a fifth glyph or later is 4, as in [`patch_targets`]). `None` for an image with a red box,
/// whose glyphs have no reading order. The centre targets of [`patch_targets`] give the order at one
/// quadrant per glyph; the order of the k-th glyph is what reading a string needs (the decoder's k-th
/// answer token looks for it), and a tower trained on the centres alone named the third glyph's place
/// for only 24% of the bundled split's three-glyph strings (docs/training.md, `large10`).
pub fn order_cover_targets(meta: &SampleMeta, patch: u32) -> Option<Vec<i64>> {
    if meta.red_box.is_some() {
        return None;
    }
    Some(quadrant_targets(meta, patch, |gi| 1 + gi.min(3) as i64))
}

/// Classes of each group of the reading-order cover head: none, then places 1 to 4.
pub fn order_cover_classes() -> Vec<usize> {
    vec![5; QUADS]
}

/// Width of the reading-order cover head's output.
pub fn order_cover_width() -> i64 {
    order_cover_classes().iter().sum::<usize>() as i64
}

/// `[num_patches * 4]` targets, row-major patches, quadrants row-major: `class(i)` for the quadrants
/// whose centre pixel lies in the box of glyph `i`, 0 elsewhere. Glyphs are at least one font pixel
/// apart, so no quadrant centre lies in two glyph boxes.
fn quadrant_targets(meta: &SampleMeta, patch: u32, class: impl Fn(usize) -> i64) -> Vec<i64> {
    let per_row = meta.image_size / patch;
    let half = patch / 2;
    let mut t = vec![0i64; (per_row * per_row) as usize * QUADS];
    for pr in 0..per_row {
        for pc in 0..per_row {
            for q in 0..QUADS as u32 {
                // The quadrant's centre pixel.
                let x = pc * patch + (q % 2) * half + half / 2;
                let y = pr * patch + (q / 2) * half + half / 2;
                let covering = meta.glyphs.iter().position(|g| {
                    g.bbox.x <= x
                        && x < g.bbox.x + g.bbox.w
                        && g.bbox.y <= y
                        && y < g.bbox.y + g.bbox.h
                });
                if let Some(gi) = covering {
                    t[(pr * per_row + pc) as usize * QUADS + q as usize] = class(gi);
                }
            }
        }
    }
    t
}

/// Balanced loss ([`aux_loss_balanced`]) of the glyph-cover head, mean over its groups.
/// `logits`: `[B, N, cover_width]`; `targets`: `[B, N, 4]`.
pub fn cover_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    balanced_loss(groups_of(logits, targets, cover_classes())) / QUADS as f64
}

/// Balanced loss of the reading-order cover head, mean over its groups.
/// `logits`: `[B, N, order_cover_width]`; `targets`: `[B, N, 4]`.
pub fn order_cover_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    balanced_loss(groups_of(logits, targets, order_cover_classes())) / QUADS as f64
}

/// Of the glyph centres of the batch's images without a red box, how many the per-patch head's
/// reading-order groups place right: `(right, total)` (held-out, like [`glyph_hits`]).
pub fn order_hits(logits: &Tensor, targets: &Tensor) -> (i64, i64) {
    named_hits(groups(logits, targets).skip(QUADS).take(QUADS))
}

/// Of the glyph centres in the batch (the quadrant glyph groups' named targets), how many the head
/// names right: `(right, total)`. Every training batch is freshly generated, so measured before the
/// step's update this is held-out accuracy; it says whether the visual tokens carry glyph identity.
pub fn glyph_hits(logits: &Tensor, targets: &Tensor) -> (i64, i64) {
    named_hits(groups(logits, targets).take(QUADS))
}

/// Over `(logits, targets)` groups: how many named (non-zero) targets the largest logit gets right,
/// and how many named targets there are.
fn named_hits(groups: impl Iterator<Item = (Tensor, Tensor)>) -> (i64, i64) {
    let _guard = tch::no_grad_guard();
    let (mut right, mut total) = (0, 0);
    for (group_logits, target) in groups {
        let named = target.ne(0);
        let hit = group_logits
            .argmax(1, false)
            .eq_tensor(&target)
            .logical_and(&named);
        right += hit.sum(Kind::Int64).int64_value(&[]);
        total += named.sum(Kind::Int64).int64_value(&[]);
    }
    (right, total)
}

/// `logits` with the shape groups' kind and colour classes (not their "none" class) replaced by the
/// dot products of the RMS-normalized visual tokens `features_n` `[B, N, D]` with the word embeddings
/// `kind_words` `[3, D]` and `color_words` `[colours, D]`: the visual token of a red circle is then
/// trained toward the directions of the words `circle` and `red`, the ones the question names and the
/// answer uses, so that the decoder can match the question's word to the patch like a token to a token.
pub fn with_word_logits(
    logits: &Tensor,
    features_n: &Tensor,
    kind_words: &Tensor,
    color_words: &Tensor,
) -> Tensor {
    let classes = group_classes();
    let kind_scores = features_n.matmul(&kind_words.tr());
    let color_scores = features_n.matmul(&color_words.tr());
    let shape_start: usize = classes[..3 * QUADS].iter().sum();
    let mut parts = vec![logits.narrow(2, 0, shape_start as i64)];
    let mut offset = shape_start as i64;
    for (g, scores) in [&kind_scores, &color_scores, &kind_scores]
        .into_iter()
        .enumerate()
    {
        let c = classes[3 * QUADS + g] as i64;
        parts.push(logits.narrow(2, offset, 1)); // "none" keeps its free weight
        parts.push(scores.shallow_clone());
        offset += c;
    }
    Tensor::cat(&parts, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use horizon_data::synthetic::{generate, Category, GenConfig};
    use tch::Device;

    /// The pooled count targets are the generator's shape counts (a count question's answer for
    /// circles), and the loss and hit count equal a naive per-image, per-kind recomputation.
    #[test]
    fn pooled_count_loss_matches_a_naive_recomputation() {
        let gen = GenConfig::default();
        for i in 0..20 {
            let s = generate(&gen, Category::CountCircles, 2, i).unwrap();
            let c = kind_counts(&s.meta);
            assert_eq!(c[0].to_string(), s.answer, "circles first");
            assert_eq!(c.iter().sum::<i64>(), s.meta.shapes.len() as i64);
            let r = generate(&gen, Category::ReadText, 2, i).unwrap();
            assert!(kind_counts(&r.meta).iter().all(|&n| n == 0));
        }
        tch::manual_seed(3);
        let (b, n, d) = (4, 6, 5);
        let x = Tensor::randn([b, n, d], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([pooled_count_width(), d], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([pooled_count_width()], (Kind::Float, Device::Cpu));
        let targets = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 5, 5, 5, 2, 0, 0]).reshape([b, 3]);
        let (loss, (right, total)) = pooled_count_loss(&x, &w, &bias, &targets);
        let classes = (MAX_POOLED_COUNT + 1) as usize;
        let (mut sum, mut hits, mut with_circles) = (0.0, 0, 0);
        for img in 0..b {
            let mean: Vec<f64> = (0..d)
                .map(|j| (0..n).map(|t| x.double_value(&[img, t, j])).sum::<f64>() / n as f64)
                .collect();
            for kind in 0..3 {
                let logit = |c: usize| {
                    let row = (kind * classes + c) as i64;
                    bias.double_value(&[row])
                        + (0..d)
                            .map(|j| w.double_value(&[row, j]) * mean[j as usize])
                            .sum::<f64>()
                };
                let logits: Vec<f64> = (0..classes).map(logit).collect();
                let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
                let t = targets.int64_value(&[img, kind as i64]) as usize;
                sum += lse - logits[t];
                let best = (0..classes)
                    .max_by(|&a, &c| logits[a].total_cmp(&logits[c]))
                    .unwrap();
                if kind == 0 && t > 0 {
                    with_circles += 1;
                    hits += (best == t) as i64;
                }
            }
        }
        let naive = sum / (b * 3) as f64;
        assert!(
            (loss.double_value(&[]) - naive).abs() < 1e-4,
            "{loss} {naive}"
        );
        assert_eq!((right, total), (hits, with_circles));
        assert_eq!(with_circles, 3);
    }

    /// Targets agree with the generator's own ground truth: every glyph of a read_text sample appears
    /// once, in reading order, in the quadrant of its centre; boxed_char flags exactly the target glyph.
    #[test]
    fn targets_follow_the_drawn_glyphs() {
        let gen = GenConfig::default().with_glyphs(1, 3);
        let groups = group_classes().len();
        for i in 0..20 {
            let s = generate(&gen, Category::ReadText, 3, i).unwrap();
            let t = patch_targets(&s.meta, 8);
            let mut seen: Vec<(i64, char)> = Vec::new();
            for p in t.chunks(groups) {
                for q in 0..QUADS {
                    if p[q] != 0 {
                        let ch = font::ALPHABET.chars().nth(p[q] as usize - 1).unwrap();
                        seen.push((p[QUADS + q] - 1, ch));
                    }
                }
            }
            seen.sort();
            let text: String = seen.iter().map(|(_, c)| *c).collect();
            assert_eq!(text, s.answer, "sample {i}");
            let s = generate(&gen, Category::BoxedChar, 3, i).unwrap();
            let t = patch_targets(&s.meta, 8);
            let boxed: Vec<char> = t
                .chunks(groups)
                .flat_map(|p| {
                    (0..QUADS)
                        .filter(|&q| p[2 * QUADS + q] == 1)
                        .map(|q| font::ALPHABET.chars().nth(p[q] as usize - 1).unwrap())
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(boxed, vec![s.answer.chars().next().unwrap()], "sample {i}");
        }
    }

    #[test]
    fn every_circle_is_centred_in_one_patch() {
        let gen = GenConfig::default();
        let groups = group_classes().len();
        for i in 0..20 {
            let s = generate(&gen, Category::CountCircles, 5, i).unwrap();
            let t = patch_targets(&s.meta, 8);
            let circles = t
                .chunks(groups)
                .filter(|p| p[3 * QUADS + 2] == kind_class(ShapeKind::Circle))
                .count();
            assert_eq!(circles.to_string(), s.answer, "sample {i}");
        }
    }

    /// The word-aligned logits, recomputed naively: every class outside the shape groups and each
    /// group's "none" class keep the free head's logit; kind and colour classes are the dot product of
    /// the normalized token with the word's embedding.
    #[test]
    fn word_logits_replace_only_the_shape_classes() {
        let (b, n, d) = (2i64, 3i64, 5i64);
        let width = head_width();
        let logits = Tensor::randn([b, n, width], (Kind::Float, Device::Cpu));
        let feats = Tensor::randn([b, n, d], (Kind::Float, Device::Cpu));
        let kinds = Tensor::randn([3, d], (Kind::Float, Device::Cpu));
        let colors = Tensor::randn(
            [NamedColor::ALL.len() as i64, d],
            (Kind::Float, Device::Cpu),
        );
        let out = with_word_logits(&logits, &feats, &kinds, &colors);
        assert_eq!(out.size(), vec![b, n, width]);
        let classes = group_classes();
        let shape_start: usize = classes[..3 * QUADS].iter().sum();
        let dot = |f: &Tensor, w: &Tensor| (f * w).sum(Kind::Float).double_value(&[]);
        for bi in 0..b {
            for ni in 0..n {
                let f = feats.get(bi).get(ni);
                let row = out.get(bi).get(ni);
                let free = logits.get(bi).get(ni);
                let mut col = 0usize;
                for (g, &c) in classes.iter().enumerate() {
                    for k in 0..c {
                        let got = row.double_value(&[col as i64]);
                        let want = if g < 3 * QUADS || k == 0 {
                            free.double_value(&[col as i64])
                        } else if g == 3 * QUADS + 1 {
                            dot(&f, &colors.get(k as i64 - 1))
                        } else {
                            dot(&f, &kinds.get(k as i64 - 1))
                        };
                        assert!((got - want).abs() < 1e-4, "group {g} class {k}");
                        col += 1;
                    }
                }
                assert!(col >= shape_start);
            }
        }
    }

    /// The balanced loss recomputed naively with scalar loops: for each group, the mean of
    /// `-log softmax` over the "none" targets and over the others, each halved, averaged over groups.
    /// `logits`: `[rows, width]`; `targets`: `[rows * groups]`.
    fn naive_balanced(logits: &Tensor, targets: &[i64], classes: &[usize]) -> f64 {
        let rows = logits.size()[0];
        let flat: Vec<Vec<f64>> = (0..rows)
            .map(|r| {
                let row = logits.get(r);
                (0..logits.size()[1])
                    .map(|k| row.double_value(&[k]))
                    .collect()
            })
            .collect();
        let mut want = 0.0;
        let mut offset = 0;
        for (g, &c) in classes.iter().enumerate() {
            let (mut sums, mut counts) = ([0.0f64; 2], [0usize; 2]);
            for (r, row) in flat.iter().enumerate() {
                let z = &row[offset..offset + c];
                let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
                let y = targets[r * classes.len() + g] as usize;
                let side = (y != 0) as usize;
                sums[side] += lse - z[y];
                counts[side] += 1;
            }
            for side in 0..2 {
                if counts[side] > 0 {
                    want += 0.5 * sums[side] / counts[side] as f64;
                }
            }
            offset += c;
        }
        want / classes.len() as f64
    }

    /// Deterministic targets for `rows` rows of `classes` groups; group 0 all "none" if asked.
    fn some_targets(rows: usize, classes: &[usize], zero_group0: bool) -> Vec<i64> {
        (0..rows)
            .flat_map(|r| {
                classes.iter().enumerate().map(move |(g, &c)| {
                    if zero_group0 && g == 0 {
                        0
                    } else {
                        ((r * 7 + g * 3) % c) as i64
                    }
                })
            })
            .collect()
    }

    /// `loss` (a balanced loss over the groups `classes`, `width` wide) against [`naive_balanced`] on
    /// random logits. In the second case group 0 has no named target, so only its "none" half counts.
    fn check_balanced(
        loss: fn(&Tensor, &Tensor) -> Tensor,
        classes: &[usize],
        width: i64,
        seed: i64,
    ) {
        let (b, n) = (2i64, 5i64);
        tch::manual_seed(seed);
        let logits = Tensor::randn([b, n, width], (Kind::Float, Device::Cpu));
        for zero_group0 in [false, true] {
            let targets = some_targets((b * n) as usize, classes, zero_group0);
            let t = Tensor::from_slice(&targets).reshape([b, n, classes.len() as i64]);
            let got = loss(&logits, &t).double_value(&[]);
            let want = naive_balanced(&logits.reshape([b * n, -1]), &targets, classes);
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn balanced_loss_matches_a_naive_recomputation() {
        check_balanced(aux_loss_balanced, &group_classes(), head_width(), 3);
    }

    /// The glyph-cover head's loss, over its own groups.
    #[test]
    fn cover_loss_matches_a_naive_recomputation() {
        check_balanced(cover_loss, &cover_classes(), cover_width(), 5);
    }

    /// Cover targets against the drawn glyphs: every named quadrant centre lies in the box of a glyph
    /// of that name, every glyph is named (a 5-pixel-wide, 7-high box always holds a quadrant centre),
    /// and the count of named quadrants equals, glyph by glyph, the number of centre columns
    /// (x = 4k + 2) times centre rows in its box, counted arithmetically.
    #[test]
    fn cover_targets_name_each_glyph_where_it_is_drawn() {
        let gen = GenConfig::default().with_glyphs(1, 3);
        let alphabet: Vec<char> = font::ALPHABET.chars().collect();
        for cat in [Category::ReadText, Category::BoxedChar] {
            for i in 0..20 {
                let s = generate(&gen, cat, 11, i).unwrap();
                let t = cover_targets(&s.meta, 8);
                assert_eq!(t.len(), 64 * QUADS);
                let mut named = std::collections::BTreeSet::new();
                for (k, &c) in t.iter().enumerate() {
                    if c == 0 {
                        continue;
                    }
                    let (p, q) = (k / QUADS, k % QUADS);
                    let x = (p % 8) as u32 * 8 + (q % 2) as u32 * 4 + 2;
                    let y = (p / 8) as u32 * 8 + (q / 2) as u32 * 4 + 2;
                    let ch = alphabet[c as usize - 1];
                    assert!(
                        s.meta.glyphs.iter().any(|g| g.ch == ch
                            && (g.bbox.x..g.bbox.x + g.bbox.w).contains(&x)
                            && (g.bbox.y..g.bbox.y + g.bbox.h).contains(&y)),
                        "{cat:?} {i}: quadrant {k} named {ch} outside any {ch}"
                    );
                    named.insert(ch);
                }
                let drawn: std::collections::BTreeSet<char> =
                    s.meta.glyphs.iter().map(|g| g.ch).collect();
                assert_eq!(named, drawn, "{cat:?} {i}");
                let centres =
                    |start: u32, len: u32| (start..start + len).filter(|v| v % 4 == 2).count();
                let want: usize = s
                    .meta
                    .glyphs
                    .iter()
                    .map(|g| centres(g.bbox.x, g.bbox.w) * centres(g.bbox.y, g.bbox.h))
                    .sum();
                assert_eq!(t.iter().filter(|&&c| c != 0).count(), want, "{cat:?} {i}");
            }
        }
    }

    /// Reading-order cover targets: none for images with a red box; otherwise a quadrant is named
    /// exactly where the glyph cover names it, by the place (1-based, left to right) of the glyph whose
    /// box holds the quadrant's centre, found here by sorting the glyph boxes by x.
    #[test]
    fn order_cover_targets_place_each_covered_quadrant_in_reading_order() {
        let gen = GenConfig::default().with_glyphs(1, 3);
        for i in 0..20 {
            let boxed = generate(&gen, Category::BoxedChar, 12, i).unwrap();
            assert!(order_cover_targets(&boxed.meta, 8).is_none());
            let s = generate(&gen, Category::ReadText, 12, i).unwrap();
            let order = order_cover_targets(&s.meta, 8).unwrap();
            let cover = cover_targets(&s.meta, 8);
            assert_eq!(order.len(), cover.len());
            let mut xs: Vec<u32> = s.meta.glyphs.iter().map(|g| g.bbox.x).collect();
            xs.sort();
            let mut places = std::collections::BTreeSet::new();
            for (k, (&o, &c)) in order.iter().zip(&cover).enumerate() {
                assert_eq!(o == 0, c == 0, "{i}: quadrant {k}");
                if o == 0 {
                    continue;
                }
                let (p, q) = (k / QUADS, k % QUADS);
                let x = (p % 8) as u32 * 8 + (q % 2) as u32 * 4 + 2;
                let place = xs.iter().filter(|&&gx| gx <= x).count() as i64;
                assert_eq!(o, place, "{i}: quadrant {k}");
                places.insert(o);
            }
            let n = s.meta.glyphs.len() as i64;
            assert_eq!(places, (1..=n).collect(), "{i}: every glyph placed");
        }
        // Empty images (shapes only) are all "none".
        let shapes = generate(&gen, Category::ShapeColor, 12, 0).unwrap();
        assert!(order_cover_targets(&shapes.meta, 8)
            .unwrap()
            .iter()
            .all(|&o| o == 0));
    }

    /// Order hits count only the named centre targets of the reading-order groups.
    #[test]
    fn order_hits_count_named_order_targets() {
        let classes = group_classes();
        let width = head_width() as usize;
        // One row; quadrant 0 holds glyph 1 at place 2, quadrant 3 glyph 2 at place 1.
        let mut targets = vec![0i64; classes.len()];
        targets[0] = 1;
        targets[3] = 2;
        targets[QUADS] = 2;
        targets[QUADS + 3] = 1;
        let offset = |g: usize| classes[..g].iter().sum::<usize>();
        let mut logits = vec![0f32; width];
        logits[offset(QUADS) + 2] = 5.0; // place 2: right
        logits[offset(QUADS + 3) + 3] = 5.0; // place 3: wrong
        logits[offset(QUADS + 1) + 4] = 5.0; // an unnamed quadrant: not counted
        let l = Tensor::from_slice(&logits).reshape([1, 1, width as i64]);
        let t = Tensor::from_slice(&targets).reshape([1, 1, classes.len() as i64]);
        assert_eq!(order_hits(&l, &t), (1, 2));
    }

    /// The reading-order cover head's loss, over its own groups.
    #[test]
    fn order_cover_loss_matches_a_naive_recomputation() {
        check_balanced(
            order_cover_loss,
            &order_cover_classes(),
            order_cover_width(),
            7,
        );
    }

    /// Glyph hits count only the named centre targets of the glyph groups, right when the head's
    /// largest logit is the target's class.
    #[test]
    fn glyph_hits_count_named_glyph_centres() {
        let classes = group_classes();
        let (b, n) = (2i64, 3i64);
        let rows = (b * n) as usize;
        // Row r names glyph r + 1 in quadrant r % 4 (and nothing in the other glyph groups).
        let mut targets = vec![0i64; rows * classes.len()];
        for r in 0..rows {
            targets[r * classes.len() + r % QUADS] = r as i64 + 1;
        }
        let mut logits = vec![0f32; rows * head_width() as usize];
        for r in 0..rows {
            // Right for even rows, glyph r + 2 for odd ones; "none" elsewhere is irrelevant.
            let g = r % QUADS;
            let offset: usize = classes[..g].iter().sum();
            let class = if r % 2 == 0 { r + 1 } else { r + 2 };
            logits[r * head_width() as usize + offset + class] = 5.0;
        }
        let logits = Tensor::from_slice(&logits).reshape([b, n, head_width()]);
        let t = Tensor::from_slice(&targets).reshape([b, n, classes.len() as i64]);
        assert_eq!(glyph_hits(&logits, &t), (3, rows as i64));
    }
}
