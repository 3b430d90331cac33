//! The parameters' update (AdamW, gradient clipping) and their initial scales.

use tch::{Kind, Tensor};

use crate::config::{SmallModelSpec, TrainConfig};

/// AdamW with decoupled weight decay (no decay on norms and biases), moments kept for checkpoints.
pub(crate) struct AdamW {
    pub(crate) m: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    decay: Vec<bool>,
}

impl AdamW {
    pub(crate) fn new(params: &[(String, Tensor)]) -> Self {
        Self {
            m: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            v: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            decay: params
                .iter()
                .map(|(n, p)| p.dim() >= 2 && !n.contains("norm") && !n.contains("embedding"))
                .collect(),
        }
    }

    /// `lr_scale(i)`: multiplier of the learning rate of parameter `i` (0 skips it).
    pub(crate) fn step(
        &mut self,
        params: &[(String, Tensor)],
        lr: f64,
        wd: f64,
        step: usize,
        lr_scale: impl Fn(usize) -> f64,
    ) {
        let _guard = tch::no_grad_guard();
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, (_, p)) in params.iter().enumerate() {
            let g = p.grad();
            let lr = lr * lr_scale(i);
            if !g.defined() || lr == 0.0 {
                continue;
            }
            let _ = self.m[i].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
            let _ = self.v[i].g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
            let update = (&self.m[i] / c1) / ((&self.v[i] / c2).sqrt() + eps);
            let mut p = p.shallow_clone();
            if self.decay[i] {
                let _ = p.g_mul_scalar_(1.0 - lr * wd);
            }
            let _ = p.g_sub_(&(update * lr));
        }
    }
}

pub(crate) fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .collect();
    let total = grads
        .iter()
        .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    if total > max_norm {
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_scalar_(max_norm / (total + 1e-6));
        }
    }
    total
}

/// Multiplies the freshly initialised parameters whose name `matches` by `std / 0.02`, so that they
/// start at standard deviation `std` instead of HF's 0.02 (nothing when `std` is 0).
fn rescale_initial(params: &[(String, Tensor)], std: f64, matches: impl Fn(&str) -> bool) {
    if std <= 0.0 {
        return;
    }
    let _guard = tch::no_grad_guard();
    for (name, p) in params {
        if matches(name) {
            let mut p = p.shallow_clone();
            let _ = p.g_mul_scalar_(std / 0.02);
        }
    }
}

/// Rescales the vision tower's initial (std 0.02) weights to the standard deviations of HF
/// `CLIPPreTrainedModel._init_weights` (initializer factor 1): class embedding `h^-0.5`; q/k/v
/// `h^-0.5 (2L)^-0.5`; attention output `h^-0.5`; fc1 `(2h)^-0.5`; fc2 `h^-0.5 (2L)^-0.5`. The patch
/// and position embeddings keep 0.02, as in HF.
fn clip_hf_init(params: &[(String, Tensor)], spec: &SmallModelSpec) {
    let h = spec.vision_hidden as f64;
    let in_proj = h.powf(-0.5) * (2.0 * spec.vision_layers as f64).powf(-0.5);
    let rules: [(&str, f64); 7] = [
        ("embeddings.class_embedding", h.powf(-0.5)),
        ("self_attn.q_proj.weight", in_proj),
        ("self_attn.k_proj.weight", in_proj),
        ("self_attn.v_proj.weight", in_proj),
        ("self_attn.out_proj.weight", h.powf(-0.5)),
        ("mlp.fc1.weight", (2.0 * h).powf(-0.5)),
        ("mlp.fc2.weight", in_proj),
    ];
    for (suffix, std) in rules {
        rescale_initial(params, std, |name| {
            name.contains("vision_tower.") && name.ends_with(suffix)
        });
    }
}

/// The initial scales a fresh run asks for, applied to the freshly initialised parameters: token
/// embeddings, the vision tower (HF CLIP's), the decoder's query and key projections.
pub(crate) fn rescale_fresh(params: &[(String, Tensor)], cfg: &TrainConfig) {
    rescale_initial(params, cfg.init.embed_init_std, |name| {
        name.ends_with("embed_tokens.weight")
    });
    if cfg.init.vision_init_hf {
        clip_hf_init(params, &cfg.spec);
    }
    rescale_initial(params, cfg.init.qk_init_std, |name| {
        name.starts_with("model.language_model.")
            && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"))
    });
}
