"""Speed and peak memory of the 1-D clustering against ``torch.sort`` of the same values.

Each count distribution runs in a fresh subprocess (so peak memory is that case's own):
values ``~ N(0, 1)`` float32 (a teacher coordinate), counts either ``uniform`` (i.i.d.
integers in ``[0, 20]``) or ``zipf`` (``floor(10 N * r^-1.1 / sum_r r^-1.1)`` for a random
rank ``r`` per id, i.e. Zipf(1.1) access counts of ``10 N`` accesses; most ids get 0).
In the same process, ``torch.sort`` of the same values is timed (median of
``--sort-repeats``) and the ratio reported.

Peak memory on CPU: the process's resident-set high-water mark (``VmHWM``) after resetting it
with ``/proc/self/clear_refs`` right before the clustering, minus the resident set at that
moment (``VmRSS``), so inputs already in memory are not counted; where the reset is not
allowed, ``ru_maxrss`` minus ``VmRSS`` (an upper bound if data generation peaked higher).
On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before.

Also reported per case: merge steps, fallback merges, the largest cluster, the share of
accesses that land in clusters of more than one id, and the count-weighted within-cluster
variance of the values relative to the total one (lower: tighter clusters).

Usage::

    python -m benchmarks.clustering --num-ids 10000000 --num-clusters 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from torchrec_lhf.cli import comma_list, int_at_least, json_object
from torchrec_lhf.clustering import check_clustering_options, get_clustering, list_clusterings

GOAL_RATIO = 10.0
GOAL_PEAK_BYTES = 2 * 2**30


COUNT_KINDS = ("uniform", "zipf")
"""The access-count distributions ``--counts`` names (see the module docstring)."""


def make_inputs(
    num_ids: int, kind: str, seed: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``(N,)`` float32 and counts ``(N,)`` int64 for one distribution."""
    g = torch.Generator().manual_seed(seed)
    values_N = torch.randn(num_ids, generator=g)
    if kind == "uniform":
        counts_N = torch.randint(0, 21, (num_ids,), generator=g)
    elif kind == "zipf":
        weight_N = (torch.randperm(num_ids, generator=g).double() + 1).pow_(-1.1)
        counts_N = torch.floor(weight_N.mul_(10 * num_ids / float(weight_N.sum()))).long()
        del weight_N
    else:
        raise ValueError(f"unknown count distribution {kind!r}; expected 'uniform' or 'zipf'")
    return values_N.to(device), counts_N.to(device)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_case(args: argparse.Namespace, kind: str) -> dict:
    """One distribution, in this process: clustering time and peak memory, sort time."""
    values_N, counts_N = make_inputs(args.num_ids, kind, args.seed, args.device)
    cluster = get_clustering(args.clustering)
    cluster(
        values_N[:1000], counts_N[:1000], min(args.num_clusters, 1000), **args.options
    )  # warm-up
    _sync(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        mem_before = torch.cuda.memory_allocated()
        mem_method = "cuda.max_memory_allocated"
    else:
        mem_method = "VmHWM after clear_refs" if _reset_peak_rss() else "ru_maxrss"
        mem_before = (_proc_status_kib("VmRSS") or 0) * 1024
    t0 = time.perf_counter()
    result = cluster(values_N, counts_N, args.num_clusters, **args.options)
    _sync(args.device)
    cluster_seconds = time.perf_counter() - t0
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() - mem_before
    elif mem_method == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - mem_before
    else:
        peak = (_proc_status_kib("VmHWM") or 0) * 1024 - mem_before

    sort_times = []
    for _ in range(args.sort_repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        torch.sort(values_N)
        _sync(args.device)
        sort_times.append(time.perf_counter() - t0)
    sort_seconds = statistics.median(sort_times)

    cluster_of_id = result.cluster_of_id
    sizes = torch.bincount(cluster_of_id, minlength=args.num_clusters)
    counts = counts_N.double()
    shared_mass = float(counts[sizes[cluster_of_id] > 1].sum() / counts.sum().clamp_min(1))
    # Count-weighted within-cluster variance of the values, relative to the total one.
    values = values_N.double()
    mass_C = torch.zeros(args.num_clusters, dtype=torch.float64, device=values.device)
    mass_C.index_add_(0, cluster_of_id, counts)
    sum_C = torch.zeros_like(mass_C).index_add_(0, cluster_of_id, counts * values)
    mean_C = sum_C / mass_C.clamp_min(1e-300)
    within = float((counts * (values - mean_C[cluster_of_id]) ** 2).sum())
    total_mean = float((counts * values).sum() / counts.sum().clamp_min(1e-300))
    total = float((counts * (values - total_mean) ** 2).sum())
    return {
        "counts": kind,
        "cluster_seconds": round(cluster_seconds, 3),
        "sort_seconds": round(sort_seconds, 3),
        "ratio": round(cluster_seconds / sort_seconds, 2),
        "peak_memory_bytes": int(peak),
        "peak_memory_method": mem_method,
        "steps": result.steps,
        "fallback_merges": result.fallback_merges,
        "max_cluster_size_limit": result.max_cluster_size,
        "largest_cluster": int(sizes.max()),
        "access_mass_in_shared_clusters": round(shared_mass, 4),
        "relative_weighted_sse": float(f"{within / max(total, 1e-300):.4g}"),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-ids", type=int_at_least(1), default=1_000_000)
    p.add_argument("--num-clusters", type=int_at_least(1), default=100_000)
    p.add_argument(
        "--counts",
        type=comma_list(str, "count kinds", unique=True),
        default=list(COUNT_KINDS),
        help="comma-separated: uniform, zipf",
    )
    p.add_argument("--clustering", default="agglomerative", choices=list_clusterings())
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sort-repeats", type=int_at_least(1), default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=None,
        help="torch intra-op threads (default: torch's)",
    )
    p.add_argument(
        "--options",
        type=json_object,
        default={},
        help="clustering options as JSON, e.g. '{\"merge_fraction\": 0.1}'",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one case
    args = p.parse_args(argv)
    if args.num_clusters > args.num_ids:
        p.error(f"--num-clusters must be <= --num-ids ({args.num_ids}), got {args.num_clusters}")
    if not set(args.counts) <= set(COUNT_KINDS):
        p.error(f"--counts must name kinds of {list(COUNT_KINDS)}, got {args.counts}")
    try:
        check_clustering_options(args.clustering, args.options)
    except (TypeError, ValueError) as e:
        p.error(f"--options {json.dumps(args.options)}: {e}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_case(args, args.worker)))
        return {}

    loadavg_before = round(os.getloadavg()[0], 2)
    cases = []
    for kind in args.counts:
        base = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.clustering", *base, "--worker", kind],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:  # (its stderr, not only "returned non-zero exit status 1")
            raise SystemExit(f"the {kind!r} case failed:\n{out.stderr[-4000:]}")
        cases.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report = {
        "benchmark": "clustering",
        "clustering": args.clustering,
        "options": args.options,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "num_ids": args.num_ids,
        "num_clusters": args.num_clusters,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_1min_before": loadavg_before,
        "cases": cases,
        "goals": {"ratio_max": GOAL_RATIO, "peak_memory_bytes_max": GOAL_PEAK_BYTES},
        "meets_goals": all(
            c["ratio"] <= GOAL_RATIO and c["peak_memory_bytes"] <= GOAL_PEAK_BYTES for c in cases
        ),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{args.clustering} on {report['device']}: {args.num_ids:,} ids -> {args.num_clusters:,} clusters"
        )
        for c in cases:
            print(
                f"  {c['counts']:>8}: {c['cluster_seconds']:7.2f}s vs sort {c['sort_seconds']:.2f}s "
                f"(x{c['ratio']}), peak {c['peak_memory_bytes'] / 2**30:.2f} GiB, {c['steps']} steps, "
                f"{c['fallback_merges']} fallback merges"
            )
    return report


if __name__ == "__main__":
    main()
