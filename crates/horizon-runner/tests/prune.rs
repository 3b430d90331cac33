//! Pruning methods against an independent implementation: `fixtures/make_prune_fixtures.py` writes each
//! method's selection from its published algorithm (HF transformers 5.17, eager attention where a
//! method reads attention) and HF's logits under the same cut, on the tiny models of both families.
//! Held to it: the kept visual tokens of every stage, the visual tokens each layer processed, and the
//! pruned logits (f32, 1e-4). Also: a spec that keeps everything is the plain model bit for bit,
//! random stages are reproducible by seed, pruned decoding with the cache equals recomputation under
//! the same keep-sets, and the cache holds only the kept tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::decoder::KvCache;
use horizon_runner::generate::{greedy_token, GenerationConfig};
use horizon_runner::parity::max_abs_diff;
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::prune::methods::python_set_order;
use horizon_runner::prune::{
    generate_pruned, generate_pruned_with_logits, prefill_pruned, prefill_pruned_with_layer_inputs,
    pruned_decoder_inputs, sample_seed, DartPivotOrder, PruneOptions, PruneSpec, PrunedPrefill,
};
use horizon_runner::{Intervention, ModelInputs, PositionPolicy, VisualTokens, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Family {
    meta: serde_json::Value,
    reference: HashMap<String, Tensor>,
    model: VlModel,
    inputs: ModelInputs,
}

fn family(name: &str) -> Family {
    let dir = root().join("fixtures").join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/prune.json")).unwrap())
            .unwrap();
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference/prune.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let model_dir = dir.join(meta["model_dir"].as_str().unwrap());
    let model = VlModel::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(&model_dir, &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            meta["question"].as_str().unwrap(),
            &dir.join(meta["image"].as_str().unwrap()),
            PromptTemplate::Auto,
        )
        .unwrap();
    assert!(inputs
        .input_ids
        .squeeze_dim(0)
        .equal(&reference["input_ids"]));
    Family {
        meta,
        reference,
        model,
        inputs,
    }
}

fn last_logits(model: &VlModel, run: &PrunedPrefill) -> Tensor {
    let h = &run.output.hidden;
    model
        .lm_head(&h.narrow(1, h.size()[1] - 1, 1))
        .to_kind(Kind::Float)
        .reshape([-1])
}

fn check_against_reference(name: &str) {
    let f = family(name);
    let target = f.meta["target_token_id"].as_i64().unwrap();
    let cases = f.meta["cases"].as_object().unwrap();
    assert!(cases.len() >= 10, "{name}: {} cases", cases.len());
    for (case, c) in cases {
        let spec = PruneSpec::parse(c["spec"].as_str().unwrap()).unwrap();
        // A case may name its own answer token (info reads it), else the fixture's.
        let target = c
            .get("target_token_id")
            .and_then(|t| t.as_i64())
            .unwrap_or(target);
        let mut options = PruneOptions::default();
        if c["positions"].as_str() == Some("renumber") {
            options.positions = Some(PositionPolicy::Renumbered);
        }
        if let Some(w) = c.get("window_size").and_then(|w| w.as_u64()) {
            options.window_size = w as usize;
        }
        if let Some(t) = c.get("tau").and_then(|t| t.as_f64()) {
            options.tau = t;
        }
        if let Some(order) = c.get("dart_pivot_order").and_then(|o| o.as_str()) {
            options.dart_pivot_order = DartPivotOrder::parse(order).unwrap();
        }
        // Random cases name the run seed and the sample key; the stream is horizon's per-sample one.
        let seed = match (c.get("seed"), c.get("sample_key")) {
            (Some(seed), Some(key)) => {
                let stream = sample_seed(seed.as_u64().unwrap(), key.as_str().unwrap());
                assert_eq!(
                    stream.to_string(),
                    c["sample_seed"].as_str().unwrap(),
                    "{name} {case}: sample stream"
                );
                stream
            }
            _ => 0,
        };
        let run = prefill_pruned(
            &f.model,
            &f.inputs,
            &spec,
            &options,
            seed,
            Some(target),
            None,
        )
        .unwrap_or_else(|e| panic!("{name} {case}: {e:#}"));
        let per_layer: Vec<usize> = c["visual_per_layer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            run.counts.per_layer, per_layer,
            "{name} {case}: visual tokens per layer"
        );
        let stages = c["stages"].as_array().unwrap();
        assert_eq!(stages.len(), run.stages.len(), "{name} {case}: stages");
        for (i, (record, want)) in run.stages.iter().zip(stages).enumerate() {
            // Indices into the prompt (token-building stages have none).
            if let Some(want) = want.get("kept_visual_original") {
                let want: Vec<usize> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(
                    record.kept_visual, want,
                    "{name} {case}: stage {i} ({}) kept",
                    record.stage
                );
            }
        }
        // What a token-building first stage built (avg-pooling, VisionZip): the block and the ids.
        if let Some(want) = f.reference.get(&format!("{case}.stage0.visual_embeds")) {
            let dec = pruned_decoder_inputs(&f.model, &f.inputs, &spec, &options).unwrap();
            let first = dec.visual_positions[0] as i64;
            let block = dec
                .embeds
                .select(0, 0)
                .narrow(0, first, dec.visual_positions.len() as i64)
                .to_kind(Kind::Float);
            let d = max_abs_diff(&block, want);
            assert!(d <= 1e-5, "{name} {case}: built tokens differ by {d}");
            let ids = &f.reference[&format!("{case}.position_ids")];
            assert!(
                dec.positions.reshape(ids.size()).equal(ids),
                "{name} {case}: position ids"
            );
        }
        let logits = last_logits(&f.model, &run);
        let want = &f.reference[&format!("{case}.logits")];
        let d = max_abs_diff(&logits, want);
        assert!(d <= 1e-4, "{name} {case}: logits differ from HF by {d}");
        assert_eq!(
            greedy_token(&logits),
            c["argmax"].as_i64().unwrap(),
            "{name} {case}: argmax"
        );
    }
}

/// DART walks its pivots in the iteration order of a Python set: horizon's emulation of CPython's
/// set table gives the order Python gave for every list the fixture wrote (DART's pivot lists,
/// collisions in every table size, the last slots of a table, duplicates, long runs).
#[test]
fn python_set_order_is_cpythons() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/prune_set_order.json")).unwrap(),
    )
    .unwrap();
    let ints = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 500, "{} lists", vectors.len());
    let mut reordered = 0;
    for v in vectors {
        let (list, want) = (ints(&v["list"]), ints(&v["set_order"]));
        let mut sorted = want.clone();
        sorted.sort_unstable();
        reordered += usize::from(sorted != want);
        assert_eq!(python_set_order(&list), want, "list(set({list:?}))");
    }
    // The lists are not in sorted order by construction alone.
    assert!(reordered * 2 > vectors.len(), "{reordered} reordered");
}

