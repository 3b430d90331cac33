//! `horizon bench`: timings of a random-weight model of any configuration (the real llava-1.5-7b
//! config is built in), measured as ratios against a baseline in the same run: the information engine
//! (one prefill, variants resumed from stored layer inputs, batched) against the naive procedure (one
//! full forward with the cut per variant, as the reference code runs it).

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

use horizon_runner::device::dtype_name;

use crate::options::{at_least_one, prune_spec, RunOptions};
use horizon_runner::decoder::KvCache;
use horizon_runner::info::{
    full_run, naive_variant, sweep_sample, variant_keep_sets, InfoMode, SweepConfig,
};
use horizon_runner::prune::{prefill_pruned, PruneOptions, PruneSpec};
use horizon_runner::{ModelInputs, VlModel};

use horizon_runner::sweep::parse_layers;

/// config.json of llava-hf/llava-1.5-7b-hf as published (sparse; HF defaults fill the rest).
const LLAVA_1_5_7B_CONFIG: &str = r#"{
  "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
  "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
  "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
    "torch_dtype": "float16", "vocab_size": 32064},
  "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
  "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
    "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
  "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
}"#;

/// config.json of llava-hf/llava-v1.6-vicuna-7b-hf as published (sparse; HF defaults fill the rest).
const LLAVA_V1_6_VICUNA_7B_CONFIG: &str = r#"{
  "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
  "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
  "image_token_index": 32000, "model_type": "llava_next", "projector_hidden_act": "gelu",
  "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 4096, "model_type": "llama", "pad_token_id": 0, "rms_norm_eps": 1e-05,
    "torch_dtype": "float16", "vocab_size": 32064},
  "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.39.0.dev0",
  "use_image_newline_parameter": true,
  "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
    "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
  "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
}"#;

#[derive(Args)]
pub struct BenchArgs {
    /// `llava-1.5-7b` or `llava-v1.6-vicuna-7b` (built in), a config.json file, or a checkpoint
    /// directory (its config.json).
    #[arg(long, default_value = "llava-1.5-7b")]
    config: String,
    /// Override the number of decoder layers (to fit a small machine; timings then scale with it).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=512))]
    num_layers: Option<i64>,
    #[command(flatten)]
    run: RunOptions,
    /// Text tokens around the image in the synthetic prompt.
    #[arg(long, default_value_t = 40, value_parser = at_least_one)]
    text_tokens: usize,
    /// Timed repetitions of the plain forward (after one warm-up).
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    reps: usize,
    /// Cut layers of the information sweep (default: 1, the middle layer and the last).
    #[arg(long)]
    layers: Option<String>,
    /// Window side of the sweep.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    window: usize,
    /// Variants per batch in the engine (default: from a 2 GiB budget).
    #[arg(long, value_parser = at_least_one)]
    batch_size: Option<usize>,
    /// Naive variants actually run (evenly spread); the naive total is their mean time × all variants.
    /// 0 skips the naive baseline.
    #[arg(long, default_value_t = 8)]
    naive_variants: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Time the prefill pruned by this spec against the unpruned prefill in the same run (repeatable;
    /// README, "Pruning"); the information sweep is then skipped.
    #[arg(long = "prune", value_parser = prune_spec)]
    prune: Vec<PruneSpec>,
}

fn load_config(spec: &str) -> Result<(PathBuf, Value)> {
    if spec == "llava-1.5-7b" {
        return Ok((
            PathBuf::from("llava-1.5-7b (built in)"),
            serde_json::from_str(LLAVA_1_5_7B_CONFIG)?,
        ));
    }
    if spec == "llava-v1.6-vicuna-7b" {
        return Ok((
            PathBuf::from("llava-v1.6-vicuna-7b (built in)"),
            serde_json::from_str(LLAVA_V1_6_VICUNA_7B_CONFIG)?,
        ));
    }
    let path = Path::new(spec);
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).map_err(|e| anyhow!("--config: {}: {e}", file.display()))?;
    let value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: invalid JSON ({e})", file.display()))?;
    Ok((file, value))
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let (device, kind) = (args.run.device, args.run.dtype);
    let (origin, mut cfg) = load_config(&args.config)?;
    if let Some(n) = args.num_layers {
        if n < 1 {
            bail!("--num-layers: must be at least 1");
        }
        let text = cfg
            .as_object_mut()
            .context("config is not a JSON object")?
            .entry("text_config")
            .or_insert_with(|| json!({}));
        text["num_hidden_layers"] = json!(n);
    }
    let t = Instant::now();
    let model = VlModel::random(&origin, cfg.clone(), device, kind, args.seed)?;
    sync(device);
    let load_s = t.elapsed().as_secs_f64();
    let inputs = model.synthetic_inputs(args.text_tokens)?;
    let num_layers = model.num_layers();
    eprintln!(
        "horizon bench: {} ({num_layers} decoder layers), {} tokens ({} visual), {} on {:?}; random weights in {load_s:.1} s",
        origin.display(),
        inputs.seq_len(),
        inputs.visual.positions.len(),
        dtype_name(kind),
        device
    );

    if !args.prune.is_empty() {
        return bench_pruning(args, &model, &inputs, &origin);
    }

    // Plain forward: one prefill with the stored layer inputs and next-token distribution.
    let _ = full_run(&model, &inputs)?;
    sync(device);
    let mut forward_s = Vec::new();
    for _ in 0..args.reps.max(1) {
        let t = Instant::now();
        let _ = full_run(&model, &inputs)?;
        sync(device);
        forward_s.push(t.elapsed().as_secs_f64());
    }
    let forward_mean = forward_s.iter().sum::<f64>() / forward_s.len() as f64;

