"""Graph breaks of the learned-hash remap under ``torch.compile``, against TorchRec's EBC.

``torch._dynamo.explain`` counts the breaks of the remap alone and of the whole
learned-hash collection on a fresh batch of four features over three tables (``t0``: ``f0``
and ``f1``, 40 ids; ``t1``: ``f2``, 30; ``t2``: ``f3``, 12, uncompressed; 3 samples), with the keys in the tables' order and reordered, for six plans: one
hash a table (dense, or ranked heads as :mod:`benchmarks.remap` makes them), two hashes on
``t1`` (the same two ways), ``memrec`` (computed) and ``qr``
(divided tails). The baseline, measured in the same run, is TorchRec's own
``EmbeddingBagCollection`` on the same batch. Counts, not times: deterministic for a torch
version.

Usage::

    python -m benchmarks.compile_breaks --json
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from benchmarks.remap import _head_tail
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.compression.methods import memrec_plan, qr_plan

ORDERS = {"in_order": ["f0", "f1", "f2", "f3"], "reordered": ["f3", "f0", "f1", "f2"]}
HEIGHTS = {"f0": 40, "f1": 40, "f2": 30, "f3": 12}


def fresh_batch(keys: list[str], seed: int = 0) -> KeyedJaggedTensor:
    """Ids of the four features, keys in ``keys``' order: a KJT no module has read (no
    per-key lengths cached)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys), 3), generator=g)
    values = torch.cat(
        [
            torch.randint(0, HEIGHTS[k], (int(lengths[i].sum()),), generator=g)
            for i, k in enumerate(keys)
        ]
    )
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten())


def tables() -> list[EmbeddingBagConfig]:
    features = [["f0", "f1"], ["f2"], ["f3"]]
    return [
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=8, num_embeddings=n, feature_names=f)
        for i, (n, f) in enumerate(zip((40, 30, 12), features))
    ]


def plans() -> dict[str, HashPlan]:
    """``t0`` to 7 rows, ``t1`` to 5 (one hash) or to 6 and 4 (two, summed); ``t2`` full."""
    g = torch.Generator().manual_seed(0)

    def dense(n: int, m: int) -> torch.Tensor:
        return torch.randint(0, m, (n,), generator=g)

    def ranked(n: int, m: int, seed: int):  # noqa: ANN202
        return _head_tail(n, m, g, seed=seed, ranked=True)

    return {
        "one_hash_dense": HashPlan.from_mappings({"t0": dense(40, 7), "t1": dense(30, 5)}),
        "one_hash_ranked": HashPlan(
            [
                TableHash("t0", 40, (ranked(40, 7, 1),), (7,)),
                TableHash("t1", 30, (ranked(30, 5, 2),), (5,)),
            ]
        ),
        "two_hash_dense": HashPlan.from_multi_mappings(
            {"t0": [dense(40, 7)], "t1": [dense(30, 6), dense(30, 4)]}, combine="sum"
        ),
        "two_hash_ranked": HashPlan(
            [
                TableHash("t0", 40, (ranked(40, 7, 1),), (7,)),
                TableHash("t1", 30, (ranked(30, 6, 2), ranked(30, 4, 3)), (6, 4), "sum"),
            ]
        ),
        "memrec": memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3),
        "qr": qr_plan({"t0": 40, "t1": 30}, fraction=0.4, combine="sum"),
    }


def breaks(module: torch.nn.Module, kjt: KeyedJaggedTensor) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(module)(kjt).graph_break_count


def run() -> dict:
    out: dict = {"torch": torch.__version__, "plain_ebc": {}, "learned_hash": {}}
    for order, keys in ORDERS.items():
        out["plain_ebc"][order] = breaks(EmbeddingBagCollection(tables=tables()), fresh_batch(keys))
    for name, plan in plans().items():
        module = LearnedHashEmbeddingBagCollection(tables=tables(), plan=plan)
        out["learned_hash"][name] = {
            order: {
                "remap": breaks(module.remap, fresh_batch(keys)),
                "collection": breaks(module, fresh_batch(keys)),
            }
            for order, keys in ORDERS.items()
        }
    torch._dynamo.reset()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's advice on each break
        result = run()
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