#[test]
fn llava_methods_match_the_independent_implementation() {
    check_against_reference("llava");
}

#[test]
fn qwen2_5_vl_methods_match_the_independent_implementation() {
    check_against_reference("qwen2_5_vl");
}

#[test]
fn llava_next_methods_match_the_independent_implementation() {
    check_against_reference("llava_next");
}

#[test]
fn keeping_everything_is_the_plain_model_exactly() {
    for name in ["llava", "llava_next", "qwen2_5_vl"] {
        let f = family(name);
        let plain = f
            .model
            .prefill(&f.inputs, &mut Intervention::none(), None, None)
            .unwrap();
        let h = &plain.hidden;
        let plain = f
            .model
            .lm_head(&h.narrow(1, h.size()[1] - 1, 1))
            .to_kind(Kind::Float)
            .reshape([-1]);
        for spec in [
            "none",
            "fastv@2:100%",
            "random@1:100%",
            "divprune@0:100%",
            "dart@1:100%",
            // (`sparsevlm`, v1.5, keeps at most all but one, as `attn_postprocess_topk` does.)
            "sparsevlm-v2@1:100%,sparsevlm-v2@2:100%",
            // One-token windows (LLaVA-NeXT: per grid, every newline kept).
            "pooling@2:100%",
        ] {
            let spec = PruneSpec::parse(spec).unwrap();
            let run = prefill_pruned(
                &f.model,
                &f.inputs,
                &spec,
                &PruneOptions::default(),
                3,
                None,
                None,
            )
            .unwrap();
            let n = f.inputs.visual.positions.len();
            assert_eq!(
                run.counts.per_layer,
                vec![n; f.model.num_layers()],
                "{name} {spec}"
            );
            assert!(
                last_logits(&f.model, &run).equal(&plain),
                "{name} {spec}: not the plain model"
            );
        }
    }
}

#[test]
fn random_stages_are_reproducible_by_seed() {
    let f = family("llava");
    let spec = PruneSpec::parse("random@1:12,random@3:5").unwrap();
    let opts = PruneOptions::default();
    let kept = |seed: u64| -> Vec<Vec<usize>> {
        prefill_pruned(&f.model, &f.inputs, &spec, &opts, seed, None, None)
            .unwrap()
            .stages
            .into_iter()
            .map(|s| s.kept_visual)
            .collect()
    };
    let a = kept(11);
    assert_eq!(a, kept(11));
    assert_ne!(a, kept(12));
    assert_eq!(a[0].len(), 12);
    assert_eq!(a[1].len(), 5);
    assert!(
        a[1].iter().all(|p| a[0].contains(p)),
        "the second stage draws from the first"
    );
}

/// The prompt plus `generated` tokens as one longer prompt, rotary positions continuing the prompt's.
fn extended(inputs: &ModelInputs, generated: &[i64]) -> ModelInputs {
    let s = inputs.seq_len() as i64;
    let n = generated.len() as i64;
    let ids = Tensor::cat(
        &[
            &inputs.input_ids,
            &Tensor::from_slice(generated).unsqueeze(0),
        ],
        1,
    );
    let tail = Tensor::arange_start(s, s + n, (Kind::Int64, Device::Cpu)) + inputs.rope_deltas;
    let lead = inputs.position_ids.size();
    let tail = tail.view([1, n]).expand([lead[0], n], false);
    let position_ids = match lead.len() {
        2 => Tensor::cat(&[&inputs.position_ids, &tail], 1),
        _ => Tensor::cat(&[&inputs.position_ids, &tail.unsqueeze(1)], 2),
    };
    ModelInputs {
        input_ids: ids,
        pixel_values: inputs.pixel_values.as_ref().map(|p| p.shallow_clone()),
        image_grid_thw: inputs.image_grid_thw.clone(),
        visual: VisualTokens {
            positions: inputs.visual.positions.clone(),
            grid: inputs.visual.grid,
        },
        position_ids,
        rope_deltas: inputs.rope_deltas,
    }
}

