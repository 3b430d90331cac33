//! Parity of LLaVA-NeXT (anyres) with HF transformers 5.17.0 on the tiny random fixtures of
//! fixtures/make_llava_next_fixtures.py: input ids and pixel values of every tile identical, the
//! packed image features (pack_image_features: base grid, unpadded high-resolution grid, newlines)
//! and the logits within the f32 tolerance, 16 greedy tokens identical. Square, wide, tall and
//! small images (four pinpoints, both unpadding directions), a Mistral decoder, a ChatML
//! (llava-v1.6-34b-hf) checkpoint, and a checkpoint written by transformers 5.17's save_pretrained.
//! `--template auto` is held to HF applying each checkpoint kind's published chat template.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::generate::{generate_greedy, GenerationConfig};
use horizon_runner::parity::{f32_logits_tolerance, max_abs_diff};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::{Intervention, VlModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llava_next")
}

fn check_case(name: &str) {
    let dir = fixtures();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("reference/{name}.json"))).unwrap(),
    )
    .unwrap();
    let t: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join(format!("reference/{name}.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    let model_dir = dir.join(meta["model_dir"].as_str().unwrap());
    let model = VlModel::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.model_type(), "llava_next");
    let processor = Processor::load(&model_dir, &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            meta["question"].as_str().unwrap(),
            &dir.join(meta["image"].as_str().unwrap()),
            PromptTemplate::Auto,
        )
        .unwrap();
    assert_eq!(
        processor
            .prompt_text(
                meta["question"].as_str().unwrap(),
                PromptTemplate::Auto,
                true
            )
            .unwrap(),
        meta["prompt"].as_str().unwrap(),
        "{name}: --template auto"
    );

    // Token ids (the processor's count of image tokens) and pixel values are exact.
    assert!(
        inputs.input_ids.squeeze_dim(0).equal(&t["input_ids"]),
        "{name}: input ids differ"
    );
    let pv = inputs.pixel_values.as_ref().unwrap();
    assert_eq!(pv.size(), t["pixel_values"].size(), "{name}: tiles");
    assert!(
        pv.equal(&t["pixel_values"]),
        "{name}: pixel values differ (max {})",
        max_abs_diff(pv, &t["pixel_values"])
    );
    let sizes: Vec<i64> = Vec::try_from(&t["image_sizes"]).unwrap();
    assert_eq!(inputs.image_grid_thw, vec![[1, sizes[0], sizes[1]]]);
    let n_image = meta["num_image_tokens"].as_u64().unwrap() as usize;
    assert_eq!(inputs.visual.positions.len(), n_image);

    // The packed features: one row per image token, base first, newlines where HF puts them.
    let VlModel::LlavaNext(m) = &model else {
        unreachable!()
    };
    let layout = m.layout(sizes[0] as u32, sizes[1] as u32).unwrap();
    let hw = |k: &str| {
        let v: Vec<u32> = serde_json::from_value(meta[k].clone()).unwrap();
        (v[0], v[1])
    };
    assert_eq!(layout.best_resolution, hw("best_resolution_hw"));
    assert_eq!(layout.tile_grid, hw("tile_grid_hw"));
    assert_eq!(layout.highres_grid, hw("highres_grid_hw"));
    assert_eq!(layout.num_tokens(), n_image);
    let features = tch::no_grad(|| m.image_features(pv, sizes[0] as u32, sizes[1] as u32))
        .unwrap()
        .to_kind(Kind::Float);
    let d = max_abs_diff(&features, &t["image_features"]);
    eprintln!("{name}: max |image features - HF| = {d:e}");
    assert!(
        d <= f32_logits_tolerance(&t["image_features"]),
        "{name}: packed image features differ by {d}"
    );

    let out = model
        .prefill(&inputs, &mut Intervention::none(), None, None)
        .unwrap();
    let logits = model
        .lm_head(&out.hidden)
        .squeeze_dim(0)
        .to_kind(Kind::Float);
    let d = max_abs_diff(&logits, &t["logits"]);
    let tol = f32_logits_tolerance(&t["logits"]);
    eprintln!("{name}: max |logits - HF| = {d:e} (tolerance {tol:e})");
    assert!(d <= tol, "{name}: logits differ by {d} (tolerance {tol})");

    let reference: Vec<i64> = Vec::try_from(&t["generated_ids"]).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 16,
        eos_token_ids: processor.eos_token_ids().to_vec(),
    };
    let generated = generate_greedy(&model, &inputs, &mut Intervention::none(), &config).unwrap();
    assert_eq!(generated, reference, "{name}: greedy tokens differ from HF");
}

