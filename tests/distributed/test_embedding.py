"""The learned-hash EmbeddingCollection sharded at world size 2 equals the unsharded one."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingCollection, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import table_wise
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingEnv
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from tests._compact import to_compact
from tests._fixtures import (
    SEQUENCE_HEIGHTS,
    pipeline_losses,
    placement,
    sequence_batch,
    sequence_tables,
    shard_on_cpu,
    two_hash_plan,
)
from tests._multiprocess import run_multiprocess
from tests.distributed.test_embedding_bag import _batch, _concat, assert_state_equals
from tests.test_checkpoint import _full_state
from torchrec_lhf import (
    HashPlan,
    LearnedHashEmbeddingCollection,
    LearnedHashEmbeddingCollectionSharder,
    apply_hash_plan,
    checkpoint,
)
from torchrec_lhf.compression.methods import memrec_plan
from torchrec_lhf.distributed.embedding import (
    SEQUENCE_SHARDING_TYPES,
    ShardedLearnedHashEmbeddingCollection,
)
from torchrec_lhf.distributed.embedding_bag import remap_bytes
from torchrec_lhf.distributed.planner import make_planner

LR = 0.1


def _plan(encoding: str):  # noqa: ANN202
    if encoding == "memrec":  # three seeded hashes computed from the id, scaled_sum
        return memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3)
    plan = two_hash_plan("sum")
    return to_compact(plan, ranked=encoding == "ranked") if encoding != "dense" else plan


def _rows(out: dict, keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: out[k].values() for k in keys}


def sharded(
    plan: HashPlan,
    sharding_type: str,
    world_size: int,
    optimizer: EmbOptimType,
    gather_select: bool = False,
) -> DistributedModelParallel:
    """A learned-hash sequence collection of :func:`sequence_tables` by ``plan``, built on
    meta and sharded by DMP, each internal table placed by ``sharding_type``, with the fused
    ``optimizer`` at ``LR`` (``gather_select``: TorchRec's ``use_gather_select``)."""
    sharder = LearnedHashEmbeddingCollectionSharder(
        fused_params={"optimizer": optimizer, "learning_rate": LR}
    )
    module = LearnedHashEmbeddingCollection(
        tables=sequence_tables(),
        plan=plan,
        device=torch.device("meta"),
        use_gather_select=gather_select,
    )
    names = [c.name for c in module.internal_embedding_configs()]
    return shard_on_cpu(
        module,
        sharder,
        {n: placement(sharding_type, i, world_size) for i, n in enumerate(names)},
        world_size,
    )


def _sharded_vs_unsharded(
    rank: int, world_size: int, sharding_type: str, encoding: str, gather_select: bool = False
) -> None:
    torch.manual_seed(1)
    plan = _plan(encoding)
    reference = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan)
    model = sharded(plan, sharding_type, world_size, EmbOptimType.EXACT_SGD, gather_select)
    model.load_state_dict({k: v.clone() for k, v in reference.state_dict().items()})
    assert remap_bytes(model) == reference.remap.remap_bytes()

    batches = [_batch(seed) for seed in range(world_size)]
    out = model(batches[rank]).wait()
    ref_out = reference(_concat(batches))
    keys = ["f0", "f1", "f2", "f3"]
    assert sorted(out) == sorted(ref_out) == keys
    mine = batches[rank].to_dict()
    for k in keys:  # this rank's samples are the reference's rows after the lower ranks'
        before = sum(int(b.to_dict()[k].lengths().sum()) for b in batches[:rank])
        n = int(mine[k].lengths().sum())
        torch.testing.assert_close(out[k].values(), ref_out[k].values()[before : before + n])
        torch.testing.assert_close(out[k].lengths(), mine[k].lengths())

    # one training step: loss = weighted sum of the per-id embeddings (fused SGD in backward)
    w = torch.arange(8, dtype=torch.float32) / 10
    sum((out[k].values() * w).sum() for k in keys).backward()
    assert not dict(in_backward_optimizer_filter(model.named_parameters()))
    # TorchRec divides embedding gradients by the world size: the reference loss over the
    # global batch is scaled to match
    sum((ref_out[k].values() * w).sum() for k in keys).div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    assert_state_equals(model, reference.state_dict(), rank)

    out = model(batches[rank]).wait()  # the next batch after the step, as unsharded
    with torch.no_grad():
        expected = reference(_concat(batches))
    for k in keys:
        before = sum(int(b.to_dict()[k].lengths().sum()) for b in batches[:rank])
        n = int(mine[k].lengths().sum())
        torch.testing.assert_close(out[k].values(), expected[k].values()[before : before + n])


