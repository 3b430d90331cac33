"""Can a bundled-style model's visual tokens be counted? A diagnostic for the training work (not a test).

`count_circles` asks for the number of circles (1-5) among up to two other shapes. A decoder head that
attends evenly over the 64 visual tokens receives their mean, so what the mean of the tokens says about
the count bounds what such a head can pass on. For the `count_circles` images of a benchmark this
reports:

- the tower's own per-object marks: the trainer's per-patch head (training only, saved in the run's
  `checkpoint/aux_head.safetensors`) has a target group "kind of the shape centred in this patch";
  counting the patches it marks "circle" gives a count per image (exact-match accuracy, and by the
  smallest circle's width), and counting the patches it marks as covered by a circle gives the
  area-like count a mass-based reader would see;
- a linear probe (5 classes) on the mean of the RMS-normalized visual tokens (as the decoder's first
  norm sees them), fitted on the first 4/5 of the images and scored on the last fifth.

Run from the repository root with the pinned stack of fixtures/requirements.txt, on a benchmark with
more count images than the bundled split (e.g. `horizon synth --per-category 1500 --seed 5 --out F`):
    .venv/bin/python scripts/count_probe.py MODEL_DIR RUN_DIR/checkpoint/aux_head.safetensors --bench F
"""

import argparse
import io
import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from patch_probe import projected_tokens

ROOT = Path(__file__).resolve().parent.parent
# The per-patch head's output, in the trainer's order (crates/horizon-train/src/aux.rs,
# `group_classes`): 4 quadrant groups each of glyph (1 + 28), reading index (5) and boxed flag (2),
# then the covering shape's kind (1 + 3) and colour (1 + 8), then the centred shape's kind (1 + 3).
# Kinds in `ShapeKind::ALL` order: circle, square, triangle; class 0 is "none".
COVER_KIND = 4 * (29 + 5 + 2)
CENTRE_KIND = COVER_KIND + 4 + 9
CIRCLE = 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("aux_head", help="the run's checkpoint/aux_head.safetensors")
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    ap.add_argument("--samples", type=int, default=1500)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    proc = AutoProcessor.from_pretrained(args.model)
    head = load_file(args.aux_head)
    w, b = head["aux_head.weight"], head["aux_head.bias"]
    if w.shape[0] != CENTRE_KIND + 4:
        raise SystemExit(f"{args.aux_head}: aux_head.weight has {w.shape[0]} rows, expected {CENTRE_KIND + 4}")
    rows = [r for r in pq.read_table(args.bench).to_pylist() if r["category"] == "count_circles"]
    rows = rows[: args.samples]

    pooled, truths = [], []
    centre_ok, centre_counts, cover_counts = [], defaultdict(list), defaultdict(list)
    by_size = defaultdict(list)
    for r in rows:
        meta = json.loads(r["meta"])
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        f = projected_tokens(model, proc, img)
        logits = f @ w.T + b
        centres = int((logits[:, CENTRE_KIND : CENTRE_KIND + 4].argmax(-1) == CIRCLE).sum())
        covered = int((logits[:, COVER_KIND : COVER_KIND + 4].argmax(-1) == CIRCLE).sum())
        truth = int(r["answer"])
        circles = [s for s in meta["shapes"] if s["kind"] == "circle"]
        smallest = min(c["bbox"]["w"] for c in circles)
        centre_ok.append(centres == truth)
        centre_counts[truth].append(centres)
        by_size[f"{smallest // 4 * 4}-{smallest // 4 * 4 + 3}px"].append(centres == truth)
        cover_counts[truth].append(covered)
        normed = f / f.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        pooled.append(normed.mean(0))
        truths.append(truth - 1)

    n = len(rows)
    print(f"{args.model}: {n} count_circles images of {args.bench}")
    print(f"patches the per-patch head marks as a circle's centre, counted: {sum(centre_ok) / n:.1%} exact")
    for k in sorted(by_size):
        ok = by_size[k]
        print(f"  smallest circle {k:>8}: {sum(ok) / len(ok):6.1%} of {len(ok)}")
    print("patches marked as a circle's centre, mean by true count:")
    for k in sorted(centre_counts):
        c = centre_counts[k]
        print(f"  {k} circles: {sum(c) / len(c):5.1f} patches (min {min(c)}, max {max(c)})")
    print("patches it marks as covered by a circle (an area, not a count), mean by true count:")
    for k in sorted(cover_counts):
        c = cover_counts[k]
        print(f"  {k} circles: {sum(c) / len(c):5.1f} patches (min {min(c)}, max {max(c)})")

    x, y = torch.stack(pooled), torch.tensor(truths)
    split = n * 4 // 5
    pw = torch.zeros(5, x.shape[1], requires_grad=True)
    pb = torch.zeros(5, requires_grad=True)
    opt = torch.optim.Adam([pw, pb], lr=1e-2)
    for _ in range(3000):
        loss = torch.nn.functional.cross_entropy(x[:split] @ pw.T + pb, y[:split])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_acc = ((x[:split] @ pw.T + pb).argmax(-1) == y[:split]).float().mean().item()
        test_acc = ((x[split:] @ pw.T + pb).argmax(-1) == y[split:]).float().mean().item()
    majority = torch.bincount(y[split:]).max().item() / (n - split)
    print(
        f"linear probe on the mean of the normalized tokens: held-out {test_acc:.1%} of {n - split} "
        f"(fit {train_acc:.1%}; majority class {majority:.1%})"
    )


if __name__ == "__main__":
    main()