#[test]
fn square_image_on_a_2x2_grid_matches_hf() {
    check_case("square");
}

#[test]
fn wide_image_unpadded_by_columns_matches_hf() {
    check_case("wide");
}

#[test]
fn tall_image_unpadded_by_rows_matches_hf() {
    check_case("tall");
}

#[test]
fn small_upscaled_image_matches_hf() {
    check_case("small");
}

#[test]
fn mistral_decoder_matches_hf() {
    check_case("mistral_wide");
}

/// The checkpoint transformers 5.17's `save_pretrained` wrote (image processor inside
/// `processor_config.json`).
#[test]
fn hf5_saved_checkpoint_matches_hf() {
    check_case("hf5_tall");
}

/// A config naming a decoder the family does not run is a one-line error naming the field.
#[test]
fn unsupported_text_model_is_refused_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("models/llava-next-tiny");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let cfg = tmp.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["text_config"]["model_type"] = "gemma".into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let err = VlModel::load(tmp.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("text_config.model_type") && err.contains("gemma"),
        "{err}"
    );
}

/// What 5.17 `save_pretrained` writes for a model built from its config: the CLIP tower as
/// `vision_tower.embeddings.*` / `vision_tower.encoder.*`, without `vision_model.`.
#[test]
fn hf5_fresh_saved_checkpoint_matches_hf() {
    check_case("hf5_fresh_small");
}

/// The checkpoint with transformers 5.x's in-memory names (`model.vision_tower.*`,
/// `model.image_newline`, `model.language_model.*`, `lm_head.*`) loads to bit-equal logits.
#[test]
fn module_tree_names_load_to_equal_logits() {
    let src = fixtures().join("models/llava-next-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let mut renamed = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            for (k, v) in Tensor::read_safetensors(e.path()).unwrap() {
                let k = if k == "image_newline" {
                    "model.image_newline".to_string()
                } else if let Some(r) = k.strip_prefix("vision_tower.vision_model.") {
                    format!("model.vision_tower.{r}")
                } else if let Some(r) = k.strip_prefix("multi_modal_projector.") {
                    format!("model.multi_modal_projector.{r}")
                } else if let Some(r) = k.strip_prefix("language_model.model.") {
                    format!("model.language_model.{r}")
                } else if let Some(r) = k.strip_prefix("language_model.lm_head.") {
                    format!("lm_head.{r}")
                } else {
                    panic!("unexpected tensor {k}")
                };
                renamed.push((k, v));
            }
        } else if name != "model.safetensors.index.json" {
            std::fs::copy(e.path(), tmp.path().join(&name)).unwrap();
        }
    }
    let refs: Vec<(&str, &Tensor)> = renamed.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&refs, tmp.path().join("model.safetensors")).unwrap();
    let logits = |dir: &Path| {
        let model = VlModel::load(dir, Device::Cpu, Kind::Float).unwrap();
        let processor = Processor::load(dir, &model).unwrap();
        let inputs = processor
            .prepare(
                &model,
                "What color is the circle?",
                &fixtures().join("images/square.png"),
                PromptTemplate::Auto,
            )
            .unwrap();
        let out = model
            .prefill(&inputs, &mut Intervention::none(), None, None)
            .unwrap();
        model.lm_head(&out.hidden).to_kind(Kind::Float)
    };
    assert!(logits(tmp.path()).equal(&logits(&src)));
}

/// llava-v1.6-34b-hf's layout: a Llama decoder with ChatML's tokens and the published ChatML chat
/// template in `chat_template.json`; the reference prompt is HF's `apply_chat_template`.
#[test]
fn chatml_checkpoint_matches_hf() {
    check_case("chatml_tall");
}

