//! Model-family dispatch: a checkpoint directory's `config.json` names its `model_type`; everything
//! downstream (CLI, information sweeps, pruning, generation) talks to [`VlModel`] and never to a
//! family directly (the families and their registry: [`crate::models`]). Every family is a vision
//! side that fills the prompt's embeddings and the one shared [`Decoder`]; prefill, resumed layers
//! and decoding are written once, here and in [`crate::decoder`].

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::read_config;
use crate::decoder::{Decoder, DecoderOutput, KvCache};
pub use crate::inputs::ModelInputs;
use crate::intervention::TokenSelector;
use crate::models::Family;
pub use crate::models::{VlModel, SUPPORTED_MODEL_TYPES};
use crate::nn::Linear;
use crate::prune::PruneFamily;
use crate::weights::Weights;
use horizon_data::window::WindowGrid;

/// What loading a family from a `config.json` takes: the steps every family shares.
pub(crate) struct FamilyLoader<'a> {
    path: &'a Path,
    value: serde_json::Value,
    dir: &'a Path,
    weights: Option<Weights>,
    device: Device,
    kind: Kind,
}

impl FamilyLoader<'_> {
    /// The config, then the weights (the checkpoint's, in one of `F::LAYOUTS`, unless given), then
    /// the model; every tensor of the checkpoint must be read or unused by design.
    pub(crate) fn load<F: Family>(self) -> Result<F> {
        let config = F::config(self.path, self.value)?;
        let weights = match self.weights {
            Some(w) => w,
            None => Weights::open(self.dir, F::LAYOUTS, self.device, self.kind)
                .with_context(|| format!("loading {}", self.dir.display()))?,
        };
        let model =
            F::load(&weights, config).with_context(|| format!("loading {}", self.dir.display()))?;
        weights.check_all_used(|n| model.unused_by_design(n))?;
        Ok(model)
    }
}