#[test]
fn pruned_decoding_with_the_cache_equals_recomputation() {
    for name in ["llava", "qwen2_5_vl"] {
        let f = family(name);
        let s = f.inputs.seq_len();
        let vis = &f.inputs.visual.positions;
        for policy in [PositionPolicy::Original, PositionPolicy::Renumbered] {
            let spec = PruneSpec::parse("fastv@1:50%,random@2:3").unwrap();
            let opts = PruneOptions {
                positions: Some(policy),
                ..PruneOptions::default()
            };
            let config = GenerationConfig {
                max_new_tokens: 6,
                eos_token_ids: vec![],
            };
            let run = generate_pruned(&f.model, &f.inputs, &spec, &opts, 5, None, &config).unwrap();
            assert_eq!(run.tokens.len(), 6);
            // The same keep-sets as a static intervention, with the decoded tokens appended.
            let keep = |stage: usize, extra: std::ops::Range<usize>| -> Vec<usize> {
                (0..s)
                    .filter(|p| !vis.contains(p) || run.stages[stage].kept_visual.contains(p))
                    .chain(extra)
                    .collect()
            };
            let mut recomputed = Vec::new();
            let mut generated: Vec<i64> = Vec::new();
            for j in 0..6 {
                let longer = extended(&f.inputs, &generated);
                let appended = s..s + j;
                let mut iv = Intervention::cut_at(1, keep(0, appended.clone()))
                    .unwrap()
                    .then_cut_at(2, keep(1, appended))
                    .unwrap()
                    .with_positions(policy);
                let out = f.model.prefill(&longer, &mut iv, None, None).unwrap();
                let h = &out.hidden;
                let logits = f.model.lm_head(&h.narrow(1, h.size()[1] - 1, 1));
                let next = greedy_token(&logits);
                recomputed.push(next);
                generated.push(next);
            }
            assert_eq!(run.tokens, recomputed, "{name} {policy:?}");
            // The cache holds exactly the kept prompt tokens (and 5 decoded ones) per layer.
            let (k1, k2) = (keep(0, 0..0).len(), keep(1, 0..0).len());
            assert_eq!(run.tokens_per_layer[0], s);
            assert_eq!(run.tokens_per_layer[1], k1);
            assert_eq!(run.tokens_per_layer[2], k2);
            let mut plain = KvCache::new(f.model.num_layers());
            f.model
                .prefill(&f.inputs, &mut Intervention::none(), Some(&mut plain), None)
                .unwrap();
            let per_token = plain.bytes() / (s * f.model.num_layers());
            let cached: usize = run.tokens_per_layer.iter().map(|t| t + 5).sum();
            assert_eq!(run.kv_bytes, cached * per_token, "{name}: KV bytes");
        }
    }
}

/// The paper's Pooling (Algorithm 4 of "Token Pruning in MLLMs: Are We Solving the Right Problem?")
/// recomputed naively from the unpruned layer-K input: each window of the visual grid keeps the
/// token with the largest L1 norm (summed in f64 here), and the pruned logits are those of a plain
/// cut at K with that keep-set. Windows whose two largest norms are within 1e-4 would make the
/// choice depend on rounding, so the test asserts a clear margin first.
#[test]
fn paper_pooling_keeps_the_largest_l1_token_of_each_window() {
    for name in ["llava", "qwen2_5_vl"] {
        let f = family(name);
        let (rows, cols) = f.inputs.visual.grid;
        let (r, c) = (rows / 2, cols / 2);
        assert!(r > 0 && c > 0, "{name}: a {rows}x{cols} grid");
        let vis = &f.inputs.visual.positions;
        let mut layer_inputs = Vec::new();
        f.model
            .prefill(
                &f.inputs,
                &mut Intervention::none(),
                None,
                Some(&mut layer_inputs),
            )
            .unwrap();
        for layer in [1usize, 2] {
            let x = layer_inputs[layer].select(0, 0).to_kind(Kind::Double);
            let l1: Vec<f64> = vis
                .iter()
                .map(|&p| x.get(p as i64).abs().sum(Kind::Double).double_value(&[]))
                .collect();
            let mut want = Vec::new();
            for i in 0..r {
                for j in 0..c {
                    // 2x2 windows; an odd last row/column joins the last window.
                    let ys = 2 * i..if i + 1 == r { rows } else { 2 * i + 2 };
                    let xs = 2 * j..if j + 1 == c { cols } else { 2 * j + 2 };
                    let mut members: Vec<usize> = ys
                        .flat_map(|y| xs.clone().map(move |x| y * cols + x))
                        .collect();
                    members.sort_by(|&a, &b| l1[b].total_cmp(&l1[a]));
                    let margin = (l1[members[0]] - l1[members[1]]) / l1[members[0]];
                    assert!(
                        margin > 1e-4,
                        "{name} @{layer} window ({i},{j}): margin {margin}"
                    );
                    want.push(vis[members[0]]);
                }
            }
            want.sort_unstable();
            let spec = PruneSpec::parse(&format!("pooling@{layer}:{}", r * c)).unwrap();
            let run = prefill_pruned(
                &f.model,
                &f.inputs,
                &spec,
                &PruneOptions::default(),
                0,
                None,
                None,
            )
            .unwrap();
            assert_eq!(run.stages[0].kept_visual, want, "{name} @{layer}");
            let s = f.inputs.seq_len();
            let keep: Vec<usize> = (0..s)
                .filter(|p| !vis.contains(p) || want.contains(p))
                .collect();
            let mut cut = Intervention::cut_at(layer, keep).unwrap();
            let plain = f.model.prefill(&f.inputs, &mut cut, None, None).unwrap();
            let h = &plain.hidden;
            let plain_logits = f
                .model
                .lm_head(&h.narrow(1, h.size()[1] - 1, 1))
                .to_kind(Kind::Float)
                .reshape([-1]);
            assert!(
                last_logits(&f.model, &run).equal(&plain_logits),
                "{name} @{layer}: logits of the plain cut"
            );
        }
    }
}

