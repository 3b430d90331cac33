//! The training loop: each step's batch, its losses (the answer loss, the per-patch terms, the
//! decoder-side terms), the AdamW update, and checkpoints.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_data::imageproc::ClipImageProcessorConfig;
use horizon_data::synthetic::{self, GenConfig, SynthSample};
use horizon_runner::decoder::Decoder;
use horizon_runner::models::llava::{LlavaConfig, LlavaForConditionalGeneration};
use horizon_runner::{Intervention, VisualTokens};

use crate::checkpoint::{self, ModelFiles};
use crate::config::{early_answer_layer, question_probe_layer, TrainConfig};
use crate::examples::{
    batch_samples, build_vocab_tokenizer, encode_example, image_processor_json, text_scene_flags,
    Example,
};
use crate::heads::{position_head_loss, rms_normalized, AlignedWords, Head, Heads};
use crate::optimiser::{self, clip_grad_norm, AdamW};
use crate::{attend, aux, tokenizer};

/// Losses of one step: the answer (language-model) loss and the dense per-patch loss ([`aux`]).
#[derive(Debug, Clone, Copy)]
pub struct StepLosses {
    pub lm: f64,
    pub aux: f64,
    /// Mean over supervised answer tokens of the largest attention mass on their evidence
    /// ([`attend`]; 0 when off).
    pub attend: f64,
    /// Cross-entropy of the early answer at the question's shape word (0 when off).
    pub early_answer: f64,
    /// Glyph centres of this (fresh) batch that the per-patch head named right, and all of them
    /// ([`aux::glyph_hits`]; (0, 0) without the per-patch loss or glyphs).
    pub glyph_hits: (i64, i64),
    /// Images of this batch with circles whose circle count the pooled count head named right, and
    /// all images with circles ((0, 0) when the pooled count loss is off).
    pub count_hits: (i64, i64),
    /// Glyph centres of this batch's images without a red box whose reading-order place the per-patch
    /// head named right, and all of them ([`aux::order_hits`]).
    pub order_hits: (i64, i64),
}

/// When a call to [`train`] returns before the run is finished (a checkpoint is written first), so
/// that a long run can be split into several jobs and resumed.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopAt {
    /// Stop once this many steps of the run are done.
    pub step: Option<usize>,
    /// Stop at the first step boundary after this many seconds of this call.
    pub seconds: Option<f64>,
}

