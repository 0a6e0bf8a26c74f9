"""A variable batch per feature (VBE) through the sharded learned-hash EBC, at world size 2
on gloo: equal to the unsharded collection on the written-out batch where TorchRec takes
VBE, refused by name where it does not."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from tests._compact import to_compact
from tests._fixtures import pipeline_losses, placement, three_tables, two_hash_plan
from tests._multiprocess import run_multiprocess
from tests._vbe import vbe_batch
from tests.distributed.test_embedding_bag import LR, assert_state_equals, sharded_copy
from torchrec_lhf import LearnedHashEmbeddingBagCollection, apply_hash_plan
from torchrec_lhf.distributed.embedding_bag import (
    TESTED_SHARDING_TYPES,
    VBE_SHARDING_TYPES,
    LearnedHashEmbeddingBagCollectionSharder,
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


def _pipelined_losses(rank: int, world_size: int, vbe: bool, sharding_type: str) -> list[float]:
    """Losses of a DLRM with the learned hash, its tables placed by ``sharding_type``,
    trained through TrainPipelineSparseDist on VBE batches or on the same batches written
    out (rank ``r``: ``6 + r`` samples a batch)."""
    torch.manual_seed(0)
    model = DLRMTrain(
        DLRM(
            embedding_bag_collection=EmbeddingBagCollection(
                tables=three_tables(), device=torch.device("meta")
            ),
            dense_in_features=4,
            dense_arch_layer_sizes=[16, 8],
            over_arch_layer_sizes=[16, 1],
        )
    )
    apply_hash_plan(model, two_hash_plan("sum"))
    fqn = "model.sparse_arch.embedding_bag_collection"
    ebc = model.get_submodule(fqn)
    sharder = LearnedHashEmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
    )
    names = [c.name for c in ebc.internal_embedding_bag_configs()]
    module_plan = construct_module_sharding_plan(
        ebc,
        per_param_sharding={
            n: placement(sharding_type, i, world_size) for i, n in enumerate(names)
        },
        sharder=sharder,
        local_size=world_size,
        world_size=world_size,
        device_type="cpu",
    )
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        plan=ShardingPlan({fqn: module_plan}),
        sharders=[sharder],
        device=torch.device("cpu"),
    )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.SGD(params, lr=LR),
    )
    pipeline = TrainPipelineSparseDist(
        dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), torch.device("cpu")
    )
    batches, size = [], 6 + rank
    for step in range(8):
        g = torch.Generator().manual_seed(step + 100 * rank)
        as_vbe, written_out = vbe_batch(seed=1000 * rank + step, batch=size)
        batches.append(
            Batch(
                dense_features=torch.randn(size, 4, generator=g),
                sparse_features=as_vbe if vbe else written_out,
                labels=(torch.rand(size, generator=g) > 0.5).float(),
            )
        )
    return pipeline_losses(pipeline, batches)


@pytest.mark.distributed
@pytest.mark.parametrize("sharding_type", ["table_wise", "row_wise"])
def test_vbe_trains_through_the_pipeline_as_the_written_out_batches(sharding_type: str) -> None:
    """TrainPipelineSparseDist (the remap inside the pipelined input dist): eight steps on
    VBE batches give the losses of the same batches written out, to the digit, with ranks
    of unequal batches (row-wise: gloo refused the backward before
    ``_torchrec_private.fix_variable_batches``)."""
    kw = dict(world_size=2, sharding_type=sharding_type)
    with_vbe = run_multiprocess(_pipelined_losses, vbe=True, **kw)
    written_out = run_multiprocess(_pipelined_losses, vbe=False, **kw)
    assert len(with_vbe[0]) == 8
    assert with_vbe == written_out


def _one_kind_then_the_other(rank: int, world_size: int, sharding_type: str) -> None:
    torch.manual_seed(1)
    plan = two_hash_plan("concat" if sharding_type == "column_wise" else "sum")
    reference = LearnedHashEmbeddingBagCollection(
        tables=three_tables(), plan=plan, is_weighted=True
    )
    model = sharded_copy(reference, plan, sharding_type, world_size)
    sizes = [3 + r for r in range(world_size)]
    batches = [vbe_batch(seed=10 + r, batch=sizes[r], weighted=True) for r in range(world_size)]
    with torch.no_grad():  # a VBE first batch
        model(batches[rank][0]).wait()
    out = model(batches[rank][1]).wait()  # then a plain one: as the unsharded collection
    ref_out = reference(_concat([full for _, full in batches]))
    mine = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    for key, pooled in out.to_dict().items():
        torch.testing.assert_close(pooled, ref_out.to_dict()[key][mine])
    # (one loss over the outputs' columns: the key orders agree in these layouts)
    assert out.keys() == ref_out.keys()
    w = torch.linspace(-1, 1, out.values().shape[1])
    (out.values() * w).sum().backward()
    (ref_out.values() * w).sum().div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    assert_state_equals(model, reference.state_dict(), rank)

    plain_first = sharded_copy(reference, plan, sharding_type, world_size)
    plain_first(batches[rank][1]).wait()
    with pytest.raises(ValueError, match="but this sharded collection's first batch had none"):
        plain_first(batches[rank][0])


@pytest.mark.distributed
@pytest.mark.parametrize("sharding_type", VBE_SHARDING_TYPES)
def test_plain_batches_after_a_vbe_first_batch_equal_unsharded(sharding_type: str) -> None:
    """After a VBE first batch, a plain batch goes as VBE: outputs and a training step equal
    the unsharded collection's (before: row-wise failed with a TypeError inside TorchRec);
    a VBE batch after a plain first batch is refused by name (before: TorchRec's assertion
    or TypeError)."""
    run_multiprocess(_one_kind_then_the_other, world_size=2, sharding_type=sharding_type)
