"""Does the question's shape word keep its identity in the residual stream? A diagnostic for the
training work (not a test).

For the first `shape_color` questions of the bundled benchmark, runs HF transformers
(`LlavaForConditionalGeneration`, `output_hidden_states`) and reports, per decoder layer, at the
position of the question's shape word (`circle` in "What color is the circle?"):

- the mean norm of the residual stream there and over the image tokens;
- the mean cosine similarity of that residual between questions naming the same kind and between
  questions naming different kinds. When the two are close, later layers cannot tell which shape the
  question asks about: the word's identity has been drowned by what the layers wrote on top of it.

Run from the repository root with the pinned stack of fixtures/requirements.txt:
    .venv/bin/python docs/diagnostics/word_identity.py data/models/horizon-large [--questions 20]
"""

import argparse
import io
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
SHAPE_WORDS = ("\u2581circle", "\u2581square", "\u2581triangle")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--bench", default=str(ROOT / "data/synthetic/test.parquet"))
    ap.add_argument("--questions", type=int, default=20)
    args = ap.parse_args()

    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    proc = AutoProcessor.from_pretrained(args.model)
    image_id = model.config.image_token_index
    rows = pq.read_table(args.bench).to_pylist()
    rows = [r for r in rows if r["category"] == "shape_color"][: args.questions]

    per_layer = {}
    for r in rows:
        img = Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        enc = proc(images=img, text=f"USER: <image>\n{r['question']} ASSISTANT:", return_tensors="pt")
        ids = enc.input_ids[0].tolist()
        toks = proc.tokenizer.convert_ids_to_tokens(ids)
        word = max(i for i, t in enumerate(toks) if t in SHAPE_WORDS)
        image = [i for i, t in enumerate(ids) if t == image_id]
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states
        for layer, h in enumerate(hidden):
            per_layer.setdefault(layer, []).append(
                (toks[word], h[0, word], h[0, image].norm(dim=-1).mean().item())
            )

    print(f"{args.model}: {len(rows)} questions; hidden state index 0 = embeddings, last = final norm")
    print("layer  word norm  image norm  cos same kind  cos different kind")
    for layer, items in per_layer.items():
        same, diff = [], []
        for i, (ka, ha, _) in enumerate(items):
            for kb, hb, _ in items[i + 1 :]:
                c = torch.nn.functional.cosine_similarity(ha, hb, dim=0).item()
                (same if ka == kb else diff).append(c)
        word_norm = sum(h.norm().item() for _, h, _ in items) / len(items)
        image_norm = sum(n for _, _, n in items) / len(items)
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        print(f"{layer:5d}  {word_norm:9.2f}  {image_norm:10.2f}  {mean(same):13.3f}  {mean(diff):18.3f}")


if __name__ == "__main__":
    main()