/// ToDRE's relevance stage recomputed naively: both ratios at every layer from the full attention
/// matrices of the unpruned run (head mean; text = the tokens after the image), and the stage
/// withdraws every visual token before the first layer from K on where both are below τ. Thresholds
/// are taken just above each layer's larger ratio and the stage starts at every K, so the picks land
/// on different layers.
#[test]
fn todre_withdraws_at_the_first_layer_where_both_ratios_fall_below_tau() {
    for name in ["llava", "qwen2_5_vl"] {
        let f = family(name);
        let vis = &f.inputs.visual.positions;
        let s = f.inputs.seq_len();
        let last_vis = *vis.last().unwrap();
        let text: Vec<i64> = (last_vis + 1..s).map(|p| p as i64).collect();
        let vis_t: Vec<i64> = vis.iter().map(|&p| p as i64).collect();
        let (text, vis_t) = (Tensor::from_slice(&text), Tensor::from_slice(&vis_t));
        let mut layer_inputs = Vec::new();
        f.model
            .prefill(
                &f.inputs,
                &mut Intervention::none(),
                None,
                Some(&mut layer_inputs),
            )
            .unwrap();
        let decoder = f.model.decoder();
        let num_layers = f.model.num_layers();
        let (cos, sin) = decoder
            .rotary_emb
            .cos_sin(&f.inputs.position_ids, Kind::Float);
        // ratios[l]: from the attention of layer l - 1, which the test before layer l reads.
        let mut ratios = vec![(f64::NAN, f64::NAN)];
        for l in 1..num_layers {
            let a = {
                let _g = tch::no_grad_guard();
                decoder.layers[l - 1]
                    .attention_probs(&layer_inputs[l - 1], &cos, &sin)
                    .select(0, 0)
                    .mean_dim(0, false, Kind::Double)
            };
            let block = a
                .index_select(0, &text)
                .index_select(1, &vis_t)
                .sum(Kind::Double)
                .double_value(&[]);
            let text_rows = a.index_select(0, &text).sum(Kind::Double).double_value(&[]);
            let vis_cols = a
                .index_select(1, &vis_t)
                .sum(Kind::Double)
                .double_value(&[]);
            ratios.push((block / text_rows, block / vis_cols));
        }
        let mut picks = std::collections::BTreeSet::new();
        for (from, l) in (1..num_layers).flat_map(|from| (from..num_layers).map(move |l| (from, l)))
        {
            let tau = ratios[l].0.max(ratios[l].1) * 1.05;
            let clear = ratios[from..]
                .iter()
                .all(|&(tv, vt)| (tv - tau).abs() > 1e-4 && (vt - tau).abs() > 1e-4);
            if !clear {
                continue;
            }
            let want = (from..num_layers).find(|&j| ratios[j].0 < tau && ratios[j].1 < tau);
            let options = PruneOptions {
                tau,
                ..PruneOptions::default()
            };
            let spec = PruneSpec::parse(&format!("todre@{from}:0")).unwrap();
            let run = prefill_pruned(&f.model, &f.inputs, &spec, &options, 0, None, None).unwrap();
            let per_layer: Vec<usize> = (0..num_layers)
                .map(|j| {
                    if want.is_some_and(|w| j >= w) {
                        0
                    } else {
                        vis.len()
                    }
                })
                .collect();
            assert_eq!(
                run.counts.per_layer, per_layer,
                "{name} tau {tau}: ratios {ratios:?}"
            );
            assert_eq!(run.stages.len(), 1, "{name}: one record");
            picks.insert((from, want));
        }
        let layers: std::collections::BTreeSet<_> = picks.iter().map(|(_, w)| *w).collect();
        assert!(
            layers.len() >= 2,
            "{name}: the picks {picks:?} do not move: {ratios:?}"
        );
    }
}