@pytest.mark.distributed
@pytest.mark.parametrize("encoding", ["dense", "ranked", "memrec"])
@pytest.mark.parametrize("sharding_type", SEQUENCE_SHARDING_TYPES)
def test_sharded_equals_unsharded(sharding_type: str, encoding: str) -> None:
    """Per-id outputs, one training step and the tables after it equal the unsharded
    collection's: a two-hash ``sum`` plan (dense, or compact with ranked heads) and a
    computed ``memrec`` plan (``scaled_sum`` of three tables)."""
    run_multiprocess(
        _sharded_vs_unsharded, world_size=2, sharding_type=sharding_type, encoding=encoding
    )


@pytest.mark.distributed
@pytest.mark.parametrize("sharding_type", ["row_wise", "column_wise"])
def test_gather_select_output_equals_unsharded(sharding_type: str) -> None:
    """TorchRec's ``use_gather_select`` (the sharded output put back in order by a gather)
    travels with the collection and changes nothing of its output or training step."""
    run_multiprocess(
        _sharded_vs_unsharded,
        world_size=2,
        sharding_type=sharding_type,
        encoding="dense",
        gather_select=True,
    )


def _vbe_refused(rank: int, world_size: int) -> None:
    sharder = LearnedHashEmbeddingCollectionSharder()
    module = LearnedHashEmbeddingCollection(
        tables=sequence_tables(), plan=two_hash_plan("sum"), device=torch.device("meta")
    )
    names = [c.name for c in module.internal_embedding_configs()]
    model = shard_on_cpu(module, sharder, {n: table_wise(rank=0) for n in names}, world_size)
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1", "f2", "f3"],
        values=torch.tensor([1, 2, 3, 4, 5]),
        lengths=torch.tensor([1, 1, 1, 1, 1]),
        stride_per_key_per_rank=[[2], [1], [1], [1]],
    )
    with pytest.raises(ValueError, match="variable batch per feature"):
        model(kjt)


@pytest.mark.distributed
def test_variable_batch_refused() -> None:
    run_multiprocess(_vbe_refused, world_size=1)


def test_sharder_refuses_other_sharding_types() -> None:
    with pytest.raises(ValueError, match="'data_parallel' is not supported for learned-hash seq"):
        LearnedHashEmbeddingCollectionSharder(sharding_types=["data_parallel"])
    with pytest.raises(ValueError, match="sharding_types is empty"):
        LearnedHashEmbeddingCollectionSharder(sharding_types=[])
    sharder = LearnedHashEmbeddingCollectionSharder(sharding_types=["row_wise"])
    assert sharder.sharding_types("cpu") == ["row_wise"]
    assert sharder.module_type is LearnedHashEmbeddingCollection


