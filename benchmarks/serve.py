"""Serving QPS of a quantized learned-hash DLRM against a quantized plain DLRM of the same rows.

Both models are TorchRec DLRMs with the same dense and over arches and the same compressed
tables (heights ``fraction * N`` of the Criteo-like logical heights ``N``, capped by
``--max_rows``); the learned-hash one maps raw ids through a random hash plan, the plain one
is fed the very rows those ids map to (so both read the same rows and only the remap and
its bookkeeping differ). Both go through the serving flow of ``--export_model``
(:func:`torchrec_lhf.inference.script_serving_model`: int8 tables, ``shard_quant_model`` on
one CPU rank, FX trace, TorchScript) and are timed at each batch size, interleaved, so both
see the same machine load. QPS is samples per second of the median call.

Usage::

    python -m benchmarks.serve --json
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import platform
from collections.abc import Callable

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

from benchmarks import remap as remap_bench
from benchmarks.remap import CRITEO_HEIGHTS, time_pair
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.cli import comma_list, int_at_least, unit_fraction
from torchrec_lhf.inference import (
    ScoringModule,
    example_batch,
    quantize_for_inference,
    script_serving_model,
    shard_for_inference,
)

NUM_DENSE = 13
GOAL = 0.95
"""Learned-hash QPS at least this share of the plain model's, at every batch size."""


def _dlrm(tables: list[EmbeddingBagConfig], seed: int) -> DLRM:
    torch.manual_seed(seed)
    return DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables),
        dense_in_features=NUM_DENSE,
        dense_arch_layer_sizes=[64, tables[0].embedding_dim],
        over_arch_layer_sizes=[64, 1],
    )


def _configs(heights: list[int], dim: int) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=f"t{i}", embedding_dim=dim, num_embeddings=h, feature_names=[f"f{i}"]
        )
        for i, h in enumerate(heights)
    ]


def build_models(args: argparse.Namespace) -> tuple[DLRM, DLRM, list[int]]:
    """``(plain, lhf, logical heights)``: float DLRMs with equal compressed tables and MLPs."""
    heights = [min(h, args.max_rows) for h in CRITEO_HEIGHTS]
    compressed = [max(1, round(h * args.fraction)) for h in heights]
    g = torch.Generator().manual_seed(0)
    if args.encoding in ("compact", "ranked"):  # the remap benchmark's head/tail plans
        ranked = args.encoding == "ranked"
        plan = HashPlan(
            [
                TableHash(
                    f"t{i}", h, (remap_bench._head_tail(h, m, g, seed=i, ranked=ranked),), (m,)
                )
                for i, (h, m) in enumerate(zip(heights, compressed))
            ]
        )
    else:
        plan = HashPlan.from_mappings(
            {
                f"t{i}": torch.randint(0, m, (h,), generator=g)
                for i, (h, m) in enumerate(zip(heights, compressed))
            },
            heights={f"t{i}": m for i, m in enumerate(compressed)},
        )
    plain = _dlrm(_configs(compressed, args.dim), seed=0)
    # the same MLPs and tables: a copy whose collection is the learned-hash one (which
    # allocates only the compressed tables), the plain tables copied in
    lhf = copy.deepcopy(plain)
    ebc = LearnedHashEmbeddingBagCollection(tables=_configs(heights, args.dim), plan=plan)
    missing, unexpected = ebc.load_state_dict(
        plain.sparse_arch.embedding_bag_collection.state_dict(), strict=False
    )
    assert not unexpected and all(k.startswith("remap.") for k in missing), (missing, unexpected)
    lhf.sparse_arch.embedding_bag_collection = ebc
    return plain.eval(), lhf.eval(), heights


def _requests(
    heights: list[int], batch: int, pooling: int, seed: int
) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((len(heights) * batch,), pooling, dtype=torch.long)
    # Zipf-like skew: cubes of uniforms concentrate on small ids
    values = torch.cat(
        [
            (torch.rand(batch * pooling, generator=g) ** 3 * h).long().clamp_max(h - 1)
            for h in heights
        ]
    )
    kjt = KeyedJaggedTensor(
        keys=[f"f{i}" for i in range(len(heights))], values=values, lengths=lengths
    )
    return torch.rand(batch, NUM_DENSE, generator=g), kjt


def _serving(
    model: DLRM, features: list[str], args: argparse.Namespace, *, check_lengths: bool = True
) -> Callable:
    """The serving form of ``model``: scripted, or (``--eager``) the sharded quantized module."""
    if not args.eager:
        return script_serving_model(
            model, features, num_dense=NUM_DENSE, dtype=args.dtype, check_lengths=check_lengths
        )
    scoring = ScoringModule(model, features, NUM_DENSE, check_lengths=check_lengths)
    quantized = quantize_for_inference(scoring.eval(), dtype=args.dtype)
    return shard_for_inference(quantized, example_batch(len(features), NUM_DENSE))


