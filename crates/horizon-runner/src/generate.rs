//! Greedy generation with a KV cache, as HF `generate(do_sample=False)` does it: one prefill whose
//! `lm_head` sees only the last position (`logits_to_keep=1`; GEMM results depend on the row count),
//! then one token per step.

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::decoder::KvCache;
use crate::intervention::TokenSelector;
use crate::model::{ModelInputs, VlModel};
use crate::nn::check_finite;

/// When to stop generating.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<i64>,
}

/// Greedy argmax of f32 logits `[V]` (the first index wins ties, like torch.argmax).
pub fn greedy_token(logits: &Tensor) -> i64 {
    logits
        .to_kind(Kind::Float)
        .reshape([-1])
        .argmax(0, false)
        .int64_value(&[])
}

/// Generates up to `max_new_tokens` new token ids (EOS included when produced). The prompt is
/// prefilled under `selector`; each layer's cache holds only the tokens that layer kept, and decode
/// positions follow the selector's position policy.
pub fn generate_greedy(
    model: &VlModel,
    inputs: &ModelInputs,
    selector: &mut dyn TokenSelector,
    config: &GenerationConfig,
) -> Result<Vec<i64>> {
    Ok(generate_greedy_with_cache(model, inputs, selector, config)?.0)
}

/// [`generate_greedy`], also returning the KV cache at the end (its size is the memory a pruned
/// prompt saves).
pub fn generate_greedy_with_cache(
    model: &VlModel,
    inputs: &ModelInputs,
    selector: &mut dyn TokenSelector,
    config: &GenerationConfig,
) -> Result<(Vec<i64>, KvCache)> {
    let (generated, _, cache) = prefill_and_decode(model, inputs, selector, config, false)?;
    Ok((generated, cache))
}

/// [`generate_greedy_with_cache`], also returning the f32 logits `[N, V]` that chose each of the N
/// tokens (row 0: the prefill's last position).
pub fn generate_greedy_with_logits(
    model: &VlModel,
    inputs: &ModelInputs,
    selector: &mut dyn TokenSelector,
    config: &GenerationConfig,
) -> Result<(Vec<i64>, Tensor, KvCache)> {
    let (generated, logits, cache) = prefill_and_decode(model, inputs, selector, config, true)?;
    Ok((generated, stack_logits(&logits), cache))
}

fn prefill_and_decode(
    model: &VlModel,
    inputs: &ModelInputs,
    selector: &mut dyn TokenSelector,
    config: &GenerationConfig,
    keep_logits: bool,
) -> Result<(Vec<i64>, Vec<Tensor>, KvCache)> {
    let _guard = tch::no_grad_guard();
    let prompt_len = inputs.seq_len();
    let mut cache = KvCache::new(model.num_layers());
    let out = model.prefill(inputs, selector, Some(&mut cache), None)?;
    let (generated, logits) = decode(
        model,
        &out.hidden,
        prompt_len,
        &mut cache,
        config,
        keep_logits,
    )?;
    Ok((generated, logits, cache))
}

/// Rows of next-token logits as one f32 `[N, V]` tensor.
fn stack_logits(logits: &[Tensor]) -> Tensor {
    let rows: Vec<Tensor> = logits
        .iter()
        .map(|l| l.to_kind(Kind::Float).reshape([-1]))
        .collect();
    Tensor::stack(&rows, 0)
}

/// Greedy decoding after a prefill: `hidden` is the prefill's final-norm output (its last row gives
/// the first token), `prompt_len` the length of the sequence the prefill ran on, `cache` its keys and
/// values. Decode positions follow what the prefill recorded in `cache`.
pub fn continue_greedy(
    model: &VlModel,
    hidden: &Tensor,
    prompt_len: usize,
    cache: &mut KvCache,
    config: &GenerationConfig,
) -> Result<Vec<i64>> {
    Ok(decode(model, hidden, prompt_len, cache, config, false)?.0)
}

/// [`continue_greedy`], also returning the f32 logits `[N, V]` that chose each of the N tokens (row 0:
/// the prefill's last position).
pub fn continue_greedy_with_logits(
    model: &VlModel,
    hidden: &Tensor,
    prompt_len: usize,
    cache: &mut KvCache,
    config: &GenerationConfig,
) -> Result<(Vec<i64>, Tensor)> {
    let (tokens, logits) = decode(model, hidden, prompt_len, cache, config, true)?;
    Ok((tokens, stack_logits(&logits)))
}

fn decode(
    model: &VlModel,
    hidden: &Tensor,
    prompt_len: usize,
    cache: &mut KvCache,
    config: &GenerationConfig,
    keep_logits: bool,
) -> Result<(Vec<i64>, Vec<Tensor>)> {
    let _guard = tch::no_grad_guard();
    let last = hidden.narrow(1, hidden.size()[1] - 1, 1);
    let logits = model.lm_head(&last);
    check_finite(&logits, "the prompt's next-token logits")?;
    let mut next = greedy_token(&logits);
    let mut kept = Vec::new();
    let mut generated = Vec::with_capacity(config.max_new_tokens);
    let mut logits = Some(logits);
    while generated.len() < config.max_new_tokens {
        generated.push(next);
        if keep_logits {
            kept.extend(logits.take());
        }
        if config.eos_token_ids.contains(&next) || generated.len() == config.max_new_tokens {
            break;
        }
        let position = prompt_len + generated.len() - 1;
        let step = model.decode_step(next, position, cache);
        check_finite(&step, "a decoding step's logits")?;
        next = greedy_token(&step);
        logits = Some(step);
    }
    Ok((generated, kept))
}
