"""A DLRM with the learned-hash EBC trains through TrainPipelineSparseDist, planner-sharded."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingEnv
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from tests._fixtures import pipeline_losses
from tests._multiprocess import run_multiprocess
from torchrec_lhf import HashPlan, apply_hash_plan
from torchrec_lhf.distributed.embedding_bag import (
    LearnedHashEmbeddingBagCollectionSharder,
    ShardedLearnedHashEmbeddingBagCollection,
    remap_bytes,
)
from torchrec_lhf.distributed.planner import (
    LearnedHashStorageReservation,
    make_planner,
    make_topology,
)

HEIGHTS = {"t0": 500, "t1": 300, "t2": 40}
B = 16


def _batches(rank: int, n: int) -> list[Batch]:
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(n):
        ids = {
            f"f{i}": torch.randint(0, h, (B,), generator=g) for i, h in enumerate(HEIGHTS.values())
        }
        # planted signal: label depends on the parity of f0's id
        labels = (ids["f0"] % 2).float()
        out.append(
            Batch(
                dense_features=torch.randn(B, 4, generator=g),
                sparse_features=KeyedJaggedTensor.from_lengths_sync(
                    keys=list(ids),
                    values=torch.cat(list(ids.values())),
                    lengths=torch.ones(3 * B, dtype=torch.int32),
                ),
                labels=labels,
            )
        )
    return out


def _train(rank: int, world_size: int) -> dict:
    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name=t, embedding_dim=8, num_embeddings=h, feature_names=[f"f{i}"])
        for i, (t, h) in enumerate(HEIGHTS.items())
    ]
    plan = HashPlan.from_multi_mappings(
        {"t0": [torch.arange(500) % 50, torch.arange(500) // 10], "t1": [torch.arange(300) % 30]},
        combine="sum",
    )
    model = DLRMTrain(
        DLRM(
            embedding_bag_collection=EmbeddingBagCollection(
                tables=tables, device=torch.device("meta")
            ),
            dense_in_features=4,
            dense_arch_layer_sizes=[16, 8],
            over_arch_layer_sizes=[16, 1],
        )
    )
    apply_hash_plan(model, plan)
    fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.1}
    sharders = [
        LearnedHashEmbeddingBagCollectionSharder(fused_params=fused),
        EmbeddingBagCollectionSharder(fused_params=fused),
    ]
    planner = make_planner(world_size=world_size, compute_device="cpu", batch_size=B)
    pg = dist.GroupMember.WORLD
    sharding_plan = planner.collective_plan(model, sharders, pg)
    reserved = planner._storage_reservation.reserved_remap_bytes
    lhf_plan = sharding_plan.plan["model.sparse_arch.embedding_bag_collection"]
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(pg),
        plan=sharding_plan,
        sharders=sharders,
        device=torch.device("cpu"),
    )
    assert isinstance(
        dmp.module.model.sparse_arch.embedding_bag_collection,
        ShardedLearnedHashEmbeddingBagCollection,
    )
    dense_opt = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda p: torch.optim.Adagrad(p, lr=0.1),
    )
    opt = CombinedOptimizer([dmp.fused_optimizer, dense_opt])
    pipeline = TrainPipelineSparseDist(dmp, opt, torch.device("cpu"))
    batches = _batches(rank, 60)
    losses = pipeline_losses(pipeline, batches)
    return {
        "tables": sorted(lhf_plan),
        "sharding_types": sorted({ps.sharding_type for ps in lhf_plan.values()}),
        "reserved": reserved,
        "remap_bytes": remap_bytes(dmp),
        "first": sum(losses[:10]) / 10,
        "last": sum(losses[-10:]) / 10,
        "steps": len(losses),
    }


@pytest.mark.distributed
def test_dlrm_trains_through_pipeline_with_planner() -> None:
    results = run_multiprocess(_train, world_size=2)
    r = results[0]
    assert r["tables"] == ["t0__h0", "t0__h1", "t1", "t2"]  # the planner saw the compressed tables
    assert (
        r["remap_bytes"] == 500 * 2 + 300 and r["reserved"] == r["remap_bytes"]
    )  # uint8 rows (every compressed height <= 256)
    assert r["steps"] == 60
    assert r["last"] < r["first"] - 0.05, r  # it learns the planted parity signal


def test_storage_reservation_subtracts_remap() -> None:
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

    tables = [
        EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=1000, feature_names=["f0"])
    ]
    model = torch.nn.ModuleDict(
        {"ebc": EmbeddingBagCollection(tables=tables, device=torch.device("meta"))}
    )
    apply_hash_plan(model, HashPlan.from_mappings({"t0": torch.arange(1000) % 10}))
    topology = make_topology(2, "cpu")
    base = FixedPercentageStorageReservation(0.0)
    res = LearnedHashStorageReservation(base).reserve(
        topology, 8, model, [LearnedHashEmbeddingBagCollectionSharder()]
    )
    assert [d.storage.ddr for d in res.devices] == [d.storage.ddr - 1000 for d in topology.devices]
