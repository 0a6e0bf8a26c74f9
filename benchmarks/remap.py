"""Forward+backward cost of the learned-hash EBC against a plain EBC of the same size
(``--collection sequence``: the EmbeddingCollections).

Both collections have the same compressed tables (heights ``fraction * N``); the learned-hash
one is fed raw ids, the plain one the very rows those ids map to (so both touch the same rows
and only the remap differs). Steps of the two alternate, so both see the same machine load, and
each step gets a new KeyedJaggedTensor over the same tensors (a reused one would keep
TorchRec's cached per-key lengths and ``to_dict`` split, which a real batch has not).
Two ways:

* ``unsharded``: TorchRec's EmbeddingBagCollection (``nn.EmbeddingBag`` per table);
* ``fused``: both wrapped by DistributedModelParallel on one gloo rank, i.e. TorchRec's
  fused FBGEMM tables with the optimizer in the backward (the training path).

``--encoding compact`` gives every table a compact (head/tail) hash function instead of a
dense one: the most frequent 10% of its ids at learned (here random) rows, the others
hashed into all its rows. ``--encoding ranked``: the same head at its ranks (a row each, as
a filled head), held ranked (:mod:`torchrec_lhf.modules.head_rank`: 2 bytes an id).

``--scatter_ids``: each table's ids pass through a fixed random permutation (seed 2), so
that its most frequent ids, and its head, are spread over the id space as hashed ids are
(a ranked head is then searched in its blocks, not read off contiguous ids).

``--collection sequence`` times the sequence twins instead: TorchRec's EmbeddingCollection
(per-id embeddings, no pooling) against the learned-hash one, each step's loss the sum of
every id's embedding.

``--clock cpu`` times with the process's CPU time instead of wall time: on a shared machine
other processes then slow neither side's figure (their cache and memory traffic still do).

Each paired ratio comes with a 95% bootstrap interval over the run's iterations
(``ratio_paired_ci95``), and ``goal_verdict`` reads the fused one against the goal:
``met`` (all of it at most 1.05), ``not met`` (all above) or ``undecided``. It is one run's
noise: on a shared machine the ratio also moves from run to run, so repeat the run.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.remap --json [--encoding compact] [--pooling 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.types import ShardingEnv
from torchrec.test_utils import get_free_port

from torchrec_lhf import (
    HashPlan,
    LearnedHashEmbeddingBagCollection,
    LearnedHashEmbeddingCollection,
    TableHash,
)
from torchrec_lhf.cli import int_at_least, unit_fraction
from torchrec_lhf.compression.budget import MIN_TABLE_ROWS
from torchrec_lhf.distributed.embedding import LearnedHashEmbeddingCollectionSharder
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.planner import make_topology
from torchrec_lhf.plan_compact import CompactMapping, row_dtype

HEAD_SHARE = 0.1  # --encoding compact: share of each table's ids in the head

COLLECTIONS = {
    # --collection: (table config, plain collection, learned-hash one, their sharders)
    "pooled": (
        EmbeddingBagConfig,
        EmbeddingBagCollection,
        LearnedHashEmbeddingBagCollection,
        EmbeddingBagCollectionSharder,
        LearnedHashEmbeddingBagCollectionSharder,
    ),
    "sequence": (
        EmbeddingConfig,
        EmbeddingCollection,
        LearnedHashEmbeddingCollection,
        EmbeddingCollectionSharder,
        LearnedHashEmbeddingCollectionSharder,
    ),
}

# Criteo Kaggle cardinalities (26 tables), capped by --max_rows.
CRITEO_HEIGHTS = [
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
]


def _order(heights: list[int], scatter: bool) -> list[torch.Tensor | None]:
    """Per table, the permutation its ids pass through (``--scatter_ids``), or None."""
    if not scatter:
        return [None] * len(heights)
    g = torch.Generator().manual_seed(2)
    return [torch.randperm(h, generator=g) for h in heights]


def _inputs(
    heights: list[int],
    batch: int,
    pooling: int,
    seed: int,
    order: list[torch.Tensor | None] | None = None,
) -> KeyedJaggedTensor:
    """A batch of ``pooling`` ids per sample and table, skewed to the small ids (each
    table's ids then mapped through ``order``'s permutation, where it has one)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((len(heights) * batch,), pooling, dtype=torch.int32)
    order = order if order is not None else [None] * len(heights)
    pieces = []
    for h, perm in zip(heights, order):
        # Zipf-like skew: cubes of uniforms concentrate on small ids
        ids = (torch.rand(batch * pooling, generator=g) ** 3 * h).long().clamp_max(h - 1)
        pieces.append(ids if perm is None else perm[ids])
    values = torch.cat(pieces)
    return KeyedJaggedTensor(
        keys=[f"f{i}" for i in range(len(heights))], values=values, lengths=lengths
    )


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""``--clock``: wall time, or the process's CPU time (all its threads; not the time other
processes hold the cores, so steadier on a shared machine; the same for a single-threaded
step on an idle one)."""


def _time(
    step, iters: int, warmup: int, *, clock: Callable[[], float] = time.perf_counter
) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return statistics.median(times)


def time_pair(
    steps: dict[str, Callable[[], object]],
    iters: int,
    warmup: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each step, the steps interleaved so that both see the same load;
    with steps ``plain`` and ``lhf``, also ``ratio_paired``: the median over iterations of
    ``lhf``'s time over ``plain``'s in the same iteration (a paired estimate, which load
    that changes between iterations moves less than the ratio of the medians), and
    ``ratio_paired_ci95``: its bootstrap interval (:func:`median_interval`)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            t0 = clock()
            step()
            times[name].append(clock() - t0)
    out = {name: statistics.median(ts) for name, ts in times.items()}
    if "plain" in times and "lhf" in times:
        pairs = zip(times["lhf"], times["plain"])
        ratios = [a / b for a, b in pairs if b > 0]
        out["ratio_paired"] = statistics.median(ratios)
        out["ratio_paired_ci95"] = median_interval(ratios)
    return out


def median_interval(values: list[float], *, resamples: int = 2000, seed: int = 0) -> list[float]:
    """A 95% bootstrap (percentile) interval of the median of ``values``: the iterations of
    one run, so it is the noise within a run, not the slower changes of a shared machine's
    load between runs (repeat the run for those). Seeded: the same values, the same
    interval.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("median_interval needs at least one value, got none")
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


