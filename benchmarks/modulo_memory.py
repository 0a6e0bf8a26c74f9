"""Memory of the hashing trick's (and QR's, and MEM-REC's) remap at the Criteo 1TB
heights: computed against dense.

The hashing trick (``modulo``) maps id ``i`` to row ``i mod M``. Its plan held that as a
dense int32 row per id (``dense``, the baseline: the representation before 2026-12-04),
which every rank's remap then held too: 4 bytes an id, 816.7 MB at the MLPerf heights
(26 tables, 204M ids). :func:`~torchrec_lhf.compression.baselines.modulo_plan` now gives
each table an empty head and a :data:`~torchrec_lhf.hashing.MODULO_SEED` tail
(``computed``): nothing per id. QR (``--method qr``) maps ``i`` to ``(i mod m, i // m)``;
its remainder has been computed so since that change, its quotient was dense (the
baseline) until the divided tails (:func:`~torchrec_lhf.hashing.quotient_seed`) computed
it too. MEM-REC (``--method memrec``) held each of its three hashes (two token tables and
the weight table) as a dense random permutation ``mod M_h`` until they became seeded
hashes computed from the id (:func:`~torchrec_lhf.compression.baselines.computed_mapping`);
its baseline holds the same rows dense, int32 as before (the old plan drew a permutation
instead, a different draw of rows at the same bytes). Each representation is built in a
process of its own (the plan, then the learned-hash collection over it with its tables on
the meta device, so that only the remap is allocated) and reports the plan's stored remap bytes, the module's remap
buffers and the resident-set peak above the process's before the build (``VmHWM``, reset
by ``/proc/self/clear_refs`` first), plus
the rows of a sample batch, which must agree.

Linux only (``/proc/self/status``, ``/proc/self/clear_refs``).

Usage::

    python -m benchmarks.modulo_memory --json [--method modulo|qr|memrec] [--fraction 0.01] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from typing import Any

import torch

from benchmarks.clustering import _proc_status_kib, _reset_peak_rss
from torchrec_lhf.cli import unit_fraction

FLOWS = ("computed", "dense")
# the hash functions each method's plan held dense before they were computed (the baseline)
DENSE_BEFORE = {"modulo": (0,), "qr": (1,), "memrec": (0, 1, 2)}


def _heights(scale: float) -> dict[str, int]:
    from torchrec_lhf.data.criteo_npy import MLPERF_NUM_EMBEDDINGS

    return {f"t{i}": max(1, round(n * scale)) for i, n in enumerate(MLPERF_NUM_EMBEDDINGS)}


def dense_plan(plan: Any, hashes: tuple[int, ...]) -> Any:
    """``plan`` with hash functions ``hashes`` of every table held dense (a row per id,
    int32): the same rows, stored as before they were computed."""
    from torchrec_lhf import HashPlan, TableHash

    tables = [
        TableHash(
            t.name,
            t.num_embeddings,
            tuple(t.dense_mapping(h) if h in hashes else m for h, m in enumerate(t.mappings)),
            t.heights,
            t.combine,
        )
        for t in plan
    ]
    return HashPlan(tables, metadata=plan.metadata)


def measure_one(flow: str, method: str, fraction: float, scale: float) -> dict:
    """Build the method's plan and collection one way, in this process."""
    from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

    from torchrec_lhf import LearnedHashEmbeddingBagCollection
    from torchrec_lhf.compression.methods import get_method

    heights = _heights(scale)
    if not _reset_peak_rss():  # the high-water mark starts again from the resident set
        raise RuntimeError("cannot reset the peak resident set (/proc/self/clear_refs)")
    before = _proc_status_kib("VmRSS") * 1024
    plan = get_method(method)(heights, fraction=fraction)
    if flow == "dense":  # the old representation: every id's row, int32
        plan = dense_plan(plan, DENSE_BEFORE[method])
    tables = [
        EmbeddingBagConfig(name=t, embedding_dim=16, num_embeddings=n, feature_names=[f"f_{t}"])
        for t, n in heights.items()
    ]
    module = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, device="meta")
    peak = _proc_status_kib("VmHWM") * 1024 - before
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(0, n, (64,), generator=g) for n in heights.values()])
    batch = KeyedJaggedTensor(
        keys=[f"f_{t}" for t in heights],
        values=ids,
        lengths=torch.ones(ids.numel(), dtype=torch.long),
    )
    return {
        "plan_remap_bytes": plan.remap_bytes(),
        "module_remap_bytes": module.remap.remap_bytes(),
        "peak_rss_above_start_bytes": peak,
        "rows": module.remap(batch).values().tolist(),
    }


def run(args: argparse.Namespace) -> dict:
    results = {}
    for flow in FLOWS:
        argv = [sys.executable, "-m", "benchmarks.modulo_memory", "--one", flow]
        argv += ["--method", args.method, "--fraction", str(args.fraction)]
        argv += ["--scale", str(args.scale)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        results[flow] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {flow: results[flow].pop("rows") for flow in FLOWS}
    heights = _heights(args.scale)
    computed, dense = results["computed"], results["dense"]
    return {
        "benchmark": "modulo_memory",
        "config": {
            "method": args.method,
            "fraction": args.fraction,
            "scale": args.scale,
            "num_tables": len(heights),
            "ids": sum(heights.values()),
            "machine": platform.machine(),
            "torch": torch.__version__,
        },
        "results": results,
        "same_rows": rows["computed"] == rows["dense"],
        "module_remap_ratio": computed["module_remap_bytes"] / dense["module_remap_bytes"],
        "peak_rss_ratio": computed["peak_rss_above_start_bytes"]
        / dense["peak_rss_above_start_bytes"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=sorted(DENSE_BEFORE), default="modulo")
    parser.add_argument("--fraction", type=unit_fraction, default=0.01)
    parser.add_argument(
        "--scale", type=unit_fraction, default=1.0, help="share of the MLPerf heights"
    )
    parser.add_argument("--one", choices=FLOWS, help=argparse.SUPPRESS)  # a child's flow
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.method, args.fraction, args.scale)))
        return {}
    out = run(args)
    print(json.dumps(out, indent=None if args.json else 2))
    return out


if __name__ == "__main__":
    main()
