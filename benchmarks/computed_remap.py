"""Speed of a hashing method's remap computed from the id against the same rows held dense.

``modulo``, ``qr`` and ``memrec`` compute their rows from the id (no row stored per id);
until 2026-12-04 their plans held some of them dense, an int32 row per id
(:data:`benchmarks.modulo_memory.DENSE_BEFORE`), which is the baseline here. Both remaps
are built in this process from one plan (:func:`benchmarks.modulo_memory.dense_plan`), over
26 Criteo tables: the Kaggle heights capped at ``--max_rows`` (``--heights kaggle``) or the
MLPerf 1TB heights (``--heights mlperf``, 204M ids; the dense baseline then holds 0.8 GB a
dense hash function). Each iteration writes 32 MB to evict the caches (as a training step
does between two lookups), times the dense remap, evicts again and times the computed one;
the report gives each one's median, the median of the per-iteration ratios computed over
dense (``ratio_paired``) with its bootstrap interval, and whether both gave the same rows.
One thread (``torch.set_num_threads(1)``); ids drawn uniformly over each table.

Usage::

    python -m benchmarks.computed_remap --json [--method qr] [--heights mlperf] [--fraction 0.01] [--pooling 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

from benchmarks.modulo_memory import DENSE_BEFORE, _heights, dense_plan
from benchmarks.remap import CRITEO_HEIGHTS, median_interval
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.cli import int_at_least, unit_fraction
from torchrec_lhf.compression.methods import get_method

EVICT_BYTES = 32 * 2**20


def table_heights(heights: str, max_rows: int) -> dict[str, int]:
    """The 26 tables' heights: ``kaggle`` (capped at ``max_rows``) or ``mlperf``."""
    if heights == "mlperf":
        return _heights(1.0)
    return {f"t{i}": min(n, max_rows) for i, n in enumerate(CRITEO_HEIGHTS)}


def batch(heights: dict[str, int], samples: int, pooling: int, seed: int) -> KeyedJaggedTensor:
    """``samples`` bags of ``pooling`` ids a feature, drawn uniformly over each table."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, n, (samples * pooling,), generator=g) for n in heights.values()]
    return KeyedJaggedTensor(
        keys=[f"f_{t}" for t in heights],
        values=torch.cat(ids),
        lengths=torch.full((len(heights) * samples,), pooling),
    )


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    heights = table_heights(args.heights, args.max_rows)
    plan = get_method(args.method)(heights, fraction=args.fraction)
    tables = [
        EmbeddingBagConfig(name=t, embedding_dim=16, num_embeddings=n, feature_names=[f"f_{t}"])
        for t, n in heights.items()
    ]
    remaps = {
        flow: LearnedHashEmbeddingBagCollection(tables=tables, plan=p, device="meta").remap
        for flow, p in (("dense", dense_plan(plan, DENSE_BEFORE[args.method])), ("computed", plan))
    }
    kjt = batch(heights, args.samples, args.pooling, args.seed)
    rows = {flow: remap(kjt).values() for flow, remap in remaps.items()}
    junk = torch.empty(EVICT_BYTES // 4)
    times: dict[str, list[float]] = {flow: [] for flow in remaps}
    load_before = os.getloadavg()[0]
    for i in range(args.warmup + args.iters):
        for flow, remap in remaps.items():
            junk.add_(1.0)
            start = time.perf_counter()
            remap(kjt)
            if i >= args.warmup:
                times[flow].append(time.perf_counter() - start)
    ratios = [c / d for c, d in zip(times["computed"], times["dense"])]
    return {
        "benchmark": "computed_remap",
        "config": {
            "method": args.method,
            "heights": args.heights,
            "max_rows": args.max_rows if args.heights == "kaggle" else None,
            "fraction": args.fraction,
            "samples": args.samples,
            "pooling": args.pooling,
            "ids": kjt.values().numel(),
            "iters": args.iters,
            "warmup": args.warmup,
            "threads": 1,
            "machine": platform.machine(),
            "torch": torch.__version__,
            "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "results": {
            flow: {
                "median_us": 1e6 * statistics.median(ts),
                "remap_bytes": remaps[flow].remap_bytes(),
            }
            for flow, ts in times.items()
        },
        "ratio_paired": statistics.median(ratios),
        "ratio_paired_ci95": median_interval(ratios),
        "same_rows": torch.equal(rows["computed"], rows["dense"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=sorted(DENSE_BEFORE), default="qr")
    parser.add_argument("--heights", choices=("kaggle", "mlperf"), default="mlperf")
    parser.add_argument("--max_rows", type=int_at_least(1), default=1_000_000)
    parser.add_argument("--fraction", type=unit_fraction, default=0.01)
    parser.add_argument("--samples", type=int_at_least(1), default=4096)
    parser.add_argument("--pooling", type=int_at_least(1), default=1)
    parser.add_argument("--iters", type=int_at_least(1), default=200)
    parser.add_argument("--warmup", type=int_at_least(0), default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    out = run(args)
    print(json.dumps(out, indent=None if args.json else 2))
    return out


if __name__ == "__main__":
    main()
