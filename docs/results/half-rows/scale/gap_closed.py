"""The half-width candidate's rows by counts against by size, at 1% of the bytes (RESULTS.md,
"The half-width candidate's rows by access counts"). Run from the repository root:

    python docs/results/half-rows/scale/gap_closed.py

Pairs, seed by seed, the choice on validation between ``lhf`` and ``lhf-counts-half`` (this
folder's runs) with the one between ``lhf`` and ``lhf-half`` (docs/results/ranked-heads/scale/,
the same code's runs of the same seeds), and pools the gap closed over the seeds with a
bootstrap over seeds. The full model and the hashing trick of each seed are those RESULTS.md
names for it (the files listed in BASE).
"""

import json
import random
import statistics as st

HERE = "docs/results/half-rows/scale"
OLD = "docs/results/ranked-heads/scale"
BASE = {  # seed -> (full model, hashing trick) test AUC, from the runs RESULTS.md names
    "": {0: (0.88598, 0.87761), 1: (0.88647, 0.87711), 2: (0.88531, 0.87884), 3: (0.88611, 0.87819),
         4: (0.88432, 0.87868), 5: (0.88566, 0.87671), 6: (0.88633, 0.87874), 7: (0.88585, 0.87788),
         8: (0.88588, 0.87815), 9: (0.88591, 0.87890)},
    "gs1.5_": {0: (0.93575, 0.92555), 1: (0.93652, 0.92582), 2: (0.93617, 0.92632),
               3: (0.93611, 0.92645), 4: (0.93617, 0.92616), 5: (0.93624, 0.92569)},
}  # fmt: skip


def results(path):
    with open(path) as f:
        return json.load(f)["results"]


def chosen(*runs):
    return max(runs, key=lambda r: r["val_auc"])  # the first of ties


def se(x):
    return st.stdev(x) / len(x) ** 0.5


def gap_closed(aucs, fulls, mods):
    """The share of the hashing trick's gap to the full model that ``aucs`` close, pooled
    over the seeds (each list one value a seed), and its 10,000 bootstrap resamples over
    seeds, sorted."""

    def pooled(idx):
        auc, full, mod = (st.mean(x[i] for i in idx) for x in (aucs, fulls, mods))
        return (auc - mod) / (full - mod)

    rng = random.Random(0)
    n = len(aucs)
    boots = sorted(pooled([rng.randrange(n) for _ in range(n)]) for _ in range(10000))
    return pooled(range(n)), boots


def main():
    for case, seeds in BASE.items():
        rows = []
        for s, (full, mod) in seeds.items():
            old, new = (
                results(f"{OLD}/{case}f0.01_s{s}.json"),
                results(f"{HERE}/{case}f0.01_s{s}.json"),
            )
            by_size = chosen(old["lhf"], old["lhf-half"])
            by_counts = chosen(old["lhf"], new["lhf-counts-half"])
            rows.append((s, by_size, by_counts, full, mod))
        d_auc = [b["auc"] - a["auc"] for _, a, b, _, _ in rows]
        d_ll = [b["logloss"] - a["logloss"] for _, a, b, _, _ in rows]

        print(f"case {case or 'first'}: {len(rows)} seeds, counts - size: "
              f"AUC {st.mean(d_auc):+.5f} ± {se(d_auc):.5f}, logloss {st.mean(d_ll):+.5f} ± {se(d_ll):.5f}")  # fmt: skip
        for k, name in ((1, "by size (before)"), (2, "by counts (now)")):
            aucs = [r[k]["auc"] for r in rows]
            gap, boots = gap_closed(aucs, [r[3] for r in rows], [r[4] for r in rows])
            per_seed = [round(100 * (r[k]["auc"] - r[4]) / (r[3] - r[4])) for r in rows]
            print(f"  {name}: test AUC {st.mean(r[k]['auc'] for r in rows):.4f}, gap closed "
                  f"{100 * gap:.1f}% (bootstrap sd {100 * st.stdev(boots):.1f}; 95% "
                  f"{100 * boots[250]:.0f} to {100 * boots[9749]:.0f}%), per seed {per_seed}")  # fmt: skip


if __name__ == "__main__":
    main()
