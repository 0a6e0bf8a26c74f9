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

import statistics as st
import sys

HERE = "docs/results/select3/scale"
RANKED = "docs/results/ranked-heads/scale"
HALF = "docs/results/half-rows/scale"
sys.path.insert(0, HALF)  # the seeds' full model and hashing trick, and the reader
from gap_closed import BASE, gap_closed, results, se  # noqa: E402


def chosen(runs):
    name = max(runs, key=lambda m: runs[m]["val_auc"])  # the first of ties
    return name, runs[name]


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
        aucs = [r[k]["auc"] for r in rows]
        gap, boots = gap_closed(aucs, [r[2] for r in rows], [r[3] for r in rows])
        share = max(r[k]["index_bytes"] / r[k]["stored_bytes"] for r in rows)
        print(f"  {name}: test AUC {st.mean(r[k]['auc'] for r in rows):.4f}, gap closed "
              f"{100 * gap:.1f}% (bootstrap 95% {100 * boots[250]:.0f} to "
              f"{100 * boots[9749]:.0f}%), stored remap at most {100 * share:.1f}% of the bytes")  # fmt: skip
