//! The trainer: an interrupted and resumed run ends with exactly the weights of an uninterrupted one,
//! and its export loads through the public loader like any llava-hf checkpoint.

use tch::{Device, Kind, Tensor};

use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::VlModel;
use horizon_train::{extend_run, train, SmallModelSpec, StepLosses, StopAt, TrainConfig};

/// Random initialization seeds libtorch's global generator (`tch::manual_seed`), so training runs in
/// tests of this binary (run on parallel threads) must not interleave, or a run's initial weights would
/// depend on another test's draws.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn micro() -> TrainConfig {
    let spec = SmallModelSpec {
        image_size: 32,
        patch_size: 8,
        vision_hidden: 16,
        vision_layers: 1,
        vision_heads: 2,
        vision_intermediate: 32,
        text_hidden: 16,
        text_layers: 2,
        text_heads: 2,
        text_kv_heads: 1,
        text_intermediate: 32,
    };
    let mut cfg = TrainConfig::new(spec, 4, 7);
    cfg.schedule.batch_size = 3;
    cfg.schedule.warmup_steps = 2;
    cfg.schedule.checkpoint_every = 2;
    // Steps 0-1 coarse only, 2-3 with the reading tasks: the resume below crosses the boundary.
    cfg.samples.coarse_only_fraction = 0.5;
    // The question probe's and the early answer's heads are checkpointed with the per-patch head:
    // the resume covers all three.
    cfg.decoder.question_weight = 1.0;
    cfg.decoder.early_answer_weight = 1.0;
    cfg
}

#[test]
fn curriculum_schedule() {
    let mut cfg = micro();
    cfg.schedule.steps = 100;
    cfg.samples.coarse_only_fraction = 0.2;
    cfg.samples.curriculum_fraction = 0.6;
    cfg.samples.max_glyphs = 3;
    assert_eq!(cfg.fine_start(), 20);
    // One glyph when the reading tasks enter, three from 60% of the steps on, monotone in between.
    assert_eq!(cfg.glyphs_at(20), 1);
    assert_eq!(cfg.glyphs_at(39), 1);
    assert_eq!(cfg.glyphs_at(40), 2);
    assert_eq!(cfg.glyphs_at(60), 3);
    assert_eq!(cfg.glyphs_at(99), 3);
}

/// Trains `cfg` to the end in a fresh directory: the exported model, every step's losses, and the
/// directory (kept alive by the caller).
fn train_to_end(cfg: &TrainConfig) -> (std::path::PathBuf, Vec<StepLosses>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut losses = Vec::new();
    let model = train(
        cfg,
        dir.path(),
        Device::Cpu,
        StopAt::default(),
        |_, l, _| losses.push(l),
    )
    .unwrap()
    .unwrap();
    (model, losses, dir)
}

fn weights(dir: &std::path::Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn resumed_training_equals_uninterrupted() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = micro();
    let (full, _, _a) = train_to_end(&cfg);

    // Interrupted after step 2 (a checkpoint is written on stopping), then resumed in the same directory.
    let b = tempfile::tempdir().unwrap();
    let stop = StopAt {
        step: Some(2),
        seconds: None,
    };
    assert!(train(&cfg, b.path(), Device::Cpu, stop, |_, _, _| {})
        .unwrap()
        .is_none());
    let mut seen = Vec::new();
    let resumed = train(
        &cfg,
        b.path(),
        Device::Cpu,
        StopAt::default(),
        |step, _, _| seen.push(step),
    )
    .unwrap()
    .unwrap();
    assert_eq!(seen, vec![2, 3], "resume must continue at step 2");

    let (wa, wb) = (weights(&full), weights(&resumed));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }

    // The export is a llava-hf directory the public loader and processor read.
    let model = VlModel::load(&full, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(&full, &model).unwrap();
    let img = image::RgbImage::from_pixel(32, 32, image::Rgb([120, 30, 200]));
    let inputs = processor
        .prepare_image(
            &model,
            "What color is the circle?",
            &img,
            PromptTemplate::LlavaHf,
        )
        .unwrap();
    assert_eq!(inputs.visual.positions.len(), 16);
    let names: Vec<&str> = wa.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"language_model.lm_head.weight"));
    assert!(names.contains(&"vision_tower.vision_model.post_layernorm.weight"));
    // The per-patch head is training-only: checkpointed apart, never exported.
    assert!(names
        .iter()
        .all(|n| !n.contains("aux_head") && !n.contains("question_head") && !n.contains("early")));
    assert!(b.path().join("checkpoint/aux_head.safetensors").exists());
}

