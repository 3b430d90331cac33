"""What do a bundled-style model's visual tokens say about their own patch? A diagnostic for the
training work (not a test).

For every patch of the coarse images of the bundled benchmark whose centre lies inside a drawn shape,
takes the visual token the decoder reads (HF transformers `get_image_features`: CLIP tower + projector),
RMS-normalized as the decoder's first norm sees it, and fits a linear probe (held-out fifth) for:

- the colour of the shape covering the patch, and
- the kind (circle, square, triangle) of that shape;

and for every glyph of the reading images, the token of the patch that holds the glyph's centre:

- which glyph it is (a probe per quadrant of the patch, as the trainer's per-patch head has).

A probe at the majority-class rate means the tokens do not carry that property: no decoder head can then
select patches by it, whatever the training does on the language side.

Run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python docs/diagnostics/patch_probe.py data/models/horizon-large
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
COARSE = ("shape_color", "shape_exists", "count_circles")
READING = ("read_text", "boxed_char")


def shape_contains(kind, b, x, y):
    """The generator's own test (crates/horizon-data/src/synthetic/render.rs, `shape_contains`)."""
    if not (b["x"] <= x < b["x"] + b["w"] and b["y"] <= y < b["y"] + b["h"]):
        return False
    px, py = x + 0.5 - b["x"], y + 0.5 - b["y"]
    w, h = b["w"], b["h"]
    if kind == "square":
        return True
    if kind == "circle":
        r = min(w, h) / 2
        return (px - w / 2) ** 2 + (py - h / 2) ** 2 <= r * r
    return abs(px - w / 2) <= (w / 2) * (py / h)


def projected_tokens(model, proc, img):
    """The image's projected visual tokens (the projector's output, what the trainer's per-patch heads
    read), `[patches, D]`."""
    pixels = proc.image_processor(img, return_tensors="pt").pixel_values
    with torch.no_grad():
        f = model.get_image_features(pixel_values=pixels)
    f = f.pooler_output if hasattr(f, "pooler_output") else f
    while isinstance(f, (list, tuple)):
        f = f[0]
    return f.reshape(-1, f.shape[-1])


def visual_tokens(model, proc, img):
    """The image's visual tokens as the decoder reads them, `[patches, D]`, RMS-normalized as its first
    norm sees them."""
    f = projected_tokens(model, proc, img)
    return f / f.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def probe(x, y, classes):
    n = len(y)
    train, test = torch.arange(n) % 5 != 0, torch.arange(n) % 5 == 0
    w = torch.zeros(classes, x.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(2000):
        loss = torch.nn.functional.cross_entropy(x[train] @ w.T + b, y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = ((x[test] @ w.T + b).argmax(-1) == y[test]).float().mean().item()
    majority = torch.bincount(y[test]).max().item() / int(test.sum())
    return acc, majority


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    args = ap.parse_args()
    torch.manual_seed(0)

    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    proc = AutoProcessor.from_pretrained(args.model)
    patch = model.config.vision_config.patch_size
    side = model.config.vision_config.image_size // patch
    rows = [r for r in pq.read_table(args.bench).to_pylist() if r["category"] in COARSE]

    tokens, kinds, colours = [], [], []
    kind_ids, colour_ids = {}, {}
    for r in rows:
        meta = json.loads(r["meta"])
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        f = visual_tokens(model, proc, img)
        for p in range(side * side):
            x, y = (p % side) * patch + patch // 2, (p // side) * patch + patch // 2
            # Later shapes are drawn over earlier ones.
            hit = [s for s in meta["shapes"] if shape_contains(s["kind"], s["bbox"], x, y)]
            if hit:
                tokens.append(f[p])
                kinds.append(kind_ids.setdefault(hit[-1]["kind"], len(kind_ids)))
                colours.append(colour_ids.setdefault(hit[-1]["color"], len(colour_ids)))
    x = torch.stack(tokens)
    print(f"{args.model}: {len(tokens)} patches inside a shape, linear probe on the normalized tokens")
    for name, y, ids in (("colour", colours, colour_ids), ("kind", kinds, kind_ids)):
        acc, majority = probe(x, torch.tensor(y), len(ids))
        print(f"  {name:6s}: held-out accuracy {acc:.1%} (majority class {majority:.1%})")

    tokens, glyphs, glyph_ids = [], [], {}
    for r in pq.read_table(args.bench).to_pylist():
        if r["category"] not in READING:
            continue
        meta = json.loads(r["meta"])
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        f = visual_tokens(model, proc, img)
        for g in meta["glyphs"]:
            cx, cy = g["bbox"]["x"] + g["bbox"]["w"] // 2, g["bbox"]["y"] + g["bbox"]["h"] // 2
            p = (cy // patch) * side + cx // patch
            quad = ((cy % patch) * 2 // patch) * 2 + (cx % patch) * 2 // patch
            # The token in the block of its quadrant: one linear probe per quadrant.
            t = torch.zeros(4, f.shape[1])
            t[quad] = f[p]
            tokens.append(t.reshape(-1))
            glyphs.append(glyph_ids.setdefault(g["ch"], len(glyph_ids)))
    acc, majority = probe(torch.stack(tokens), torch.tensor(glyphs), len(glyph_ids))
    print(f"  glyph : held-out accuracy {acc:.1%} (majority class {majority:.1%}) over {len(glyphs)} glyphs")


if __name__ == "__main__":
    main()
