//! `horizon bench`: timings of a random-weight model of any configuration (the real llava-1.5-7b
//! config is built in), measured as ratios against a baseline in the same run: the information engine
//! (one prefill, variants resumed from stored layer inputs, batched) against the naive procedure (one
//! full forward with the cut per variant, as the reference code runs it).

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;
use tch::{Device, Tensor};

use horizon_runner::device::dtype_name;

use crate::options::{at_least_one, prune_spec, RunOptions};
use horizon_data::window::WindowGrid;
use horizon_runner::decoder::KvCache;
use horizon_runner::info::{
    full_run, naive_variant, sweep_sample, sweep_sample_with, variant_keep_sets, InfoMode,
    Shortcuts, SweepConfig,
};
use horizon_runner::prune::{prefill_pruned, PruneOptions, PruneSpec};
use horizon_runner::{ModelInputs, VlModel};

use horizon_data::info_rows::KlEstimate;
use horizon_runner::gradient::estimate_sample;
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
    /// Of those, how many come before the image after BOS (the original LLaVA-1.5 template's system
    /// text and `USER:` make 34, 35 tokens with BOS); the rest follow it. Default: the family's
    /// synthetic prompt as it is (LLaVA: 4).
    #[arg(long)]
    text_before: Option<usize>,
    /// Information mode of the sweep: keep-only or leave-out.
    #[arg(long, default_value = "keep-only", value_parser = InfoMode::from_str)]
    mode: InfoMode,
    /// Also time the engine with none of its shortcuts, each alone and all, alternating over this many
    /// rounds in the same process, and check that they agree.
    #[arg(long, default_value_t = 0)]
    shortcut_reps: usize,
    /// Also print where one sample's time goes: the prefill, each K's batches, the scoring (lm_head
    /// and the metrics over every variant) and writing the sample's rows as Parquet.
    #[arg(long)]
    profile: bool,
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
    /// Also time the one-pass gradient estimate of the same rows (`horizon info --estimate
    /// gradient`, in --mode, leave-out with the default KL) after the other figures; if it cannot
    /// run (out of device memory, say), its row says why and the other figures stand.
    #[arg(long)]
    gradient: bool,
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
    let inputs = match args.text_before {
        Some(before) => text_before_image(inputs, before)?,
        None => inputs,
    };
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
        mode: args.mode,
        batch_size: args.batch_size,
        memory_budget_bytes: 2 << 30,
    };
    let t = Instant::now();
    let results = sweep_sample(&model, &inputs, &full, 0, &sweep)?;
    sync(device);
    let engine_s = t.elapsed().as_secs_f64();
    let variants = results.len() - 1;

    let grid = model.window_grid(&inputs, args.window)?;
    let (text_only, windows) = variant_keep_sets(&inputs, &grid, args.mode);
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

    let all_keeps: Vec<Vec<usize>> = std::iter::once(text_only.clone())
        .chain(windows.iter().cloned())
        .collect();
    let flops = useful_flops(&model, &all_keeps, &layers);
    let matmul = matmul_rate(&model, inputs.seq_len() as i64, device, kind);
    let shortcut_rows = if args.shortcut_reps > 0 {
        compare_shortcuts(&model, &inputs, &full, &sweep, args.shortcut_reps)?
    } else {
        Vec::new()
    };

    if args.profile {
        profile(&model, &inputs, &sweep, &grid, &results)?;
    }

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
    println!(
        "| useful FLOPs of the sweep (analytic, see BENCHMARKS.md) | {:.3e}: {:.1} GFLOP/s |",
        flops,
        flops / engine_s / 1e9
    );
    println!(
        "| measured matmul rate ([{}, hidden] x [hidden, intermediate], {}) | {:.1} GFLOP/s: the sweep runs at {:.0}% of it |",
        inputs.seq_len(),
        dtype_name(kind),
        matmul / 1e9,
        100.0 * flops / engine_s / matmul
    );
    for (name, secs, diff) in &shortcut_rows {
        println!(
            "| engine, shortcuts: {name} (mean of {}) | {secs:.4} s, {:.2}x none; max diff vs none {diff:.1e} |",
            args.shortcut_reps,
            shortcut_rows[0].1 / secs
        );
    }
    // Last, so that a failure leaves the other figures measured; libtorch reports running out of
    // device memory by a panic inside tch, caught here as that failure.
    let gradient = args.gradient.then(|| {
        let t = Instant::now();
        let run = std::panic::AssertUnwindSafe(|| {
            let rows = estimate_sample(&model, &inputs, &full, 0, &sweep, KlEstimate::default())?;
            sync(device);
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64(), rows.len() - 1))
        });
        std::panic::catch_unwind(run).unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("{}", text.lines().next().unwrap_or_default()))
        })
    });
    match &gradient {
        Some(Ok((secs, rows))) => println!(
            "| one-pass gradient estimate of the same {rows} rows | {secs:.4} s: the engine takes {:.1}x as long |",
            engine_s / secs
        ),
        Some(Err(e)) => println!("| one-pass gradient estimate | failed: {} |", format!("{e:#}").replace('\n', " ")),
        None => {}
    }
    if let Some(path) = &args.json {
        let (gradient_s, gradient_error) = match &gradient {
            Some(Ok((secs, _))) => (Some(*secs), None),
            Some(Err(e)) => (None, Some(format!("{e:#}"))),
            None => (None, None),
        };
        let out = json!({
            "gradient_s": gradient_s, "gradient_error": gradient_error,
            "config": origin.display().to_string(), "num_layers": num_layers,
            "useful_flops": flops, "matmul_flops_per_s": matmul, "text_before": args.text_before,
            "mode": args.mode.as_str(),
            "shortcuts": shortcut_rows.iter().map(|(n, s, d)| json!({"shortcuts": n, "s": s, "max_diff": d})).collect::<Vec<_>>(), "device": format!("{device:?}"),
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

/// One sample's sweep split into its parts, each timed on its own (after the sweep above warmed up):
/// the prefill keeping every layer's input, keys and values; each K's batches alone (the default
/// shortcuts, as `horizon info` runs them); the scoring of every variant (lm_head of the last position,
/// log-softmax, p and KL) on hidden states of the variants' shape; the Parquet part of the rows.
fn profile(
    model: &VlModel,
    inputs: &ModelInputs,
    sweep: &SweepConfig,
    grid: &WindowGrid,
    results: &[horizon_runner::info::VariantResult],
) -> Result<()> {
    let device = model.device();
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        sync(device);
        let t = Instant::now();
        f()?;
        sync(device);
        Ok(t.elapsed().as_secs_f64())
    };
    let mut full = None;
    let prefill = timed(&mut || {
        full = Some(full_run(model, inputs)?);
        Ok(())
    })?;
    let full = full.expect("set by the prefill");
    let mut per_k = Vec::new();
    for &k in &sweep.layers {
        let one = SweepConfig {
            layers: vec![k],
            ..sweep.clone()
        };
        per_k.push((
            k,
            timed(&mut || sweep_sample(model, inputs, &full, 0, &one).map(|_| ()))?,
        ));
    }
    let whole = timed(&mut || sweep_sample(model, inputs, &full, 0, sweep).map(|_| ()))?;
    let rows = results.len() as i64 - 1;
    let (hidden, _, _) = model.text_dims();
    let last = Tensor::randn([rows, hidden], (full.log_probs.kind(), device))
        .to_kind(full.layer_inputs[0].kind());
    let scoring = timed(&mut || {
        let _guard = tch::no_grad_guard();
        let logp = model
            .lm_head(&last)
            .to_kind(tch::Kind::Float)
            .log_softmax(-1, tch::Kind::Float);
        let kl = (full.log_probs.exp() * (&full.log_probs - &logp)).sum_dim_intlist(
            -1,
            false,
            tch::Kind::Double,
        );
        let _: Vec<f64> = Vec::try_from(kl.to_device(Device::Cpu))?;
        Ok(())
    })?;
    let keys = horizon_runner::sweep::SampleRowKeys {
        model: "bench",
        task: "bench",
        sample_id: "0",
        mode: sweep.mode,
        target: horizon_data::info_rows::Target::Gt,
        target_token: 0,
    };
    let info_rows = horizon_runner::sweep::variant_rows(results, grid, &keys);
    let path = std::env::temp_dir().join(format!("horizon-bench-{}.parquet", std::process::id()));
    let parquet = timed(&mut || horizon_data::info_rows::write_info_rows(&path, &info_rows, &[]))?;
    let _ = std::fs::remove_file(&path);
    println!("| part of one sample (each timed alone) | seconds |");
    println!("|---|---|");
    println!(
        "| prefill (vision tower, every layer, inputs, keys and values kept) | {prefill:.4} |"
    );
    for (k, secs) in &per_k {
        println!("| variants of K = {k} alone (their batches, scoring included) | {secs:.4} |");
    }
    println!(
        "| all K together (the sweep as `horizon info` runs it) | {whole:.4} (the K alone sum to {:.4}) |",
        per_k.iter().map(|(_, s)| s).sum::<f64>()
    );
    println!(
        "| scoring of the {rows} variants (lm_head, log-softmax, KL, to host) | {scoring:.4} |"
    );
    println!(
        "| Parquet part of the sample's {} rows | {parquet:.4} |",
        info_rows.len()
    );
    Ok(())
}

/// The synthetic prompt with `before` of its text tokens (after BOS) placed before the image.
fn text_before_image(inputs: ModelInputs, before: usize) -> Result<ModelInputs> {
    let ids: Vec<i64> = Vec::try_from(inputs.input_ids.squeeze_dim(0).to_device(Device::Cpu))?;
    let vis = &inputs.visual.positions;
    let (first, n_img) = (vis[0], vis.len());
    if vis[n_img - 1] + 1 - first != n_img {
        bail!("--text-before: the synthetic prompt's visual tokens are not one block");
    }
    let text: Vec<i64> = ids[1..first]
        .iter()
        .chain(&ids[first + n_img..])
        .copied()
        .collect();
    if before > text.len() {
        bail!(
            "--text-before: {before} is more than the {} text tokens (--text-tokens)",
            text.len()
        );
    }
    let image = &ids[first..first + n_img];
    let mut out = vec![ids[0]];
    out.extend_from_slice(&text[..before]);
    out.extend_from_slice(image);
    out.extend_from_slice(&text[before..]);
    let device = inputs.input_ids.device();
    let n = out.len() as i64;
    Ok(ModelInputs {
        input_ids: Tensor::from_slice(&out).unsqueeze(0).to_device(device),
        visual: horizon_runner::intervention::VisualTokens {
            positions: (1 + before..1 + before + n_img).collect(),
            grid: inputs.visual.grid,
        },
        position_ids: Tensor::arange(n, (tch::Kind::Int64, device)).unsqueeze(0),
        ..inputs
    })
}

/// FLOPs the sweep needs at least (multiply-adds count 2), counted from the configuration: for every
/// cut layer K and variant, layers K.. over the variant's positions from its first changed one on
/// (q, k, v, o projections, the SwiGLU MLP, q·kᵀ and attention·v over that position's keys: every
/// earlier kept position), the last layer's query, output projection and MLP at the last position
/// only, then the lm_head row. Norms, rotary, softmax and the prefill are not counted.
fn useful_flops(model: &VlModel, keeps: &[Vec<usize>], layers: &[usize]) -> f64 {
    let c = &model.decoder().cfg;
    let (h, inter, hd) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.head_dim as f64,
    );
    let (nh, nkv, vocab) = (
        c.num_attention_heads as f64,
        c.num_key_value_heads as f64,
        c.vocab_size as f64,
    );
    let num_layers = model.num_layers();
    let kv_proj = 2.0 * 2.0 * h * nkv * hd;
    let q_o_mlp = 2.0 * (2.0 * h * nh * hd + 3.0 * h * inter);
    let mut total = 0.0;
    for keep in keeps {
        let len = keep.len();
        let first = keep
            .iter()
            .enumerate()
            .take_while(|(i, &p)| *i == p)
            .count()
            .min(len - 1);
        let suffix = (len - first) as f64;
        // Keys seen by the suffix's queries: first + 1, first + 2, ..., len.
        let keys: f64 = (first + 1..=len).map(|k| k as f64).sum();
        let attend = 2.0 * 2.0 * nh * hd;
        let inner = suffix * (kv_proj + q_o_mlp) + keys * attend;
        let last = suffix * kv_proj + q_o_mlp + len as f64 * attend;
        for &k in layers {
            let resumed = (num_layers - k) as f64;
            total += (resumed - 1.0) * inner + last + 2.0 * h * vocab;
        }
    }
    total
}

/// FLOP/s of one `[rows, hidden] × [hidden, intermediate]` matmul on this machine (best of 5 after a
/// warm-up), the shape of a decoder MLP projection over a prompt.
fn matmul_rate(model: &VlModel, rows: i64, device: Device, kind: tch::Kind) -> f64 {
    let (h, inter, _) = model.text_dims();
    let a = Tensor::randn([rows, h], (kind, device));
    let b = Tensor::randn([h, inter], (kind, device));
    let _ = a.matmul(&b);
    sync(device);
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            let _ = a.matmul(&b);
            sync(device);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (rows * h * inter) as f64 / best
}

/// Times the sweep with no shortcut, each shortcut alone and all of them, alternating for `reps`
/// rounds after one warm-up each; returns (name, mean seconds, largest difference of p, log p and KL
/// from the run without shortcuts).
fn compare_shortcuts(
    model: &VlModel,
    inputs: &ModelInputs,
    full: &horizon_runner::info::FullRun,
    sweep: &SweepConfig,
    reps: usize,
) -> Result<Vec<(String, f64, f64)>> {
    let sets = [
        ("none", Shortcuts::NONE),
        (
            "prefix keys/values",
            Shortcuts {
                prefix_kv: true,
                ..Shortcuts::NONE
            },
        ),
        (
            "last position only",
            Shortcuts {
                last_position_only: true,
                ..Shortcuts::NONE
            },
        ),
        (
            "K stacked",
            Shortcuts {
                stack_layers: true,
                ..Shortcuts::NONE
            },
        ),
        ("default (prefix, last position)", Shortcuts::default()),
        ("all", Shortcuts::ALL),
    ];
    let device = model.device();
    let mut results = Vec::new();
    for (_, sc) in &sets {
        results.push(sweep_sample_with(model, inputs, full, 0, sweep, *sc)?);
    }
    let mut secs = vec![0.0; sets.len()];
    for _ in 0..reps {
        for (i, (_, sc)) in sets.iter().enumerate() {
            sync(device);
            let t = Instant::now();
            let _ = sweep_sample_with(model, inputs, full, 0, sweep, *sc)?;
            sync(device);
            secs[i] += t.elapsed().as_secs_f64() / reps as f64;
        }
    }
    Ok(sets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let diff = results[i]
                .iter()
                .zip(&results[0])
                .map(|(a, b)| {
                    (a.p - b.p)
                        .abs()
                        .max((a.logp - b.logp).abs())
                        .max((a.kl - b.kl).abs())
                })
                .fold(0.0, f64::max);
            (name.to_string(), secs[i], diff)
        })
        .collect())
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
