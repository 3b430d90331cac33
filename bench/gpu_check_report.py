#!/usr/bin/env python3
"""Helpers of bench/gpu_check.sh; needs only torch (no numpy, no safetensors package).

    python bench/gpu_check_report.py logits REF.safetensors OTHER.safetensors LABEL >> rows.jsonl
    python bench/gpu_check_report.py summary OUT_DIR

`logits` compares two `horizon forward --save-logits` files of one prompt (the reference is f32 on the
CPU) and prints one JSON line: the largest absolute difference of the logits, the same over the
largest |logit| of the reference, the mean absolute difference, the share of positions whose top-1
token agrees, whether the last position's top-1 agrees, and the mean KL(ref || other) of the softmax
over positions (nats). `summary` prints every figure of OUT_DIR (map.json, prune.json, logits.jsonl)
as Markdown and writes it to OUT_DIR/summary.md.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        if end == start:
            out[name] = torch.empty(info["shape"], dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(data[start:end]), dtype=dtype).reshape(info["shape"])
    return out


def compare_logits(ref_path: Path, other_path: Path, label: str) -> dict:
    ref, other = read_safetensors(ref_path), read_safetensors(other_path)
    for key in ("input_ids", "kept"):
        if not torch.equal(ref[key], other[key]):
            sys.exit(f"{other_path}: {key} differs from {ref_path}")
    a = ref["logits"].double()
    b = other["logits"].double()
    diff = (a - b).abs()
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    kl = (a.log_softmax(-1).exp() * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1)
    return {
        "label": label,
        "positions": a.shape[0],
        "vocab": a.shape[1],
        "max_abs": diff.max().item(),
        "max_abs_over_max_logit": (diff.max() / a.abs().max()).item(),
        "mean_abs": diff.mean().item(),
        "top1_agree": (top_a == top_b).double().mean().item(),
        "last_top1_agree": bool(top_a[-1] == top_b[-1]),
        "mean_kl": kl.mean().item(),
    }


def summary(out: Path) -> str:
    lines = [f"# GPU check: {out}", ""]
    env = out / "environment.txt"
    if env.exists():
        lines += ["```", env.read_text().strip(), "```", ""]
    m = json.loads((out / "map.json").read_text())
    per_sample = m["engine_s"] + sum(m["forward_s"]) / len(m["forward_s"])
    lines += [
        f"## Keep-only map: {m['config']}, {m['num_layers']} decoder layers, {m['dtype']} on {m['device']}",
        "",
        f"{m['seq_len']} tokens ({m['visual_tokens']} visual, {m.get('text_before')} text tokens after BOS "
        f"before the image), cut layers {m['sweep_layers'][0]}-"
        f"{m['sweep_layers'][-1]} ({len(m['sweep_layers'])}), window {m['window']}, {m['variants']} variants",
        "",
        "| measure | value |",
        "|---|---|",
        f"| random weights built in | {m['load_s']:.1f} s |",
        f"| plain forward (mean of {len(m['forward_s'])}) | {sum(m['forward_s']) / len(m['forward_s']):.4f} s |",
        f"| engine, all variants of one sample | {m['engine_s']:.3f} s |",
        f"| seconds per sample (plain forward + engine) | **{per_sample:.3f} s** (goal <= 4 s) |",
    ]
    if m.get("naive_total_s") is not None:
        lines += [
            f"| naive, one cut forward per variant ({m['naive_variants_run']} run) | "
            f"{m['naive_s_per_variant']:.4f} s/variant, {m['naive_total_s']:.1f} s for all |",
            f"| engine speed-up over naive | **{m['speedup']:.1f}x** |",
        ]
    if m.get("gradient_s") is not None:
        lines.append(
            f"| one-pass gradient estimate of the same rows (`--estimate gradient`) | {m['gradient_s']:.3f} s "
            f"(the engine {m['engine_s'] / m['gradient_s']:.1f}x as long) |"
        )
    elif m.get("gradient_error"):
        lines.append(f"| one-pass gradient estimate | failed: {m['gradient_error']} |")
    if m.get("useful_flops") and m.get("matmul_flops_per_s"):
        rate = m["useful_flops"] / m["engine_s"]
        lines.append(
            f"| useful FLOP rate of the engine / measured matmul rate | {rate / 1e12:.2f} / "
            f"{m['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s ({100 * rate / m['matmul_flops_per_s']:.0f}%) |"
        )
    lines += [
        "",
        "## Logits against f32 on the CPU (fixtures)",
        "",
        "| model, run | positions | max abs diff | / max abs logit | mean abs diff | top-1 agree | last top-1 | mean KL (nats) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line in (out / "logits.jsonl").read_text().splitlines():
        r = json.loads(line)
        lines.append(
            f"| {r['label']} | {r['positions']} | {r['max_abs']:.3g} | {r['max_abs_over_max_logit']:.3g} | "
            f"{r['mean_abs']:.3g} | {100 * r['top1_agree']:.1f}% | {'yes' if r['last_top1_agree'] else 'NO'} | "
            f"{r['mean_kl']:.3g} |"
        )
    p = json.loads((out / "prune.json").read_text())
    lines += [
        "",
        f"## Pruned prefill: {p['config']}, {p['num_layers']} decoder layers, {p['dtype']} on {p['device']}, "
        f"{p['seq_len']} tokens ({p['visual_tokens']} visual)",
        "",
        f"| spec | prefill (mean of {len(p['prune'][0]['prefill_s'])}) | speed-up vs unpruned | KV cache after prefill | visual T_eq |",
        "|---|---|---|---|---|",
    ]
    for r in p["prune"]:
        mean = sum(r["prefill_s"]) / len(r["prefill_s"])
        lines.append(
            f"| `{r['spec']}` | {1000 * mean:.2f} ms | {r['speedup']:.2f}x | "
            f"{r['kv_cache_bytes'] / 2**20:.1f} MiB | {r['visual_t_eq']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "logits":
        print(json.dumps(compare_logits(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])))
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        print(summary(Path(sys.argv[2])), end="")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
