"""The scale case at 10% of the bytes: seeds 5 to 10 with today's default, and pooled with
seeds 0 to 4 (RESULTS.md, "Where the goals stand"). Run from the repository root:

    python docs/results/headline-bytes/scale/ten_percent.py

Seeds 5 to 10 ran everything in one report each (this folder, ``f0.1_s{5..10}.json``)::

    OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction 0.1 --budget bytes --seed S --methods none,modulo,mch,lhf,lhf-counts-half,lhf-select2-counts --json

Seeds 0 to 4 are the test AUCs RESULTS.md gives to four digits ("The half-width candidate's
rows by access counts" for the default, "The scale case at 10% of the bytes over five
seeds" for the others); pooled with them, the differences carry their rounding (at most
0.0001 a seed).
"""

import importlib.util
import statistics as st

HERE = "docs/results/headline-bytes/scale"
spec = importlib.util.spec_from_file_location("gc", "docs/results/half-rows/scale/gap_closed.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)

NEW = range(5, 11)
EARLIER = {  # seeds 0 to 4, test AUC as RESULTS.md gives them
    "default": [0.8865, 0.8863, 0.8865, 0.8858, 0.8870],
    "none": [0.8860, 0.8865, 0.8853, 0.8861, 0.8843],
    "mch": [0.8858, 0.8858, 0.8863, 0.8864, 0.8859],
    "modulo": [0.8852, 0.8846, 0.8845, 0.8843, 0.8834],
}


def main():
    new = {"default": [], "none": [], "mch": [], "modulo": []}
    for s in NEW:
        r = gc.results(f"{HERE}/f0.1_s{s}.json")
        chosen = gc.chosen(r["lhf"], r["lhf-counts-half"])
        assert chosen["auc"] == r["lhf-select2-counts"]["auc"], s  # the benchmark's own choice
        share = chosen["index_bytes"] / chosen["stored_bytes"]
        print(f"seed {s}: default {chosen['auc']:.4f} ({r['lhf-select2-counts']['choice']}, "
              f"stored remap {100 * share:.1f}%), full {r['none']['auc']:.4f}, mch "
              f"{r['mch']['auc']:.4f}, hashing trick {r['modulo']['auc']:.4f}")  # fmt: skip
        new["default"].append(chosen["auc"])
        for m in ("none", "mch", "modulo"):
            new[m].append(r[m]["auc"])
    for name, part in (("seeds 5 to 10", new), ("seeds 0 to 10", None)):
        if part is None:
            part = {m: EARLIER[m] + new[m] for m in new}
        print(f"{name}: default {st.mean(part['default']):.4f}")
        for m in ("none", "mch", "modulo"):
            d = [a - b for a, b in zip(part["default"], part[m])]
            print(f"  default - {m}: {st.mean(d):+.4f} ± {gc.se(d):.4f} (ahead on "
                  f"{sum(x > 0 for x in d)} of {len(d)})")  # fmt: skip


if __name__ == "__main__":
    main()
