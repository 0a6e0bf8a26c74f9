"""Pairs old/ and new/ (run.sh) by method, size and seed: the paired AUC and logloss
differences (new - old) and their standard errors; runs of test AUC below 0.55
(collapsed) are left out of the pairs and counted. Run in this folder: python compare.py"""

import json
import statistics as st
from collections import defaultdict

COLLAPSED = 0.55


def load(path: str) -> dict:
    runs = json.load(open(path))
    return {(r["method"], r["fraction"], r["seed"]): r for r in runs if "auc" in r}


def se(x: list[float]) -> float:
    return st.stdev(x) / len(x) ** 0.5 if len(x) > 1 else float("nan")


def mean(runs: list[dict], key: str) -> float:
    return st.mean(r[key] for r in runs)


for data in ["movielens", "criteo-head"]:
    old, new = load(f"old/{data}/results.json"), load(f"new/{data}/results.json")
    groups = defaultdict(list)
    for key in new:
        if key in old:
            groups[key[:2]].append((old[key], new[key]))
    print("==", data)
    for (method, size), pairs in sorted(groups.items()):
        ok = [(a, b) for a, b in pairs if a["auc"] >= COLLAPSED and b["auc"] >= COLLAPSED]
        collapsed = tuple(sum(r["auc"] < COLLAPSED for r in side) for side in zip(*pairs))
        a_, b_ = [a for a, _ in ok], [b for _, b in ok]
        d_auc = [b["auc"] - a["auc"] for a, b in ok]
        d_ll = [b["logloss"] - a["logloss"] for a, b in ok]
        print(
            f"{method:7s} {size:5} n={len(ok):2d} collapsed old/new={collapsed} "
            f"old={mean(a_, 'auc'):.4f} new={mean(b_, 'auc'):.4f} "
            f"dAUC={st.mean(d_auc):+.4f}±{se(d_auc):.4f} dLL={st.mean(d_ll):+.4f}±{se(d_ll):.4f} "
            f"rows old/new={mean(a_, 'rows'):.0f}/{mean(b_, 'rows'):.0f} "
            f"index old/new={mean(a_, 'index_bytes'):.0f}/{mean(b_, 'index_bytes'):.0f}"
        )
