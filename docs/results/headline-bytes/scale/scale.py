"""The scale case at 1% of the bytes over 30 seeds (RESULTS.md, "Where the goals stand").
Run from the repository root:

    python docs/results/headline-bytes/scale/scale.py

Seeds 0 to 9 are the runs RESULTS.md reads in "The half-width candidate's rows by access
counts" (the default's two plans: ``lhf`` in docs/results/ranked-heads/scale/,
``lhf-counts-half`` in docs/results/half-rows/scale/; the full model and the hashing trick
as its ``gap_closed.py`` lists them; ``mch`` of seeds 0 to 6 from the runs "The scale case
at 1% of the bytes over seven seeds" names). Seeds 10 to 29 ran everything in one report
each (this folder, ``f0.01_s{10..29}.json``; seeds 20 to 29 at a later stop, the same code)::

    OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction 0.01 --budget bytes --seed S --methods none,modulo,mch,lhf,lhf-counts-half,lhf-select2-counts --json

The default (``apps.pipeline`` under ``--budget bytes``) is the one of ``lhf`` and
``lhf-counts-half`` of higher validation AUC. Prints the gap to the full model it closes
(pooled over the seeds, with a bootstrap over seeds), its stored remap's share of the bytes,
and its paired differences from ``mch`` and the full model. Then the second case
(``--group_scale 1.5``) at 10% of the bytes with today's default (``gs1.5_f0.1_s{0..4}.json``,
the same command with ``--fraction 0.1 --group_scale 1.5``; seeds 3 and 4 at a later stop):
its paired differences from the hashing trick, the full model and ``mch``, and from the
other peers, which ran at a later stop (``gs1.5_peers_f0.1_s{0..4}.json``)::

    OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction 0.1 --budget bytes --group_scale 1.5 --seed S --methods qr,fbdh,memrec,mlet --json
"""

import importlib.util
import statistics as st

HERE = "docs/results/headline-bytes/scale"
spec = importlib.util.spec_from_file_location("gc", "docs/results/half-rows/scale/gap_closed.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)

MCH = {
    0: "docs/results/rare-ids-peers/peers_f0.01_s0.json",
    1: "docs/results/rare-ids-peers/peers_f0.01_s1.json",
    2: "docs/results/rare-ids-peers/peers_f0.01_s2.json",
    3: "docs/results/select4/scale/peers_f0.01_s3.json",
    4: "docs/results/select4/scale/peers_f0.01_s4.json",
    5: "docs/results/select4/scale/all_f0.01_s5.json",
    6: "docs/results/select4/scale/all_f0.01_s6.json",
}
NEW = range(10, 30)


def main():
    rows = []  # (seed, default run, full auc, hashing trick auc, mch run or None)
    for s, (full, mod) in gc.BASE[""].items():
        one = gc.results(f"{gc.OLD}/f0.01_s{s}.json")["lhf"]
        half = gc.results(f"{gc.HERE}/f0.01_s{s}.json")["lhf-counts-half"]
        mch = gc.results(MCH[s])["mch"] if s in MCH else None
        rows.append((s, gc.chosen(one, half), full, mod, mch))
    for s in NEW:
        r = gc.results(f"{HERE}/f0.01_s{s}.json")
        chosen = gc.chosen(r["lhf"], r["lhf-counts-half"])
        assert chosen["auc"] == r["lhf-select2-counts"]["auc"], s  # the benchmark's own choice
        rows.append((s, chosen, r["none"]["auc"], r["modulo"]["auc"], r["mch"]))
    parts = (
        ("seeds 0 to 9", rows[:10]),
        ("seeds 10 to 19", rows[10:20]),
        ("seeds 20 to 29", rows[20:]),
        ("seeds 0 to 19", rows[:20]),
        ("all", rows),
    )
    for name, part in parts:
        aucs = [r[1]["auc"] for r in part]
        gap, boots = gc.gap_closed(aucs, [r[2] for r in part], [r[3] for r in part])
        print(f"{name}: {len(part)} seeds, test AUC {st.mean(aucs):.4f}, gap closed "
              f"{100 * gap:.1f}% (bootstrap sd {100 * st.stdev(boots):.1f}; 95% "
              f"{100 * boots[250]:.0f} to {100 * boots[9749]:.0f}%; "
              f"{sum(b >= 0.8 for b in boots) / 100:.1f}% of resamples at 80% or more)")  # fmt: skip
    per_seed = [round(100 * (r[1]["auc"] - r[3]) / (r[2] - r[3])) for r in rows]
    print(f"per seed gap closed {per_seed}")
    shares = [r[1]["index_bytes"] / r[1]["stored_bytes"] for r in rows]
    print(f"stored remap: {100 * min(shares):.1f}% to {100 * max(shares):.1f}% of the bytes")
    d_full = [r[1]["auc"] - r[2] for r in rows]
    print(f"default - full model: {st.mean(d_full):+.4f} ± {gc.se(d_full):.4f} ({len(rows)} seeds)")
    with_mch = [r for r in rows if r[4] is not None]
    d = [r[1]["auc"] - r[4]["auc"] for r in with_mch]
    dl = [r[1]["logloss"] - r[4]["logloss"] for r in with_mch]
    print(f"default - mch: AUC {st.mean(d):+.4f} ± {gc.se(d):.4f}, logloss {st.mean(dl):+.4f} ± "
          f"{gc.se(dl):.4f} ({len(d)} seeds: {[r[0] for r in with_mch]}; ahead on "
          f"{sum(x > 0 for x in d)})")  # fmt: skip

    second_case()


def second_case(seeds=(0, 1, 2, 3, 4)):
    runs = [gc.results(f"{HERE}/gs1.5_f0.1_s{s}.json") for s in seeds]
    for r, s in zip(runs, seeds):
        chosen = gc.chosen(r["lhf"], r["lhf-counts-half"])
        assert chosen["auc"] == r["lhf-select2-counts"]["auc"], s  # the benchmark's own choice
    print(f"second case at 10%, seeds {list(seeds)}: default "
          f"{[round(r['lhf-select2-counts']['auc'], 4) for r in runs]}")  # fmt: skip
    peers = [gc.results(f"{HERE}/gs1.5_peers_f0.1_s{s}.json") for s in seeds]
    for other in ("modulo", "none", "mch", "qr", "fbdh", "memrec", "mlet"):
        them = [(r if other in r else p)[other] for r, p in zip(runs, peers)]
        d = [r["lhf-select2-counts"]["auc"] - t["auc"] for r, t in zip(runs, them)]
        dl = [r["lhf-select2-counts"]["logloss"] - t["logloss"] for r, t in zip(runs, them)]
        print(f"  default - {other} ({st.mean(t['auc'] for t in them):.4f}): AUC {st.mean(d):+.4f} ± "
              f"{gc.se(d):.4f} {[round(x, 4) for x in d]}, logloss {st.mean(dl):+.4f} ± "
              f"{gc.se(dl):.4f}, ahead on {sum(x > 0 for x in d)} of {len(d)}")  # fmt: skip


if __name__ == "__main__":
    main()