/// Trains (or resumes) a model into `run_dir` and exports the final llava-hf directory to
/// `run_dir/model`, returned as `Some`; `None` when `stop` ended the call first. Each checkpoint is one
/// directory, `run_dir/checkpoint` (the model files, the training-only heads, the AdamW moments and
/// `state.json`), replaced whole ([`write_dir_atomic`](horizon_data::atomic::write_dir_atomic)), so a
/// kill at any moment resumes from the last complete checkpoint. `run_dir/state.json` is a copy of the
/// checkpoint's state for readers. `on_step(step, losses, lr)` reports progress.
pub fn train(
    cfg: &TrainConfig,
    run_dir: &Path,
    device: Device,
    stop: StopAt,
    mut on_step: impl FnMut(usize, StepLosses, f64),
) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(run_dir)?;
    let gen = GenConfig::default().with_image_size(cfg.spec.image_size as u32);
    let scenes = cfg.samples.text_scene_fraction > 0.0;
    let tok = build_vocab_tokenizer(&gen, cfg.schedule.seed, scenes)?;
    let vocab = tok.get_vocab_size(true) as i64;
    let config_json = cfg.spec.config_json(vocab);
    let llava_cfg = LlavaConfig::from_json(Path::new("config.json"), config_json.clone())?;
    let num_image_tokens = llava_cfg.num_image_tokens() as usize;
    let image_proc = ClipImageProcessorConfig::from_json_str(
        &image_processor_json(&cfg.spec).to_string(),
        "preprocessor_config.json",
    )?;

    let (weights, mut state) = checkpoint::open_run(cfg, run_dir, device)?;
    let model = LlavaForConditionalGeneration::from_weights(&weights, llava_cfg)?;
    // Every tensor the model holds is a trainable parameter (each shares its storage with the model).
    let mut params: Vec<(String, Tensor)> = weights
        .loaded()
        .into_iter()
        .map(|(name, t)| (name, t.set_requires_grad(true)))
        .collect();
    if state.step == 0 {
        optimiser::rescale_fresh(&params, cfg);
    }
    // The training-only heads: kept in their own file, never in the exported model.
    let n_model_params = params.len();
    let head_file = checkpoint::head_file(run_dir);
    let resuming = state.step > 0 && head_file.exists();
    let heads = Heads::add(&mut params, cfg, vocab, &head_file, resuming, device)?;
    let aligned_words = cfg
        .patch
        .aux_word_aligned
        .then(|| AlignedWords::new(&params, &tok, device))
        .transpose()?;
    let mut opt = AdamW::new(&params);
    // The tower and the projector, whose rate --decoder-phase-vision-lr scales after the stage.
    let is_vision_side: Vec<bool> = params
        .iter()
        .map(|(n, _)| n.contains("vision_tower.") || n.contains("multi_modal_projector."))
        .collect();
    if state.step > 0 {
        checkpoint::load_moments(&mut opt, &params, run_dir, device)?;
    }
    let files = ModelFiles::new(config_json, &tok, &cfg.spec, n_model_params);

    let started = std::time::Instant::now();
    let elapsed_before = state.elapsed_s;
    while state.step < cfg.schedule.steps {
        let step = state.step;
        let samples = batch_samples(cfg, step)?;
        let text_scenes = text_scene_flags(cfg, step, &samples);
        let examples: Vec<Example> = samples
            .iter()
            .zip(&text_scenes)
            .map(|(s, &text_scene)| {
                encode_example(&tok, &image_proc, num_image_tokens, s, cfg, text_scene)
            })
            .collect::<Result<_>>()?;
        // Samples shown as an image (text scenes have no pixels and no per-patch targets).
        let with_image: Vec<usize> = (0..samples.len()).filter(|&i| !text_scenes[i]).collect();
        let batch = Batch::new(&examples, device);
        let pixels: Vec<f32> = examples
            .iter()
            .flat_map(|e| e.pixels.iter().copied())
            .collect();
        let n_img = with_image.len() as i64;
        let features = if n_img > 0 {
            let side = cfg.spec.image_size;
            let pixels = Tensor::from_slice(&pixels)
                .reshape([n_img, 3, side, side])
                .to_device(device);
            Some(model.image_features(&pixels)?)
        } else {
            None
        };
        let mut patch = PatchTerms::default();
        if let (true, Some(features)) = (cfg.patch.aux_weight > 0.0, &features) {
            let images: Vec<&SynthSample> = with_image.iter().map(|&i| &samples[i]).collect();
            let ctx = PatchContext {
                cfg,
                params: &params,
                heads: &heads,
                aligned_words: aligned_words.as_ref(),
                device,
            };
            patch = patch_losses(&ctx, features, &images);
        }
        let aux_loss_v = patch.loss.as_ref().map_or(0.0, |l| l.double_value(&[]));
        // The answer loss and every decoder-side term; none of them in the vision stage.
        let vision_stage = step < cfg.stage.vision_stage_steps;
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        if let Some(aux_l) = &patch.loss {
            loss += aux_l * cfg.patch.aux_weight;
        }
        let mut decoder = DecoderTerms {
            lm: f64::NAN,
            early_answer: 0.0,
            attend: 0.0,
        };
        if !vision_stage {
            decoder = add_decoder_losses(
                &mut loss,
                cfg,
                &model,
                &params,
                &heads,
                &examples,
                &batch,
                features.as_ref(),
            )?;
        }
        for (_, p) in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        clip_grad_norm(&params, cfg.schedule.grad_clip);
        let lr = cfg.lr_at(step);
        let after_stage = !vision_stage && cfg.stage.vision_stage_steps > 0;
        opt.step(&params, lr, cfg.schedule.weight_decay, step, |i| {
            if after_stage && is_vision_side[i] {
                cfg.stage.decoder_phase_vision_lr
            } else {
                1.0
            }
        });
        let loss_v = loss.double_value(&[]);
        if !loss_v.is_finite() {
            bail!("training diverged at step {step} (loss {loss_v})");
        }
        state.step += 1;
        // The recorded loss is the answer (language-model) loss; the per-patch loss is reported apart.
        if !vision_stage {
            state.losses.push((step, decoder.lm));
        }
        on_step(
            step,
            StepLosses {
                lm: decoder.lm,
                aux: aux_loss_v,
                attend: decoder.attend,
                early_answer: decoder.early_answer,
                glyph_hits: patch.glyph_hits,
                count_hits: patch.count_hits,
                order_hits: patch.order_hits,
            },
            lr,
        );
        let stopping = stop.step.is_some_and(|s| state.step >= s)
            || stop
                .seconds
                .is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        if state.step % cfg.schedule.checkpoint_every == 0
            || state.step == cfg.schedule.steps
            || stopping
        {
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            checkpoint::write_checkpoint(run_dir, &files, &params, &opt, &state)?;
        }
        if stopping && state.step < cfg.schedule.steps {
            return Ok(None);
        }
    }
    Ok(Some(checkpoint::export(run_dir, &files, &params)?))
}