/// Copies the files of directory `from` into a new directory `to` (one level: a run's checkpoint).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A kill at any point of a checkpoint write resumes from the last complete checkpoint and ends with
/// exactly the weights of an uninterrupted run. The kill points are laid out on disk as a killed write
/// leaves them: a half-written staging directory; the old checkpoint moved aside and the new one not
/// yet in place; the new checkpoint in place but the run's `state.json` still the old one's.
#[test]
fn killed_checkpoint_write_resumes_from_a_complete_checkpoint() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = micro();
    cfg.schedule.steps = 6;
    let (full, _, _a) = train_to_end(&cfg);
    let stop_at = |step| StopAt {
        step: Some(step),
        seconds: None,
    };
    let resume = |dir: &std::path::Path| {
        let mut seen = Vec::new();
        let model = train(&cfg, dir, Device::Cpu, StopAt::default(), |s, _, _| {
            seen.push(s)
        })
        .unwrap()
        .unwrap();
        let (wa, wb) = (weights(&full), weights(&model));
        assert_eq!(wa.len(), wb.len());
        for ((na, ta), (_, tb)) in wa.iter().zip(&wb) {
            assert!(ta.equal(tb), "{na} differs after resume");
        }
        let leftovers: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("checkpoint."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        seen
    };
    let stopped_at = |step| {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            train(&cfg, dir.path(), Device::Cpu, stop_at(step), |_, _, _| {})
                .unwrap()
                .is_none()
        );
        dir
    };
    let ckpt = |d: &tempfile::TempDir| d.path().join("checkpoint");
    let sibling = |d: &tempfile::TempDir, s: &str| d.path().join(format!("checkpoint.{s}"));

    // Killed while writing the step-4 checkpoint: a staging directory with a torn weights file.
    let a = stopped_at(2);
    std::fs::create_dir_all(sibling(&a, "tmp")).unwrap();
    let torn = std::fs::read(ckpt(&a).join("model.safetensors")).unwrap();
    std::fs::write(
        sibling(&a, "tmp").join("model.safetensors"),
        &torn[..torn.len() / 2],
    )
    .unwrap();
    assert_eq!(resume(a.path()), vec![2, 3, 4, 5]);

    // Killed between the renames: the step-2 checkpoint aside, the step-4 one not in place.
    let b = stopped_at(2);
    std::fs::rename(ckpt(&b), sibling(&b, "prev")).unwrap();
    copy_dir(&sibling(&b, "prev"), &sibling(&b, "tmp"));
    assert_eq!(resume(b.path()), vec![2, 3, 4, 5]);

    // Killed after the step-4 checkpoint went into place, before the old one was removed and the
    // run's state.json rewritten: the run goes on from step 4, not from the stale state's step 2.
    let c = stopped_at(2);
    let stale_state = std::fs::read(c.path().join("state.json")).unwrap();
    copy_dir(&ckpt(&c), &c.path().join("step2"));
    assert!(train(&cfg, c.path(), Device::Cpu, stop_at(4), |_, _, _| {})
        .unwrap()
        .is_none());
    std::fs::rename(c.path().join("step2"), sibling(&c, "prev")).unwrap();
    std::fs::write(c.path().join("state.json"), stale_state).unwrap();
    assert_eq!(resume(c.path()), vec![4, 5]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 6, "the run's copy of the state is mended");
}

/// A finished run, lengthened with `extend_run`, goes on from its last checkpoint (not from scratch) on
/// the longer schedule; anything but a larger `steps` is refused, naming the state file.
#[test]
fn extended_run_goes_on_from_its_checkpoint() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = micro();
    let (short, _, dir) = train_to_end(&cfg);
    let short_weights = weights(&short);

    let mut longer = cfg.clone();
    longer.schedule.steps = 6;
    // Without extending, the longer settings do not match the checkpoint.
    assert!(train(
        &longer,
        dir.path(),
        Device::Cpu,
        StopAt::default(),
        |_, _, _| {}
    )
    .is_err());
    // Only a larger step count may change.
    let mut same = cfg.clone();
    let err = extend_run(&same, dir.path()).unwrap_err().to_string();
    assert!(err.contains("state.json") && err.contains("steps"), "{err}");
    same.schedule.steps = 6;
    same.schedule.lr *= 2.0;
    let err = extend_run(&same, dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("state.json") && err.contains("config"),
        "{err}"
    );
    let none = tempfile::tempdir().unwrap();
    let err = extend_run(&longer, none.path()).unwrap_err().to_string();
    assert!(err.contains("state.json"), "{err}");

    assert_eq!(extend_run(&longer, dir.path()).unwrap(), 4);
    let mut seen = Vec::new();
    let extended = train(
        &longer,
        dir.path(),
        Device::Cpu,
        StopAt::default(),
        |s, _, lr| seen.push((s, lr)),
    )
    .unwrap()
    .unwrap();
    // Steps 4 and 5 only, at the longer schedule's rates.
    assert_eq!(seen, vec![(4, longer.lr_at(4)), (5, longer.lr_at(5))]);
    // The step-4 checkpoint was the finished short run, so every weight starts there and moves on.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 6);
    assert_eq!(state["config"]["steps"], 6);
    let ext = weights(&extended);
    assert_eq!(ext.len(), short_weights.len());
    assert!(ext
        .iter()
        .zip(&short_weights)
        .any(|((_, a), (_, b))| !a.equal(b)));
}

