"""Sharded == unsharded at world size 2 (gloo) for plans that take the remap's fast paths:
FBGEMM's ``pruned_array_lookup`` (dense int32 mapping) and the packed cuckoo table
(compact, int32 rows)."""

from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import KeyedJaggedTensor
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.sharding_plan import row_wise, table_wise

from tests._fixtures import shard_on_cpu
from tests._int32_plans import batch, compact, dense
from tests._multiprocess import run_multiprocess
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder

KEYS = ["c", "a", "b"]  # not the tables' order
FUSED = EmbeddingComputeKernel.FUSED.value


def _concat(batches: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    per = [b.to_dict() for b in batches]
    values = torch.cat([torch.cat([p[k].values() for p in per]) for k in KEYS])
    lengths = torch.cat([torch.cat([p[k].lengths() for p in per]) for k in KEYS])
    return KeyedJaggedTensor(keys=KEYS, values=values, lengths=lengths)


def _sharded_vs_unsharded(rank: int, world_size: int, encoding: str, sharding: str) -> None:
    make = {"dense": dense, "compact": compact}[encoding]
    torch.manual_seed(1)
    reference = make()
    fast = reference.remap.has_array_offsets or reference.remap.slot_rows.numel() == 0
    assert fast, "the plan does not take a fast path"
    module = make(device=torch.device("meta"))
    sharder = LearnedHashEmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1}
    )
    place = {
        "table_wise": lambda i: table_wise(rank=i % world_size, compute_kernel=FUSED),
        "row_wise": lambda i: row_wise(compute_kernel=FUSED),
    }[sharding]
    names = [c.name for c in module.internal_embedding_bag_configs()]
    model = shard_on_cpu(module, sharder, {n: place(i) for i, n in enumerate(names)}, world_size)
    model.load_state_dict(reference.state_dict())
    batches = [batch(KEYS, seed) for seed in range(world_size)]
    out = model(batches[rank]).wait()
    ref = reference(_concat(batches))
    # NOTE: per key: without a combine (one hash function a table) the sharded output keeps
    # TorchRec's sharded key order, as a plain sharded EBC does
    assert sorted(out.keys()) == ref.keys() == ["a", "b", "c"]
    got, expected = out.to_dict(), ref.to_dict()
    for key in KEYS:
        mine = expected[key][rank * 4 : (rank + 1) * 4]
        torch.testing.assert_close(got[key], mine, msg=key)  # row-wise: summed over ranks
    rows = model.module.remap(batches[rank]).values()
    assert torch.equal(rows, reference.remap(batches[rank]).values())


@pytest.mark.distributed
@pytest.mark.parametrize("encoding", ["dense", "compact"])
@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_fast_paths_sharded_equal_unsharded(encoding: str, sharding: str) -> None:
    run_multiprocess(_sharded_vs_unsharded, world_size=2, encoding=encoding, sharding=sharding)
