"""Where reading a glyph string fails: teacher-forced accuracy of each answer glyph, by string length. A
diagnostic for the training work (not a test).

For every `read_text` sample of the bundled split, runs HF transformers (`LlavaForConditionalGeneration`,
eager attention) on the prompt followed by the reference answer and reports, for glyph k of strings of n
glyphs, how often the next-token argmax at the position that predicts it is that glyph (so glyph k is
scored with the right glyphs before it, unlike `horizon eval`'s greedy answer), and per layer the
largest attention mass of any head on the patches that glyph's box overlaps.

Run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python docs/diagnostics/reading_positions.py data/models/horizon-large
"""

import collections
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
PATCH, GRID = 8, 8

torch.set_num_threads(1)
name = sys.argv[1]
bench = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "data/synthetic/test.parquet")
model = LlavaForConditionalGeneration.from_pretrained(name, attn_implementation="eager").eval()
proc = AutoProcessor.from_pretrained(name)
rows = [r for r in pq.read_table(bench).to_pylist() if r["category"] == "read_text"]
acc = collections.defaultdict(lambda: [0, 0])
mass = collections.defaultdict(list)
for r in rows:
    glyphs = json.loads(r["meta"])["glyphs"]
    n = len(glyphs)
    img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
    text = f"USER: <image>\n{r['question']} ASSISTANT: {r['answer']}"
    ids = proc(images=img, text=text, return_tensors="pt")
    seq = ids["input_ids"][0]
    image_positions = (seq == model.config.image_token_index).nonzero()[:, 0]
    start = len(seq) - n  # one token per glyph, no EOS appended
    with torch.no_grad():
        out = model(**ids, output_attentions=True)
    pred = out.logits[0].argmax(-1)
    for k, g in enumerate(glyphs):
        q = start - 1 + k
        acc[(n, k)][0] += int(pred[q] == seq[q + 1])
        acc[(n, k)][1] += 1
        b = g["bbox"]
        patches = sorted({(y // PATCH) * GRID + x // PATCH
                          for y in range(b["y"], b["y"] + b["h"])
                          for x in range(b["x"], b["x"] + b["w"])})
        cols = image_positions[patches]
        mass[(n, k)].append([a[0, :, q, cols].sum(-1).max().item() for a in out.attentions])
print("glyph k of n: teacher-forced accuracy; largest head mass on its patches, layer 0 up")
for key in sorted(acc):
    ok, total = acc[key]
    m = torch.tensor(mass[key]).mean(0)
    print(f"{key[1] + 1} of {key[0]}: {ok}/{total} ({100 * ok / total:.1f}%);",
          " ".join(f"{v:.2f}" for v in m))