/// The attention supervision is wired into the loss: its evidence mass is reported only when it is on,
/// it changes the trained weights, and weighted heavily it raises the mass the chosen head puts on the
/// evidence (from what an untrained model spreads over the sequence).
#[test]
fn attention_supervision_moves_attention_to_the_evidence() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let run = |attend_weight: f64, steps: usize| {
        let mut cfg = micro();
        cfg.schedule.steps = steps;
        cfg.schedule.checkpoint_every = steps;
        cfg.decoder.attend_weight = attend_weight;
        cfg.samples.coarse_only_fraction = 0.0;
        let (model, losses, dir) = train_to_end(&cfg);
        let masses: Vec<f64> = losses.iter().map(|l| l.attend).collect();
        (weights(&model), masses, dir)
    };
    let (w_off, m_off, _d1) = run(0.0, 4);
    let (w_on, m_on, _d2) = run(1.0, 4);
    assert!(m_off.iter().all(|&m| m == 0.0));
    assert!(m_on.iter().all(|&m| m > 0.0 && m <= 1.0));
    assert!(w_off.iter().zip(&w_on).any(|((_, a), (_, b))| !a.equal(b)));

    let (_, masses, _d3) = run(50.0, 40);
    let first = masses[0];
    let last = masses[masses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last > 1.5 * first, "evidence mass {first:.3} -> {last:.3}");
}

/// Text scenes replace the image of coarse samples: a run where every coarse sample is a text scene
/// (so some steps have no image at all) trains, and its export loads like any other.
#[test]
fn text_scene_training_runs_without_images() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = micro();
    cfg.samples.text_scene_fraction = 1.0;
    cfg.samples.coarse_only_fraction = 0.5;
    let (model, losses, _dir) = train_to_end(&cfg);
    // Steps 0-1 are coarse only, hence text only: no per-patch loss; steps 2-3 have reading samples.
    assert_eq!(losses[0].aux, 0.0);
    assert_eq!(losses[1].aux, 0.0);
    assert!(losses.iter().all(|l| l.lm.is_finite() && l.lm > 0.0));
    VlModel::load(&model, Device::Cpu, Kind::Float).unwrap();
}

/// Turns one training option on.
type SetOption = fn(&mut TrainConfig);

/// The shape-word options train end to end: the early answer's loss is reported only when it is on,
/// the two-hop attention supervision (per query), a fixed supervised head with the residual penalty,
/// the word-aligned per-patch head, the larger query and key initialization and the question-first
/// layout each change the trained weights, and every export loads like any other.
#[test]
fn shape_word_options_train_and_export() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let base = || {
        let mut cfg = micro();
        cfg.decoder.early_answer_weight = 0.0;
        cfg.decoder.question_weight = 0.0;
        cfg
    };
    let (plain, plain_losses, _d0) = train_to_end(&base());
    assert!(plain_losses.iter().all(|l| l.early_answer == 0.0));
    let variants: [(&str, SetOption); 5] = [
        ("early answer + two hops", |c| {
            c.decoder.early_answer_weight = 1.0;
            c.decoder.attend_weight = 1.0;
            c.decoder.attend_via_shape_word = true;
            c.decoder.attend_per_query = true;
        }),
        ("fixed head + residual penalty", |c| {
            c.decoder.attend_weight = 1.0;
            c.decoder.attend_head = Some(1);
            c.decoder.activation_penalty = 1e-2;
        }),
        ("word-aligned", |c| c.patch.aux_word_aligned = true),
        ("qk init", |c| c.init.qk_init_std = 0.1),
        ("question first", |c| c.samples.question_first = true),
    ];
    for (name, set) in variants {
        let mut cfg = base();
        set(&mut cfg);
        let (model, losses, _d) = train_to_end(&cfg);
        assert!(losses.iter().all(|l| l.lm.is_finite()), "{name}");
        if cfg.decoder.early_answer_weight > 0.0 {
            assert!(losses.iter().any(|l| l.early_answer > 0.0), "{name}");
            assert!(losses.iter().any(|l| l.attend > 0.0), "{name}");
        }
        let (a, b) = (weights(&plain), weights(&model));
        assert!(
            a.iter().zip(&b).any(|((_, x), (_, y))| !x.equal(y)),
            "{name} left the weights unchanged"
        );
        VlModel::load(&model, Device::Cpu, Kind::Float).unwrap();
    }
}

