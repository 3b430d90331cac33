#!/usr/bin/env python3
"""Peak resident memory of `horizon info` on a llava-1.5-7b-configuration checkpoint on disk.

Writes a random-weight LLaVA-1.5 checkpoint of the published llava-hf/llava-1.5-7b-hf configuration
(decoder cut to --num-layers layers, CLIP ViT-L/336 tower and projector as published) in bf16, the way
transformers 5.17 saves a freshly built model (`LlavaForConditionalGeneration(config)`,
`save_pretrained`), then runs `horizon info` on it once per --dtypes entry and reports, per run:

- peak RSS: `ru_maxrss` of the finished process (the kernel's high-water mark, exact);
- the anonymous and file-backed parts of the resident set (`RssAnon`, `RssFile` of /proc/PID/status,
  polled every 20 ms) at their peaks and at the moment the model is loaded and the run's metadata
  (checkpoint fingerprint included) is written: the "samples (... already done)" line;
- activations (and everything else the run allocates after loading) = peak RssAnon - RssAnon when
  the model is loaded;
- the weights at the compute dtype (from the safetensors headers: elements x bytes per element) and
  the checkpoint's size on disk.

Run from the repository root with the fixtures' Python (transformers 5.17 writes the checkpoint; the
measurement itself needs only the standard library) and a release build:

    cargo build --release -p horizon-cli
    python bench/memory.py --num-layers 8 --dtypes bf16,f32

The tokenizer is the LLaVA fixture's (fixtures/llava/models/llava-tiny, `<image>` = 500; every id is
below the 7B vocabulary of 32064), so the prompts are shorter than with Vicuna's tokenizer; the 576
visual tokens and all weight shapes are the published ones. The checkpoint is written under --work
(several GB) and deleted at the end unless --keep. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

# config.json of llava-hf/llava-1.5-7b-hf as published (the one `horizon bench` has built in).
LLAVA_1_5_7B_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}

TOKENIZER_SOURCE = Path("fixtures/llava/models/llava-tiny")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2}
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def write_checkpoint(dest: Path, num_layers: int, seed: int) -> None:
    """The random-weight checkpoint, written to dest.tmp and renamed when complete."""
    import torch
    import transformers
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    cfg = json.loads(json.dumps(LLAVA_1_5_7B_CONFIG))
    cfg["text_config"]["num_hidden_layers"] = num_layers
    processor = AutoProcessor.from_pretrained(TOKENIZER_SOURCE)
    tok = processor.tokenizer
    cfg["image_token_index"] = tok.convert_tokens_to_ids("<image>")
    cfg["pad_token_id"] = tok.pad_token_id
    config = LlavaConfig(**cfg)
    torch.manual_seed(seed)
    # Built directly in bf16 (the same weights as building in f32 and casting, at half the memory).
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    # CLIP ViT-L/14-336's image processor: resize the shortest edge to 336, centre crop 336 x 336.
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    processor.patch_size = 14
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "WRITTEN_BY.json").write_text(
        json.dumps(
            {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "num_layers": num_layers,
                "seed": seed,
            }
        )
    )
    del model
    tmp.rename(dest)


def safetensors_elements(ckpt: Path) -> tuple[int, int]:
    """(elements, bytes) of every tensor in the checkpoint's shards, from their headers."""
    elements = stored = 0
    for shard in sorted(ckpt.glob("*.safetensors")):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            elements += count
            stored += count * SAFETENSORS_BYTES[info["dtype"]]
    return elements, stored


def prompt_tokens(ckpt: Path, stderr: list[str]) -> int | None:
    """Tokens of the first prompt `horizon info` prints, with the image placeholder counted as the
    576 visual tokens it becomes (the tokenizer adds BOS)."""
    from tokenizers import Tokenizer

    try:
        start = next(i for i, line in enumerate(stderr) if line.startswith("first prompt"))
    except StopIteration:
        return None
    text = "\n".join(line[4:] for line in stderr[start + 1 :] if line.startswith("    "))
    ids = Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(text).ids
    image = Tokenizer.from_file(str(ckpt / "tokenizer.json")).token_to_id("<image>")
    return len(ids) - ids.count(image) + 576 * ids.count(image)


