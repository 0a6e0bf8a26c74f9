"""The scale case's other peers (`qr`, `fbdh`, `memrec`, MLET) paired with today's default
over seeds 0 to 4, at 10% and 1% of the bytes (RESULTS.md, "Where the goals stand"). Run from
the repository root:

    python docs/results/headline-bytes/scale/peers.py

The default is the one of ``lhf`` and ``lhf-counts-half`` of higher validation AUC, read
from the runs ``gap_closed.py`` and ``scale.py`` read (docs/results/ranked-heads/scale/ and
docs/results/half-rows/scale/). The peers of seeds 0 to 2 are docs/results/rare-ids-peers/;
`qr` of seeds 3 and 4 ran with the candidates of "The scale case at 10% of the bytes over
five seeds" (select6/, 10%) and "... over seven seeds" (select4/, 1%); `fbdh`, `memrec` and
MLET of seeds 3 and 4 ran at a later stop (this folder, ``peers_f{0.1,0.01}_s{3,4}.json``)::

    OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction 0.1 --budget bytes --seed S --methods fbdh,memrec,mlet --json    # S = 3, 4
    OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction 0.01 --budget bytes --seed S --methods fbdh,memrec --json       # S = 3, 4

(MLET does not fit at 1%; `cce` fits at neither size.)
"""

import importlib.util
import statistics as st

HERE = "docs/results/headline-bytes/scale"
spec = importlib.util.spec_from_file_location("gc", "docs/results/half-rows/scale/gap_closed.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)

SEEDS = range(5)
PEERS = {  # size -> seed -> {method: report holding it}
    "0.1": {
        s: {m: f"docs/results/rare-ids-peers/peers_f0.1_s{s}.json" for m in ("qr", "fbdh", "memrec", "mlet")}
        for s in (0, 1, 2)
    }
    | {
        s: {"qr": f"docs/results/select6/scale/all_f0.1_s{s}.json"}
        | {m: f"{HERE}/peers_f0.1_s{s}.json" for m in ("fbdh", "memrec", "mlet")}
        for s in (3, 4)
    },
    "0.01": {
        s: {m: f"docs/results/rare-ids-peers/peers_f0.01_s{s}.json" for m in ("qr", "fbdh", "memrec")}
        for s in (0, 1, 2)
    }
    | {
        s: {"qr": f"docs/results/select4/scale/peers_f0.01_s{s}.json"}
        | {m: f"{HERE}/peers_f0.01_s{s}.json" for m in ("fbdh", "memrec")}
        for s in (3, 4)
    },
}  # fmt: skip


def default(size, s):
    """Today's default of one seed: the candidate of higher validation AUC."""
    # seeds 0 and 1 at 10%, and every seed at 1%, have ``lhf`` in ranked-heads/
    if size == "0.01" or s in (0, 1):
        one = gc.results(f"{gc.OLD}/f{size}_s{s}.json")["lhf"]
    else:
        one = gc.results(f"{gc.HERE}/f{size}_s{s}.json")["lhf"]
    half = gc.results(f"{gc.HERE}/f{size}_s{s}.json")["lhf-counts-half"]
    return gc.chosen(one, half)


def main():
    for size, by_seed in PEERS.items():
        runs = {s: default(size, s) for s in SEEDS}
        print(f"{size} of the bytes, seeds 0 to 4: default "
              f"{st.mean(r['auc'] for r in runs.values()):.4f}")  # fmt: skip
        for m in by_seed[0]:
            peer = {s: gc.results(by_seed[s][m])[m] for s in SEEDS}
            d = [runs[s]["auc"] - peer[s]["auc"] for s in SEEDS]
            dl = [runs[s]["logloss"] - peer[s]["logloss"] for s in SEEDS]
            print(f"  {m}: {st.mean(p['auc'] for p in peer.values()):.4f}; default minus it "
                  f"AUC {st.mean(d):+.4f} ± {gc.se(d):.4f}, logloss {st.mean(dl):+.4f} ± "
                  f"{gc.se(dl):.4f}, ahead on {sum(x > 0 for x in d)} of {len(d)}")  # fmt: skip


if __name__ == "__main__":
    main()
