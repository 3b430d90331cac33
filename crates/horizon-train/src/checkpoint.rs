//! The run directory: checkpoints (model files, training-only heads, AdamW moments and state, one
//! atomic group), the trainer's state, extending a run, and the final llava-hf export.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_data::atomic::{recover_dir, write_atomic, write_dir_atomic};
use horizon_runner::models::llava::{LLAVA_LAYOUTS, LLAVA_PUBLISHED};
use horizon_runner::weights::Weights;

use crate::config::{SmallModelSpec, TrainConfig};
use crate::examples::image_processor_json;
use crate::optimiser::AdamW;
use crate::tokenizer;

/// Progress of a run, persisted with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub config: TrainConfig,
    pub losses: Vec<(usize, f64)>,
    pub elapsed_s: f64,
}

/// File names inside a run directory and its checkpoint, shared by the writer and the resume path.
const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
const AUX_HEAD_FILE: &str = "aux_head.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Writes the files of a llava-hf checkpoint for `params` (module-tree names) into the existing
/// directory `tmp` (a staging directory of [`write_dir_atomic`]).
/// The checkpoint's file of the training-only heads.
pub(crate) fn head_file(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINT_DIR).join(AUX_HEAD_FILE)
}

/// The run in `run_dir`: the weights and state of its checkpoint when it has one (whose settings
/// must be `cfg`), else seeded random weights at step 0.
pub(crate) fn open_run(
    cfg: &TrainConfig,
    run_dir: &Path,
    device: Device,
) -> Result<(Weights, TrainerState)> {
    let Some((state, path)) = checkpointed_state(run_dir)? else {
        let state = TrainerState {
            step: 0,
            config: cfg.clone(),
            losses: Vec::new(),
            elapsed_s: 0.0,
        };
        let seed = cfg.schedule.seed as i64;
        return Ok((Weights::random(device, Kind::Float, seed), state));
    };
    if state.config != *cfg {
        bail!(
            "{}: resuming with different settings than the checkpoint",
            path.display()
        );
    }
    // A kill after the checkpoint went into place but before its copy was written leaves the
    // copy a checkpoint behind.
    write_state(&run_dir.join(STATE_FILE), &state)?;
    let ckpt = run_dir.join(CHECKPOINT_DIR);
    Ok((
        Weights::open(&ckpt, LLAVA_LAYOUTS, device, Kind::Float)?,
        state,
    ))
}

/// The AdamW moments of `params` saved in the checkpoint of `run_dir`, if it has them.
pub(crate) fn load_moments(
    opt: &mut AdamW,
    params: &[(String, Tensor)],
    run_dir: &Path,
    device: Device,
) -> Result<()> {
    let moments = run_dir.join(CHECKPOINT_DIR).join(OPTIMIZER_FILE);
    if !moments.exists() {
        return Ok(());
    }
    let saved: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&moments)?.into_iter().collect();
    for (i, (name, _)) in params.iter().enumerate() {
        let (m, v) = (
            saved.get(&format!("m.{name}")),
            saved.get(&format!("v.{name}")),
        );
        let (Some(m), Some(v)) = (m, v) else {
            bail!("{}: no moments for {name}", moments.display());
        };
        opt.m[i] = m.to_device(device);
        opt.v[i] = v.to_device(device);
    }
    Ok(())
}

/// What the model's own files are made of: `config.json`, the tokenizer, the architecture, and how
/// many of the leading parameters are the model's (the training-only heads follow them).
pub(crate) struct ModelFiles<'a> {
    pub(crate) config_json: serde_json::Value,
    pub(crate) tok: &'a tokenizers::Tokenizer,
    pub(crate) spec: &'a SmallModelSpec,
    pub(crate) n_model_params: usize,
    /// HF's CLIP has a post_layernorm that LLaVA never uses; an identity one is exported.
    post_layernorm: (Tensor, Tensor),
}

impl<'a> ModelFiles<'a> {
    pub(crate) fn new(
        config_json: serde_json::Value,
        tok: &'a tokenizers::Tokenizer,
        spec: &'a SmallModelSpec,
        n_model_params: usize,
    ) -> Self {
        let h = spec.vision_hidden;
        let post_w = Tensor::ones([h], (Kind::Float, Device::Cpu));
        let post_b = Tensor::zeros([h], (Kind::Float, Device::Cpu));
        Self {
            config_json,
            tok,
            spec,
            n_model_params,
            post_layernorm: (post_w, post_b),
        }
    }

    /// The model's parameters as llava-hf files in the existing directory `dir`.
    fn write(&self, dir: &Path, params: &[(String, Tensor)]) -> Result<()> {
        let extra = [
            (
                "vision_tower.vision_model.post_layernorm.weight",
                &self.post_layernorm.0,
            ),
            (
                "vision_tower.vision_model.post_layernorm.bias",
                &self.post_layernorm.1,
            ),
        ];
        write_model_files(
            dir,
            &self.config_json,
            self.tok,
            self.spec,
            &params[..self.n_model_params],
            &extra,
        )
    }
}