    // The information sweep of one sample.
    let default_layers = format!("1,{},{}", num_layers / 2, num_layers - 1);
    let layers = parse_layers(
        Some(args.layers.as_deref().unwrap_or(&default_layers)),
        num_layers,
    )?;
    let full = full_run(&model, &inputs)?;
    let sweep = SweepConfig {
        layers: layers.clone(),
        window_size: args.window,
        mode: InfoMode::KeepOnly,
        batch_size: args.batch_size,
        memory_budget_bytes: 2 << 30,
    };
    let t = Instant::now();
    let results = sweep_sample(&model, &inputs, &full, 0, &sweep)?;
    sync(device);
    let engine_s = t.elapsed().as_secs_f64();
    let variants = results.len() - 1;

    let grid = model.window_grid(&inputs, args.window)?;
    let (text_only, windows) = variant_keep_sets(&inputs, &grid, InfoMode::KeepOnly);
    let all: Vec<(usize, &Vec<usize>)> = layers
        .iter()
        .flat_map(|&k| std::iter::once((k, &text_only)).chain(windows.iter().map(move |w| (k, w))))
        .collect();
    let naive_n = args.naive_variants.min(all.len());
    let (naive_mean, naive_total) = if naive_n > 0 {
        let t = Instant::now();
        for i in 0..naive_n {
            let (k, keep) = all[i * all.len() / naive_n];
            naive_variant(&model, &inputs, &full, 0, k, keep)?;
        }
        sync(device);
        let mean = t.elapsed().as_secs_f64() / naive_n as f64;
        (Some(mean), Some(mean * all.len() as f64))
    } else {
        (None, None)
    };

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| plain forward (prefill + next-token distribution), mean of {} | {:.4} s |",
        forward_s.len(),
        forward_mean
    );
    println!("| engine: {variants} variants over layers {layers:?}, window {} | {engine_s:.4} s ({:.5} s/variant) |", args.window, engine_s / variants as f64);
    if let (Some(mean), Some(total)) = (naive_mean, naive_total) {
        println!("| naive: one cut forward per variant ({naive_n} run, extrapolated to {variants}) | {total:.3} s ({mean:.5} s/variant) |");
        println!(
            "| speed-up of the engine over naive | {:.1}x |",
            total / engine_s
        );
    }
    if let Some(path) = &args.json {
        let out = json!({
            "config": origin.display().to_string(), "num_layers": num_layers, "device": format!("{device:?}"),
            "dtype": dtype_name(kind), "seq_len": inputs.seq_len(), "visual_tokens": inputs.visual.positions.len(),
            "load_s": load_s, "forward_s": forward_s, "sweep_layers": layers, "window": args.window,
            "variants": variants, "engine_s": engine_s, "naive_variants_run": naive_n,
            "naive_s_per_variant": naive_mean, "naive_total_s": naive_total,
            "speedup": naive_total.map(|t| t / engine_s),
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

/// Prefill latency and KV-cache bytes of each `--prune` spec against the unpruned prefill, timed
/// alternately in the same run (one warm-up each, then `--reps` rounds).
fn bench_pruning(
    args: &BenchArgs,
    model: &VlModel,
    inputs: &ModelInputs,
    origin: &Path,
) -> Result<()> {
    let device = args.run.device;
    let opts = PruneOptions::default();
    let mut specs = vec![PruneSpec::none()];
    specs.extend(args.prune.iter().cloned());
    for spec in &specs {
        spec.check(model.num_layers())?;
    }
    let time = |spec: &PruneSpec| -> Result<(f64, usize, f64)> {
        let mut cache = KvCache::new(model.num_layers());
        sync(device);
        let t = Instant::now();
        let run = prefill_pruned(model, inputs, spec, &opts, 0, None, Some(&mut cache))?;
        let _ = model.lm_head(
            &run.output
                .hidden
                .narrow(1, run.output.hidden.size()[1] - 1, 1),
        );
        sync(device);
        Ok((t.elapsed().as_secs_f64(), cache.bytes(), run.counts.t_eq()))
    };
    let mut seconds = vec![Vec::new(); specs.len()];
    let mut facts = vec![(0usize, 0f64); specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        let (_, bytes, t_eq) = time(spec)?;
        facts[i] = (bytes, t_eq);
    }
    for _ in 0..args.reps.max(1) {
        for (i, spec) in specs.iter().enumerate() {
            seconds[i].push(time(spec)?.0);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let base = mean(&seconds[0]);
    println!(
        "| spec | prefill (mean of {}) | speed-up vs unpruned | KV cache after prefill | visual T_eq |",
        args.reps.max(1)
    );
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let m = mean(&seconds[i]);
        println!(
            "| `{spec}` | {m:.4} s | {:.2}× | {:.1} MiB | {:.1} |",
            base / m,
            facts[i].0 as f64 / (1024.0 * 1024.0),
            facts[i].1
        );
        rows.push(
            json!({"spec": spec.to_string(), "prefill_s": seconds[i], "speedup": base / m,
            "kv_cache_bytes": facts[i].0, "visual_t_eq": facts[i].1}),
        );
    }
    if let Some(path) = &args.json {
        let out = json!({"config": origin.display().to_string(), "num_layers": model.num_layers(),
            "device": format!("{device:?}"), "dtype": dtype_name(args.run.dtype), "seq_len": inputs.seq_len(),
            "visual_tokens": inputs.visual.positions.len(), "prune": rows});
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}
