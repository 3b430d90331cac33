"""Does a bundled-style model read the question? A diagnostic for the training work (not a test).

For each `shape_color` image of the bundled benchmark with two or more shapes, asks "What color is the
{kind}?" for every shape kind drawn, with HF transformers (`LlavaForConditionalGeneration`, its default
sdpa attention), and reports:

- how often the asked shape's colour is the top answer (accuracy over all (image, kind) questions);
- how often the top answer differs between two kinds asked about the same image (0 = the answer ignores
  the question);
- the largest change of the answer distribution between kinds (total variation, mean over images).

Run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python docs/diagnostics/question_sensitivity.py data/models/horizon-large [--images 40]
"""

import argparse
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    ap.add_argument("--images", type=int, default=40)
    args = ap.parse_args()

    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    proc = AutoProcessor.from_pretrained(args.model)
    rows = pq.read_table(args.bench).to_pylist()
    rows = [r for r in rows if r["category"] == "shape_color" and len(json.loads(r["meta"])["shapes"]) >= 2]
    rows = rows[: args.images]

    correct = asked = changed = 0
    tv_sum = 0.0
    for r in rows:
        shapes = json.loads(r["meta"])["shapes"]
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        dists, tops = [], []
        for s in shapes:
            q = f"What color is the {s['kind']}?"
            enc = proc(images=img, text=f"USER: <image>\n{q} ASSISTANT:", return_tensors="pt")
            with torch.no_grad():
                p = model(**enc).logits[0, -1].softmax(-1)
            top = proc.tokenizer.decode([int(p.argmax())]).strip()
            correct += top == s["color"]
            asked += 1
            dists.append(p)
            tops.append(top)
        changed += len(set(tops)) > 1
        tv_sum += max(0.5 * (a - b).abs().sum().item() for a in dists for b in dists)
    n = len(rows)
    print(f"{args.model}: {n} images, {asked} questions")
    print(f"  asked shape's colour is the top answer: {correct / asked:.1%}")
    print(f"  images whose top answer changes with the asked kind: {changed / n:.1%}")
    print(f"  mean largest total-variation distance between kinds: {tv_sum / n:.3f}")


if __name__ == "__main__":
    main()
