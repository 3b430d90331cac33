"""`horizon info` against two PyTorch (transformers) peers on the same samples, in one run.

Peers, both on the HF `LlavaForConditionalGeneration` of the same checkpoint, f32, CPU, sdpa, batch 1:

- reference: the reference procedure, one forward per (layer K, variant): embeddings with the vision tower
  (`fixtures/hf_cut.py` `embed`), then layers 0..K-1 on the full sequence and layers K.. on the kept
  positions (`hf_cut.cut_forward`, lm_head on the last position);
- stored: one unpruned forward per sample keeping every layer's input (`output_hidden_states`), then per
  (K, variant) the kept rows of layer K's input through layers K.. only (what a careful PyTorch user writes).

Variants per K: the text-only baseline and every s x s window, keep-only (keep only the window's visual
tokens) or leave-out (drop only the window), as `horizon info --mode` says. `horizon info` runs first and
last (its wall time with model load, the mean of both runs is reported), then on the first sample alone,
which gives its cost per further sample without model load, like the peers' times; its rows give the
samples, the target token and the values the peers must reproduce within --tol (p, log p, KL of every
row; |a - b| <= tol * max(1, |b|)).

Run from the repository root with the pinned stack of fixtures/requirements.txt (`make bench`).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
import hf_cut  # noqa: E402  (the fixtures' HF cut oracle: embed, cut_forward, _run_layers, metrics)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizon", default=str(ROOT / "target/release/horizon"))
    ap.add_argument("--model", default=str(ROOT / "data/models/horizon-large"))
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    ap.add_argument("--per-category", type=int, default=1, help="samples per task category (5 categories)")
    ap.add_argument("--mode", default="keep-only", choices=["keep-only", "leave-out"])
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS for horizon)")
    ap.add_argument("--out", default=str(ROOT / "out/bench/info"))
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="largest |a - b| / max(1, |b|) allowed for p, log p and KL")
    ap.add_argument("--skip-reference", action="store_true", help="time only the stored-inputs peer")
    return ap.parse_args()


def run_horizon(args, out: Path, extra: tuple[str, ...] = ()) -> float:
    if out.exists():
        shutil.rmtree(out)
    cmd = [args.horizon, "info", "--model", args.model, "--bench", args.bench, "--out", str(out),
           "--per-category", str(args.per_category), "--mode", args.mode, "--window", str(args.window),
           *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def read_rows(out: Path) -> list[dict]:
    rows = []
    for part in sorted(out.glob("part-*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def windows_of(rows: int, cols: int, s: int) -> list[list[int]]:
    """Visual-grid indices (raster order) of every s x s window, row-major on the window grid; edge windows
    may be partial (horizon_data::window::WindowGrid)."""
    out = []
    for wr in range((rows + s - 1) // s):
        for wc in range((cols + s - 1) // s):
            out.append([r * cols + c for r in range(wr * s, min(rows, wr * s + s))
                        for c in range(wc * s, min(cols, wc * s + s))])
    return out


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    t_h1 = run_horizon(args, out / "horizon")
    rows = read_rows(out / "horizon")
    sample_ids = list(dict.fromkeys(r["sample_id"] for r in rows))
    table = pq.read_table(args.bench, columns=["question_id", "image", "question"]).to_pylist()
    by_id = {r["question_id"]: r for r in table}

    t0 = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    proc = AutoProcessor.from_pretrained(args.model, backend="pil")
    t_load = time.perf_counter() - t0
    lm = model.model.language_model
    layers = lm.layers[: lm.config.num_hidden_layers]
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    grid = windows_of(side, side, args.window)

    expected = {}
    for r in rows:
        expected[(r["sample_id"], r["layer"], r["variant"], r["window"])] = (r["p"], r["logp"], r["kl"], r["target_token"])

    samples = []
    for sid in sample_ids:
        row = by_id[sid]
        image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        prompt = f"USER: <image>\n{row['question']} ASSISTANT:"
        inputs = proc(images=image, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"][0]
        seq = ids.shape[0]
        vis = (ids == model.config.image_token_index).nonzero().flatten().tolist()
        vset = set(vis)
        text_only = [p for p in range(seq) if p not in vset]
        variants = [("text_only", -1, text_only)]
        for w, win in enumerate(grid):
            wset = {vis[t] for t in win}
            keep = ([p for p in range(seq) if p not in vset or p in wset] if args.mode == "keep-only"
                    else [p for p in range(seq) if p not in wset])
            variants.append(("window", w, keep))
        ks = sorted({r["layer"] for r in rows if r["sample_id"] == sid and r["layer"] >= 0})
        y = expected[(sid, -1, "full", -1)][3]
        samples.append((sid, inputs, variants, ks, y))

    def check(results: dict, name: str) -> float:
        per = [0.0, 0.0, 0.0]
        for key, got in results.items():
            for i, (a, b) in enumerate(zip(got, expected[key][:3])):
                # Absolute below 1, relative above (log p and KL reach several nats; f32 logits differ
                # in their last bits between GEMM shapes).
                per[i] = max(per[i], abs(a - b) / max(1.0, abs(b)))
        worst = max(per)
        n = sum(1 for k in expected if k[1] >= 0)
        assert len(results) == n, f"{name}: {len(results)} values, horizon wrote {n}"
        print(f"{name}: max |horizon - {name}| / max(1, |horizon|) over {len(results)} variants = {worst:.2e} (p {per[0]:.1e}, log p {per[1]:.1e}, KL {per[2]:.1e})")
        assert worst <= args.tol, f"{name} differs from horizon info by {worst} > {args.tol}"
        return worst

    def score(logits, y, full_lp):
        m = hf_cut.metrics(logits, y, full_lp)
        return float(m["p_y"]), float(m["log_p_y"]), float(m["kl_full"])

    # Stored-inputs peer.
    t0 = time.perf_counter()
    stored = {}
    with torch.no_grad():
        for sid, inputs, variants, ks, y in samples:
            out_full = model(**inputs, output_hidden_states=True, logits_to_keep=1)
            full_lp = torch.log_softmax(out_full.logits[0, -1].float(), -1)
            hs = out_full.hidden_states
            _, position_ids = hf_cut.embed(model, inputs)
            for k in ks:
                for variant, w, keep in variants:
                    rows_t = torch.tensor(keep, dtype=torch.long)
                    h = hs[k].index_select(1, rows_t)
                    h = hf_cut._run_layers(model, layers[k:], h, position_ids.index_select(1, rows_t))
                    logits = model.lm_head(lm.norm(h)[:, -1:, :])[0, -1].float()
                    stored[(sid, k, variant, w)] = score(logits, y, full_lp)
    t_stored = time.perf_counter() - t0
    d_stored = check(stored, "stored")

    t_ref = None
    if not args.skip_reference:
        t0 = time.perf_counter()
        ref = {}
        with torch.no_grad():
            for sid, inputs, variants, ks, y in samples:
                full_lp = torch.log_softmax(hf_cut.hf_logits_last(model, inputs), -1)
                for k in ks:
                    for variant, w, keep in variants:
                        embeds, position_ids = hf_cut.embed(model, inputs)
                        logits = hf_cut.cut_forward(model, embeds, position_ids, k, keep)
                        ref[(sid, k, variant, w)] = score(logits, y, full_lp)
        t_ref = time.perf_counter() - t0
        check(ref, "reference")

    t_h2 = run_horizon(args, out / "horizon-2")
    t_h = (t_h1 + t_h2) / 2
    n = len(samples)
    # The first sample alone: start-up, model load and one sample. The peers' times exclude their
    # model load, so horizon's cost per further sample is the like-for-like figure.
    t_one = run_horizon(args, out / "horizon-one", ("--limit", "1")) if n > 1 else None
    nvar = sum(len(s[2]) * len(s[3]) for s in samples)
    print(f"\n{n} samples, {nvar} variants, mode {args.mode}, window {args.window}, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"horizon info (wall, model load included; runs {t_h1:.2f} s, {t_h2:.2f} s): "
          f"{t_h:.2f} s = {t_h / n:.3f} s/sample")
    print(f"PyTorch stored-inputs loop (model load {t_load:.2f} s excluded): {t_stored:.2f} s = "
          f"{t_stored / n:.3f} s/sample -> horizon {t_stored / t_h:.1f}x")
    if t_ref is not None:
        print(f"PyTorch one forward per variant (model load excluded): {t_ref:.2f} s = {t_ref / n:.3f} s/sample "
              f"-> horizon {t_ref / t_h:.1f}x")
    if t_one is not None:
        per = (t_h - t_one) / (n - 1)
        line = (f"horizon info per sample after the first ((mean run - one-sample run {t_one:.2f} s) / {n - 1},"
                f" no model load): {per:.3f} s/sample -> {t_stored / n / per:.1f}x the stored-inputs loop")
        if t_ref is not None:
            line += f", {t_ref / n / per:.1f}x one forward per variant"
        print(line)
    print(f"values equal within {args.tol:g} (stored: {d_stored:.1e})")


if __name__ == "__main__":
    main()
