//! Training examples: the synthetic samples of each step, their prompts, answers and extra turns,
//! tokenized with the positions the training-only terms supervise.

use anyhow::{anyhow, bail, Result};
use serde_json::json;

use horizon_data::imageproc::{clip_preprocess, ClipImageProcessorConfig, ResampleOrder};
use horizon_data::synthetic::{self, Category, GenConfig, SynthSample};

use crate::config::{SmallModelSpec, TrainConfig};
use crate::{attend, tokenizer};

/// Class of the shape kind a question names (`ShapeKind::ALL` order), if it names one.
pub fn asked_kind(question: &str) -> Option<i64> {
    use horizon_data::synthetic::ShapeKind;
    ShapeKind::ALL
        .iter()
        .position(|k| {
            question
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == k.name() || w.strip_suffix('s') == Some(k.name()))
        })
        .map(|i| i as i64)
}

/// The prompt the bundled models are trained and evaluated with (the llava-hf chat template).
pub fn prompt_text(question: &str) -> String {
    format!("USER: <image>\n{question} ASSISTANT:")
}

/// The vocabulary covers every prompt and answer the generator can produce: questions and answers of
/// many samples per category, and each glyph as a first and as a later character; with `scenes`, also
/// the text descriptions of coarse scenes ([`scene_text`]).
pub(crate) fn build_vocab_tokenizer(
    gen: &GenConfig,
    seed: u64,
    scenes: bool,
) -> Result<tokenizers::Tokenizer> {
    let mut texts: Vec<String> = vec!["USER: ".into()];
    for cat in Category::ALL {
        for i in 0..400 {
            let s = synthetic::generate(gen, cat, seed ^ 0x70c, i)?;
            texts.push(format!("\n{} ASSISTANT: {}", s.question, s.answer));
            texts.push(format!("USER: {} ASSISTANT: {}", s.question, s.answer));
            texts.push(s.answer.clone());
            if scenes && cat.kind() == synthetic::TaskKind::Coarse {
                texts.push(prompt_text(&s.question).replacen("<image>", &scene_text(&s), 1));
            }
        }
    }
    for c in synthetic::font::ALPHABET.chars() {
        texts.push(format!("{c}{c}"));
    }
    tokenizer::build_tokenizer(texts.iter().map(String::as_str))
}