/// A copy of the fixture checkpoint `name` in a temporary directory, without the files `drop`.
fn copy_checkpoint(name: &str, drop: &[&str]) -> tempfile::TempDir {
    let src = fixtures().join("models").join(name);
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if !drop.contains(&e.file_name().to_string_lossy().as_ref()) {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    tmp
}

/// `--template auto` on `dir`: the prompt, the input ids with the image and the ids of the
/// text-only prompt equal HF's (`LlavaNextProcessor.apply_chat_template` of the published template,
/// then the processor) from reference/chat_templates.json.
fn check_auto_against_hf(dir: &Path, case: &serde_json::Value, what: &str) {
    let model = VlModel::load(dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(dir, &model).unwrap();
    let q = case["question"].as_str().unwrap();
    let ids = |v: &serde_json::Value| -> Vec<i64> { serde_json::from_value(v.clone()).unwrap() };
    assert_eq!(
        processor
            .prompt_text(q, PromptTemplate::Auto, true)
            .unwrap(),
        case["prompt"].as_str().unwrap(),
        "{what}: prompt"
    );
    let inputs = processor
        .prepare(
            &model,
            q,
            &fixtures().join(case["image"].as_str().unwrap()),
            PromptTemplate::Auto,
        )
        .unwrap();
    let got: Vec<i64> = Vec::try_from(inputs.input_ids.squeeze_dim(0)).unwrap();
    assert_eq!(got, ids(&case["input_ids"]), "{what}: input ids");
    assert_eq!(
        processor
            .prompt_text(q, PromptTemplate::Auto, false)
            .unwrap(),
        case["text_only_prompt"].as_str().unwrap(),
        "{what}: text-only prompt"
    );
    let text = processor
        .prepare_text(&model, q, PromptTemplate::Auto)
        .unwrap();
    let got: Vec<i64> = Vec::try_from(text.input_ids.squeeze_dim(0)).unwrap();
    assert_eq!(
        got,
        ids(&case["text_only_input_ids"]),
        "{what}: text-only ids"
    );
}

/// Each kind of published checkpoint under `--template auto` gets the ids HF gets from the chat
/// template llava-hf ships with it (Vicuna, Mistral, ChatML): once by the checkpoint's decoder and
/// tokenizer (no chat template in the directory), once by the template carried in
/// `chat_template.json`, `chat_template.jinja` and `tokenizer_config.json`.
#[test]
fn auto_template_ids_match_hf_applying_the_published_template() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/chat_templates.json")).unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let kinds: Vec<&str> = cases.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["vicuna", "mistral", "chatml"]);
    for case in cases {
        let name = case["model_dir"]
            .as_str()
            .unwrap()
            .strip_prefix("models/")
            .unwrap();
        let kind = case["kind"].as_str().unwrap();
        let template = case["chat_template"].as_str().unwrap();
        // By decoder and tokenizer alone.
        let bare = copy_checkpoint(name, &["chat_template.json"]);
        check_auto_against_hf(bare.path(), case, &format!("{kind}, no chat template"));
        // By the carried template, in each place a checkpoint keeps it.
        let json = copy_checkpoint(name, &["chat_template.json"]);
        std::fs::write(
            json.path().join("chat_template.json"),
            serde_json::json!({ "chat_template": template }).to_string(),
        )
        .unwrap();
        check_auto_against_hf(json.path(), case, &format!("{kind}, chat_template.json"));
        let jinja = copy_checkpoint(name, &["chat_template.json"]);
        std::fs::write(jinja.path().join("chat_template.jinja"), template).unwrap();
        check_auto_against_hf(jinja.path(), case, &format!("{kind}, chat_template.jinja"));
        let tok = copy_checkpoint(name, &["chat_template.json"]);
        let path = tok.path().join("tokenizer_config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg["chat_template"] = template.into();
        std::fs::write(&path, cfg.to_string()).unwrap();
        check_auto_against_hf(tok.path(), case, &format!("{kind}, tokenizer_config.json"));
    }
    // The ChatML checkpoint as written, its chat_template.json the published one.
    let chatml = &cases[2];
    assert_eq!(chatml["carried_by_checkpoint"], true);
    check_auto_against_hf(
        &fixtures().join("models/llava-next-tiny-chatml"),
        chatml,
        "chatml, as published",
    );
}

/// The template a checkpoint carries decides over its decoder: the Vicuna fixture carrying the
/// Mistral template gets `[INST]`.
#[test]
fn carried_chat_template_decides_over_the_decoder() {
    let tmp = copy_checkpoint("llava-next-tiny", &[]);
    std::fs::write(
        tmp.path().join("chat_template.json"),
        r#"{"chat_template": "{% for message in messages %}{{ '[INST] ' }}{% endfor %}{{ ' [/INST]' }}"}"#,
    )
    .unwrap();
    let model = VlModel::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(tmp.path(), &model).unwrap();
    assert_eq!(
        processor
            .prompt_text("Why?", PromptTemplate::Auto, true)
            .unwrap(),
        "[INST] <image>\nWhy? [/INST]"
    );
}

/// A carried chat template auto cannot tell, or a ChatML one without ChatML's tokens, is a one-line
/// error naming the file and `--template auto`; `--template raw` and `llava-hf` still run.
#[test]
fn unrecognised_chat_template_is_a_clear_error() {
    let unknown = copy_checkpoint("llava-next-tiny", &[]);
    std::fs::write(
        unknown.path().join("chat_template.jinja"),
        "{% for message in messages %}<start_of_turn>{{ message['role'] }}{% endfor %}",
    )
    .unwrap();
    let both = copy_checkpoint("llava-next-tiny", &[]);
    std::fs::write(
        both.path().join("chat_template.json"),
        r#"{"chat_template": "{{ '[INST]' }}{{ 'ASSISTANT:' }}"}"#,
    )
    .unwrap();
    let no_tokens = copy_checkpoint("llava-next-tiny", &[]);
    std::fs::copy(
        fixtures().join("models/llava-next-tiny-chatml/chat_template.json"),
        no_tokens.path().join("chat_template.json"),
    )
    .unwrap();
    for (dir, file, says) in [
        (&unknown, "chat_template.jinja", "none of llava-hf's"),
        (&both, "chat_template.json", "none of llava-hf's"),
        (&no_tokens, "chat_template.json", "has no <|im_start|>"),
    ] {
        let model = VlModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let processor = Processor::load(dir.path(), &model).unwrap();
        let err = processor
            .prompt_text("What is this?", PromptTemplate::Auto, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--template auto: ")
                && err.contains(file)
                && err.contains(says)
                && !err.contains('\n'),
            "{err}"
        );
        let err = processor
            .prepare(
                &model,
                "What is this?",
                &fixtures().join("images/square.png"),
                PromptTemplate::Auto,
            )
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(file), "{err}");
        let raw = "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            processor
                .prompt_text(raw, PromptTemplate::Raw, true)
                .unwrap(),
            raw
        );
        assert_eq!(
            processor
                .prompt_text("Why?", PromptTemplate::LlavaHf, true)
                .unwrap(),
            "USER: <image>\nWhy? ASSISTANT:"
        );
    }
    // No chat template, and a tokenizer with <|im_start|> but no <|im_end|>.
    let half = copy_checkpoint("llava-next-tiny", &[]);
    let path = half.path().join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 502, "content": "<|im_start|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    std::fs::write(&path, tok.to_string()).unwrap();
    let model = VlModel::load(half.path(), Device::Cpu, Kind::Float).unwrap();
    let err = Processor::load(half.path(), &model)
        .unwrap()
        .prompt_text("Why?", PromptTemplate::Auto, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--template auto: ") && err.contains("tokenizer.json"),
        "{err}"
    );

    let bad = copy_checkpoint("llava-next-tiny", &[]);
    std::fs::write(bad.path().join("chat_template.json"), "{not json").unwrap();
    let model = VlModel::load(bad.path(), Device::Cpu, Kind::Float).unwrap();
    let err = Processor::load(bad.path(), &model)
        .unwrap()
        .prompt_text("Why?", PromptTemplate::Auto, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("chat_template.json"), "{err}");
}
