"""Pairs the scale case's old/ and new/ runs (rare_ids, fbdh and memrec) by seed. Run here."""

import glob
import json
import statistics as st
from collections import defaultdict

pairs = defaultdict(list)
for path in sorted(glob.glob("new/peers_f*_s*.json")):
    name = path.split("/")[-1]
    new, old = json.load(open(path)), json.load(open(f"old/{name}"))
    fraction = new["config"]["fraction"]
    for method, r in new["results"].items():
        pairs[(method, fraction)].append((old["results"][method], r))
for (method, fraction), runs in sorted(pairs.items()):
    d = [b["auc"] - a["auc"] for a, b in runs]
    dl = [b["logloss"] - a["logloss"] for a, b in runs]
    se = (lambda x: st.stdev(x) / len(x) ** 0.5) if len(runs) > 1 else (lambda x: float("nan"))
    print(
        f"{method:7s} {fraction:5} seeds={len(runs)} "
        f"old={st.mean(a['auc'] for a, _ in runs):.4f} new={st.mean(b['auc'] for _, b in runs):.4f} "
        f"dAUC={st.mean(d):+.4f}±{se(d):.4f} dLL={st.mean(dl):+.4f}±{se(dl):.4f} "
        f"rows {runs[0][0]['rows']}/{runs[0][1]['rows']} "
        f"index {runs[0][0]['index_bytes']}/{runs[0][1]['index_bytes']} "
        f"in memory {runs[0][0]['remap_bytes']}/{runs[0][1]['remap_bytes']} "
        f"compression in memory {runs[0][0]['compression_in_memory']:.2f}/{runs[0][1]['compression_in_memory']:.2f}"
    )