/// The scene of a coarse sample in words, shapes in drawing order: `red circle, blue square`. Samples
/// that show the scene this way instead of as an image teach the decoder to look the question's shape
/// up in its context: measured, image-only training never does (the answers of every model trained so
/// far are exactly invariant to the asked shape: `docs/diagnostics/question_sensitivity.py`), because carrying
/// the asked kind to the answer only pays once a later head selects patches by it, and vice versa.
pub fn scene_text(s: &SynthSample) -> String {
    s.meta
        .shapes
        .iter()
        .map(|x| format!("{} {}", x.color.name(), x.kind.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One training example, tokenized.
pub(crate) struct Example {
    pub(crate) ids: Vec<i64>,
    /// Whether position t's next token (t + 1) is supervised: the answer tokens and EOS of every turn.
    pub(crate) supervised: Vec<bool>,
    /// Empty for a text-scene example.
    pub(crate) pixels: Vec<f32>,
    /// Position of the first image token (0 and unused for a text-scene example).
    pub(crate) image_start: usize,
    /// (query position, evidence patches) for the first turn's answer tokens that have evidence
    /// ([`attend::answer_token_evidence`]).
    pub(crate) evidence: Vec<(usize, Vec<usize>)>,
    /// (last prompt position, class of the shape kind the question names), for the question probe.
    pub(crate) asked: Option<(usize, i64)>,
    /// (position of the question's shape word, the answer's first token), for the early answer.
    pub(crate) early_answer: Option<(usize, i64)>,
    /// (answer query position, position of the question's shape word), the second hop of
    /// [`TrainConfig::attend_via_shape_word`].
    pub(crate) reads_shape_word: Option<(usize, usize)>,
}

/// Further questions about the same image, answered from the generator's ground truth, phrased exactly
/// as the generator phrases them: presence of each shape kind, the colour of each kind drawn once, the
/// number of circles when there are some. Asking several questions about one image gives the decoder
/// the contrast it needs to condition on the question (same image, different question, different
/// answer) at the cost of a few tokens instead of a new image.
fn extra_turns(s: &SynthSample, max: usize) -> Vec<(String, String)> {
    use horizon_data::synthetic::ShapeKind;
    let m = &s.meta;
    let mut turns = Vec::new();
    for kind in ShapeKind::ALL {
        let of_kind: Vec<_> = m.shapes.iter().filter(|x| x.kind == kind).collect();
        turns.push((
            format!("Is there a {} in the image?", kind.name()),
            if of_kind.is_empty() { "no" } else { "yes" }.to_string(),
        ));
        if of_kind.len() == 1 {
            turns.push((
                format!("What color is the {}?", kind.name()),
                of_kind[0].color.name().to_string(),
            ));
        }
    }
    turns.extend(circle_count_turn(s));
    turns.retain(|(q, _)| *q != s.question);
    // A fixed, sample-dependent order so that every kind of question lands in the first `max` turns.
    let h =
        s.id.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let n = turns.len().max(1);
    turns.rotate_left((h as usize) % n);
    turns.truncate(max);
    turns
}

/// The count_circles question about this image, as the generator phrases it, with its answer; `None`
/// when the image has no circle (the generator never asks for a count of zero).
fn circle_count_turn(s: &SynthSample) -> Option<(String, String)> {
    let circles = s
        .meta
        .shapes
        .iter()
        .filter(|x| x.kind == horizon_data::synthetic::ShapeKind::Circle)
        .count();
    (circles > 0).then(|| {
        (
            "How many circles are there in the image?".to_string(),
            circles.to_string(),
        )
    })
}

pub(crate) fn encode_example(
    tok: &tokenizers::Tokenizer,
    image_proc: &ClipImageProcessorConfig,
    num_image_tokens: usize,
    s: &SynthSample,
    cfg: &TrainConfig,
    text_scene: bool,
) -> Result<Example> {
    let (extra, patch_size) = (cfg.samples.extra_turns, cfg.spec.patch_size as u32);
    let visual = if text_scene {
        scene_text(s)
    } else {
        "<image>".repeat(num_image_tokens)
    };
    let prompt = if cfg.samples.question_first {
        format!("USER: {}\n<image> ASSISTANT:", s.question)
    } else {
        prompt_text(&s.question)
    }
    .replacen("<image>", &visual, 1);
    let mut ids: Vec<i64> = tok
        .encode(prompt, true)
        .map_err(|e| anyhow!("tokenizing a prompt: {e}"))?
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    let mut supervised = vec![false; ids.len()];
    let image_start = match ids.iter().position(|&i| i == tokenizer::IMAGE.1 as i64) {
        Some(p) => p,
        None if text_scene => 0,
        None => bail!("the prompt has no image token"),
    };
    if text_scene && ids.contains(&(tokenizer::UNK.1 as i64)) {
        bail!(
            "the scene text of {} has a token outside the vocabulary",
            s.id
        );
    }
    // The question's shape word: the last prompt token that names a shape kind (singular or plural).
    let shape_word_ids: Vec<i64> = horizon_data::synthetic::ShapeKind::ALL
        .iter()
        .flat_map(|k| {
            [
                format!("\u{2581}{}", k.name()),
                format!("\u{2581}{}s", k.name()),
            ]
        })
        .filter_map(|w| tok.token_to_id(&w).map(|i| i as i64))
        .collect();
    let shape_word = ids.iter().rposition(|i| shape_word_ids.contains(i));
    let encode = |text: &str| -> Result<Vec<i64>> {
        let enc = tok
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        if enc.get_ids().contains(&tokenizer::UNK.1) {
            bail!("{text:?} has a token outside the vocabulary");
        }
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    };
    let mut push_answer = |ids: &mut Vec<i64>, answer: &str| -> Result<()> {
        // Position t predicts t + 1: the position before the answer predicts its first token.
        let start = ids.len();
        ids.extend(encode(answer)?);
        ids.push(tokenizer::EOS.1 as i64);
        supervised.resize(ids.len(), false);
        for flag in &mut supervised[start - 1..ids.len() - 1] {
            *flag = true;
        }
        Ok(())
    };
    let answer_start = ids.len();
    push_answer(&mut ids, &s.answer)?;
    let early_answer = shape_word
        .filter(|&p| p >= image_start && !text_scene)
        .map(|p| (p, ids[answer_start]));
    // Answer token k is predicted at position answer_start - 1 + k (EOS has no evidence).
    let n_answer = ids.len() - 1 - answer_start;
    let evidence = if text_scene {
        Vec::new()
    } else {
        attend::answer_token_evidence(s, n_answer, patch_size)
    };
    let from_word =
        cfg.decoder.attend_via_shape_word && s.category.kind() == synthetic::TaskKind::Coarse;
    let evidence = evidence
        .into_iter()
        .enumerate()
        .filter_map(|(k, e)| {
            let query = if from_word {
                shape_word.filter(|&p| p > image_start)?
            } else {
                answer_start - 1 + k
            };
            e.map(|e| (query, e))
        })
        .collect();
    // Later turns follow the llava-hf multi-turn layout: `... ASSISTANT: {a}</s>USER: {q} ASSISTANT:`.
    let count_turn = (cfg.samples.count_turn
        && !text_scene
        && s.category.kind() == synthetic::TaskKind::Coarse
        && s.category != Category::CountCircles)
        .then(|| circle_count_turn(s))
        .flatten();
    for (q, a) in extra_turns(s, extra).into_iter().chain(count_turn) {
        ids.extend(encode(&format!("USER: {q} ASSISTANT:"))?);
        push_answer(&mut ids, &a)?;
    }
    supervised.resize(ids.len(), false);
    let pixels = if text_scene {
        Vec::new()
    } else {
        clip_preprocess(&s.image, image_proc, ResampleOrder::Pillow12)?.data
    };
    Ok(Example {
        ids,
        supervised,
        pixels,
        image_start,
        evidence,
        asked: asked_kind(&s.question).map(|k| (answer_start - 1, k)),
        early_answer,
        reads_shape_word: shape_word
            .filter(|&p| from_word && p > image_start)
            .map(|p| (answer_start - 1, p)),
    })
}

pub(crate) fn image_processor_json(spec: &SmallModelSpec) -> serde_json::Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true, "size": {"shortest_edge": spec.image_size},
        "resample": 3, "do_center_crop": true,
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true,
    })
}