/// `file@K:PATH` rows: (sample key, kept indices into the prompt's visual tokens).
type FileRows<'a> = &'a [(&'a str, Vec<i64>)];

fn write_jsonl(path: &Path, rows: FileRows) {
    let text: String = rows
        .iter()
        .map(|(k, keep)| format!("{}\n", serde_json::json!({"key": k, "keep": keep})))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A Parquet file of `key` (strings) and `keep` (lists of int32, to exercise the cast).
fn write_parquet(path: &Path, rows: FileRows) {
    use arrow::array::{ArrayRef, Int32Builder, ListBuilder, StringArray};
    use arrow::record_batch::RecordBatch;
    let keys: ArrayRef = std::sync::Arc::new(StringArray::from(
        rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
    ));
    let mut keep = ListBuilder::new(Int32Builder::new());
    for (_, v) in rows {
        for &i in v {
            keep.values().append_value(i as i32);
        }
        keep.append(true);
    }
    let keep: ArrayRef = std::sync::Arc::new(keep.finish());
    let batch = RecordBatch::try_from_iter([("key", keys), ("keep", keep)]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A stage's kept tokens (sequence indices) as indices into the prompt's visual tokens.
fn visual_indices(inputs: &ModelInputs, kept: &[usize]) -> Vec<i64> {
    kept.iter()
        .map(|p| inputs.visual.positions.binary_search(p).unwrap() as i64)
        .collect()
}

/// The oracle of a file stage is the run it copies: `file@K:PATH` listing exactly the tokens another
/// method kept (FastV at K, random at 0 and K, a second stage after FastV) gives that method's run
/// bit for bit (logits, tokens per layer, kept tokens), on both families, from Parquet and JSONL.
#[test]
fn a_file_stage_listing_another_methods_tokens_is_that_run() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llava", "qwen2_5_vl"] {
        let f = family(name);
        for (method, file_spec, ext) in [
            ("fastv@1:50%", "file@1:{}", "parquet"),
            ("random@0:7", "file@0:{}", "jsonl"),
            ("random@2:9", "file@2:{}", "parquet"),
            ("fastv@1:50%,random@2:5", "fastv@1:50%,file@2:{}", "jsonl"),
        ] {
            let opts = PruneOptions {
                sample_key: Some("sample-7".into()),
                ..PruneOptions::default()
            };
            let spec = PruneSpec::parse(method).unwrap();
            let want = prefill_pruned(&f.model, &f.inputs, &spec, &opts, 5, None, None).unwrap();
            let last = want.stages.last().unwrap();
            let rows = [
                ("another", vec![0]),
                ("sample-7", visual_indices(&f.inputs, &last.kept_visual)),
            ];
            let path = tmp
                .path()
                .join(format!("{name}-{}.{ext}", want.stages.len()));
            match ext {
                "parquet" => write_parquet(&path, &rows),
                _ => write_jsonl(&path, &rows),
            }
            let file_spec = file_spec.replace("{}", path.to_str().unwrap());
            let spec = PruneSpec::parse(&file_spec).unwrap();
            assert_eq!(spec.to_string(), file_spec);
            // A different seed: the file, not the draw, decides.
            let got = prefill_pruned(&f.model, &f.inputs, &spec, &opts, 6, None, None).unwrap();
            assert_eq!(got.counts, want.counts, "{name} {file_spec}");
            let kept = |r: &PrunedPrefill| -> Vec<Vec<usize>> {
                r.stages.iter().map(|s| s.kept_visual.clone()).collect()
            };
            assert_eq!(kept(&got), kept(&want), "{name} {file_spec}");
            assert!(
                last_logits(&f.model, &got).equal(&last_logits(&f.model, &want)),
                "{name} {file_spec}: logits differ from {method}"
            );
        }
    }
}

/// Bad rows and files: one line naming the file and the row or key, from the run and from the
/// up-front check alike (which is the same check).
#[test]
fn file_stage_errors_name_the_file_and_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let f = family("llava");
    let n = f.inputs.visual.positions.len() as i64;
    let opts = |key: &str| PruneOptions {
        sample_key: Some(key.into()),
        ..PruneOptions::default()
    };
    let good = tmp.path().join("good.jsonl");
    write_jsonl(&good, &[("a", vec![0, 1, 2]), ("b", vec![n - 1, 0])]);
    let spec = PruneSpec::parse(&format!("file@2:{}", good.display())).unwrap();
    let run_err = |spec: &PruneSpec, key: &str| {
        prefill_pruned(&f.model, &f.inputs, spec, &opts(key), 0, None, None)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    let grids = f.model.window_grid(&f.inputs, 1).unwrap().grids;
    for (key, needles) in [("zz", vec!["good.jsonl", "no row for sample key `zz`"])] {
        let err = run_err(&spec, key);
        let upfront = spec
            .check_sample(key, n as usize, &grids, &opts(key))
            .unwrap_err()
            .to_string();
        for e in [&err, &upfront] {
            for needle in &needles {
                assert!(e.contains(needle), "{e}");
            }
            assert!(e.contains("stage 1 `file@2:"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
    // Indices out of range, twice, and dropped by an earlier stage.
    let bad = tmp.path().join("bad.parquet");
    write_parquet(
        &bad,
        &[
            ("out", vec![3, n]),
            ("neg", vec![-1]),
            ("twice", vec![4, 2, 4]),
        ],
    );
    let spec = PruneSpec::parse(&format!("file@2:{}", bad.display())).unwrap();
    for (key, needle) in [
        (
            "out",
            format!("row 0 (key `out`): index {n} is outside the sample's {n} visual tokens"),
        ),
        ("neg", "row 1 (key `neg`): index -1 is outside".to_string()),
        (
            "twice",
            "row 2 (key `twice`): index 4 is listed twice".to_string(),
        ),
    ] {
        let upfront = spec
            .check_sample(key, n as usize, &grids, &opts(key))
            .unwrap_err()
            .to_string();
        for e in [run_err(&spec, key), upfront] {
            assert!(e.contains("bad.parquet") && e.contains(&needle), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
    // After FastV kept half, a token it dropped (the one it scores lowest is dropped: find one).
    let fastv = prefill_pruned(
        &f.model,
        &f.inputs,
        &PruneSpec::parse("fastv@1:50%").unwrap(),
        &PruneOptions::default(),
        0,
        None,
        None,
    )
    .unwrap();
    let kept = visual_indices(&f.inputs, &fastv.stages[0].kept_visual);
    let dropped = (0..n).find(|i| !kept.contains(i)).unwrap();
    let late = tmp.path().join("late.jsonl");
    write_jsonl(&late, &[("a", vec![kept[0], dropped])]);
    let spec = PruneSpec::parse(&format!("fastv@1:50%,file@2:{}", late.display())).unwrap();
    let e = run_err(&spec, "a");
    assert!(
        e.contains("stage 2 `file@2:")
            && e.contains("late.jsonl: line 1 (key `a`)")
            && e.contains(&format!(
                "index {dropped} was already dropped by an earlier stage"
            )),
        "{e}"
    );
    // More listed than an earlier stage left, refused up front.
    let many = tmp.path().join("many.jsonl");
    write_jsonl(&many, &[("a", (0..10).collect())]);
    let spec = PruneSpec::parse(&format!("random@1:5,file@2:{}", many.display())).unwrap();
    let e = spec
        .check_sample("a", n as usize, &grids, &opts("a"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("keeps 10 visual tokens but only 5 are left"),
        "{e}"
    );
    // A run without a sample key (horizon forward) says so.
    let spec = PruneSpec::parse(&format!("file@2:{}", good.display())).unwrap();
    let e = prefill_pruned(
        &f.model,
        &f.inputs,
        &spec,
        &PruneOptions::default(),
        0,
        None,
        None,
    )
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap();
    assert!(e.contains("this run has no sample"), "{e}");

    // Files that cannot be read, or not as a file of kept tokens: refused when the spec is parsed.
    let wrong_type = tmp.path().join("strings.parquet");
    {
        use arrow::array::{ArrayRef, StringArray};
        let col = |v: Vec<&str>| -> ArrayRef { std::sync::Arc::new(StringArray::from(v)) };
        let batch = arrow::record_batch::RecordBatch::try_from_iter([
            ("key", col(vec!["a"])),
            ("keep", col(vec!["1,2"])),
        ])
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&wrong_type).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let dup = tmp.path().join("dup.jsonl");
    write_jsonl(&dup, &[("a", vec![1]), ("b", vec![2]), ("a", vec![3])]);
    let floats = tmp.path().join("floats.jsonl");
    std::fs::write(&floats, "{\"key\": \"a\", \"keep\": [1, 2.5]}\n").unwrap();
    let nokey = tmp.path().join("nokey.jsonl");
    std::fs::write(&nokey, "{\"sample\": \"a\", \"keep\": [1]}\n").unwrap();
    let text = tmp.path().join("kept.txt");
    std::fs::write(&text, "1 2 3").unwrap();
    let garbage = tmp.path().join("garbage.parquet");
    std::fs::write(&garbage, "not parquet").unwrap();
    for (path, needle) in [
        (
            tmp.path().join("missing.parquet"),
            "missing.parquet: cannot open",
        ),
        (
            wrong_type,
            "strings.parquet: column `keep` is Utf8, expected a list of integers",
        ),
        (
            dup,
            "dup.jsonl: line 3: sample key `a` is listed twice (first at line 1)",
        ),
        (
            floats,
            "floats.jsonl: line 1: `keep` holds a value that is not an integer",
        ),
        (nokey, "nokey.jsonl: line 1: expected a string `key`"),
        (text, "kept.txt: expected a .parquet or .jsonl file"),
        (garbage, "garbage.parquet: not a Parquet file"),
    ] {
        let e = PruneSpec::parse(&format!("fastv@2:50%,file@5:{}", path.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage 2 `file@5:") && e.contains(needle), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    let after_pooling = format!("avg-pooling@0:16,file@2:{}", good.display());
    for (spec, needle) in [
        ("file@2", "expected file@K:PATH"),
        ("file@2:", "expected file@K:PATH"),
        (after_pooling.as_str(), "which avg-pooling replaced"),
    ] {
        let e = PruneSpec::parse(spec).unwrap_err().to_string();
        assert!(e.contains(needle), "{spec}: {e}");
    }
}

/// SparseVLM v1.5's recycling pieces against `sparsevlm_v15_recycling` and `dpc_knn_merge` of
/// `fixtures/make_prune_fixtures.py` (written from Gumpest/SparseVLMs `LlamaDynamicvitModel.forward`
/// and `cluster_and_merge`): which dropped tokens are recycled, the clusters, and the merged tokens.
#[test]
fn sparsevlm_recycling_merges_as_the_released_cluster_and_merge() {
    use horizon_runner::prune::recycle::{dpc_knn_merge, recycle_counts, recycled_tokens};
    let as_usize = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let check = |x: &Tensor, want: &Tensor, meta: &serde_json::Value, what: &str| {
        let clusters = (x.size()[0] as usize) / 10 + 1;
        let merged = dpc_knn_merge(x, clusters).unwrap();
        assert_eq!(
            merged.centres,
            as_usize(&meta["centres"]),
            "{what}: centres"
        );
        assert_eq!(merged.assign, as_usize(&meta["assign"]), "{what}: clusters");
        let d = max_abs_diff(&merged.tokens, want);
        assert!(d <= 1e-6, "{what}: merged tokens differ by {d}");
    };
    let mut multi_cluster = 0;
    for name in ["llava", "llava_next", "qwen2_5_vl"] {
        let dir = root().join("fixtures").join(name).join("reference");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("prune.recycle.json")).unwrap())
                .unwrap();
        let t: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("prune.recycle.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        check(
            &t["synthetic.x"],
            &t["synthetic.merged"],
            &meta["synthetic"],
            &format!("{name} synthetic"),
        );
        for (case, entry) in meta["cases"].as_object().unwrap() {
            for (si, stage) in entry["stages"].as_array().unwrap().iter().enumerate() {
                let what = format!("{name} {case} stage {si}");
                let relation =
                    Vec::<f32>::try_from(&t[&format!("{case}.stage{si}.relation")]).unwrap();
                let kept = as_usize(&stage["kept_visual"]);
                let dropped: Vec<usize> =
                    (0..relation.len()).filter(|j| !kept.contains(j)).collect();
                let rel_d: Vec<f32> = dropped.iter().map(|&j| relation[j]).collect();
                let recycled: Vec<usize> = recycled_tokens(&rel_d)
                    .iter()
                    .map(|&i| dropped[i])
                    .collect();
                assert_eq!(
                    recycled,
                    as_usize(&stage["recycled"]),
                    "{what}: recycled tokens"
                );
                let (_, clusters) = recycle_counts(dropped.len()).unwrap();
                assert_eq!(
                    clusters as u64,
                    stage["clusters"].as_u64().unwrap(),
                    "{what}"
                );
                multi_cluster += usize::from(clusters > 1);
                check(
                    &t[&format!("{case}.stage{si}.recycled_hidden")],
                    &t[&format!("{case}.stage{si}.merged")],
                    stage,
                    &what,
                );
            }
        }
    }
    assert!(
        multi_cluster > 0,
        "no fixture stage recycles into more than one cluster"
    );
}

/// `sparsevlm` (v1.5, recycling) against `sparsevlm_v15_recycling` of `fixtures/make_prune_fixtures.py`,
/// the released loop (Gumpest/SparseVLMs `LlamaDynamicvitModel.forward`) on HF's layers: the kept
/// sets, the merged tokens where the next layer receives them, the visual tokens each layer sees
/// (kept + merged), the sequence length, the logits, a KV
/// cache holding each layer's tokens, and greedy decoding on it (tokens and each step's logits).
#[test]
fn sparsevlm_v1_5_recycles_as_the_released_loop() {
    for name in ["llava", "llava_next", "qwen2_5_vl"] {
        let f = family(name);
        let dir = root().join("fixtures").join(name).join("reference");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("prune.recycle.json")).unwrap())
                .unwrap();
        let t: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("prune.recycle.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let num_layers = f.model.num_layers();
        let prompt_len = f.inputs.input_ids.size()[1] as usize;
        for (case, entry) in meta["cases"].as_object().unwrap() {
            let spec = PruneSpec::parse(case).unwrap();
            let mut cache = KvCache::new(num_layers);
            let mut layer_inputs = Vec::new();
            let run = prefill_pruned_with_layer_inputs(
                &f.model,
                &f.inputs,
                &spec,
                &PruneOptions::default(),
                0,
                None,
                Some(&mut cache),
                Some(&mut layer_inputs),
            )
            .unwrap_or_else(|e| panic!("{name} {case}: {e:#}"));
            let v_start = f.inputs.visual.positions[0] as i64;
            let stages = entry["stages"].as_array().unwrap();
            assert_eq!(run.stages.len(), stages.len(), "{name} {case}: stages");
            // The visual block's ids as horizon numbers them: the prompt's, then each stage's kept
            // ones followed by its merged tokens (ids from the prompt length on).
            let mut block: Vec<usize> = f.inputs.visual.positions.clone();
            let mut next_built = prompt_len;
            let mut per_layer = vec![block.len(); num_layers];
            for (si, (record, stage)) in run.stages.iter().zip(stages).enumerate() {
                let kept: Vec<usize> = stage["kept_visual"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| block[v.as_u64().unwrap() as usize])
                    .collect();
                assert_eq!(record.kept_visual, kept, "{name} {case}: stage {si} kept");
                let clusters = stage["clusters"].as_u64().unwrap() as usize;
                block = kept
                    .into_iter()
                    .chain(next_built..next_built + clusters)
                    .collect();
                next_built += clusters;
                let from = stage["horizon_layer"].as_u64().unwrap() as usize;
                for n in &mut per_layer[from..] {
                    *n = block.len();
                }
                // The merged tokens as layer K receives them: right after the kept visual tokens.
                let kept_n = block.len() as i64 - clusters as i64;
                let merged = layer_inputs[from]
                    .select(0, 0)
                    .narrow(0, v_start + kept_n, clusters as i64)
                    .to_kind(Kind::Float);
                let d = max_abs_diff(&merged, &t[&format!("{case}.stage{si}.merged")]);
                assert!(
                    d <= 1e-5,
                    "{name} {case}: stage {si} merged tokens differ by {d}"
                );
            }
            assert_eq!(
                run.counts.per_layer, per_layer,
                "{name} {case}: visual per layer"
            );
            let last = *run.output.tokens_per_layer.last().unwrap();
            assert_eq!(
                last as u64,
                entry["seq_len_after"].as_u64().unwrap(),
                "{name} {case}"
            );
            for (l, &n) in run.output.tokens_per_layer.iter().enumerate() {
                assert_eq!(cache.len_at(l), n as i64, "{name} {case}: layer {l} cache");
            }
            let logits = last_logits(&f.model, &run);
            let d = max_abs_diff(&logits, &t[&format!("{case}.logits")]);
            assert!(
                d <= 1e-4,
                "{name} {case}: logits differ from the released loop by {d}"
            );
            assert_eq!(
                greedy_token(&logits),
                entry["argmax"].as_i64().unwrap(),
                "{name} {case}: argmax"
            );
            // Greedy decoding on the cache, against the released decoding's recomputation form.
            let want: Vec<i64> = entry["generated"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let config = GenerationConfig {
                max_new_tokens: want.len(),
                eos_token_ids: vec![],
            };
            let (gen, step_logits) = generate_pruned_with_logits(
                &f.model,
                &f.inputs,
                &spec,
                &PruneOptions::default(),
                0,
                None,
                &config,
            )
            .unwrap();
            assert_eq!(gen.tokens, want, "{name} {case}: generated tokens");
            let d = max_abs_diff(&step_logits, &t[&format!("{case}.generated_logits")]);
            assert!(d <= 1e-4, "{name} {case}: decoding logits differ by {d}");
        }
    }
}

/// LLaVA-NeXT's token count follows each image (anyres): a percentage keeps that share of each
/// sample's own count, in the run and in the up-front check; window-fastv tiles each grid (base and
/// high-resolution), its windows holding no newline token; both poolings pool each grid into
/// windows of one side and refuse, at the run and up front naming the sample, a count no side gives;
/// ToDRE's CLS pivot refuses with one line naming the method, as does VisionZip below one token per
/// crop.
#[test]
fn anyres_rules_hold_per_image() {
    let f = family("llava_next");
    let dir = root().join("fixtures/llava_next");
    let model_dir = dir.join(f.meta["model_dir"].as_str().unwrap());
    let processor = Processor::load(&model_dir, &f.model).unwrap();
    let wide = processor
        .prepare(
            &f.model,
            f.meta["question"].as_str().unwrap(),
            &dir.join("images/wide.png"),
            PromptTemplate::Auto,
        )
        .unwrap();
    let spec = PruneSpec::parse("fastv@1:25%").unwrap();
    let mut counts = Vec::new();
    for inputs in [&f.inputs, &wide] {
        let n = inputs.visual.positions.len();
        let grids = f.model.window_grid(inputs, 1).unwrap().grids;
        assert_eq!(grids.len(), 2, "base and high-resolution grids");
        spec.check_sample("s", n, &grids, &PruneOptions::default())
            .unwrap();
        let run = prefill_pruned(
            &f.model,
            inputs,
            &spec,
            &PruneOptions::default(),
            0,
            None,
            None,
        )
        .unwrap();
        assert_eq!(run.counts.per_layer[1], n / 4, "25% of {n}");
        counts.push(n);
    }
    assert_ne!(counts[0], counts[1], "the two images' counts differ");

    // window-fastv: every window lies inside one grid and holds no newline token.
    let grid = f.model.window_grid(&f.inputs, 3).unwrap();
    let newlines: Vec<usize> = f.meta["newline_visual_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(newlines.len(), grid.grids[1].rows);
    for w in 0..grid.num_windows() {
        assert!(grid.window_tokens(w).iter().all(|t| !newlines.contains(t)));
    }

    let n = f.inputs.visual.positions.len();
    let grids = f.model.window_grid(&f.inputs, 1).unwrap().grids;
    for (spec, needle) in [
        (
            "pooling@2:9",
            "9 tokens is no such count; this image offers 134 (s = 1), 37 (s = 2), 19 (s = 3)",
        ),
        ("avg-pooling@0:20", "20 tokens is no such count"),
        (
            "visionzip@0:3",
            "visionzip keeps tokens of each of the image's 4 crops",
        ),
        ("todre@0:12", "todre"),
    ] {
        let parsed = PruneSpec::parse(spec).unwrap();
        let run = prefill_pruned(
            &f.model,
            &f.inputs,
            &parsed,
            &PruneOptions::default(),
            0,
            None,
            None,
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(run.contains(needle), "{spec}: {run}");
        assert!(!run.contains('\n'), "{spec}: one line: {run}");
        if spec.contains("pooling") {
            let upfront = parsed
                .check_sample("s", n, &grids, &PruneOptions::default())
                .unwrap_err()
                .to_string();
            assert!(upfront.contains(needle), "{spec}: {upfront}");
            assert!(upfront.contains(&format!("--prune {spec}: stage 1 `{spec}`: sample `s`")));
        }
    }
}