def run(args: argparse.Namespace) -> dict:
    plain_f, lhf_f, heights = build_models(args)
    features = [f"f{i}" for i in range(len(heights))]
    remap = lhf_f.sparse_arch.embedding_bag_collection.remap
    plain = _serving(plain_f, features, args)
    lhf = _serving(lhf_f, features, args)
    # the plain model without reading the request's lengths and ids: what that check costs
    # (the lengths' part both models pay; the ids' only the plain one, where the remap
    # checks the learned hash's), and the plain speed the goal is judged against
    unchecked = _serving(plain_f, features, args, check_lengths=False)
    results: dict[str, dict] = {}
    for batch in args.batch_sizes:
        dense, raw = _requests(heights, batch, args.pooling, seed=batch)
        rows = remap(raw)  # the rows the raw ids map to: what the plain model reads
        plain_in = (dense, rows.values(), rows.lengths().long())
        lhf_in = (dense, raw.values(), raw.lengths().long())
        with torch.inference_mode():
            # same rows, tables and MLPs: the scores agree (up to the fp32 summation order)
            max_diff = (plain(*plain_in) - lhf(*lhf_in)).abs().max().item()
            seconds = time_pair(
                {
                    "plain": functools.partial(plain, *plain_in),
                    "lhf": functools.partial(lhf, *lhf_in),
                },
                args.iters,
                args.warmup,
            )
            # apart, so that a third model in the loop does not change the pair above:
            # the plain model ("lhf" here) over its twin that does not read the lengths or ids
            check = time_pair(
                {
                    "plain": functools.partial(unchecked, *plain_in),
                    "lhf": functools.partial(plain, *plain_in),
                },
                args.iters,
                args.warmup,
            )
        # (not seconds' "ratio_paired", a ratio: its QPS twin is its inverse)
        qps = {name: batch / seconds[name] for name in ("plain", "lhf")}
        ratio_paired = 1.0 / seconds["ratio_paired"]
        results[str(batch)] = {
            "seconds_per_call": seconds,
            "qps": qps,
            "ratio": qps["lhf"] / qps["plain"],
            "ratio_paired": ratio_paired,
            # (the seconds' interval, inverted: its QPS twin)
            "ratio_paired_ci95": [1.0 / x for x in reversed(seconds["ratio_paired_ci95"])],
            "max_score_diff": max_diff,
            # the plain model's call over its twin's without the request check (paired; its
            # lengths and, since 2026-12-04, its ids; "lengths_check_cost" before)
            "request_check_cost": check["ratio_paired"],
            "seconds_per_call_unchecked": check["plain"],
            # the learned hash's QPS over the unchecked plain model's (the two pairs' ratios
            # chained): what the goal reads, so that the plain model's own check (its ids:
            # 8% of a 64-sample request) does not lift the ratio
            "ratio_vs_plain_unchecked": ratio_paired / check["ratio_paired"],
        }
    return report(args, results, num_tables=len(heights))


def report(args: argparse.Namespace, results: dict, *, num_tables: int) -> dict:
    """The benchmark's JSON: config, per batch size QPS of both models and their ratio."""
    return {
        "benchmark": "serve",
        "config": {
            "num_tables": num_tables,
            "batch_sizes": list(args.batch_sizes),
            "pooling": args.pooling,
            "embedding_dim": args.dim,
            "fraction": args.fraction,
            "max_rows": args.max_rows,
            "dtype": args.dtype,
            "encoding": args.encoding,
            "model": (
                "eager (quantize_inference_model, shard_quant_model)"
                if args.eager
                else "scripted (quantize_inference_model, shard_quant_model, FX, TorchScript)"
            ),
            "iters": args.iters,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "torch": torch.__version__,
        },
        "results": results,
        "load_average": list(os.getloadavg()),
        "goal": (
            f"lhf qps / plain qps >= {GOAL} at every batch size, against the plain model "
            "without its request check (ratio_vs_plain_unchecked)"
        ),
        "goal_met": all(r["ratio_vs_plain_unchecked"] >= GOAL for r in results.values()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch_sizes",
        type=comma_list(int_at_least(1), "ints >= 1", unique=True),  # (results keyed by size)
        default=[1, 64, 1024],
    )
    parser.add_argument(
        "--pooling", type=int_at_least(1), default=1, help="ids per sample per feature"
    )
    parser.add_argument("--dim", type=int_at_least(1), default=64)
    parser.add_argument("--fraction", type=unit_fraction, default=0.1)
    parser.add_argument("--max_rows", type=int_at_least(1), default=1_000_000)
    parser.add_argument("--dtype", default="int8", choices=("int8", "int4", "fp16", "fp32"))
    parser.add_argument(
        "--encoding",
        default="dense",
        choices=("dense", "compact", "ranked"),
        help="dense: a row per id (FBGEMM remaps inside its kernel); compact: a head of the "
        "10%% most frequent ids, the tail hashed (the remap module's ops); ranked: that head "
        "at its ranks, held ranked",
    )
    parser.add_argument("--iters", type=int_at_least(1), default=200)
    parser.add_argument("--warmup", type=int_at_least(0), default=20)
    parser.add_argument(
        "--threads", type=int_at_least(0), default=0, help="torch threads (0: default)"
    )
    parser.add_argument(
        "--eager", action="store_true", help="time the sharded quantized modules unscripted"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for batch, r in result["results"].items():
            print(
                f"batch {batch:>5}: plain {r['qps']['plain']:,.0f}/s  lhf {r['qps']['lhf']:,.0f}/s"
                f"  ratio {r['ratio']:.3f}"
            )
    return result


if __name__ == "__main__":
    main()
