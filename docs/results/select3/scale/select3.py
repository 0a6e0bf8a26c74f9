"""The frequency-only plan as a third candidate, at 1% of the bytes (RESULTS.md, "The
frequency-only plan as a third candidate"). Run from the repository root:

    python docs/results/select3/scale/select3.py

Pairs, seed by seed, the choice on validation among ``lhf``, ``lhf-freq`` and
``lhf-counts-half`` (``apps.pipeline --head_select`` under ``--budget bytes``) with the one
between ``lhf`` and ``lhf-counts-half`` (the pipeline's default). ``lhf-freq`` is this
folder's runs, ``lhf`` those of docs/results/ranked-heads/scale/ and ``lhf-counts-half`` those
of docs/results/half-rows/scale/ (the same code paths and seeds). The gap closed is pooled
over the seeds with a bootstrap over seeds; the full model and the hashing trick of each seed
are those of docs/results/half-rows/scale/gap_closed.py.
"""

import json
import random
import statistics as st

HERE = "docs/results/select3/scale"
RANKED = "docs/results/ranked-heads/scale"
HALF = "docs/results/half-rows/scale"
BASE = {  # seed -> (full model, hashing trick) test AUC
    "": {0: (0.88598, 0.87761), 1: (0.88647, 0.87711), 2: (0.88531, 0.87884), 3: (0.88611, 0.87819),
         4: (0.88432, 0.87868), 5: (0.88566, 0.87671), 6: (0.88633, 0.87874), 7: (0.88585, 0.87788),
         8: (0.88588, 0.87815), 9: (0.88591, 0.87890)},
    "gs1.5_": {0: (0.93575, 0.92555), 1: (0.93652, 0.92582), 2: (0.93617, 0.92632),
               3: (0.93611, 0.92645), 4: (0.93617, 0.92616), 5: (0.93624, 0.92569)},
}  # fmt: skip


def results(path):
    with open(path) as f:
        return json.load(f)["results"]


def chosen(runs):
    name = max(runs, key=lambda m: runs[m]["val_auc"])  # the first of ties
    return name, runs[name]


def se(x):
    return st.stdev(x) / len(x) ** 0.5


for case, seeds in BASE.items():
    rows = []
    for s, (full, mod) in seeds.items():
        lhf = results(f"{RANKED}/{case}f0.01_s{s}.json")["lhf"]
        half = results(f"{HALF}/{case}f0.01_s{s}.json")["lhf-counts-half"]
        freq = results(f"{HERE}/{case}f0.01_s{s}.json")["lhf-freq"]
        two = chosen({"lhf": lhf, "lhf-counts-half": half})
        three = chosen({"lhf": lhf, "lhf-freq": freq, "lhf-counts-half": half})
        rows.append((two[1], three[1], full, mod, freq, three[0]))
    d_auc = [r[1]["auc"] - r[0]["auc"] for r in rows]
    d_ll = [r[1]["logloss"] - r[0]["logloss"] for r in rows]
    d_freq = [r[4]["auc"] - r[0]["auc"] for r in rows]
    print(f"case {case or 'first'}: {len(rows)} seeds; three minus two: AUC {st.mean(d_auc):+.5f} "
          f"± {se(d_auc):.5f}, logloss {st.mean(d_ll):+.5f} ± {se(d_ll):.5f}; the frequency-only "
          f"plan alone minus two: AUC {st.mean(d_freq):+.5f} ± {se(d_freq):.5f}")  # fmt: skip
    print(f"  chosen of three: {[r[5] for r in rows]}")
    for k, name in ((0, "two (the default)"), (1, "three (--head_select)")):

        def pooled(sample, k=k):
            auc = st.mean(r[k]["auc"] for r in sample)
            full, mod = st.mean(r[2] for r in sample), st.mean(r[3] for r in sample)
            return (auc - mod) / (full - mod)

        rng = random.Random(0)
        boots = sorted(pooled([rng.choice(rows) for _ in rows]) for _ in range(10000))
        share = max(r[k]["index_bytes"] / r[k]["stored_bytes"] for r in rows)
        print(f"  {name}: test AUC {st.mean(r[k]['auc'] for r in rows):.4f}, gap closed "
              f"{100 * pooled(rows):.1f}% (bootstrap 95% {100 * boots[250]:.0f} to "
              f"{100 * boots[9749]:.0f}%), stored remap at most {100 * share:.1f}% of the bytes")  # fmt: skip
