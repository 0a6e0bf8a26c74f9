"""A variable batch per feature (VBE) through the sharded learned-hash EBC, at world size 2
on gloo: equal to the unsharded collection on the written-out batch where TorchRec takes
VBE, refused by name where it does not."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

from tests._compact import to_compact
from tests._fixtures import three_tables, two_hash_plan
from tests._multiprocess import run_multiprocess
from tests._vbe import vbe_batch
from tests.distributed.test_embedding_bag import LR, assert_state_equals, sharded_copy
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.distributed.embedding_bag import (
    TESTED_SHARDING_TYPES,
    VBE_SHARDING_TYPES,
)

BATCH = 3  # per rank


def _concat(batches: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    """Written-out (not VBE) batches of the same keys, sample-concatenated per key."""
    per = [b.to_dict() for b in batches]
    keys = batches[0].keys()
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.cat([p[k].values() for k in keys for p in per]),
        lengths=torch.cat([p[k].lengths() for k in keys for p in per]),
        weights=torch.cat([p[k].weights() for k in keys for p in per]),
    )


def _sharded_vbe(rank: int, world_size: int, sharding_type: str, encoding: str) -> None:
    torch.manual_seed(1)
    combine = "concat" if sharding_type == "column_wise" else "sum"
    plan = two_hash_plan(combine)
    if encoding == "compact":
        plan = to_compact(plan)
    reference = LearnedHashEmbeddingBagCollection(
        tables=three_tables(), plan=plan, is_weighted=True
    )
    model = sharded_copy(reference, plan, sharding_type, world_size)

    batches = [vbe_batch(seed=10 + r, batch=BATCH, weighted=True) for r in range(world_size)]
    if sharding_type not in VBE_SHARDING_TYPES:
        with pytest.raises(ValueError, match=f"TorchRec's {sharding_type} sharding does not"):
            model(batches[rank][0])
        return
    out = model(batches[rank][0]).wait()
    ref_out = reference(_concat([full for _, full in batches]))
    assert out.keys() == ref_out.keys() == ["f0", "f1", "f2", "f3"]
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    torch.testing.assert_close(out.values(), ref_out.values()[mine])

    # one step (fused SGD in backward); TorchRec divides embedding gradients by the world
    # size, so the reference loss over the global batch is scaled to match
    w = torch.linspace(-1, 1, out.values().shape[1])
    (out.values() * w).sum().backward()
    (ref_out.values() * w).sum().div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    assert_state_equals(model, reference.state_dict(), rank)


@pytest.mark.distributed
@pytest.mark.parametrize("encoding", ["dense", "compact"])
@pytest.mark.parametrize("sharding_type", TESTED_SHARDING_TYPES)
def test_sharded_vbe_equals_unsharded(sharding_type: str, encoding: str) -> None:
    """Outputs and one training step of VBE batches equal the unsharded collection's on
    the written-out batches (TW, RW, CW); TWRW and DP refuse VBE with a ValueError."""
    run_multiprocess(_sharded_vbe, world_size=2, sharding_type=sharding_type, encoding=encoding)
