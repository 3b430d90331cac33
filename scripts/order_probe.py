"""Does the vision tower know the reading order? The per-patch head of a training checkpoint on the
bundled split's `read_text` images: how often it names each glyph, and its place in the string, at the
quadrant of the glyph's centre, by string length. A diagnostic for the training work (not a test).

The head (`aux_head.safetensors` in a run's `checkpoint/`, never exported) is the one `horizon train`
trains on the projected visual tokens; its target groups are, per patch: the glyph whose centre lies in
each 4x4-pixel quadrant (none + 28 glyphs), that glyph's reading-order place (none, 1-4), the boxed flag,
then the shape groups (`horizon_train::aux::group_classes`).

Run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python scripts/order_probe.py RUN_DIR/checkpoint
"""

import collections
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from patch_probe import projected_tokens

ROOT = Path(__file__).resolve().parent.parent
ALPHABET = "0123456789ACEFHJKLMNPRTUVWXY"  # horizon_data::synthetic::font::ALPHABET
GLYPH_CLASSES, ORDER_CLASSES, QUADS, PATCH, GRID = 1 + len(ALPHABET), 5, 4, 8, 8

torch.set_num_threads(1)
ckpt = sys.argv[1]
bench = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "data/synthetic/test.parquet")
model = LlavaForConditionalGeneration.from_pretrained(ckpt).eval()
proc = AutoProcessor.from_pretrained(ckpt)
head = load_file(str(Path(ckpt) / "aux_head.safetensors"))
w, b = head["aux_head.weight"], head["aux_head.bias"]
acc = collections.defaultdict(lambda: [0, 0, 0])
for r in pq.read_table(bench).to_pylist():
    if r["category"] != "read_text":
        continue
    glyphs = json.loads(r["meta"])["glyphs"]
    img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
    logits = projected_tokens(model, proc, img) @ w.T + b
    seen = set()
    for k, g in enumerate(glyphs):
        box = g["bbox"]
        cx, cy = box["x"] + box["w"] // 2, box["y"] + box["h"] // 2
        p = (cy // PATCH) * GRID + cx // PATCH
        q = ((cy % PATCH) // (PATCH // 2)) * 2 + (cx % PATCH) // (PATCH // 2)
        if (p, q) in seen:  # two centres in one quadrant: the trainer keeps the first
            continue
        seen.add((p, q))
        glyph = logits[p, q * GLYPH_CLASSES:(q + 1) * GLYPH_CLASSES].argmax().item()
        o = QUADS * GLYPH_CLASSES + q * ORDER_CLASSES
        place = logits[p, o:o + ORDER_CLASSES].argmax().item()
        a = acc[(len(glyphs), k)]
        a[0] += glyph == 1 + ALPHABET.index(g["ch"])
        a[1] += place == 1 + min(k, 3)
        a[2] += 1
print("glyph k of n: glyph named, place named (at its centre quadrant)")
for (n, k), (g, o, t) in sorted(acc.items()):
    print(f"{k + 1} of {n}: glyph {100 * g / t:.1f}%  place {100 * o / t:.1f}%  ({t})")