/// The vision stage trains the vision side alone: after it, every decoder weight is still its initial
/// value (read from a run at learning rate 0, same seed) while the tower and the projector have moved;
/// its steps report no answer loss, and the decoder starts training on the first step after it (the
/// vision side too, unless `decoder_phase_vision_lr` is 0).
#[test]
fn vision_stage_trains_only_the_vision_side() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let stop_after = |cfg: &TrainConfig, steps: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut losses = Vec::new();
        let stop = StopAt {
            step: Some(steps),
            seconds: None,
        };
        train(cfg, dir.path(), Device::Cpu, stop, |_, l, _| losses.push(l)).unwrap();
        (weights(&dir.path().join("checkpoint")), losses, dir)
    };
    let mut frozen = micro();
    frozen.schedule.lr = 0.0;
    let (initial, _, _d0) = stop_after(&frozen, 1);
    let mut staged = micro();
    staged.stage.vision_stage_steps = 2;
    let (after_stage, losses, _d1) = stop_after(&staged, 2);
    assert!(losses.iter().all(|l| l.lm.is_nan() && l.aux > 0.0));
    let (after_one_more, losses, _d2) = stop_after(&staged, 3);
    assert!(losses[2].lm.is_finite());
    let changed = |a: &[(String, Tensor)], b: &[(String, Tensor)], prefix: &str| {
        a.iter()
            .zip(b)
            .filter(|((n, _), _)| n.starts_with(prefix))
            .map(|((n, x), (_, y))| (n.clone(), !x.equal(y)))
            .collect::<Vec<_>>()
    };
    // Every weight under `prefix` (there is at least one) is the same in `a` and `b`.
    let unmoved = |a: &[(String, Tensor)], b: &[(String, Tensor)], prefix: &str, when: &str| {
        let weights = changed(a, b, prefix);
        assert!(!weights.is_empty());
        for (name, moved) in weights {
            assert!(!moved, "{name} changed {when}");
        }
    };
    let any_moved = |a: &[(String, Tensor)], b: &[(String, Tensor)], prefix: &str| {
        changed(a, b, prefix).iter().any(|(_, m)| *m)
    };
    unmoved(
        &initial,
        &after_stage,
        "language_model.",
        "during the vision stage",
    );
    for prefix in [
        "vision_tower.vision_model.encoder.",
        "multi_modal_projector.",
    ] {
        assert!(changed(&initial, &after_stage, prefix)
            .iter()
            .all(|(_, m)| *m));
    }
    assert!(any_moved(&after_stage, &after_one_more, "language_model."));
    // With the vision side's rate at 0 after the stage, the step after it moves the decoder only.
    let mut frozen_after = staged.clone();
    frozen_after.stage.decoder_phase_vision_lr = 0.0;
    let (frozen_one_more, _, _d3) = stop_after(&frozen_after, 3);
    for prefix in ["vision_tower.", "multi_modal_projector."] {
        unmoved(
            &after_stage,
            &frozen_one_more,
            prefix,
            "after the stage at rate 0",
        );
        // ... where at the default rate it moves.
        assert!(any_moved(&after_stage, &after_one_more, prefix));
    }
    assert!(any_moved(&after_stage, &frozen_one_more, "language_model."));
}

/// The learning rate warms up and decays once over the vision stage and once over the rest.
#[test]
fn vision_stage_has_its_own_schedule() {
    let mut cfg = micro();
    cfg.schedule.steps = 100;
    cfg.stage.vision_stage_steps = 40;
    cfg.schedule.warmup_steps = 10;
    cfg.schedule.lr = 1.0;
    let mut plain = cfg.clone();
    plain.stage.vision_stage_steps = 0;
    plain.schedule.steps = 40;
    for step in 0..40 {
        assert_eq!(cfg.lr_at(step), plain.lr_at(step), "step {step}");
    }
    assert_eq!(cfg.lr_at(40), cfg.lr_at(0));
    assert!((cfg.lr_at(49) - 1.0).abs() < 1e-12);
    assert!(cfg.lr_at(39) < 0.06 && cfg.lr_at(99) < 0.06);
    assert!(cfg.lr_at(70) > cfg.lr_at(90));
}