/// Samples for step `step`: categories drawn with the fine tasks weighted, indices unique per step.
pub(crate) fn batch_samples(cfg: &TrainConfig, step: usize) -> Result<Vec<SynthSample>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        cfg.schedule.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let gen = GenConfig::default()
        .with_image_size(cfg.spec.image_size as u32)
        .with_glyphs(1, cfg.glyphs_at(step));
    let decoder_phase = step >= cfg.stage.vision_stage_steps;
    let weights: Vec<f64> = Category::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let fine = c.kind() == synthetic::TaskKind::Fine;
            match (&cfg.samples.decoder_category_weights, decoder_phase) {
                _ if fine && step < cfg.fine_start() => 0.0,
                (Some(w), true) => w[i],
                _ if !fine => 1.0,
                (_, false) => cfg
                    .stage
                    .vision_stage_fine_weight
                    .unwrap_or(cfg.samples.fine_weight),
                (_, true) => cfg.samples.fine_weight,
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    (0..cfg.schedule.batch_size)
        .map(|i| {
            let mut x = rng.gen::<f64>() * total;
            let mut cat = Category::ALL[0];
            for (c, w) in Category::ALL.iter().zip(&weights) {
                if x < *w {
                    cat = *c;
                    break;
                }
                x -= w;
            }
            // Training indices live far from the bundled test split's (which start at 0).
            let index = 1_000_000_000 + (step * cfg.schedule.batch_size + i) as u64;
            synthetic::generate(&gen, cat, cfg.schedule.seed, index)
        })
        .collect()
}

