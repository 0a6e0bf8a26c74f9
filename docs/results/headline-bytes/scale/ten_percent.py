"""The scale case at 10% of the bytes: seeds 5 to 10 with today's default, and pooled with
seeds 0 to 4 (RESULTS.md, "Where the goals stand"). Run from the repository root:

    python docs/results/headline-bytes/scale/ten_percent.py

Seeds 5 to 10 ran everything in one report each (this folder, ``f0.1_s{5..10}.json``)::

    OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction 0.1 --budget bytes --seed S --methods none,modulo,mch,lhf,lhf-counts-half,lhf-select2-counts --json

Seeds 0 to 4 are read from the runs RESULTS.md names for them: the default as ``peers.py``
reads it, the full model, the hashing trick and ``mch`` from the files in ``EARLIER``.
"""

import importlib.util
import statistics as st


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HERE = "docs/results/headline-bytes/scale"
gc = _load("gc", "docs/results/half-rows/scale/gap_closed.py")
peers = _load("peers", f"{HERE}/peers.py")

OTHERS = ("none", "mch", "modulo")
NEW = range(5, 11)
EARLIER = {  # seed -> {method: report holding its run at 10%}
    0: {"none": "docs/results/head-select/scale/sel_f0.1_s0.json",
        "modulo": "docs/results/head-select/scale/sel_f0.1_s0.json",
        "mch": "docs/results/rare-ids-peers/peers_f0.1_s0.json"},
} | {
    s: {"none": f"docs/results/rare-ids-bytes/f0.1_s{s}.json",
        "modulo": f"docs/results/rare-ids-bytes/f0.1_s{s}.json",
        "mch": f"docs/results/rare-ids-peers/peers_f0.1_s{s}.json"}
    for s in (1, 2)
} | {
    s: {m: f"docs/results/select6/scale/all_f0.1_s{s}.json" for m in OTHERS} for s in (3, 4)
}  # fmt: skip


def seed_runs(s):
    """{"default": AUC, "none": AUC, ...} of one seed."""
    if s in EARLIER:
        aucs = {m: gc.results(path)[m]["auc"] for m, path in EARLIER[s].items()}
        return {"default": peers.default("0.1", s)["auc"]} | aucs
    r = gc.results(f"{HERE}/f0.1_s{s}.json")
    chosen = gc.chosen(r["lhf"], r["lhf-counts-half"])
    assert chosen["auc"] == r["lhf-select2-counts"]["auc"], s  # the benchmark's own choice
    share = chosen["index_bytes"] / chosen["stored_bytes"]
    print(f"seed {s}: default {chosen['auc']:.4f} ({r['lhf-select2-counts']['choice']}, "
          f"stored remap {100 * share:.1f}%), full {r['none']['auc']:.4f}, mch "
          f"{r['mch']['auc']:.4f}, hashing trick {r['modulo']['auc']:.4f}")  # fmt: skip
    return {"default": chosen["auc"]} | {m: r[m]["auc"] for m in OTHERS}


def main():
    runs = {s: seed_runs(s) for s in (*EARLIER, *NEW)}
    for name, seeds in (("seeds 5 to 10", NEW), ("seeds 0 to 10", runs)):
        print(f"{name}: default {st.mean(runs[s]['default'] for s in seeds):.4f}")
        for m in OTHERS:
            d = [runs[s]["default"] - runs[s][m] for s in seeds]
            print(f"  default - {m}: {st.mean(d):+.4f} ± {gc.se(d):.4f} (ahead on "
                  f"{sum(x > 0 for x in d)} of {len(d)})")  # fmt: skip


if __name__ == "__main__":
    main()
