"""Where does a bundled-style model miscount circles? A diagnostic for the training work (not a test).

For each `count_circles` sample of the bundled benchmark, runs HF transformers
(`LlavaForConditionalGeneration`, its default sdpa attention) on the llava-hf prompt and takes the top next token
as the answer (what `horizon eval` greedy-decodes first). Reports:

- the confusion matrix, true count (rows) by answered count (columns);
- accuracy by the number of other shapes drawn (0-2 squares/triangles besides the circles), and the mean
  signed error for each (if other shapes are counted as circles, it grows with their number);
- accuracy by the smallest circle's size (bbox width) and by crowding (fewest pixels between two circle
  centres, relative to their radii: < 0 means the discs overlap).

Run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python docs/diagnostics/count_confusion.py data/models/horizon-large [--samples 200]
"""

import argparse
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]


def gap(a, b):
    """Pixels between the rims of two circles (negative when they overlap)."""
    (ax, ay), (bx, by) = a["center"], b["center"]
    return math.hypot(ax - bx, ay - by) - (a["bbox"]["w"] + b["bbox"]["w"]) / 2


def bucket_table(title, buckets):
    print(title)
    for key in sorted(buckets):
        ok = buckets[key]
        print(f"  {key:>10}: {sum(ok) / len(ok):6.1%} of {len(ok)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()

    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    proc = AutoProcessor.from_pretrained(args.model)
    rows = [r for r in pq.read_table(args.bench).to_pylist() if r["category"] == "count_circles"]
    rows = rows[: args.samples]

    confusion = defaultdict(Counter)
    by_other, by_size, by_gap = defaultdict(list), defaultdict(list), defaultdict(list)
    signed_error = defaultdict(list)
    for r in rows:
        meta = json.loads(r["meta"])
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        enc = proc(images=img, text=f"USER: <image>\n{r['question']} ASSISTANT:", return_tensors="pt")
        with torch.no_grad():
            top = int(model(**enc).logits[0, -1].argmax())
        answer = proc.tokenizer.decode([top]).strip()
        truth = r["answer"]
        ok = answer == truth
        confusion[truth][answer] += 1

        circles = [s for s in meta["shapes"] if s["kind"] == "circle"]
        n_other = len(meta["shapes"]) - len(circles)
        by_other[n_other].append(ok)
        if answer.isdigit():
            signed_error[n_other].append(int(answer) - int(truth))
        smallest = min(c["bbox"]["w"] for c in circles)
        by_size[f"{smallest // 4 * 4}-{smallest // 4 * 4 + 3}px"].append(ok)
        if len(circles) >= 2:
            g = min(gap(a, b) for i, a in enumerate(circles) for b in circles[i + 1 :])
            label = "overlap" if g < 0 else ("<4px" if g < 4 else ">=4px")
            by_gap[label].append(ok)

    answers = sorted({a for c in confusion.values() for a in c})
    print(f"{args.model}: {len(rows)} count_circles samples")
    print("true \\ answered " + " ".join(f"{a:>5}" for a in answers) + "   accuracy")
    for truth in sorted(confusion):
        c = confusion[truth]
        n = sum(c.values())
        print(f"{truth:>15} " + " ".join(f"{c[a]:>5}" for a in answers) + f"   {c[truth] / n:6.1%} of {n}")
    bucket_table("accuracy by number of other shapes:", by_other)
    print("mean answered minus true count, by number of other shapes (do they count as circles?):")
    for k in sorted(signed_error):
        e = signed_error[k]
        print(f"  {k:>10}: {sum(e) / len(e):+.2f} over {len(e)}")
    bucket_table("accuracy by smallest circle's width:", by_size)
    bucket_table("accuracy by closest pair of circles (2+ circles):", by_gap)


if __name__ == "__main__":
    main()