/// One step's token ids and labels, right-padded to the longest example.
struct Batch {
    /// `[B, S]`.
    ids: Tensor,
    /// `[B * S]`: the next token where it is supervised (the answer tokens and EOS of every turn),
    /// else -100.
    labels: Tensor,
    rows: i64,
    max_len: usize,
}

impl Batch {
    fn new(examples: &[Example], device: Device) -> Self {
        let max_len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let b = examples.len() as i64;
        let mut ids = vec![tokenizer::PAD.1 as i64; examples.len() * max_len];
        let mut labels = vec![-100i64; examples.len() * max_len];
        for (r, e) in examples.iter().enumerate() {
            ids[r * max_len..r * max_len + e.ids.len()].copy_from_slice(&e.ids);
            // Position t predicts token t + 1: supervise the answer tokens and EOS of every turn.
            for t in 0..e.ids.len() - 1 {
                if e.supervised[t] {
                    labels[r * max_len + t] = e.ids[t + 1];
                }
            }
        }
        let ids = Tensor::from_slice(&ids)
            .reshape([b, max_len as i64])
            .to_device(device);
        let labels = Tensor::from_slice(&labels).reshape([-1]).to_device(device);
        Self {
            ids,
            labels,
            rows: b,
            max_len,
        }
    }
}

/// The per-patch loss of a step (unweighted; `None` without it) and the heads' hit counts.
#[derive(Default)]
struct PatchTerms {
    loss: Option<Tensor>,
    glyph_hits: (i64, i64),
    count_hits: (i64, i64),
    order_hits: (i64, i64),
}

struct PatchContext<'a> {
    cfg: &'a TrainConfig,
    params: &'a [(String, Tensor)],
    heads: &'a Heads,
    aligned_words: Option<&'a AlignedWords>,
    device: Device,
}

