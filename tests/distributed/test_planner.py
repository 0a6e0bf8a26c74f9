"""The planner's constraints against learned-hash tables (torchrec_lhf/distributed/planner.py)."""

from __future__ import annotations

import logging

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner import Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ParameterSharding, ShardingType

from torchrec_lhf import HashPlan, apply_hash_plan
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.planner import make_planner, make_topology


def _model(plan: HashPlan | None = None) -> torch.nn.Module:
    """Two tables of 100 ids by ``plan`` (default: ``t0`` in two hash functions, internal
    tables ``t0__h0``, ``t0__h1``; ``t1`` in one)."""
    tables = [
        EmbeddingBagConfig(
            name=f"t{i}", embedding_dim=4, num_embeddings=100, feature_names=[f"f{i}"]
        )
        for i in range(2)
    ]
    model = torch.nn.ModuleDict(
        {"ebc": EmbeddingBagCollection(tables=tables, device=torch.device("meta"))}
    )
    ids = torch.arange(100, dtype=torch.int32)
    plan = plan or HashPlan.from_multi_mappings({"t0": [ids % 7, ids % 5], "t1": [ids % 9]})
    return apply_hash_plan(model, plan)


def _plan(constraints: dict[str, ParameterConstraints]) -> dict[str, str]:
    planner = make_planner(
        world_size=2, compute_device="cpu", batch_size=8, constraints=constraints
    )
    plan = planner.plan(_model(), [LearnedHashEmbeddingBagCollectionSharder()])
    return {t: ps.sharding_type for t, ps in plan.plan["ebc"].items()}


def test_constraints_on_internal_tables_are_applied() -> None:
    tw, rw = ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value
    constraints = {
        "t0__h0": ParameterConstraints(sharding_types=[rw]),
        "t0__h1": ParameterConstraints(sharding_types=[tw]),
        "t1": ParameterConstraints(sharding_types=[rw]),  # one hash: the logical name
    }
    assert _plan(constraints) == {"t0__h0": rw, "t0__h1": tw, "t1": rw}


def test_a_multi_hash_table_constrained_by_its_logical_name_is_named() -> None:
    # TorchRec's planner would ignore the constraint on "t0", which it never sees
    constraints = {"t0": ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])}
    match = (
        r"sharding constraints name tables \['t0'\] that the planner plans as their internal "
        r"tables .*: constrain \{'t0': \['t0__h0', 't0__h1'\]\} instead"
    )
    with pytest.raises(ValueError, match=match):
        _plan(constraints)


def _one_row_plan(types: list[str], compute_device: str = "cpu") -> dict[str, ParameterSharding]:
    """The plan of ``_model``'s tables with ``t1`` in 1 row, each allowed ``types``."""
    ids = torch.arange(100, dtype=torch.int32)
    model = _model(HashPlan.from_mappings({"t0": ids % 9, "t1": ids * 0}))
    constraints = {t: ParameterConstraints(sharding_types=types) for t in ("t0", "t1")}
    planner = make_planner(
        world_size=2, compute_device=compute_device, batch_size=8, constraints=constraints
    )
    plan = planner.plan(model, [LearnedHashEmbeddingBagCollectionSharder()])
    return plan.plan["ebc"]


def test_on_the_cpu_a_table_of_too_few_rows_is_not_split_row_wise() -> None:
    """1 row over 2 ranks is [1, 0] row-wise, an empty shard FBGEMM's CPU kernels
    mishandle: the planner places it otherwise where its constraints allow. Before, it
    chose row-wise for it."""
    tw, rw = ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value
    planned = _one_row_plan([rw, tw])
    assert planned["t1"].sharding_type == tw
    # row-wise alone: kept (the sharder then refuses it by name); on CUDA, as TorchRec plans
    assert _one_row_plan([rw])["t1"].sharding_type == rw
    assert _one_row_plan([rw, tw], "cuda")["t1"].sharding_type == rw


@pytest.mark.parametrize("compute_device", ["cpu", "cuda"])
def test_the_topology_is_torchrecs_default_made_by_its_factory(
    compute_device: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``make_topology`` is TorchRec's default topology (capacities, bandwidths, device
    count), made by ``TopologyFactory``: before, the planner built it directly and TorchRec
    logged that such a topology "will fail" on every planner made."""
    with caplog.at_level(logging.WARNING, logger="torchrec.distributed.planner.types"):
        made = make_topology(4, compute_device, local_world_size=2)
        make_planner(world_size=4, compute_device=compute_device, batch_size=8)
    assert not [r for r in caplog.records if "constructed directly" in r.getMessage()]
    direct = Topology(world_size=4, compute_device=compute_device, local_world_size=2)
    assert made.world_size == 4 and made.local_world_size == 2
    assert made.compute_device == compute_device
    assert made.hbm_mem_bw == direct.hbm_mem_bw and made.ddr_mem_bw == direct.ddr_mem_bw
    assert made.intra_host_bw == direct.intra_host_bw
    assert made.inter_host_bw == direct.inter_host_bw
    assert [d.storage for d in made.devices] == [d.storage for d in direct.devices]
    assert [d.perf for d in made.devices] == [d.perf for d in direct.devices]
