"""Peak memory of the serving export (quantize, shard, trace, script) against the tables' bytes.

The export's scripted models (:func:`torchrec_lhf.inference.script_serving_model`, what
``--export_model`` writes per dtype) are built on one rank from the unsharded float model.
This benchmark builds a DLRM of ``--tables`` tables of ``--rows`` ids each (full, or with a
random learned hash plan at ``--fraction`` of the rows), then scripts it per dtype in a
process of its own and reports the resident-set peak above the process's resident set
before the call (``VmHWM`` after resetting it), in GB and as a multiple of the float
tables' bytes. Three flows, in the same run:

* ``spill`` (the current export, since 2026-12-01): the quantized copy shares the float
  tables, and its quantized tables are staged on disk and freed before TorchRec's sharding
  allocates tables of its own (``shard_for_inference(spill=True)``);
* ``remap-copies`` (the baseline of the learned hashes' shared mappings, 2026-12-01): as
  ``spill``, but each learned-hash remap copied three times on the way (the quantized
  copy of the float model, the quantized collection, the sharded one) instead of once
  (``logical_view.remap_tensors`` off; the same as ``spill`` for ``--model full``);
* ``shared`` (the baseline of the spill): as ``spill`` without the staging, so quantized and
  sharded tables are in memory together (``spill=False``);
* ``full`` (the export before 2026-11-30's last session): the float model copied whole before
  quantization, no staging.

Linux only (``/proc/self/status``, ``/proc/self/clear_refs``).

Usage::

    python -m benchmarks.export_memory --json [--rows 2000000 --tables 8 --model full|lhf] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
import time

import torch

from torchrec_lhf.cli import int_at_least, unit_fraction

COPIES = ("spill", "remap-copies", "shared", "full")
"""The flows measured (the module docstring); ``--copy`` names one."""
DTYPES = ("fp32", "int8")


def _status_gb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"/proc/self/status has no {field}")


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, list[str], int]:
    """The float DLRM, its features and its float tables' bytes."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.models.dlrm import DLRM

    from torchrec_lhf import HashPlan, apply_hash_plan

    features = [f"f{i}" for i in range(args.tables)]
    tables = [
        EmbeddingBagConfig(
            name=f"t{i}", embedding_dim=args.dim, num_embeddings=args.rows, feature_names=[f]
        )
        for i, f in enumerate(features)
    ]
    torch.manual_seed(0)
    dlrm = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables),
        dense_in_features=3,
        dense_arch_layer_sizes=[8, args.dim],
        over_arch_layer_sizes=[8, 1],
    )
    if args.model == "lhf":
        rows = max(1, round(args.fraction * args.rows))
        g = torch.Generator().manual_seed(0)
        plan = HashPlan.from_mappings(
            {f"t{i}": torch.randint(0, rows, (args.rows,), generator=g) for i in range(args.tables)}
        )
        apply_hash_plan(dlrm, plan)
    from torchrec_lhf.inference import embedding_tables

    table_bytes = sum(t.numel() * t.element_size() for t in embedding_tables(dlrm))
    return dlrm.eval(), features, table_bytes


def measure_one(args: argparse.Namespace) -> dict:
    """In this process: script the model once (``args.dtype``, flow ``args.copy``); the peak."""
    from torchrec_lhf import inference

    dlrm, features, table_bytes = _model(args)
    if args.copy == "full":  # the first baseline: quantize a whole copy of the float model
        inference.embedding_tables = lambda model: []
    if args.copy == "remap-copies":  # every twin takes a copy of the remap's mappings
        from torchrec_lhf.modules import logical_view

        logical_view.remap_tensors = lambda source: {}
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_gb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the high-water mark starts again from the resident set
    t0 = time.perf_counter()
    # both baselines hold the quantized and the sharded tables together (spill=False)
    spill = args.copy in ("spill", "remap-copies")
    inference.script_serving_model(dlrm, features, num_dense=3, dtype=args.dtype, spill=spill)
    seconds = time.perf_counter() - t0
    peak = _status_gb("VmHWM") - base
    return {
        "dtype": args.dtype,
        "copy": args.copy,
        "peak_above_start_gb": peak,
        "peak_over_table_bytes": peak * 2**30 / table_bytes,
        "table_gb": table_bytes / 2**30,
        "seconds": seconds,
    }


def run(args: argparse.Namespace) -> dict:
    """Each dtype and flow ``--repeats`` times, each in a fresh process (the cases
    interleaved, so that a drift of the machine touches all alike); per case the run of
    median peak, every run's peak and seconds, and the ratios of the flows' medians."""
    runs: dict[str, list[dict]] = {f"{d}/{c}": [] for d in DTYPES for c in COPIES}
    for _ in range(args.repeats):
        for dtype in DTYPES:
            for copy in COPIES:
                cmd = [sys.executable, "-m", "benchmarks.export_memory", "--one", "--json"]
                cmd += ["--dtype", dtype, "--copy", copy, "--model", args.model]
                cmd += ["--rows", str(args.rows), "--tables", str(args.tables)]
                cmd += ["--dim", str(args.dim), "--fraction", str(args.fraction)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[f"{dtype}/{copy}"].append(json.loads(out.strip().splitlines()[-1]))
    results: dict[str, dict] = {}
    for key, rs in runs.items():
        ordered = sorted(rs, key=lambda r: r["peak_above_start_gb"])
        results[key] = {
            **ordered[(len(ordered) - 1) // 2],  # the median run (the lower of two middles)
            "peaks_gb": [r["peak_above_start_gb"] for r in rs],
            "seconds_runs": [r.get("seconds") for r in rs],
        }

    def ratios(a: str, b: str) -> dict[str, float]:
        return {
            dtype: results[f"{dtype}/{a}"]["peak_above_start_gb"]
            / results[f"{dtype}/{b}"]["peak_above_start_gb"]
            for dtype in DTYPES
        }

    return {
        "benchmark": "export_memory",
        "config": {
            "model": args.model,
            "tables": args.tables,
            "rows": args.rows,
            "dim": args.dim,
            "fraction": args.fraction if args.model == "lhf" else 1.0,
            "repeats": args.repeats,
            "machine": platform.machine(),
            "torch": torch.__version__,
        },
        "results": results,
        "spill_over_remap_copies_peak": ratios("spill", "remap-copies"),
        "spill_over_shared_peak": ratios("spill", "shared"),
        "spill_over_full_peak": ratios("spill", "full"),
        "shared_over_full_peak": ratios("shared", "full"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("full", "lhf"), default="full")
    parser.add_argument("--tables", type=int_at_least(1), default=8)
    parser.add_argument("--rows", type=int_at_least(1), default=2_000_000, help="ids per table")
    parser.add_argument("--dim", type=int_at_least(1), default=16)
    parser.add_argument(
        "--fraction", type=unit_fraction, default=0.1, help="rows kept (--model lhf)"
    )
    parser.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=3,
        help="fresh processes per case; the median is reported",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    # one measurement in this process (what run() starts per dtype and copy)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--copy", choices=COPIES, default="shared", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = measure_one(args) if args.one else run(args)
    if args.json or args.one:
        print(json.dumps(result, indent=None if args.one else 2))
    else:
        for key, r in result["results"].items():
            print(
                f"{key:>12}: {r['peak_above_start_gb']:.3f} GB ({r['peak_over_table_bytes']:.2f}x)"
            )
    return result


if __name__ == "__main__":
    main()
