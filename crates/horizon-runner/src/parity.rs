//! How close our outputs must be to HF transformers' committed reference outputs.
//!
//! The references are made once, on one machine, and committed. libtorch picks its CPU kernels by
//! instruction set at run time (AVX2, AVX-512, AMX), and their floating-point summation orders
//! differ, so the same weights give slightly different logits on another CPU, in HF as in ours.
//! Measured on a Sapphire Rapids Xeon against references made on another CPU:
//! HF's own float32 logits moved by up to 3.3e-5 (tiny LLaVA, |logits| up to 20) and 1.2e-4
//! (`horizon-small`, |logits| up to 10.6), its float16 and bfloat16 logits by 0.0625; ours were as
//! far from the committed files as HF's were. A real disagreement (a wrong norm, rotary embedding or
//! projector) moves logits by 0.1 to 10, far outside these bounds.

use tch::{Kind, Tensor};

/// Largest `|ours - reference|` allowed for float32 logits, as a fraction of the largest
/// `|reference|` (at least 1): five times the largest cross-CPU drift measured (1.1e-5).
pub const F32_LOGITS_RELATIVE_TOLERANCE: f64 = 5e-5;

/// Largest `|ours - reference|` allowed for bfloat16 and float16 logits, as a fraction of the
/// largest `|reference|`: 2^-6, two bfloat16 ulps (the drift measured above is one ulp in bf16,
/// four in f16; both are under 2^-6 of the largest logit).
pub const LOW_PRECISION_LOGITS_RELATIVE_TOLERANCE: f64 = 1.0 / 64.0;

/// `max |a - b|`, computed in float64. Panics if the shapes differ.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The bound on `max |ours - reference|` for float32 logits compared with `reference`.
pub fn f32_logits_tolerance(reference: &Tensor) -> f64 {
    F32_LOGITS_RELATIVE_TOLERANCE * largest_magnitude(reference).max(1.0)
}

/// The bound on `max |ours - reference|` for bfloat16 or float16 logits compared with `reference`.
pub fn low_precision_logits_tolerance(reference: &Tensor) -> f64 {
    LOW_PRECISION_LOGITS_RELATIVE_TOLERANCE * largest_magnitude(reference).max(1.0)
}

fn largest_magnitude(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_scale_with_the_largest_reference_logit() {
        let reference = Tensor::from_slice(&[-20.0f32, 3.0, 0.5]);
        assert!((f32_logits_tolerance(&reference) - 20.0 * 5e-5).abs() < 1e-12);
        assert!((low_precision_logits_tolerance(&reference) - 20.0 / 64.0).abs() < 1e-12);
        // Small logits keep the absolute floor.
        let small = Tensor::from_slice(&[0.25f32]);
        assert!((f32_logits_tolerance(&small) - 5e-5).abs() < 1e-12);
        let ours = Tensor::from_slice(&[-20.0f32, 3.5, 0.5]);
        assert!((max_abs_diff(&ours, &reference) - 0.5).abs() < 1e-12);
    }
}
