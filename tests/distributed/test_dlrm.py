"""A DLRM over two-hash learned-hash tables, planned and sharded at world size 2 (gloo).

The module's ``embedding_bag_configs()`` gives DLRM the logical tables; the planner,
constraints and the sharder work on the internal ``t__h<i>`` tables.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv
from torchrec.models.dlrm import DLRM

from tests._multiprocess import run_multiprocess
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.planner import make_planner
from torchrec_lhf.modules.embedding_bag import internal_table_configs

BATCH = 4  # per rank; table dims 8 (concat halves: 4, the fused kernels' alignment)
TABLES = [
    EmbeddingBagConfig(name="t0", embedding_dim=8, num_embeddings=40, feature_names=["f0"]),
    EmbeddingBagConfig(name="t1", embedding_dim=8, num_embeddings=30, feature_names=["f1"]),
]


def _dlrm(combine: str, device: torch.device) -> DLRM:
    plan = HashPlan.from_multi_mappings(
        {"t0": [torch.arange(40) % 7, torch.arange(40) // 7]}, combine=combine
    )
    return DLRM(
        embedding_bag_collection=LearnedHashEmbeddingBagCollection(TABLES, plan, device=device),
        dense_in_features=3,
        dense_arch_layer_sizes=[8, 8],
        over_arch_layer_sizes=[8, 1],
        dense_device=torch.device("cpu"),
    )


def _batch(seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 3, (2, BATCH), generator=g)
    n0, n1 = int(lengths[0].sum()), int(lengths[1].sum())
    values = torch.cat(
        [torch.randint(0, 40, (n0,), generator=g), torch.randint(0, 30, (n1,), generator=g)]
    )
    kjt = KeyedJaggedTensor(keys=["f0", "f1"], values=values, lengths=lengths.flatten())
    return torch.randn(BATCH, 3, generator=g), kjt


def _sharded_dlrm(rank: int, world_size: int, combine: str) -> None:
    torch.manual_seed(0)
    reference = _dlrm(combine, torch.device("cpu"))
    model = _dlrm(combine, torch.device("meta"))
    sharders = [
        LearnedHashEmbeddingBagCollectionSharder(
            fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1}
        ),
        EmbeddingBagCollectionSharder(),
    ]
    ebc = model.sparse_arch.embedding_bag_collection
    names = [c.name for c in internal_table_configs(ebc)]
    assert names == ["t0__h0", "t0__h1", "t1"]
    planner = make_planner(
        world_size=world_size,
        compute_device="cpu",
        batch_size=BATCH,
        constraints={n: ParameterConstraints(sharding_types=["row_wise"]) for n in names},
    )
    pg = dist.GroupMember.WORLD
    plan = planner.collective_plan(model, sharders, pg)
    table_plan = plan.get_plan_for_module("sparse_arch.embedding_bag_collection")
    assert {n: ps.sharding_type for n, ps in table_plan.items()} == dict.fromkeys(names, "row_wise")
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(pg),
        plan=plan,
        sharders=sharders,
        device=torch.device("cpu"),
    )
    dmp.load_state_dict(reference.state_dict())
    sharded_ebc = dmp.module.sparse_arch.embedding_bag_collection
    assert [c.name for c in sharded_ebc.embedding_bag_configs()] == ["t0", "t1"]
    assert [c.name for c in sharded_ebc.internal_embedding_bag_configs()] == names

    batches = [_batch(seed) for seed in range(world_size)]
    logits = dmp(*batches[rank])
    assert logits.shape == (BATCH, 1)
    dense = torch.cat([b[0] for b in batches])
    kjts = [b[1].to_dict() for b in batches]
    global_kjt = KeyedJaggedTensor(
        keys=["f0", "f1"],
        values=torch.cat([torch.cat([k[f].values() for k in kjts]) for f in ("f0", "f1")]),
        lengths=torch.cat([torch.cat([k[f].lengths() for k in kjts]) for f in ("f0", "f1")]),
    )
    expected = reference(dense, global_kjt)[rank * BATCH : (rank + 1) * BATCH]
    torch.testing.assert_close(logits, expected)
    logits.sum().backward()  # fused SGD steps the tables inside backward


@pytest.mark.distributed
@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_planned_sharded_dlrm_matches_unsharded(combine: str) -> None:
    run_multiprocess(_sharded_dlrm, world_size=2, combine=combine)