/// The per-patch loss on the projected visual tokens `features` `[images, patches, D]` of `images`,
/// with the glyph-cover, reading-order cover and pooled count terms the run has.
fn patch_losses(ctx: &PatchContext, features: &Tensor, images: &[&SynthSample]) -> PatchTerms {
    let (cfg, params, device) = (ctx.cfg, ctx.params, ctx.device);
    let patch_size = cfg.spec.patch_size as u32;
    let n_img = images.len() as i64;
    let mut terms = PatchTerms::default();
    let Some((w, bias)) = ctx.heads.get(params, Head::Patch) else {
        return terms;
    };
    let aux_in = if cfg.patch.aux_normalized {
        rms_normalized(features)
    } else {
        features.shallow_clone()
    };
    let mut aux_logits = aux_in.linear(w, Some(bias));
    if let Some(words) = ctx.aligned_words {
        let embed = &params[words.embed_idx].1;
        aux_logits = aux::with_word_logits(
            &aux_logits,
            &rms_normalized(features),
            &embed.index_select(0, &words.kinds),
            &embed.index_select(0, &words.colors),
        );
    }
    // `[images, patches, groups]` targets of the image samples, from one of aux's target fns.
    let batch_targets = |targets_of: fn(&synthetic::SampleMeta, u32) -> Vec<i64>| {
        let t: Vec<i64> = images
            .iter()
            .flat_map(|s| targets_of(&s.meta, patch_size))
            .collect();
        Tensor::from_slice(&t)
            .reshape([n_img, features.size()[1], -1])
            .to_device(device)
    };
    let targets = batch_targets(aux::patch_targets);
    terms.glyph_hits = aux::glyph_hits(&aux_logits, &targets);
    terms.order_hits = aux::order_hits(&aux_logits, &targets);
    let mut l = if cfg.patch.aux_balanced {
        aux::aux_loss_balanced(&aux_logits, &targets)
    } else {
        aux::aux_loss(&aux_logits, &targets)
    };
    if let Some((w, bias)) = ctx.heads.get(params, Head::GlyphCover) {
        let cover = batch_targets(aux::cover_targets);
        l += aux::cover_loss(&aux_in.linear(w, Some(bias)), &cover);
    }
    // Only images without a red box: a boxed image's glyphs have no reading order.
    if let Some((w, bias)) = ctx.heads.get(params, Head::OrderCover) {
        let (rows, targets): (Vec<i64>, Vec<Vec<i64>>) = images
            .iter()
            .enumerate()
            .filter_map(|(row, s)| {
                aux::order_cover_targets(&s.meta, patch_size).map(|t| (row as i64, t))
            })
            .unzip();
        if !rows.is_empty() {
            let t = Tensor::from_slice(&targets.concat())
                .reshape([rows.len() as i64, features.size()[1], -1])
                .to_device(device);
            let rows = Tensor::from_slice(&rows).to_device(device);
            let logits = aux_in.index_select(0, &rows).linear(w, Some(bias));
            l += aux::order_cover_loss(&logits, &t) * cfg.patch.aux_order_cover_weight;
        }
    }
    if let Some((w, bias)) = ctx.heads.get(params, Head::PooledCount) {
        let counts: Vec<i64> = images
            .iter()
            .flat_map(|s| aux::kind_counts(&s.meta))
            .collect();
        let counts = Tensor::from_slice(&counts)
            .reshape([n_img, -1])
            .to_device(device);
        let (count_l, hits) = aux::pooled_count_loss(&rms_normalized(features), w, bias, &counts);
        terms.count_hits = hits;
        l += count_l * cfg.patch.pooled_count_weight;
    }
    terms.loss = Some(l);
    terms
}

/// What the decoder-side terms of a step report: the answer loss, the early answer's loss and the
/// attention supervision's evidence mass.
struct DecoderTerms {
    lm: f64,
    early_answer: f64,
    attend: f64,
}

/// Runs the decoder over the batch and adds the answer loss and every decoder-side term the run
/// has (question probe, activation penalty, early answer, attention supervision) to `loss`.
#[allow(clippy::too_many_arguments)]
fn add_decoder_losses(
    loss: &mut Tensor,
    cfg: &TrainConfig,
    model: &LlavaForConditionalGeneration,
    params: &[(String, Tensor)],
    heads: &Heads,
    examples: &[Example],
    batch: &Batch,
    features: Option<&Tensor>,
) -> Result<DecoderTerms> {
    let device = batch.ids.device();
    let (b, max_len) = (batch.rows, batch.max_len);
    // Right padding with a causal mask: real tokens never attend to the padding after them.
    let mut layer_inputs = Vec::new();
    let want_inputs = cfg
        .decoder
        .wants_layer_inputs()
        .then_some(&mut layer_inputs);
    let embeds = match features {
        Some(features) => model.input_embeds_with_features(&batch.ids, features)?,
        None => model.language_model.embed(&batch.ids),
    };
    // Positions 0..S broadcast over the batch; no cut, so no visual layout is needed.
    let lm = &model.language_model;
    let positions = lm.rotary_emb.contiguous_positions(max_len as i64, device);
    let out = lm.prefill(
        &embeds,
        &positions,
        0,
        &VisualTokens::default(),
        &mut Intervention::none(),
        None,
        want_inputs,
    )?;
    let logits = model
        .lm_head
        .forward(&out.hidden)
        .reshape([b * max_len as i64, -1]);
    let lm_loss =
        logits.cross_entropy_loss::<Tensor>(&batch.labels, None, tch::Reduction::Mean, -100, 0.0);
    let mut terms = DecoderTerms {
        lm: lm_loss.double_value(&[]),
        early_answer: 0.0,
        attend: 0.0,
    };
    *loss += lm_loss;
    let asked: Vec<(usize, usize, i64)> = examples
        .iter()
        .enumerate()
        .filter_map(|(r, e)| e.asked.map(|(t, k)| (r, t, k)))
        .collect();
    if let (Some(head), false) = (heads.get(params, Head::Question), asked.is_empty()) {
        let x = &layer_inputs[question_probe_layer(cfg.spec.text_layers)];
        *loss += position_head_loss(x, max_len, &asked, head) * cfg.decoder.question_weight;
    }
    if cfg.decoder.activation_penalty > 0.0 {
        let squares: Vec<Tensor> = layer_inputs
            .iter()
            .map(|x| x.pow_tensor_scalar(2).mean(Kind::Float))
            .collect();
        let mean_square = Tensor::stack(&squares, 0).mean(Kind::Float);
        *loss += mean_square * cfg.decoder.activation_penalty;
    }
    let early: Vec<(usize, usize, i64)> = examples
        .iter()
        .enumerate()
        .filter_map(|(r, e)| e.early_answer.map(|(t, y)| (r, t, y)))
        .collect();
    if let (Some(head), false) = (heads.get(params, Head::EarlyAnswer), early.is_empty()) {
        let x = &layer_inputs[early_answer_layer(cfg.spec.text_layers)];
        let early_loss = position_head_loss(x, max_len, &early, head);
        terms.early_answer = early_loss.double_value(&[]);
        *loss += early_loss * cfg.decoder.early_answer_weight;
    }
    if cfg.decoder.attend_weight > 0.0 {
        let (first_hop, second_hop, best) =
            attention_supervision(cfg, lm, examples, &layer_inputs, max_len, device);
        if let Some(l2) = second_hop {
            *loss += l2 * cfg.decoder.attend_weight;
        }
        terms.attend = best;
        *loss += first_hop * cfg.decoder.attend_weight;
    }
    Ok(terms)
}