impl VlModel {
    /// Loads the checkpoint in `dir`, choosing the family from `config.json`'s `model_type`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let (path, value) = read_config(dir)?;
        Self::from_config(&path, value, dir, None, device, kind)
    }

    /// A model of the configuration in `config` (a parsed `config.json`) with random weights (seeded):
    /// for timing configurations whose checkpoints are not at hand. `origin` names the config in errors.
    pub fn random(
        origin: &Path,
        config: serde_json::Value,
        device: Device,
        kind: Kind,
        seed: i64,
    ) -> Result<Self> {
        let weights = Weights::random(device, kind, seed);
        Self::from_config(origin, config, origin, Some(weights), device, kind)
    }

    fn from_config(
        path: &Path,
        value: serde_json::Value,
        dir: &Path,
        weights: Option<Weights>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let model_type = value
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| anyhow!("{}: field model_type is missing", path.display()))?
            .to_string();
        let _guard = tch::no_grad_guard();
        let loader = FamilyLoader {
            path,
            value,
            dir,
            weights,
            device,
            kind,
        };
        Self::load_family(&model_type, loader).unwrap_or_else(|| {
            bail!(
                "{}: field model_type: unknown model type '{model_type}' (supported: {})",
                path.display(),
                SUPPORTED_MODEL_TYPES.join(", ")
            )
        })
    }

    /// The language model: the one decoder every family shares.
    pub fn decoder(&self) -> &Decoder {
        self.family().decoder()
    }

    /// The family's part in pruning (its vision tower's scores, its position convention before the
    /// decoder), implemented in the family's folder.
    pub fn prune_family(&self) -> &dyn PruneFamily {
        self.family()
    }

    fn lm_head_linear(&self) -> &Linear {
        self.family().lm_head()
    }

    pub fn num_layers(&self) -> usize {
        self.decoder().num_layers()
    }

    pub fn device(&self) -> Device {
        self.decoder().embed_tokens.device()
    }

    /// The compute dtype.
    pub fn kind(&self) -> Kind {
        self.decoder().embed_tokens.kind()
    }

    /// (hidden size, intermediate size, attention heads) of the decoder, for memory estimates.
    pub fn text_dims(&self) -> (i64, i64, i64) {
        let c = &self.decoder().cfg;
        (c.hidden_size, c.intermediate_size, c.num_attention_heads)
    }

    /// A synthetic prompt of `text_tokens` random text tokens around a random image, shaped like
    /// the family's chat template, for timing random-weight models (`horizon bench`).
    pub fn synthetic_inputs(&self, text_tokens: usize) -> Result<ModelInputs> {
        self.family().synthetic_prompt(text_tokens, self.device())
    }

    /// The windows of `horizon info` on the visual tokens of `inputs`: `size`×`size` blocks of the
    /// family's token grids (one grid for LLaVA-1.5 and Qwen2.5-VL; LLaVA-NeXT's base and
    /// high-resolution grids).
    pub fn window_grid(&self, inputs: &ModelInputs, size: usize) -> Result<WindowGrid> {
        self.family().token_windows(inputs, size)
    }

    /// Token id of the image placeholder in prompts.
    pub fn image_token_id(&self) -> i64 {
        self.family().image_token_id()
    }

    /// The prompt's input embeddings `[1, S, D]`: token embeddings with the image features scattered
    /// into the image-token positions.
    pub fn input_embeds(&self, inputs: &ModelInputs) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.family()
            .embed_prompt(inputs)
            .context("building input embeddings")
    }

    /// Prefill with `selector` deciding before each layer which prompt positions it processes (an
    /// [`crate::Intervention`] for fixed cuts): final-norm hidden states of the tokens the last layer
    /// kept. `cache` records keys/values for decoding; `layer_inputs` receives every layer's input.
    pub fn prefill(
        &self,
        inputs: &ModelInputs,
        selector: &mut dyn TokenSelector,
        cache: Option<&mut KvCache>,
        layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let embeds = self.input_embeds(inputs)?;
        self.prefill_embeds(&embeds, inputs, selector, cache, layer_inputs)
    }

    /// [`Self::prefill`] from already built input embeddings (a pre-LLM pruning stage gathers them).
    pub fn prefill_embeds(
        &self,
        embeds: &Tensor,
        inputs: &ModelInputs,
        selector: &mut dyn TokenSelector,
        cache: Option<&mut KvCache>,
        layer_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<DecoderOutput> {
        let _guard = tch::no_grad_guard();
        self.decoder().prefill(
            embeds,
            &inputs.position_ids,
            inputs.rope_deltas,
            &inputs.visual,
            selector,
            cache,
            layer_inputs,
        )
    }

    /// Runs decoder layers `from..` (then the final norm) on hidden states `[B, S, D]` whose rows hold
    /// the prompt positions `keep` `[B, S]` (original sequence indices): each row gets the position ids
    /// of its kept tokens, 1-D or M-RoPE. How an information sweep resumes from a stored layer input.
    pub fn forward_from_layer(
        &self,
        from: usize,
        hidden: &Tensor,
        keep: &Tensor,
        inputs: &ModelInputs,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let decoder = self.decoder();
        let positions = decoder
            .rotary_emb
            .gather_positions(&inputs.position_ids, keep);
        Ok(decoder.forward_from_layer(from, hidden, &positions))
    }

    /// [`Self::lm_head`] inside autograd (the gradient estimate differentiates through it).
    pub fn lm_head_differentiable(&self, hidden: &Tensor) -> Tensor {
        self.lm_head_linear().forward(hidden)
    }

    /// Logits in the model dtype for hidden states `[B, S, D]`.
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.lm_head_linear().forward(hidden)
    }

    /// Logits `[1, V]` of the next token after decoding `token` at cache position `position` (the prompt
    /// length plus tokens generated so far); each layer's rotary position follows the prefill's
    /// position policy (recorded in `cache`).
    pub fn decode_step(&self, token: i64, position: usize, cache: &mut KvCache) -> Tensor {
        let _guard = tch::no_grad_guard();
        let decoder = self.decoder();
        let ids = Tensor::from_slice(&[token])
            .to_device(self.device())
            .unsqueeze(0);
        let hidden = decoder.decode_step(&decoder.embed(&ids), position, cache);
        self.lm_head(&hidden).select(1, 0)
    }
}
