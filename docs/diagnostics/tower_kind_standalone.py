"""Can a from-scratch CLIP tower of the bundled small model's size learn which shape kind covers each
patch? A diagnostic for the training work (not a test).

Trains HF `CLIPVisionModel` (64 px images, 8 px patches) plus a linear head on one per-patch target,
the kind of the shape covering the patch centre (none, circle, square, triangle; "none" weighs 0.2 as in
the trainer's per-patch loss), on the coarse samples of a synthetic benchmark, and reports the held-out
accuracy on the patches inside a shape. Make the data with
    ./target/release/horizon synth --out /tmp/big.parquet --per-category 2000 --seed 77
then run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python docs/diagnostics/tower_kind_standalone.py /tmp/big.parquet [--init-std 0.02]
"""

import argparse
import io
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from patch_probe import COARSE, shape_contains

KINDS = {"circle": 1, "square": 2, "triangle": 3}
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench")
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--init-std", type=float, default=None,
                    help="re-initialise every weight matrix at this std (the trainer uses 0.02)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    rows = [r for r in pq.read_table(args.bench).to_pylist() if r["category"] in COARSE]
    images, targets = [], []
    for r in rows:
        meta = json.loads(r["meta"])
        img = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB"), dtype=np.float32)
        images.append((torch.from_numpy(img).permute(2, 0, 1) / 255 - MEAN) / STD)
        side = img.shape[0] // 8
        t = torch.zeros(side * side, dtype=torch.long)
        for p in range(side * side):
            x, y = (p % side) * 8 + 4, (p // side) * 8 + 4
            hit = [s for s in meta["shapes"] if shape_contains(s["kind"], s["bbox"], x, y)]
            if hit:
                t[p] = KINDS[hit[-1]["kind"]]
        targets.append(t)
    x, y = torch.stack(images), torch.stack(targets)
    test = torch.arange(len(y)) < 500
    train_idx, test_idx = (~test).nonzero().squeeze(1), test.nonzero().squeeze(1)[:300]

    cfg = CLIPVisionConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                           num_hidden_layers=args.layers, num_attention_heads=4,
                           image_size=x.shape[-1], patch_size=8)
    tower, head = CLIPVisionModel(cfg), torch.nn.Linear(args.hidden, 4)
    if args.init_std is not None:
        for p in tower.parameters():
            if p.dim() >= 2:
                torch.nn.init.normal_(p, std=args.init_std)
    opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=args.lr,
                            weight_decay=0.01)
    weight = torch.tensor([0.2, 1.0, 1.0, 1.0])

    def accuracy():
        with torch.no_grad():
            pred = head(tower(pixel_values=x[test_idx]).last_hidden_state[:, 1:]).argmax(-1)
        inside = y[test_idx] > 0
        return (pred[inside] == y[test_idx][inside]).float().mean().item()

    start = time.time()
    for step in range(1, args.steps + 1):
        batch = train_idx[torch.randint(len(train_idx), (32,))]
        logits = head(tower(pixel_values=x[batch]).last_hidden_state[:, 1:])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), y[batch].reshape(-1), weight=weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            print(f"step {step}: held-out kind accuracy on shape patches {accuracy():.1%} "
                  f"({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
