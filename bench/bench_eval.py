"""`horizon eval` throughput against HF `generate` on the same bundled samples, in one run.

- horizon: `horizon eval` unpruned (wall time of the command, model load included), then
  `horizon eval --prune SPEC` (the unpruned run and the pruned one, each in its subdirectory); the
  per-sample end-to-end latency of each spec comes from its summary.json.
- HF: `LlavaForConditionalGeneration.generate` (transformers, f32, CPU, sdpa, greedy, batch 1, the same
  max_new_tokens), model load included in its wall time; its answers are compared with horizon's
  unpruned predictions. transformers has no FastV or other token pruning in `generate`, so the HF peer
  is unpruned only.

Run from the repository root with the pinned stack of fixtures/requirements.txt (`make bench`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizon", default=str(ROOT / "target/release/horizon"))
    ap.add_argument("--model", default=str(ROOT / "data/models/horizon-large"))
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    ap.add_argument("--limit", type=int, default=50, help="the first N samples of the benchmark")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--prune", default="fastv@2:50%")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS for horizon)")
    ap.add_argument("--out", default=str(ROOT / "out/bench/eval"))
    return ap.parse_args()


def horizon_eval(args, out: Path, extra: list[str]) -> float:
    if out.exists():
        shutil.rmtree(out)
    cmd = [args.horizon, "eval", "--model", args.model, "--bench", args.bench, "--out", str(out),
           "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def hf_generate(args) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    proc = AutoProcessor.from_pretrained(args.model, backend="pil")
    rows = pq.read_table(args.bench, columns=["question_id", "image", "question"]).to_pylist()[: args.limit]
    answers, t_gen = {}, 0.0
    with torch.no_grad():
        for row in rows:
            image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            t1 = time.perf_counter()
            inputs = proc(images=image, text=f"USER: <image>\n{row['question']} ASSISTANT:", return_tensors="pt")
            gen = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            answers[row["question_id"]] = proc.tokenizer.decode(
                gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            t_gen += time.perf_counter() - t1
    return time.perf_counter() - t0, t_gen / len(rows), answers


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_none = horizon_eval(args, out / "none", [])
    t_hf, hf_ms, hf_answers = hf_generate(args)
    t_pruned = horizon_eval(args, out / "pruned", ["--prune", args.prune])
    t_none2 = horizon_eval(args, out / "none-2", [])
    t_h = (t_none + t_none2) / 2
    preds = pq.read_table(out / "none/predictions.parquet", columns=["question_id", "prediction"]).to_pylist()
    same = sum(1 for p in preds if p["prediction"].strip() == hf_answers.get(p["question_id"]))
    summary = {s["spec"]: s for s in json.loads((out / "pruned/summary.json").read_text())}
    n = args.limit
    print(f"\n{n} samples, max_new_tokens {args.max_new_tokens}, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"horizon eval unpruned (wall, model load included; runs {t_none:.2f} s, {t_none2:.2f} s): {t_h:.2f} s "
          f"= {n / t_h:.1f} samples/s")
    print(f"HF generate unpruned (wall, model load included): {t_hf:.2f} s = {n / t_hf:.1f} samples/s "
          f"-> horizon {t_hf / t_h:.2f}x")
    print(f"per sample end to end: HF generate {1000 * hf_ms:.1f} ms; horizon unpruned "
          f"{summary['none']['end_to_end_ms']:.1f} ms ({hf_ms * 1000 / summary['none']['end_to_end_ms']:.2f}x), "
          f"{args.prune} {summary[args.prune]['end_to_end_ms']:.1f} ms "
          f"({hf_ms * 1000 / summary[args.prune]['end_to_end_ms']:.2f}x)")
    print(f"horizon eval --prune {args.prune} (wall: the unpruned and the pruned run): {t_pruned:.2f} s")
    print(f"answers equal to HF generate's: {same} of {len(preds)}")


if __name__ == "__main__":
    main()
