//! Small modules built from loaded tensors (no VarStore: it would Kaiming-initialise every 7B weight
//! before overwriting it). Each op mirrors the HF PyTorch op and cast order, because parity with HF
//! transformers is checked to 1e-4 in f32 and bit-for-bit where shapes allow.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use crate::weights::Weights;

/// `nn.Linear`: `x @ W^T + b`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, in]` and, when `bias`, `{prefix}.bias` `[out]`.
    pub fn load(w: &Weights, prefix: &str, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(w.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `nn.LayerNorm` with affine weight and bias.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = *self.weight.size().last().expect("1-D weight");
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `LlamaRMSNorm` / `Qwen2RMSNorm` exactly as HF computes it: statistics in f32, cast back to the input
/// dtype *before* multiplying by the weight. The fused `rms_norm` kernel is not bit-equal in bf16.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let input_kind = x.kind();
        // HF normalises in float32; an f64 model (the gradient tests' finite differences) keeps
        // its precision.
        let norm_kind = if input_kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let h = x.to_kind(norm_kind);
        let variance = h.pow_tensor_scalar(2).mean_dim(-1, true, norm_kind);
        let h = &h * (variance + self.eps).rsqrt();
        &self.weight * h.to_kind(input_kind)
    }
}

/// Activation functions by their HF config names (`ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `nn.functional.gelu`, exact (erf) form.
    Gelu,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn from_hf_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "quick_gelu" => Self::QuickGelu,
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => bail!("unsupported activation '{other}'"),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::QuickGelu => x * (x * 1.702).sigmoid(),
            Self::Silu => x.silu(),
            Self::GeluTanh => x.gelu("tanh"),
            Self::Relu => x.relu(),
        }
    }
}

/// HF `rotate_half`: `cat(-x2, x1)` over the last dimension.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let d = *x.size().last().expect("non-scalar");
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d - d / 2);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// `torch.nn.functional.scaled_dot_product_attention` with HF's explicit `head_dim**-0.5` scale
/// (libtorch's own default differs from Python's in the last bit).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    is_causal: bool,
    scale: f64,
    enable_gqa: bool,
) -> Tensor {
    Tensor::scaled_dot_product_attention(
        q,
        k,
        v,
        None::<Tensor>,
        0.0,
        is_causal,
        Some(scale),
        enable_gqa,
    )
}

/// Fails when `t` holds a NaN or an infinity: results computed from such values (NaN weights, an
/// overflowing dtype) are errors, not rows.
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let finite = t.isfinite().all().int64_value(&[]) != 0;
    if !finite {
        bail!("{what} is not finite (NaN or infinite values): check the checkpoint's weights and the dtype");
    }
    Ok(())
}
