//! `horizon`: visual-token information per decoder layer, the information horizon, and its figures.

mod analysis;
mod bench;
mod demo;
mod eval;
mod forward;
mod generate;
mod info;
mod merge;
mod options;
mod progress;
mod prune_sweep;
mod score;
mod synth;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "horizon",
    version,
    about = "How much each visual token of a vision-language model still matters at each decoder layer",
    long_about = "horizon runs HF-format vision-language checkpoints (llava-hf LLaVA-1.5, Qwen2.5-VL) with \
libtorch, measures per-layer visual-token information, locates the information horizon, and renders its figures."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: information maps for the bundled models (or --models) on the bundled benchmark,
    /// horizons per task and per model, all figures and a printed summary (resumable).
    Demo(demo::DemoArgs),
    /// One forward pass (plain, or pruned by --prune); saves the logits of the positions kept.
    Forward(forward::ForwardArgs),
    /// Greedy generation (KV cache) from an image and a question; prints the answer.
    Generate(generate::GenerateArgs),
    /// Visual-token information per decoder layer over a benchmark, as long-format Parquet.
    Info(info::InfoArgs),
    /// Timings on a random-weight model of any config (llava-1.5-7b built in): plain forward, and the
    /// information engine against the naive per-variant procedure in the same run.
    Bench(bench::BenchArgs),
    /// Combines the finished shards of one `horizon info` run (`--shard i/n`) into one directory.
    Merge(merge::MergeArgs),
    /// Per-layer statistics and the information horizon from `horizon info` rows (horizon.json + Parquet).
    Horizon(analysis::HorizonArgs),
    /// Figures from `horizon info` rows: window heatmaps, information versus layer, layer x window map.
    Plot(analysis::PlotArgs),
    /// Writes a seeded synthetic benchmark (coarse perception and text-reading tasks) as HF parquet.
    Synth(synth::SynthArgs),
    /// Trains a small LLaVA-format model from scratch on the synthetic tasks (resumable).
    Train(train::TrainArgs),
    /// Greedy answers over a benchmark, scored by its official rules (resumable, shardable).
    Eval(eval::EvalArgs),
    /// Rescores a predictions file by the benchmarks' official rules, without the model.
    Score(score::ScoreArgs),
    /// Pruning methods and random at every layer K to one keep ratio, scored: relative score versus K
    /// with the horizon marked, and a Table-1 comparison at matched budgets (--compare).
    PruneSweep(prune_sweep::PruneSweepArgs),
}

/// clap's errors in one line (its usage and "For more information" lines dropped), exit status 2;
/// help and version print as clap prints them.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return e.exit_code();
    }
    let text = e.render().to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}", line.join(" "));
    2
}

/// Ends the process with `code` without running libtorch's static destructors, which take about
/// 0.1 s (its operator registry is torn down entry by entry) and which nothing of horizon's needs:
/// every command has written, renamed and closed its files, and dropped its state, by the time it
/// returns. Standard output and error are flushed first.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// glibc's allocator returns freed memory of a few hundred KiB to the system at once (each such
/// block is its own mapping, and a worker thread's heap is trimmed as soon as its top is free), so
/// a loop that allocates and frees tensors of that size, as leave-out's gradient estimate on
/// batches of samples does, faults its pages in anew every time: on the bundled model 3.5 times
/// the page faults and 1.4 times the wall time (BENCHMARKS.md, `#allocator`). Blocks up to 32 MiB are
/// kept in the heap for reuse and up to 256 MiB of free heap stays mapped. A user's own
/// `MALLOC_*` or `GLIBC_TUNABLES` settings are left as given.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES"
        });
        if !user_set {
            // SAFETY: mallopt only changes the allocator's thresholds; it is called before any
            // other thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        }
    }
}

fn main() {
    keep_freed_memory_for_reuse();
    // libtorch reports some failures by panicking inside tch; keep them to one line with a non-zero exit.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let first = msg.lines().next().unwrap_or(msg);
        eprintln!("error: internal failure: {first}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_now(usage_error(e)),
    };
    let result = match &cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Info(a) => info::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Horizon(a) => analysis::horizon(a),
        Command::Plot(a) => analysis::plot(a),
        Command::Synth(a) => synth::run(a),
        Command::Train(a) => train::run_train(a),
        Command::Eval(a) => eval::run(a),
        Command::Score(a) => score::run(a),
        Command::PruneSweep(a) => prune_sweep::run(a),
    };
    drop(cli);
    match result {
        Ok(()) => exit_now(0),
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            exit_now(1)
        }
    }
}
