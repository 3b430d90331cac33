//! Small statistics used by the aggregation. NaN-free inputs are assumed unless stated.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Arithmetic mean; NaN for an empty slice.
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample standard deviation (n − 1); NaN when n < 2.
pub fn sample_std(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return f64::NAN;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Population standard deviation (n); NaN for an empty slice.
pub fn population_std(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Gini coefficient of `x` clipped at 0: `Σ_i Σ_j |x_i − x_j| / (2 n² x̄)`, computed in
/// O(n log n). 0 = all equal, (n−1)/n = everything in one element. `None` when the clipped sum is 0
/// or the slice is empty.
pub fn gini_clipped(x: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = x.iter().map(|&a| a.max(0.0)).collect();
    let n = v.len();
    let total: f64 = v.iter().sum();
    if n == 0 || total <= 0.0 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − n + 1) x_(i) with 0-based ascending order.
    let s: f64 = v
        .iter()
        .enumerate()
        .map(|(i, &a)| (2.0 * i as f64 - n as f64 + 1.0) * a)
        .sum();
    Some(s / (n as f64 * total))
}

/// Normalised Shannon entropy of `q_i = max(x_i,0)/Σ max(x,0)`: `−Σ q ln q / ln n`, in [0, 1]
/// (1 = uniform). `None` when n < 2 or the clipped sum is 0.
pub fn entropy_norm_clipped(x: &[f64]) -> Option<f64> {
    let n = x.len();
    let total: f64 = x.iter().map(|&a| a.max(0.0)).sum();
    if n < 2 || total <= 0.0 {
        return None;
    }
    let h: f64 = x
        .iter()
        .map(|&a| a.max(0.0) / total)
        .filter(|&q| q > 0.0)
        .map(|q| -q * q.ln())
        .sum();
    Some((h / (n as f64).ln()).clamp(0.0, 1.0))
}

/// Percentile of an ascending-sorted slice, linear interpolation between order statistics
/// (numpy's default, "type 7"); `q` in [0, 1].
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Percentile bootstrap CI of the mean of `x`: `b` resamples of size n with replacement from a
/// ChaCha8 stream seeded with `seed`; returns the (1−conf)/2 and 1−(1−conf)/2 percentiles of the
/// resample means. NaN bounds for an empty slice or b = 0.
pub fn bootstrap_mean_ci(x: &[f64], b: usize, confidence: f64, seed: u64) -> (f64, f64) {
    let n = x.len();
    if n == 0 || b == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..b)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..n {
                s += x[rng.gen_range(0..n)];
            }
            s / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - confidence).clamp(0.0, 1.0) / 2.0;
    (
        percentile_sorted(&means, alpha),
        percentile_sorted(&means, 1.0 - alpha),
    )
}

/// 64-bit FNV-1a of a string: a hash that is stable across Rust versions and platforms.
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// SplitMix64 finaliser, used to derive per-group seeds.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// The bootstrap seed of one (model, task, layer) from the user seed.
pub fn group_seed(seed: u64, model: &str, task: &str, layer: i32) -> u64 {
    splitmix64(
        splitmix64(seed ^ fnv1a(model)) ^ fnv1a(task).rotate_left(17) ^ (layer as i64 as u64),
    )
}