/// Which samples of step `step` are shown as a text scene instead of an image: coarse ones, each with
/// probability `text_scene_fraction` (seeded by the run's seed and the step).
pub(crate) fn text_scene_flags(
    cfg: &TrainConfig,
    step: usize,
    samples: &[SynthSample],
) -> Vec<bool> {
    use rand::{Rng, SeedableRng};
    if cfg.samples.text_scene_fraction <= 0.0 {
        return vec![false; samples.len()];
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        cfg.schedule.seed ^ 0x5ce9e ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    samples
        .iter()
        .map(|s| {
            let draw = rng.gen::<f64>();
            s.category.kind() == synthetic::TaskKind::Coarse
                && draw < cfg.samples.text_scene_fraction
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::question_probe_layer;
    use horizon_data::synthetic::ShapeKind;

    /// The vision stage samples the reading categories at its own weight, the decoder phase at
    /// `fine_weight`; before `fine_start` there are none in either.
    #[test]
    fn vision_stage_samples_reading_at_its_own_weight() {
        let mut cfg = TrainConfig::new(SmallModelSpec::small(), 100, 0);
        cfg.schedule.batch_size = 64;
        cfg.samples.coarse_only_fraction = 0.1;
        cfg.stage.vision_stage_steps = 50;
        cfg.samples.fine_weight = 1.0;
        let fine_share = |cfg: &TrainConfig, step: usize| {
            let batch = batch_samples(cfg, step).unwrap();
            let fine = batch
                .iter()
                .filter(|s| s.category.kind() == synthetic::TaskKind::Fine)
                .count();
            fine as f64 / batch.len() as f64
        };
        cfg.stage.vision_stage_fine_weight = Some(0.0);
        assert_eq!(fine_share(&cfg, 5), 0.0);
        assert_eq!(fine_share(&cfg, 30), 0.0);
        assert!(fine_share(&cfg, 60) > 0.0);
        // Weight 100 against the three coarse categories at 1: reading is ~98.5% of the stage.
        cfg.stage.vision_stage_fine_weight = Some(100.0);
        assert_eq!(fine_share(&cfg, 5), 0.0);
        assert!(fine_share(&cfg, 30) > 0.9);
        let decoder = fine_share(&cfg, 60);
        assert!(decoder > 0.0 && decoder < 0.9, "{decoder}");
        // Without it the stage uses fine_weight, as before the option existed.
        cfg.stage.vision_stage_fine_weight = None;
        let mut plain = cfg.clone();
        plain.stage.vision_stage_steps = 0;
        let cats = |cfg: &TrainConfig| -> Vec<Category> {
            batch_samples(cfg, 30)
                .unwrap()
                .iter()
                .map(|s| s.category)
                .collect()
        };
        assert_eq!(cats(&cfg), cats(&plain));
    }

    /// `decoder_category_weights` set the mix after the vision stage only, and never bring the
    /// reading categories in before `fine_start`.
    #[test]
    fn decoder_category_weights_set_the_mix_after_the_stage() {
        let mut cfg = TrainConfig::new(SmallModelSpec::small(), 100, 0);
        cfg.schedule.batch_size = 64;
        cfg.samples.coarse_only_fraction = 0.1;
        cfg.stage.vision_stage_steps = 50;
        let cats = |cfg: &TrainConfig, step: usize| -> Vec<Category> {
            batch_samples(cfg, step)
                .unwrap()
                .iter()
                .map(|s| s.category)
                .collect()
        };
        let plain = cfg.clone();
        cfg.samples.decoder_category_weights = Some(vec![0.0, 0.0, 1.0, 0.0, 0.0]);
        assert!(cats(&cfg, 60).iter().all(|&c| c == Category::CountCircles));
        // The stage keeps its own mix, sample for sample.
        assert_eq!(cats(&cfg, 30), cats(&plain, 30));
        assert!(cats(&cfg, 30).iter().any(|&c| c != Category::CountCircles));
        // Reading weighted heavily, but before fine_start (step 10) the decoder sees coarse only.
        cfg.stage.vision_stage_steps = 5;
        cfg.samples.decoder_category_weights = Some(vec![1.0, 0.0, 0.0, 100.0, 0.0]);
        assert!(cats(&cfg, 7).iter().all(|&c| c == Category::ShapeColor));
        let later = cats(&cfg, 20);
        let read = later.iter().filter(|&&c| c == Category::ReadText).count();
        assert!(
            read > 55
                && later
                    .iter()
                    .all(|&c| matches!(c, Category::ShapeColor | Category::ReadText))
        );
    }

    /// With `count_turn`, a colour or presence sample whose image has circles gets the circle count as
    /// a second supervised turn, answered right; count and reading samples and circle-free images
    /// are encoded exactly as without it.
    #[test]
    fn count_turn_asks_the_circle_count_of_shape_images() {
        let gen = GenConfig::default();
        let tok = build_vocab_tokenizer(&gen, 0, false).unwrap();
        let spec = SmallModelSpec::small();
        let proc = ClipImageProcessorConfig::from_json_str(
            &image_processor_json(&spec).to_string(),
            "preprocessor_config.json",
        )
        .unwrap();
        let plain = TrainConfig::new(spec, 10, 0);
        let mut with_turn = plain.clone();
        with_turn.samples.count_turn = true;
        let (mut asked, mut unasked) = (0, 0);
        for cat in Category::ALL {
            for i in 0..20 {
                let s = synthetic::generate(&gen, cat, 5, i).unwrap();
                let a = encode_example(&tok, &proc, 64, &s, &plain, false).unwrap();
                let b = encode_example(&tok, &proc, 64, &s, &with_turn, false).unwrap();
                assert_eq!(b.ids[..a.ids.len()], a.ids[..]);
                let circles = s
                    .meta
                    .shapes
                    .iter()
                    .filter(|x| x.kind == ShapeKind::Circle)
                    .count();
                let gets_turn =
                    matches!(cat, Category::ShapeColor | Category::ShapeExists) && circles > 0;
                if !gets_turn {
                    assert_eq!((b.ids.len(), &b.supervised), (a.ids.len(), &a.supervised));
                    unasked += 1;
                    continue;
                }
                asked += 1;
                let turn_ids: Vec<u32> = b.ids[a.ids.len()..].iter().map(|&i| i as u32).collect();
                let turn = tok.decode(&turn_ids, false).unwrap();
                assert!(
                    turn.contains("How many circles are there in the image?"),
                    "{turn}"
                );
                // The supervised tokens of the new turn decode to the count and EOS.
                let supervised: Vec<u32> = (a.ids.len()..b.ids.len() - 1)
                    .filter(|&t| b.supervised[t])
                    .map(|t| b.ids[t + 1] as u32)
                    .collect();
                let answer = tok.decode(&supervised, true).unwrap();
                assert_eq!(answer.trim(), circles.to_string());
                assert_eq!(*supervised.last().unwrap(), tokenizer::EOS.1);
            }
        }
        assert!(asked > 5 && unasked > 5, "{asked} {unasked}");
    }

    #[test]
    fn asked_kind_names_the_shape_of_every_coarse_question() {
        let gen = GenConfig::default();
        for i in 0..30 {
            let s = synthetic::generate(&gen, Category::ShapeColor, 3, i).unwrap();
            let target = s.meta.shapes[s.meta.target.unwrap()].kind;
            let k = asked_kind(&s.question).unwrap() as usize;
            assert_eq!(ShapeKind::ALL[k], target, "{}", s.question);
            let s = synthetic::generate(&gen, Category::ShapeExists, 3, i).unwrap();
            let k = asked_kind(&s.question).unwrap() as usize;
            assert!(s.question.contains(ShapeKind::ALL[k].name()));
        }
        let circle = ShapeKind::ALL
            .iter()
            .position(|k| *k == ShapeKind::Circle)
            .unwrap() as i64;
        assert_eq!(
            asked_kind("How many circles are there in the image?"),
            Some(circle)
        );
        assert_eq!(asked_kind("What is the text in the image?"), None);
        assert_eq!(asked_kind("Which character is inside the red box?"), None);
        assert_eq!(question_probe_layer(8), 2);
        assert_eq!(question_probe_layer(12), 3);
        assert_eq!(question_probe_layer(2), 1);
    }

    /// The scene text names every drawn shape once, as colour then kind, so a shape_color question is
    /// answered by the colour word right before the asked kind.
    #[test]
    fn scene_text_answers_the_question() {
        let gen = GenConfig::default();
        for i in 0..50 {
            let s = synthetic::generate(&gen, Category::ShapeColor, 3, i).unwrap();
            let scene = scene_text(&s);
            let items: Vec<&str> = scene.split(", ").collect();
            assert_eq!(items.len(), s.meta.shapes.len());
            let asked = s
                .question
                .trim_start_matches("What color is the ")
                .trim_end_matches('?');
            let item = items
                .iter()
                .find(|x| x.ends_with(&format!(" {asked}")))
                .expect("the asked shape is described");
            assert_eq!(item.split(' ').next().unwrap(), s.answer);
        }
    }

    /// Where the early answer and the two-hop attention supervision look, checked against the
    /// tokens themselves: the early answer sits on the question's shape word and predicts the
    /// answer's first token; with `attend_via_shape_word` the evidence query is that word and the
    /// answer's query reads it; the reading tasks keep their answer-position queries.
    #[test]
    fn shape_word_supervision_points_at_the_shape_word() {
        let gen = GenConfig::default();
        let tok = build_vocab_tokenizer(&gen, 0, false).unwrap();
        let spec = SmallModelSpec::small();
        let proc = ClipImageProcessorConfig::from_json_str(
            &image_processor_json(&spec).to_string(),
            "preprocessor_config.json",
        )
        .unwrap();
        let n_img = 64;
        let token = |id: i64| tok.id_to_token(id as u32).unwrap();
        let plain_cfg = TrainConfig::new(spec.clone(), 10, 0);
        let mut via_cfg = plain_cfg.clone();
        via_cfg.decoder.attend_via_shape_word = true;
        let mut first_cfg = plain_cfg.clone();
        first_cfg.samples.question_first = true;
        for cat in [
            Category::ShapeColor,
            Category::ShapeExists,
            Category::CountCircles,
        ] {
            for i in 0..10 {
                let s = synthetic::generate(&gen, cat, 3, i).unwrap();
                let e = encode_example(&tok, &proc, n_img, &s, &via_cfg, false).unwrap();
                let (word, answer) = e.early_answer.expect("a shape word");
                let w = token(e.ids[word]);
                let kind = ShapeKind::ALL[asked_kind(&s.question).unwrap() as usize].name();
                assert!(w == format!("\u{2581}{kind}") || w == format!("\u{2581}{kind}s"));
                assert_eq!(token(answer).trim_start_matches('\u{2581}'), s.answer);
                let (query, read) = e.reads_shape_word.unwrap();
                assert_eq!(read, word);
                assert_eq!(token(e.ids[query + 1]), token(answer));
                assert!(e.evidence.iter().all(|(q, _)| *q == word));
                // Without the flag the evidence is asked for at the answer.
                let plain = encode_example(&tok, &proc, n_img, &s, &plain_cfg, false).unwrap();
                assert!(plain.reads_shape_word.is_none());
                assert!(plain.evidence.iter().all(|(q, _)| *q == query));
            }
        }
        let s = synthetic::generate(&gen, Category::ReadText, 3, 0).unwrap();
        let e = encode_example(&tok, &proc, n_img, &s, &via_cfg, false).unwrap();
        assert!(e.early_answer.is_none() && e.reads_shape_word.is_none());
        assert!(e.evidence.iter().all(|(q, _)| *q > e.image_start + n_img));
        // Question first: the question's tokens come before the image, the answer after it.
        let s = synthetic::generate(&gen, Category::ShapeColor, 3, 0).unwrap();
        let e = encode_example(&tok, &proc, n_img, &s, &first_cfg, false).unwrap();
        let first_word = e
            .ids
            .iter()
            .position(|&i| token(i) == "\u{2581}color")
            .unwrap();
        assert!(first_word < e.image_start);
        assert!(e.early_answer.is_none());
    }
}