GOAL = 1.05
"""The fused step's goal: at most this many times a plain EBC's."""


def verdict(ratio_ci95: list[float], goal: float = GOAL) -> str:
    """``met`` where the paired ratio's whole interval is at most ``goal``, ``not met``
    where it is all above, else ``undecided`` (this run cannot tell: repeat it)."""
    lo, hi = ratio_ci95
    return "met" if hi <= goal else "not met" if lo > goal else "undecided"


def _dmp(module: torch.nn.Module, sharders: list, batch: int) -> DistributedModelParallel:
    pg = dist.GroupMember.WORLD
    sharding_plan = EmbeddingShardingPlanner(
        topology=make_topology(1, "cpu"), batch_size=batch
    ).collective_plan(module, sharders, pg)
    return DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(pg),
        plan=sharding_plan,
        sharders=sharders,
        device=torch.device("cpu"),
    )


def _tables(
    args: argparse.Namespace,
) -> tuple[list[int], list[EmbeddingBagConfig], list[EmbeddingBagConfig], HashPlan]:
    """The capped heights, the logical and compressed tables, and a random plan between them.

    Returns:
        ``(heights, logical, small, plan)``: table ``t{i}`` has ``heights[i]`` ids in
        ``logical`` and ``max(1, round(fraction * heights[i]))`` rows in ``small``, and
        ``plan`` maps its ids to those rows uniformly at random (seed 0); a table of fewer
        than ``min_table_rows`` ids stays full in both (not in the plan: the remap passes
        its ids through).
    """
    heights = [min(h, args.max_rows) for h in CRITEO_HEIGHTS]
    full = [h < args.min_table_rows for h in heights]  # uncompressed in both models
    compressed = [h if f else max(1, round(h * args.fraction)) for h, f in zip(heights, full)]
    config = COLLECTIONS[args.collection][0]
    logical = [
        config(name=f"t{i}", embedding_dim=args.dim, num_embeddings=h, feature_names=[f"f{i}"])
        for i, h in enumerate(heights)
    ]
    small = [
        config(name=f"t{i}", embedding_dim=args.dim, num_embeddings=m, feature_names=[f"f{i}"])
        for i, m in enumerate(compressed)
    ]
    g = torch.Generator().manual_seed(0)
    if args.encoding in ("compact", "ranked"):
        ranked = args.encoding == "ranked"
        order = _order(heights, args.scatter_ids)
        plan = HashPlan(
            [
                TableHash(
                    f"t{i}", h, (_head_tail(h, m, g, seed=i, ranked=ranked, order=order[i]),), (m,)
                )
                for i, (h, m) in enumerate(zip(heights, compressed))
                if not full[i]
            ]
        )
        return heights, logical, small, plan
    plan = HashPlan.from_mappings(
        {
            f"t{i}": torch.randint(0, m, (h,), generator=g)
            for i, (h, m) in enumerate(zip(heights, compressed))
            if not full[i]
        },
        heights={f"t{i}": m for i, m in enumerate(compressed) if not full[i]},
    )
    return heights, logical, small, plan


