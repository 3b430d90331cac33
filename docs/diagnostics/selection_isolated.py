"""The selection step in isolation: can one attention head learn to pick the asked shape's patches,
with its query from a learnable embedding of the shape's word and its keys from the frozen visual tokens
of a bundled model? A diagnostic for the training work (not a test).

Every shape of the first shape_color images is asked about; the loss is -log of the attention mass on
the patches of that shape's box; a fifth of the questions are held out. Run from the repository root:
    .venv/bin/python docs/diagnostics/selection_isolated.py MODEL EMBED_STD LR QK_STD
e.g. `data/models/horizon-small 0.02 2e-3 0.02` (the trainer's scales) or `... 1.0 1e-2 0.2`.
"""
import io, json, sys, torch, pyarrow.parquet as pq
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from patch_probe import visual_tokens
torch.manual_seed(0)
name = sys.argv[1]; emb_std = float(sys.argv[2]); lr = float(sys.argv[3]); qk = float(sys.argv[4])
m = LlavaForConditionalGeneration.from_pretrained(name).eval()
proc = AutoProcessor.from_pretrained(name)
rows = [r for r in pq.read_table("data/synthetic/test.parquet").to_pylist() if r["category"] == "shape_color"]
K = {"circle": 0, "square": 1, "triangle": 2}
feats, asked, ev = [], [], []
for r in rows:
    meta = json.loads(r["meta"])
    img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
    f = visual_tokens(m, proc, img)  # RMS-normalized, as the decoder's first norm sees them
    for s in meta["shapes"]:  # ask about every shape: evidence = that shape's patches
        x, y, w, h = s["bbox"]["x"], s["bbox"]["y"], s["bbox"]["w"], s["bbox"]["h"]
        mask = torch.zeros(64)
        for py in range(y // 8, (y + h - 1) // 8 + 1):
            for pxx in range(x // 8, (x + w - 1) // 8 + 1):
                mask[py * 8 + pxx] = 1
        feats.append(f); asked.append(K[s["kind"]]); ev.append(mask)
F = torch.stack(feats); A = torch.tensor(asked); E = torch.stack(ev)
n = len(A); tr = torch.arange(n) % 5 != 0; te = ~tr
d = F.shape[-1]; dh = 24
emb = torch.nn.Parameter(torch.randn(3, d) * emb_std)
Wq = torch.nn.Parameter(torch.randn(dh, d) * qk); Wk = torch.nn.Parameter(torch.randn(dh, d) * qk)
opt = torch.optim.AdamW([emb, Wq, Wk], lr=lr, weight_decay=0.01)
def mass(idx):
    e = emb[A[idx]]; e = e / e.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    q = e @ Wq.T; k = F[idx] @ Wk.T
    a = torch.softmax((k @ q.unsqueeze(-1)).squeeze(-1) / dh ** 0.5, -1)
    return (a * E[idx]).sum(-1)
tri, tei = tr.nonzero().squeeze(1), te.nonzero().squeeze(1)
print(f"{n} questions; evidence patches per question {E.sum(1).mean():.1f}")
for step in range(1, 1501):
    b = tri[torch.randint(len(tri), (32,))]
    loss = -(mass(b) + 1e-6).log().mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step in (50, 100, 200, 400, 800, 1500):
        with torch.no_grad(): print(step, f"train mass {mass(tri).mean():.3f} held-out {mass(tei).mean():.3f}")