class _SequenceModel(nn.Module):
    """A sequence collection (one id per sample and feature here) under a linear head,
    trained on a label planted in ``f0``'s id parity; returns what TrainPipelineSparseDist
    expects, ``(loss, (loss, logits, labels))``."""

    def __init__(self) -> None:
        super().__init__()
        self.ec = EmbeddingCollection(tables=sequence_tables(), device=torch.device("meta"))
        self.head = nn.Linear(4 * 8, 1)

    def forward(self, batch: Batch) -> tuple:
        per_id = self.ec(batch.sparse_features)
        x = torch.cat([per_id[f].values() for f in ("f0", "f1", "f2", "f3")], dim=1)
        logits = self.head(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


def _pipeline(rank: int, world_size: int) -> dict:
    torch.manual_seed(0)
    ids = torch.arange(40)
    plan = HashPlan.from_multi_mappings(
        {"t0": [ids % 10, ids // 4], "t1": [torch.arange(30) % 6]}, combine="sum"
    )
    model = apply_hash_plan(_SequenceModel(), plan)
    fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.1}
    sharders = [LearnedHashEmbeddingCollectionSharder(fused_params=fused)]
    planner = make_planner(world_size=world_size, compute_device="cpu", batch_size=16)
    pg = dist.GroupMember.WORLD
    sharding_plan = planner.collective_plan(model, sharders, pg)
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(pg),
        plan=sharding_plan,
        sharders=sharders,
        device=torch.device("cpu"),
    )
    assert isinstance(dmp.module.ec, ShardedLearnedHashEmbeddingCollection)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda p: torch.optim.Adagrad(p, lr=0.1),
    )
    pipeline = TrainPipelineSparseDist(
        dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), torch.device("cpu")
    )
    g = torch.Generator().manual_seed(100 + rank)
    batches = []
    for _ in range(60):
        f = {k: torch.randint(0, h, (16,), generator=g) for k, h in SEQUENCE_HEIGHTS.items()}
        batches.append(
            Batch(
                dense_features=torch.zeros(16, 1),
                sparse_features=KeyedJaggedTensor(
                    keys=list(f),
                    values=torch.cat(list(f.values())),
                    lengths=torch.ones(64, dtype=torch.long),
                ),
                labels=(f["f0"] % 2).float(),
            )
        )
    losses = pipeline_losses(pipeline, batches)
    return {
        "tables": sorted(sharding_plan.plan["ec"]),
        "reserved": planner._storage_reservation.reserved_remap_bytes,
        "remap_bytes": remap_bytes(dmp),
        "first": sum(losses[:10]) / 10,
        "last": sum(losses[-10:]) / 10,
        "steps": len(losses),
    }


@pytest.mark.distributed
def test_trains_through_pipeline_with_planner() -> None:
    """Planner-sharded at world size 2, trained by TrainPipelineSparseDist (the remap in the
    pipelined input dist): the planner sees the internal tables and reserves the remap,
    and the model learns a label planted in the raw ids."""
    r = run_multiprocess(_pipeline, world_size=2)[0]
    assert r["tables"] == ["t0__h0", "t0__h1", "t1", "t2"]
    assert r["remap_bytes"] == r["reserved"] == 40 * 2 + 30  # uint8 rows
    assert r["steps"] == 60
    assert r["last"] < r["first"] - 0.05, r


def _dcp_model(world_size: int, sharding_type: str, seed: int) -> DistributedModelParallel:
    torch.manual_seed(seed)
    model = sharded(
        two_hash_plan("sum"), sharding_type, world_size, EmbOptimType.EXACT_ROWWISE_ADAGRAD
    )
    out = model(sequence_batch(seed + 10 * dist.get_rank())).wait()
    sum(jt.values().square().sum() for jt in out.values()).backward()  # fused Adagrad
    return model


def _dcp_round_trip(rank: int, world_size: int, tmp: str) -> None:
    model = _dcp_model(world_size, "row_wise", seed=0)
    checkpoint.save(tmp, model=model, optimizer=model.fused_optimizer, step=1)
    saved = _full_state(model)
    other = _dcp_model(world_size, "table_wise", seed=1)  # other rows, momentum, placement
    assert checkpoint.load(tmp, model=other, optimizer=other.fused_optimizer).step == 1
    loaded = _full_state(other)
    if rank == 0:
        assert sorted(loaded) == sorted(saved) and any("remap." in k for k in saved)
        assert any(k.endswith("momentum1") for k in saved)
        for key, expected in saved.items():
            assert torch.equal(loaded[key], expected), key
    batch = sequence_batch(7)
    for f, jt in model(batch).wait().items():
        assert torch.equal(other(batch).wait()[f].values(), jt.values()), f


@pytest.mark.distributed
def test_checkpoint_reshards_row_wise_to_table_wise(tmp_path) -> None:  # noqa: ANN001
    """A DCP checkpoint of the sharded sequence collection (tables, fused optimizer state,
    the replicated remap) loads into another placement of it, to the digit."""
    run_multiprocess(_dcp_round_trip, world_size=2, tmp=str(tmp_path))