def _head_tail(
    num_ids: int,
    rows: int,
    g: torch.Generator,
    *,
    seed: int,
    ranked: bool = False,
    order: torch.Tensor | None = None,
) -> CompactMapping:
    """The most frequent ``HEAD_SHARE`` of ``num_ids`` ids (the smallest: the density of
    :func:`_inputs` falls with the id; their images under ``order``, where given) at random
    rows (``ranked``: at their ranks, at most ``rows`` of them), the tail hashed into all
    ``rows``."""
    k = max(1, round(HEAD_SHARE * num_ids))
    rows_K = torch.randint(0, rows, (k,), generator=g).to(row_dtype(rows))
    if ranked:
        k = min(k, rows)
        rows_K = torch.arange(k).to(row_dtype(rows))
    ids_K = torch.arange(k) if order is None else order[:k].sort().values
    return CompactMapping(ids_K, rows_K, tail_seed=seed, tail_offset=0, tail_rows=rows)


def _fresh(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """``kjt``'s tensors in a new KJT, as every training batch is: none of the per-key
    lengths, offsets or ``to_dict`` split that TorchRec caches on a KJT it has seen."""
    return KeyedJaggedTensor(
        keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(), weights=kjt.weights_or_none()
    )


def _total(out: object) -> torch.Tensor:
    """The sum of a collection's output: a pooled KeyedTensor, or a sequence collection's
    JaggedTensor per feature."""
    if isinstance(out, dict):
        return torch.stack([jt.values().sum() for jt in out.values()]).sum()
    return out.values().sum()


def _sgd_step(module: torch.nn.Module, kjt: KeyedJaggedTensor) -> Callable[[], None]:
    """One forward, backward and SGD step of an unsharded collection."""
    opt = torch.optim.SGD(module.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _total(module(_fresh(kjt))).backward()
        opt.step()

    return step


def _fused_step(module: DistributedModelParallel, kjt: KeyedJaggedTensor) -> Callable[[], None]:
    """One forward and backward of a DMP-wrapped collection (the optimizer is fused)."""
    return lambda: _total(module(_fresh(kjt)).wait()).backward()


def _time_fused(
    args: argparse.Namespace,
    logical: list[EmbeddingBagConfig],
    small: list[EmbeddingBagConfig],
    plan: HashPlan,
    raw: KeyedJaggedTensor,
    in_range: KeyedJaggedTensor,
) -> dict[str, float]:
    """Median step seconds of the plain and learned-hash collections under DMP (fused SGD)."""
    fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.01}
    _, plain, learned, plain_sharder, learned_sharder = COLLECTIONS[args.collection]
    meta = torch.device("meta")
    plain_dmp = _dmp(
        plain(tables=small, device=meta), [plain_sharder(fused_params=fused)], args.batch_size
    )
    lhf_dmp = _dmp(
        learned(tables=logical, plan=plan, device=meta),
        [learned_sharder(fused_params=fused)],
        args.batch_size,
    )
    return time_pair(
        {"plain": _fused_step(plain_dmp, in_range), "lhf": _fused_step(lhf_dmp, raw)},
        args.iters,
        args.warmup,
        clock=CLOCKS[args.clock],
    )


def run(args: argparse.Namespace) -> dict:
    heights, logical, small, plan = _tables(args)
    order = _order(heights, args.scatter_ids and args.encoding != "dense")
    raw = _inputs(heights, args.batch_size, args.pooling, seed=1, order=order)
    results: dict = {}
    _, plain, learned, _, _ = COLLECTIONS[args.collection]
    lhf = learned(tables=logical, plan=plan)
    in_range = lhf.remap(raw)  # the same rows, already mapped
    results["unsharded"] = time_pair(
        {
            "plain": _sgd_step(plain(tables=small), in_range),
            "lhf": _sgd_step(lhf, raw),
        },
        args.iters,
        args.warmup,
        clock=CLOCKS[args.clock],
    )
    results["fused"] = _time_fused(args, logical, small, plan, raw, in_range)
    remap_only = _time(
        lambda: lhf.remap(_fresh(raw)), args.iters, args.warmup, clock=CLOCKS[args.clock]
    )
    for mode in ("unsharded", "fused"):
        r = results[mode]
        r["ratio"] = r["lhf"] / r["plain"]
    results["remap_bytes"] = lhf.remap.remap_bytes()
    return report(args, results, remap_only, num_tables=len(heights), num_ids=raw.values().numel())


def report(
    args: argparse.Namespace, results: dict, remap_only: float, *, num_tables: int, num_ids: int
) -> dict:
    """The benchmark's JSON result: the config, the timings, and whether the goal is met.

    Args:
        args: the flags.
        results: ``"unsharded"`` / ``"fused"`` -> seconds per batch of ``plain`` and ``lhf``
            and their ``ratio``; ``"remap_bytes"``: the learned-hash remap's state bytes.
        remap_only: seconds per batch of the remap alone.
        num_tables: the number of tables.
        num_ids: ids per batch.
    """
    return {
        "benchmark": "remap",
        "config": {
            "num_tables": num_tables,
            "batch_size": args.batch_size,
            "pooling": args.pooling,
            "embedding_dim": args.dim,
            "fraction": args.fraction,
            "max_rows": args.max_rows,
            "collection": args.collection,
            "encoding": args.encoding,
            "scatter_ids": args.scatter_ids,
            "min_table_rows": args.min_table_rows,
            "full_tables": sum(min(h, args.max_rows) < args.min_table_rows for h in CRITEO_HEIGHTS),
            "ids_per_batch": num_ids,
            "threads": torch.get_num_threads(),
            "clock": args.clock,
            "machine": platform.machine(),
            "torch": torch.__version__,
        },
        "seconds_per_batch": {k: v for k, v in results.items() if k != "remap_bytes"},
        "remap_bytes": results["remap_bytes"],
        "remap_only_seconds": remap_only,
        "remap_share_of_fused_plain": remap_only / results["fused"]["plain"],
        "load_average": list(os.getloadavg()),
        "goal": f"fused ratio <= {GOAL}",
        "goal_met": results["fused"]["ratio"] <= GOAL,
        # (the paired ratio's interval against the goal: one run's noise, see median_interval)
        "goal_verdict": verdict(results["fused"]["ratio_paired_ci95"]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch_size", type=int_at_least(1), default=4096)
    parser.add_argument(
        "--pooling", type=int_at_least(1), default=1, help="ids per sample per feature"
    )
    parser.add_argument("--dim", type=int_at_least(1), default=64)
    parser.add_argument("--fraction", type=unit_fraction, default=0.1)
    parser.add_argument("--max_rows", type=int_at_least(1), default=1_000_000)
    parser.add_argument(
        "--encoding",
        choices=("dense", "compact", "ranked"),
        default="dense",
        help="the hash functions' encoding (compact: head = most frequent 10%% of ids; "
        "ranked: that head at its ranks, held ranked)",
    )
    parser.add_argument(
        "--collection",
        choices=tuple(COLLECTIONS),
        default="pooled",
        help="pooled: EmbeddingBagCollections; sequence: EmbeddingCollections (per-id embeddings)",
    )
    parser.add_argument(
        "--scatter_ids",
        action="store_true",
        help="spread each table's ids (and its head) over its id space by a fixed random "
        "permutation, as hashed ids are (compact and ranked encodings)",
    )
    parser.add_argument(
        "--min_table_rows",
        type=int_at_least(0),
        default=0,
        help="tables of fewer ids stay full in both models (0: every table compressed; the "
        f"pipeline's rule is --min_table_rows {MIN_TABLE_ROWS})",
    )
    parser.add_argument("--iters", type=int_at_least(1), default=20)
    parser.add_argument("--warmup", type=int_at_least(0), default=5)
    parser.add_argument(
        "--threads", type=int_at_least(0), default=0, help="torch threads (0: default)"
    )
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="wall", help="wall or process CPU time"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.scatter_ids and args.encoding == "dense":
        parser.error("--scatter_ids needs --encoding compact or ranked (a dense plan has no head)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        # a free port, not a fixed one: back-to-back or concurrent runs collided on 29533
        os.environ.setdefault("MASTER_PORT", str(get_free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for mode in ("unsharded", "fused"):
            r = result["seconds_per_batch"][mode]
            print(
                f"{mode:>9}: plain {r['plain'] * 1e3:.2f} ms  lhf {r['lhf'] * 1e3:.2f} ms  ratio {r['ratio']:.3f}"
            )
        print(f"remap alone: {result['remap_only_seconds'] * 1e3:.2f} ms")
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