def status_kib(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields or None


def measure(cmd: list[str], loaded_marker: re.Pattern[str]) -> dict:
    """Runs cmd, polling its resident set; the sample taken when loaded_marker appears on stderr is
    the memory of the loaded model."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, dict[str, int]]] = []
    loaded: dict[str, int] = {}
    stderr_lines: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            s = status_kib(proc.pid)
            if s:
                samples.append((time.monotonic() - start, s))
            time.sleep(0.02)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line.rstrip("\n"))
            if not loaded and loaded_marker.search(line):
                s = status_kib(proc.pid)
                if s:
                    loaded.update(s)
                    loaded["t_s"] = round(time.monotonic() - start, 2)

    poller = threading.Thread(target=poll, daemon=True)
    reader = threading.Thread(target=read_stderr, daemon=True)
    poller.start()
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    reader.join()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(stderr_lines[-20:]))
    if not loaded:
        sys.exit(f"{' '.join(cmd)}: no line matching {loaded_marker.pattern!r} on stderr")
    peak = lambda key: max((s.get(key, 0) for _, s in samples), default=0)  # noqa: E731
    at_peak = max(samples, key=lambda ts: ts[1].get("VmRSS", 0))[1] if samples else {}
    return {
        "command": cmd,
        "wall_s": round(wall, 1),
        "peak_rss_kib": usage.ru_maxrss,  # KiB on Linux
        "polled_peak_rss_kib": peak("VmRSS"),
        "polled_peak_anon_kib": peak("RssAnon"),
        "polled_peak_file_kib": peak("RssFile"),
        "at_peak": at_peak,
        "loaded": loaded,
        "stderr": stderr_lines,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizon", default="target/release/horizon", help="the horizon binary")
    ap.add_argument("--work", default="/tmp/horizon-memory", help="checkpoint and run outputs go here")
    ap.add_argument("--num-layers", type=int, default=8, help="decoder layers of the checkpoint")
    ap.add_argument("--dtypes", default="bf16,f32", help="horizon info --dtype of each run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bench", default="data/synthetic/test.parquet")
    ap.add_argument("--limit", type=int, default=2, help="samples per run")
    ap.add_argument("--layers", default="1,7", help="horizon info --layers")
    ap.add_argument("--template", default="vicuna-v1")
    ap.add_argument("--memory-budget-mb", type=int, help="horizon info --memory-budget-mb (default: its own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint for later runs")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"llava-1.5-7b-{args.num_layers}layers-bf16"
    if not ckpt.is_dir():
        t = time.monotonic()
        print(f"writing {ckpt} ...", file=sys.stderr)
        write_checkpoint(ckpt, args.num_layers, args.seed)
        print(f"  written in {time.monotonic() - t:.0f} s", file=sys.stderr)
    on_disk = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    shards = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    elements, stored = safetensors_elements(ckpt)
    gib = 1 << 30
    print(
        f"checkpoint {ckpt.name}: {elements / 1e9:.3f} G elements, shards {shards / gib:.2f} GiB "
        f"({stored / gib:.2f} GiB tensor data), directory {on_disk / gib:.2f} GiB"
    )
    results = []
    marker = re.compile(r"horizon info: \d+ samples \(\d+ already done\)")
    for dtype in args.dtypes.split(","):
        out = work / f"out-{dtype}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            args.horizon, "info", "--model", str(ckpt), "--bench", args.bench,
            "--limit", str(args.limit), "--layers", args.layers, "--template", args.template,
            "--dtype", dtype, "--device", args.device, "--out", str(out),
        ]  # fmt: skip
        if args.memory_budget_mb is not None:
            cmd += ["--memory-budget-mb", str(args.memory_budget_mb)]
        load = os.getloadavg()
        r = measure(cmd, marker)
        weights = elements * DTYPE_BYTES[dtype]
        kib = 1024
        peak = r["peak_rss_kib"] * kib
        loaded_anon = r["loaded"].get("RssAnon", 0) * kib
        activations = r["polled_peak_anon_kib"] * kib - loaded_anon
        row = {
            "dtype": dtype,
            "load_average": [round(x, 2) for x in load],
            "checkpoint_bytes": shards,
            "weights_bytes": weights,
            "peak_rss_bytes": peak,
            "loaded_anon_bytes": loaded_anon,
            "loaded_file_bytes": r["loaded"].get("RssFile", 0) * kib,
            "peak_anon_bytes": r["polled_peak_anon_kib"] * kib,
            "peak_file_bytes": r["polled_peak_file_kib"] * kib,
            "activations_bytes": activations,
            "peak_over_checkpoint": round(peak / shards, 3),
            "peak_over_checkpoint_plus_activations": round(peak / (shards + activations), 3),
            **{k: r[k] for k in ("command", "wall_s", "at_peak", "loaded")},
            "stderr_tail": r["stderr"][-6:],
        }
        row["prompt_tokens"] = prompt_tokens(ckpt, r["stderr"])
        results.append(row)
        print(
            f"--dtype {dtype}: peak RSS {peak / gib:.2f} GiB = {row['peak_over_checkpoint']:.2f}x the checkpoint "
            f"({shards / gib:.2f} GiB); weights at {dtype} {weights / gib:.2f} GiB; loaded: anon "
            f"{loaded_anon / gib:.2f} GiB + file {row['loaded_file_bytes'] / gib:.2f} GiB; peak anon "
            f"{row['peak_anon_bytes'] / gib:.2f} GiB, peak file {row['peak_file_bytes'] / gib:.2f} GiB; "
            f"activations (peak anon - loaded anon) {activations / gib:.2f} GiB; "
            f"peak / (checkpoint + activations) = {row['peak_over_checkpoint_plus_activations']:.2f}; "
            f"{row['prompt_tokens']} prompt tokens; {r['wall_s']} s, load average {load[0]:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(ckpt), "elements": elements, "runs": results}, indent=1))
    if not args.keep:
        shutil.rmtree(ckpt)
        for dtype in args.dtypes.split(","):
            shutil.rmtree(work / f"out-{dtype}", ignore_errors=True)


if __name__ == "__main__":
    main()
