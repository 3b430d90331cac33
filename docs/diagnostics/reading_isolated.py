"""The reading path in isolation: can a minimal reader get the answer of the reading tasks out of the
frozen visual tokens of a model? A diagnostic for the training work (not a test).

The reader is one attention layer over the tokens (RMS-normalized, as the decoder's first norm sees
them; learnable positional embeddings added to its keys, since a bare visual token does not say where
its patch is) with one learnable query per answer position (4 for `read_text`: up to 3 glyphs and an
end mark; 1 for `boxed_char`) and a linear map from what it attends to onto the 28 glyphs + "end".
Trained with AdamW on cross-entropy; a fifth of the images are held out. Reported: held-out per-glyph
accuracy and exact match of the whole answer.

If this reader reaches high accuracy in a few hundred steps, the tokens carry what reading needs and
a decoder that fails to read fails on the language side (optimization); if it does not, the tower is
the bottleneck.

Run from the repository root (a benchmark with enough reading samples: `horizon synth --per-category
1500 --seed 5 --out F`):
    .venv/bin/python docs/diagnostics/reading_isolated.py MODEL BENCH.parquet [STEPS]
"""

import io
import json
import sys

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from patch_probe import visual_tokens

torch.manual_seed(0)
torch.set_num_threads(1)
name, bench = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
model = LlavaForConditionalGeneration.from_pretrained(name).eval()
proc = AutoProcessor.from_pretrained(name)
rows = pq.read_table(bench).to_pylist()
GLYPHS = sorted({g["ch"] for r in rows if r["category"] in ("read_text", "boxed_char")
                 for g in json.loads(r["meta"])["glyphs"]})
END = len(GLYPHS)
print(f"{len(GLYPHS)} glyphs: {''.join(GLYPHS)}")


def dataset(category, slots):
    feats, targets = [], []
    for r in rows:
        if r["category"] != category:
            continue
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        feats.append(visual_tokens(model, proc, img))
        t = [GLYPHS.index(c) for c in r["answer"]] + [END] * slots
        targets.append(t[:slots])
    return torch.stack(feats), torch.tensor(targets)


def run(category, slots):
    x, y = dataset(category, slots)
    n, p, d = x.shape
    train = torch.arange(n) % 5 != 0
    test = ~train
    dh = 64
    query = torch.nn.Parameter(torch.randn(slots, dh) * 0.1)
    pos = torch.nn.Parameter(torch.randn(p, dh) * 0.1)
    wk = torch.nn.Parameter(torch.randn(dh, d) * d ** -0.5)
    wv = torch.nn.Parameter(torch.randn(dh * 2, d) * d ** -0.5)
    out = torch.nn.Linear(dh * 2, END + 1)
    params = [query, pos, wk, wv, *out.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)

    def logits(xb):
        k = xb @ wk.T + pos  # [b, p, dh]
        a = torch.softmax(torch.einsum("sd,bpd->bsp", query, k) / dh ** 0.5, -1)
        v = torch.nn.functional.gelu(xb @ wv.T)  # [b, p, 2dh]
        return out(torch.einsum("bsp,bpe->bse", a, v))

    def score(mask):
        with torch.no_grad():
            pred = logits(x[mask]).argmax(-1)
        t = y[mask]
        glyph = t != END
        per_glyph = (pred == t)[glyph].float().mean().item()
        exact = (pred == t).all(-1).float().mean().item()
        return per_glyph, exact

    idx = train.nonzero().squeeze(1)
    print(f"{category}: {n} images ({int(test.sum())} held out), {slots} answer slots")
    for step in range(1, steps + 1):
        b = idx[torch.randint(len(idx), (32,))]
        loss = torch.nn.functional.cross_entropy(logits(x[b]).flatten(0, 1), y[b].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (100, 250, 500, 1000, 1500, 3000, steps):
            tg, te = score(train), score(test)
            print(f"  step {step}: loss {loss.item():.3f}  train glyph {100*tg[0]:.1f}% exact "
                  f"{100*tg[1]:.1f}%  held-out glyph {100*te[0]:.1f}% exact {100*te[1]:.1f}%",
                  flush=True)


run("boxed_char", 1)
run("read_text", 4)
