"""The tables of RESULTS.md's "Where the goals stand" from this folder's sweeps. Run from the
repository root:

    python docs/results/headline-bytes/tables.py

Per data set: test AUC by method and byte budget (mean over seeds; runs with test AUC below
0.55 left out and counted, as the sweep's report does; "-": the method does not fit), then
the default learned hash (``lhf-headtail-select2-counts``, what ``apps.pipeline`` trains
under ``--budget bytes``) minus each method and minus the full model, paired by seed, mean ±
standard error.
"""

import json
import statistics as st
from collections import defaultdict

DEFAULT = "lhf-headtail-select2-counts"
COLLAPSED = 0.55
SETS = {
    "MovieLens-100K, batch 1,024, 10 seeds": "docs/results/headline-bytes/movielens",
    "Criteo head, batch 256, 30 seeds": "docs/results/headline-bytes/criteo-head",
    "MovieLens-100K, batch 256, 10 seeds": "docs/results/headline-bytes/movielens-batch256",
}
SHOWN = ("none", "mlet", "qr", "mch", "memrec", "modulo", "fbdh", "cce", "lhf", DEFAULT)


def se(x):
    return st.stdev(x) / len(x) ** 0.5 if len(x) > 1 else float("nan")


def main():
    for title, path in SETS.items():
        with open(f"{path}/results.json") as f:
            runs = [r for r in json.load(f) if "auc" in r]
        by = defaultdict(dict)
        for r in runs:
            by[(r["method"], r["fraction"])][r["seed"]] = r
        full = by[("none", 1.0)]
        sizes = sorted({s for m, s in by if m != "none"}, reverse=True)
        methods = [m for m in SHOWN if any(k[0] == m for k in by)]
        print(f"\n{title}: test AUC\n")
        print("| method | " + " | ".join(f"{s:g}" for s in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))
        for m in methods:
            cells = []
            for s in sizes[:1] if m == "none" else sizes:
                runs_ms = by.get((m, 1.0 if m == "none" else s), {})
                ok = [r["auc"] for r in runs_ms.values() if r["auc"] >= COLLAPSED]
                bad = len(runs_ms) - len(ok)
                cells.append(
                    f"{st.mean(ok):.4f}" + (f" ({bad} collapsed)" if bad else "") if ok else "-"
                )
            cells += [""] * (len(sizes) - len(cells))
            print(f"| `{m}` | " + " | ".join(cells) + " |")
        print(f"\n{title}: `{DEFAULT}` minus each, paired by seed (AUC; logloss)\n")
        print("| minus | " + " | ".join(f"{s:g}" for s in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for m in methods:
            if m == DEFAULT:
                continue
            cells = []
            for s in sizes:
                d = by.get((DEFAULT, s), {})
                o = full if m == "none" else by.get((m, s), {})
                seeds = [
                    k for k in d if k in o and d[k]["auc"] >= COLLAPSED and o[k]["auc"] >= COLLAPSED
                ]
                if len(seeds) < 2:
                    cells.append("-")
                    continue
                da = [d[k]["auc"] - o[k]["auc"] for k in seeds]
                dl = [d[k]["logloss"] - o[k]["logloss"] for k in seeds]
                cells.append(
                    f"{st.mean(da):+.4f} ± {se(da):.4f}; {st.mean(dl):+.4f} ± {se(dl):.4f}"
                )
            print(f"| `{m}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
