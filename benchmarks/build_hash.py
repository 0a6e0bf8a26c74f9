"""Benchmark of the distributed hash build: 26 Criteo-like tables at 1 and 2 ranks.

The teacher is synthetic: random ``(N, 4)`` embeddings and Zipf(1.1) access counts (in a
random id order) for the 26 categorical features of Criteo Kaggle, with the heights of
the Kaggle dataset's vocabularies (:data:`CRITEO_KAGGLE_HEIGHTS`) capped at ``--max_rows``.
With the default cap of 5,000,000 the heights are C3, C12, C16, C21: 5,000,000 each;
C4: 2,202,608; C24: 286,181; C26: 142,572; C10: 93,145; then 14,992 and less: 22,771,904
ids in all, of which the 7 tables of at least ``--min_table_rows`` 100,000 (22,631,361
ids) are clustered to 10% of their rows.

Each world size runs ``run_build`` on freshly spawned gloo processes with a fresh work
directory and ``--threads_per_rank`` torch threads per rank (default 1, as under
``torchrun``), so the speed-up is that of the ranks alone. (On the shared 2-core machine
where this was written, one rank with 2 threads ran 10-15x slower than with 1 while other
processes held a core.) The time is rank 0's wall clock from a barrier before the build
to the saved plan, teacher loading excluded. World sizes are run in interleaved rounds
(``--repeats``); the JSON has every run, the median and best per world size, and the
speed-ups over the first world size. The plans of all runs must be identical
(``plans_identical``).

Run: ``python -m benchmarks.build_hash --json`` (defaults: ``--repeats 3 --max_rows 5000000
--fraction 0.1 --min_table_rows 100000 --world_sizes 1,2``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from torchrec_lhf.cli import comma_list, int_at_least, unit_fraction
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.job import BuildConfig, run_build, table_rows
from torchrec_lhf.plan import HashPlan

# The 26 categorical vocabularies of Criteo Kaggle (Display Advertising Challenge), C1..C26,
# as counted by the DLRM reference preprocessing of the full 7-day training set.
CRITEO_KAGGLE_HEIGHTS = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]  # fmt: skip


def make_teacher(directory: Path, heights: list[int], *, dim: int, seed: int) -> None:
    """Write a synthetic teacher: ``(N, dim)`` normal embeddings, Zipf(1.1) counts."""
    g = torch.Generator().manual_seed(seed)
    emb, cnt = {}, {}
    for i, n in enumerate(heights):  # a loop per table
        name = f"t_cat_{i}"
        emb[name] = torch.randn(n, dim, generator=g)
        rank_N = torch.randperm(n, generator=g).double() + 1.0
        cnt[name] = (1e6 / rank_N**1.1).floor().long()
    TeacherArtifact(embeddings=emb, counts=cnt, manifest={"dataset": "synthetic-criteo-like"}).save(
        directory
    )


def _worker(rank: int, world_size: int, port: int, threads: int, kw: dict, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_DEVICE_TRANSPORT="TCP")
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, force=True)
    try:
        if world_size > 1:
            dist.init_process_group(
                "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(hours=1)
            )
        art = TeacherArtifact.load(kw["teacher"])
        config = BuildConfig(
            fraction=kw["fraction"],
            min_table_rows=kw["min_table_rows"],
            clustering=kw["clustering"],
            work_dir=kw["work_dir"],
            out=kw["out"],
        )
        seconds: dict[str, float] = {}
        cpu_done = [0.0]  # CPU seconds when this rank's last table was done

        def on_table_done(name: str, info: dict) -> None:
            seconds[name] = info["seconds"]
            cpu_done[0] = time.process_time() - cpu_start

        if world_size > 1:
            dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        run_build(config, art, rank=rank, world_size=world_size, on_table_done=on_table_done)
        queue.put((rank, "ok", (time.perf_counter() - start, cpu_done[0]), seconds))
    except BaseException as e:  # report to the parent, which raises
        queue.put((rank, "error", repr(e), {}))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_world_size(world_size: int, threads: int, kw: dict) -> dict[str, Any]:
    """Spawn ``world_size`` ranks, build, and return rank 0's seconds and per-rank work."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, threads, kw, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results = {}
    for _ in range(world_size):
        rank, status, value, seconds = queue.get(timeout=3600)
        if status != "ok":
            for p in procs:
                p.kill()
            raise RuntimeError(f"world size {world_size}, rank {rank} failed: {value}")
        results[rank] = (value, seconds)
    for p in procs:
        p.join()
    return {
        "world_size": world_size,
        "threads_per_rank": threads,
        "seconds": round(results[0][0][0], 3),
        # CPU seconds of each rank up to its last table (before the gather, whose waits spin):
        # the work split, whatever else runs on the machine
        "per_rank_cpu_seconds": [round(results[r][0][1], 3) for r in range(world_size)],
        "per_rank_clustering_seconds": [
            round(sum(results[r][1].values()), 3) for r in range(world_size)
        ],
        "per_rank_tables": [sorted(results[r][1]) for r in range(world_size)],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags (see the module docstring for the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--max_rows", type=int_at_least(1), default=5_000_000, help="cap on each table's height"
    )
    p.add_argument("--fraction", type=unit_fraction, default=0.1)
    p.add_argument("--min_table_rows", type=int_at_least(0), default=100_000)
    p.add_argument("--clustering", default=BuildConfig.clustering, help="a registered clustering")
    p.add_argument("--dim", type=int_at_least(1), default=4, help="teacher embedding dim")
    p.add_argument(
        "--world_sizes",
        type=comma_list(int_at_least(1), "ints >= 1", unique=True),  # (speed-ups keyed by size)
        default=[1, 2],
        help="comma list; the first is the baseline",
    )
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="rounds over the world sizes")
    p.add_argument(
        "--threads_per_rank", type=int_at_least(1), default=1, help="torch threads per rank"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    return p.parse_args(argv)


def run_rounds(
    args: argparse.Namespace, tmp: Path, world_sizes: list[int]
) -> tuple[list[dict[str, Any]], set[str]]:
    """Build with each world size, in ``args.repeats`` interleaved rounds, in ``tmp``.

    Rounds go ``1, 2, 1, 2, ...`` so that load from elsewhere hits every world size alike.

    Returns:
        ``(runs, fingerprints)``: :func:`run_world_size`'s result per run, and the set of
        the plans' fingerprints (one if all plans are identical).
    """
    runs, fingerprints = [], set()
    for i, ws in enumerate(world_sizes * args.repeats):
        kw = dict(
            teacher=str(tmp / "teacher"),
            fraction=args.fraction,
            min_table_rows=args.min_table_rows,
            clustering=args.clustering,
            work_dir=str(tmp / f"run{i}.work"),
            out=str(tmp / f"run{i}.plan"),
        )
        runs.append(run_world_size(ws, args.threads_per_rank, kw))
        fingerprints.add(HashPlan.load(tmp / f"run{i}.plan").fingerprint())
        if not args.json:
            print(f"world size {ws}: {runs[-1]['seconds']:.2f} s", file=sys.stderr)
    return runs, fingerprints


def speedups(runs: list[dict[str, Any]], world_sizes: list[int]) -> dict[str, Any]:
    """Median and best seconds per world size, and the speed-ups over the first world size."""
    times = {ws: [r["seconds"] for r in runs if r["world_size"] == ws] for ws in world_sizes}
    median = {ws: statistics.median(t) for ws, t in times.items()}
    best = {ws: min(t) for ws, t in times.items()}
    cpu = {
        ws: statistics.median(max(r["per_rank_cpu_seconds"]) for r in runs if r["world_size"] == ws)
        for ws in world_sizes
    }
    return {
        "median_seconds": {str(ws): round(t, 3) for ws, t in median.items()},
        "best_seconds": {str(ws): round(t, 3) for ws, t in best.items()},
        # speed-up over the first world size: of the medians, and of the best runs (the
        # least disturbed by other processes on a shared machine)
        "speedup_median": {
            str(ws): round(median[world_sizes[0]] / t, 3) for ws, t in median.items()
        },
        "speedup_best": {str(ws): round(best[world_sizes[0]] / t, 3) for ws, t in best.items()},
        # the busiest rank's CPU seconds against the first world size's: the speed-up an
        # otherwise idle machine with a core per rank would give (bounded by the balance)
        "speedup_cpu_bound": {str(ws): round(cpu[world_sizes[0]] / t, 3) for ws, t in cpu.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    heights = [min(n, args.max_rows) for n in CRITEO_KAGGLE_HEIGHTS]
    sizes = {f"t_cat_{i}": n for i, n in enumerate(heights)}
    world_sizes = args.world_sizes
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_build_hash_") as tmp:
        tmp = Path(tmp)
        compressed = table_rows(
            sizes,
            BuildConfig(
                fraction=args.fraction,
                min_table_rows=args.min_table_rows,
                work_dir=tmp,
                out=tmp / "x",
            ),
        )
        t0 = time.perf_counter()
        make_teacher(tmp / "teacher", heights, dim=args.dim, seed=args.seed)
        teacher_seconds = time.perf_counter() - t0
        runs, fingerprints = run_rounds(args, tmp, world_sizes)
    result = {
        "benchmark": "build_hash",
        "tables": len(heights),
        "heights": heights,
        "total_ids": sum(heights),
        "compressed_tables": len(compressed),
        "compressed_ids": sum(sizes[n] for n in compressed),
        "compressed_rows": sum(compressed.values()),
        "fraction": args.fraction,
        "min_table_rows": args.min_table_rows,
        "max_rows": args.max_rows,
        "clustering": args.clustering,
        "teacher_dim": args.dim,
        "threads_per_rank": args.threads_per_rank,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "synthetic_teacher_seconds": round(teacher_seconds, 3),
        **speedups(runs, world_sizes),
        "plans_identical": len(fingerprints) == 1,
        "runs": runs,
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