/// The attention supervision ([`attend`]) on the decoder's attention rows at the supervised query
/// positions: the evidence loss (from the shape word, with `attend_via_shape_word`, only in the
/// layers below the early answer), the second hop's loss (the answer reads the shape word, in a head
/// from that layer up) when it is on, and the best head's evidence mass.
fn attention_supervision(
    cfg: &TrainConfig,
    lm: &Decoder,
    examples: &[Example],
    layer_inputs: &[Tensor],
    max_len: usize,
    device: Device,
) -> (Tensor, Option<Tensor>, f64) {
    let s = max_len as i64;
    let positions = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
    let (cos, sin) = lm.rotary_emb.cos_sin(&positions, Kind::Float);
    // The triples (row, query position, key position) of both hops.
    let to_evidence = || {
        examples.iter().enumerate().flat_map(|(r, e)| {
            e.evidence.iter().flat_map(move |(t, patches)| {
                patches.iter().map(move |p| (r, *t, e.image_start + p))
            })
        })
    };
    let to_shape_word = || {
        examples
            .iter()
            .enumerate()
            .filter_map(|(r, e)| e.reads_shape_word.map(|(t, word)| (r, t, word)))
    };
    let mut positions = vec![Vec::new(); examples.len()];
    for (r, t, _) in to_evidence().chain(to_shape_word()) {
        positions[r].push(t);
    }
    let rows = attend::QueryRows::new(positions);
    let row_positions = rows.tensor(device);
    let weights: Vec<Tensor> = lm
        .layers
        .iter()
        .zip(layer_inputs)
        .map(|(layer, x)| layer.attention_probs_at(x, &cos, &sin, &row_positions))
        .collect();
    let (ev, queries) = attend::evidence_tensors(to_evidence(), &rows, max_len, device);
    // From the shape word, only the layers below the early answer can serve it.
    let via_word = cfg.decoder.attend_via_shape_word;
    let layers = if via_word {
        early_answer_layer(cfg.spec.text_layers)
    } else {
        weights.len()
    };
    let (l, best) = attend::attention_loss_with(
        &weights[..layers],
        &ev,
        &queries,
        cfg.decoder.attend_per_query,
        cfg.decoder.attend_head,
    );
    let second_hop = via_word.then(|| {
        let (ev, queries) = attend::evidence_tensors(to_shape_word(), &rows, max_len, device);
        attend::attention_loss(&weights[layers..], &ev, &queries).0
    });
    (l, second_hop, best)
}
