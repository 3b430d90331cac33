"""Agreement of `horizon info --estimate gradient` rows with exact rows of the same run settings.

    python bench/compare_estimate.py EXACT_DIR GRADIENT_DIR [--metric p|logp|kl] [--top 4]

Per task and cut layer, over the window maps (information of each window, mean over samples, as
`horizon horizon` writes them to windows.parquet): the Spearman rank correlation of the estimated
map with the exact one, the overlap of their top-k windows (fraction of the exact top k that the
estimate also ranks in its top k), the median over samples of each sample's own map correlation,
and the mean information m_K of both. Then, over every window row, the Pearson correlation of the
estimated information with the exact one and both means, for all cut layers, K <= --early and K >
--early; the mean absolute error and correlation of m_K over (task, layer); and, for the (sample, K)
whose largest exact window information exceeds --critical, how often the estimate ranks that window
first and in its top 3. Needs pyarrow and numpy.
"""

import argparse
import glob
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def read(directory):
    parts = sorted(glob.glob(os.path.join(directory, "part-*.parquet")))
    if not parts:
        sys.exit(f"{directory}: no part-*.parquet files")
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pydict()


def information(rows, metric):
    """{(task, layer): {sample: {window: I}}} with I = v_w - v_text (keep-only) or v_full - v_-w."""
    n = len(rows["sample_id"])
    base, full, windows = {}, {}, {}
    for i in range(n):
        key = (rows["task"][i], rows["sample_id"][i])
        value = rows[metric][i]
        if metric == "kl":
            value = -value  # information in KL: the unpruned distribution is the reference
        variant, layer = rows["variant"][i], rows["layer"][i]
        if variant == "full":
            full[key] = value
        elif variant == "text_only":
            base[key + (layer,)] = value
        else:
            windows.setdefault(key + (layer,), {})[rows["window"][i]] = (value, rows["mode"][i])
    out = {}
    for (task, sample, layer), ws in windows.items():
        m = {}
        for w, (v, mode) in ws.items():
            m[w] = v - base[(task, sample, layer)] if mode == "keep-only" else full[(task, sample)] - v
        out.setdefault((task, layer), {})[sample] = m
    return out


def ranks(x):
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks of ties
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b):
    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exact")
    ap.add_argument("gradient")
    ap.add_argument("--metric", default="p", choices=["p", "logp", "kl"])
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--early", type=int, default=4, help="last cut layer of the early group")
    ap.add_argument("--critical", type=float, default=0.3)
    args = ap.parse_args()
    exact = information(read(args.exact), args.metric)
    grad = information(read(args.gradient), args.metric)
    if exact.keys() != grad.keys():
        sys.exit("the two runs do not hold the same tasks and layers")
    print(f"| task | layer | Spearman (mean map) | top-{args.top} overlap | median per-sample Spearman | m_K exact | m_K estimate |")
    print("|---|---|---|---|---|---|---|")
    for task, layer in sorted(exact):
        e, g = exact[(task, layer)], grad[(task, layer)]
        samples = sorted(e)
        wins = sorted(e[samples[0]])
        em = np.array([np.mean([e[s][w] for s in samples]) for w in wins])
        gm = np.array([np.mean([g[s][w] for s in samples]) for w in wins])
        k = min(args.top, len(wins))
        overlap = len(set(np.argsort(-em)[:k]) & set(np.argsort(-gm)[:k])) / k
        per = [spearman([e[s][w] for w in wins], [g[s][w] for w in wins]) for s in samples]
        per = np.nanmedian(per) if not np.all(np.isnan(per)) else float("nan")
        print(f"| {task} | {layer} | {spearman(em, gm):.2f} | {overlap:.2f} | {per:.2f} | {em.mean():.4f} | {gm.mean():.4f} |")
    summary(exact, grad, args)


def summary(exact, grad, args):
    rows = [(layer, exact[(t, layer)][s][w], grad[(t, layer)][s][w])
            for t, layer in exact for s in exact[(t, layer)] for w in exact[(t, layer)][s]]
    print()
    print("| window rows | n | Pearson r | mean exact | mean estimate |")
    print("|---|---|---|---|---|")
    for name, keep in [("all", lambda k: True), (f"K <= {args.early}", lambda k: k <= args.early),
                       (f"K > {args.early}", lambda k: k > args.early)]:
        sel = np.array([(e, g) for k, e, g in rows if keep(k)])
        if len(sel) < 2:
            continue
        r = np.corrcoef(sel[:, 0], sel[:, 1])[0, 1]
        print(f"| {name} | {len(sel)} | {r:.3f} | {sel[:, 0].mean():+.4f} | {sel[:, 1].mean():+.4f} |")
    # m_K as horizon horizon computes it: the mean over samples of each sample's mean over windows.
    mk = np.array([(np.mean([np.mean(list(exact[key][s].values())) for s in exact[key]]),
                    np.mean([np.mean(list(grad[key][s].values())) for s in grad[key]])) for key in exact])
    print()
    print(f"m_K over (task, layer): mean absolute error {np.abs(mk[:, 0] - mk[:, 1]).mean():.4f}, "
          f"Pearson r {np.corrcoef(mk[:, 0], mk[:, 1])[0, 1]:.3f}")
    ranked = []
    for key in exact:
        for s, e in exact[key].items():
            wins = sorted(e)
            ev = np.array([e[w] for w in wins])
            gv = np.array([grad[key][s][w] for w in wins])
            if ev.max() > args.critical:
                ranked.append(int((gv > gv[ev.argmax()]).sum()))
    ranked = np.array(ranked)
    print(f"(sample, K) with a window of exact information > {args.critical}: {len(ranked)}; "
          f"the estimate ranks it first in {(ranked == 0).sum()}, in its top 3 in {(ranked <= 2).sum()}")


if __name__ == "__main__":
    main()