/// Replaces the checkpoint of `run_dir` whole ([`write_dir_atomic`]): the model files, the
/// training-only heads, the AdamW moments and `state`; then the run's copy of the state.
pub(crate) fn write_checkpoint(
    run_dir: &Path,
    files: &ModelFiles,
    params: &[(String, Tensor)],
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    let n_model_params = files.n_model_params;
    write_dir_atomic(&run_dir.join(CHECKPOINT_DIR), |tmp| {
        files.write(tmp, params)?;
        if params.len() > n_model_params {
            let aux_cpu: Vec<(&str, Tensor)> = params[n_model_params..]
                .iter()
                .map(|(n, t)| (n.as_str(), t.detach().to_device(Device::Cpu)))
                .collect();
            let refs: Vec<(&str, &Tensor)> = aux_cpu.iter().map(|(n, t)| (*n, t)).collect();
            Tensor::write_safetensors(&refs, tmp.join(AUX_HEAD_FILE))?;
        }
        let mut moments_named: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, _)) in params.iter().enumerate() {
            moments_named.push((format!("m.{name}"), opt.m[i].to_device(Device::Cpu)));
            moments_named.push((format!("v.{name}"), opt.v[i].to_device(Device::Cpu)));
        }
        let refs: Vec<(&str, &Tensor)> =
            moments_named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, tmp.join(OPTIMIZER_FILE))?;
        write_state(&tmp.join(STATE_FILE), state)
    })?;
    write_state(&run_dir.join(STATE_FILE), state)
}

/// The finished model, `run_dir/model`.
pub(crate) fn export(
    run_dir: &Path,
    files: &ModelFiles,
    params: &[(String, Tensor)],
) -> Result<PathBuf> {
    let final_dir = run_dir.join("model");
    write_dir_atomic(&final_dir, |tmp| files.write(tmp, params))?;
    Ok(final_dir)
}

fn write_model_files(
    tmp: &Path,
    config: &serde_json::Value,
    tok: &tokenizers::Tokenizer,
    spec: &SmallModelSpec,
    params: &[(String, Tensor)],
    extra: &[(&str, &Tensor)],
) -> Result<()> {
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        std::fs::write(tmp.join(name), serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("{}: cannot write", tmp.join(name).display()))
    };
    write_json("config.json", config)?;
    write_json("preprocessor_config.json", &image_processor_json(spec))?;
    write_json(
        "generation_config.json",
        &json!({"bos_token_id": tokenizer::BOS.1, "eos_token_id": tokenizer::EOS.1,
                "pad_token_id": tokenizer::PAD.1, "do_sample": false}),
    )?;
    write_json(
        "tokenizer_config.json",
        &json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512,
                "clean_up_tokenization_spaces": false}),
    )?;
    // What llava-hf ships, so that HF's AutoProcessor builds a LlavaProcessor for the directory.
    write_json(
        "processor_config.json",
        &json!({"processor_class": "LlavaProcessor", "image_token": "<image>",
                "patch_size": spec.patch_size, "num_additional_image_tokens": 1,
                "vision_feature_select_strategy": "default"}),
    )?;
    tok.save(tmp.join("tokenizer.json"), true)
        .map_err(|e| anyhow!("writing tokenizer.json: {e}"))?;
    // Published llava-hf names on disk, as the loader and HF expect.
    let mut named: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, t)| {
            (
                to_disk_name(n),
                t.detach().to_kind(Kind::Float).to_device(Device::Cpu),
            )
        })
        .collect();
    named.extend(
        extra
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_device(Device::Cpu))),
    );
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, tmp.join("model.safetensors"))?;
    Ok(())
}

/// The published llava-hf name of a module-tree name: exported models look like the llava-hf ones.
fn to_disk_name(model_name: &str) -> String {
    LLAVA_PUBLISHED
        .to_disk(model_name)
        .unwrap_or_else(|| model_name.to_string())
}

/// Lengthens a checkpointed run in `run_dir` to `cfg.schedule.steps`, so that the next
/// [`train`](crate::train) with `cfg`
/// resumes it and goes on (also after the run has finished). Every other setting must equal the
/// checkpoint's. The last phase's cosine schedule is recomputed for the new length, so from the
/// current step on the learning rate jumps to where the longer schedule would be (a warm restart), and
/// the result differs from a run planned with `cfg.schedule.steps` from the start. The coarse-only
/// phase and the glyph curriculum are fractions of the steps too and move with them (nothing changes for a run
/// already past both). Returns the checkpoint's step.
pub fn extend_run(cfg: &TrainConfig, run_dir: &Path) -> Result<usize> {
    let Some((mut state, state_path)) = checkpointed_state(run_dir)? else {
        bail!("{}: no run to extend", run_dir.join(STATE_FILE).display());
    };
    let old = state.config.schedule.steps;
    if cfg.schedule.steps <= old {
        bail!(
            "{}: steps: the run already has {old} steps; extending needs more than that (got {})",
            state_path.display(),
            cfg.schedule.steps
        );
    }
    let mut same_but_steps = cfg.clone();
    same_but_steps.schedule.steps = old;
    if same_but_steps != state.config {
        bail!(
            "{}: config: only --steps may change when extending a run; another setting differs from the checkpoint's",
            state_path.display()
        );
    }
    state.config.schedule.steps = cfg.schedule.steps;
    write_state(&state_path, &state)?;
    // The run's copy for readers (the same file for a checkpoint written before the copy existed).
    write_state(&run_dir.join(STATE_FILE), &state)?;
    Ok(state.step)
}

/// The state of the run in `run_dir` and the file it was read from: the checkpoint's own
/// `checkpoint/state.json`, written in one atomic group with the weights, heads and moments, or for a
/// checkpoint written before that file existed, the run's `state.json`. First mends a checkpoint
/// write that a kill interrupted ([`recover_dir`]). `None` when the run has no checkpoint yet.
fn checkpointed_state(run_dir: &Path) -> Result<Option<(TrainerState, PathBuf)>> {
    let ckpt = run_dir.join(CHECKPOINT_DIR);
    recover_dir(&ckpt)?;
    if !ckpt.join("model.safetensors").exists() {
        return Ok(None);
    }
    let path = [ckpt.join(STATE_FILE), run_dir.join(STATE_FILE)]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: a checkpoint without state.json", ckpt.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let state = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid trainer state", path.display()))?;
    Ok(Some((state, path)))
}

fn write_state(path: &Path, state: &TrainerState) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, serde_json::to_string(state)?)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })
}
