"""MEAN tables sharded row-wise beside tables sharded otherwise, at world size 2.

TorchRec 1.8 divides a sharded collection's pooled output by each feature's lengths
whenever a MEAN table is sharded row-wise, and gives length 1 only to the features of
row-wise SUM tables: every table-wise, column-wise or data-parallel feature was divided
too (``torchrec_lhf._torchrec_private.divide_row_wise_means_only``).
"""

from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.optimizers import in_backward_optimizer_filter

from tests._fixtures import placement, shard_on_cpu
from tests._multiprocess import run_multiprocess
from tests.distributed.test_embedding_bag import BATCH, _batch, _concat, assert_state_equals
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.distributed.embedding_bag import (
    LearnedHashEmbeddingBagCollectionSharder,
    PlainEmbeddingBagCollectionSharder,
)

LR = 0.1
SUM, MEAN = PoolingType.SUM, PoolingType.MEAN
# (pooling, sharding type) of t0 (f0, f1), t1 (f2), t2 (f3): a row-wise MEAN table beside
# table-wise and column-wise ones of either pooling, or a table-row-wise MEAN one
LAYOUTS = {
    "rw-mean+tw-sum+cw-mean": [(MEAN, "row_wise"), (SUM, "table_wise"), (MEAN, "column_wise")],
    "tw-mean+twrw-mean+dp-sum": [
        (MEAN, "table_wise"),
        (MEAN, "table_row_wise"),
        (SUM, "data_parallel"),
    ],
}


def _tables(layout: list[tuple[PoolingType, str]]) -> list[EmbeddingBagConfig]:
    features, heights = [["f0", "f1"], ["f2"], ["f3"]], [40, 30, 12]
    return [
        EmbeddingBagConfig(
            name=f"t{i}", embedding_dim=8, num_embeddings=n, feature_names=f, pooling=pool
        )
        for i, ((pool, _), n, f) in enumerate(zip(layout, heights, features))
    ]


def reference_and_sharded(
    layout: list[tuple[PoolingType, str]], learned: bool, world_size: int
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The unsharded collection of t0 (f0, f1; 40 rows), t1 (f2; 30) and t2 (f3; 12) of
    dim 8, pooled and placed (by the test placements) as ``layout`` says, in that order,
    and its sharded copy (fused SGD at ``LR``); ``learned``: t0 in two hashes of 7 rows
    (both placed as t0), t1 in one of 9."""
    fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
    meta = torch.device("meta")
    tables = _tables(layout)
    types = {f"t{i}": st for i, (_, st) in enumerate(layout)}
    if learned:
        plan = HashPlan.from_multi_mappings(
            {"t0": [torch.arange(40) % 7, torch.arange(40) // 6], "t1": [torch.arange(30) % 9]}
        )
        reference = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
        module = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, device=meta)
        sharder = LearnedHashEmbeddingBagCollectionSharder(fused_params=fused)
        names = [c.name for c in module.internal_embedding_bag_configs()]
    else:
        reference = EmbeddingBagCollection(tables=tables)
        module = EmbeddingBagCollection(tables=tables, device=meta)
        sharder = PlainEmbeddingBagCollectionSharder(fused_params=fused)
        names = list(types)
    per_param = {
        n: placement(types[n.partition("__h")[0]], i, world_size) for i, n in enumerate(names)
    }
    model = shard_on_cpu(module, sharder, per_param, world_size)
    model.load_state_dict({k: v.clone() for k, v in reference.state_dict().items()})
    return reference, model


def _mean_beside_others(rank: int, world_size: int, layout: str, learned: bool) -> None:
    torch.manual_seed(1)
    reference, model = reference_and_sharded(LAYOUTS[layout], learned, world_size)
    batches = [_batch(seed) for seed in range(world_size)]
    out = model(batches[rank]).wait()
    ref_out = reference(_concat(batches))
    assert out.keys() == ref_out.keys()
    torch.testing.assert_close(out.values(), ref_out.values()[rank * BATCH : (rank + 1) * BATCH])
    w = torch.arange(out.values().shape[1], dtype=torch.float32) / 10
    (out.values() * w).sum().backward()
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    if dense:  # data-parallel and table-row-wise test placements: not fused
        torch.optim.SGD(dense.values(), lr=LR).step()
    (ref_out.values() * w).sum().div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    assert_state_equals(model, reference.state_dict(), rank)


@pytest.mark.distributed
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_mean_tables_row_wise_beside_others_equal_unsharded(layout: str, learned: bool) -> None:
    """Outputs and one training step equal the unsharded collection's (before: the
    table-wise, column-wise and data-parallel features came out divided by their lengths)."""
    run_multiprocess(_mean_beside_others, world_size=2, layout=layout, learned=learned)
