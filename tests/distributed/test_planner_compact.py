"""The planner reserves the real bytes of a compact (head/tail) remap on every device."""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

from tests._compact import to_compact
from torchrec_lhf import HashPlan, apply_hash_plan
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.planner import LearnedHashStorageReservation, make_topology
from torchrec_lhf.modules import head_table


def test_storage_reservation_subtracts_compact_remap() -> None:
    tables = [
        EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=1000, feature_names=["f0"])
    ]
    model = torch.nn.ModuleDict(
        {"ebc": EmbeddingBagCollection(tables=tables, device=torch.device("meta"))}
    )
    plan = to_compact(HashPlan.from_mappings({"t0": torch.arange(1000) % 10}), every=10)
    apply_hash_plan(model, plan)
    topology = make_topology(2, "cpu")
    reservation = LearnedHashStorageReservation(FixedPercentageStorageReservation(0.0))
    reserved = reservation.reserve(topology, 8, model, [LearnedHashEmbeddingBagCollectionSharder()])
    # one feature's tail (seed, offset, rows) and the cuckoo table of its 100 head ids
    # (int32 keys, int16 rows a slot): what the module holds
    expected = 3 * 8 + (int(100 / head_table.LOAD) + 1) * (4 + 2)
    assert reservation.reserved_remap_bytes == expected == model["ebc"].remap.remap_bytes()
    assert [d.storage.ddr for d in reserved.devices] == [
        d.storage.ddr - expected for d in topology.devices
    ]
    assert plan.remap_bytes() == 100 * (4 + 2)  # the plan stores the heads sorted
