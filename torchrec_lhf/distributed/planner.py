"""Planner support: make TorchRec's planner account for the replicated remap buffers.

The compressed tables are ordinary tables to the planner (it enumerates the sharder's
``shardable_parameters``, the ``(M_h, d)`` internal table weights named ``t`` / ``t__h<i>``;
constraints name those tables, see ``internal_embedding_bag_configs()``); the remap is not
a shardable parameter, is
replicated on every rank, and TorchRec's storage reservations subtract shardable modules
wholesale, so it would be invisible. :class:`LearnedHashStorageReservation` reserves it.

On the CPU, :class:`NonEmptyShardsEnumerator` keeps the planner from splitting a table so
that a rank holds an empty shard of it, which FBGEMM's CPU kernels mishandle
(:func:`~torchrec_lhf.distributed.sharding_types.empty_fused_groups`).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    ShardingOption,
    StorageReservation,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ModuleSharder

from torchrec_lhf.distributed.embedding_bag import remap_bytes

logger = logging.getLogger(__name__)


class LearnedHashStorageReservation(StorageReservation):
    """Another reservation, plus the learned-hash remap bytes on every device. It also
    refuses constraints that name a multi-hash table by its logical name
    (:func:`check_constraint_names`), which TorchRec's planner would ignore.

    Args:
        base: the reservation to extend (default ``HeuristicalStorageReservation(0.15)``,
            TorchRec's planner default).
    """

    def __init__(self, base: StorageReservation | None = None) -> None:
        self._base = base if base is not None else HeuristicalStorageReservation(percentage=0.15)
        self.reserved_remap_bytes = 0

    def reserve(
        self,
        topology: Topology,
        batch_size: int,
        module: nn.Module,
        sharders: list[ModuleSharder[nn.Module]],
        constraints: dict[str, ParameterConstraints] | None = None,
    ) -> Topology:
        check_constraint_names(module, constraints)
        reserved = self._base.reserve(topology, batch_size, module, sharders, constraints)
        self.reserved_remap_bytes = remap_bytes(module)
        for device in reserved.devices:
            if reserved.compute_device == "cpu":
                device.storage.ddr -= self.reserved_remap_bytes
            else:
                device.storage.hbm -= self.reserved_remap_bytes
        if self.reserved_remap_bytes:
            logger.info(
                "planner: reserved %.1f MB per rank for remap buffers",
                self.reserved_remap_bytes / 2**20,
            )
        return reserved

    @property
    def last_reserved_topology(self) -> Topology | None:
        return self._base.last_reserved_topology


def check_constraint_names(
    module: nn.Module, constraints: dict[str, ParameterConstraints] | None
) -> None:
    """Refuse constraints keyed by the logical name of a table the planner sees under other
    names: a learned-hash table with several hash functions is planned as its internal
    tables ``t__h<i>``, and TorchRec's planner ignores a constraint on ``t`` silently.

    Args:
        module: the module to plan (unsharded).
        constraints: the planner's constraints, keyed by table name.

    Raises:
        ValueError: naming each such key and the internal tables to constrain instead.
    """
    if not constraints:
        return
    planned: set[str] = set()
    internal_of: dict[str, list[str]] = {}
    for m in module.modules():  # pooled collections, then sequence ones
        internal = getattr(m, "internal_embedding_bag_configs", None) or getattr(
            m, "internal_embedding_configs", None
        )
        logical = getattr(m, "embedding_bag_configs", None) or getattr(m, "embedding_configs", None)
        if internal is None or logical is None:
            continue
        names = [c.name for c in internal()]
        planned.update(names)
        for c in logical():
            internal_of[c.name] = [n for n in names if n.startswith(f"{c.name}__h")]
    wrong = {k: internal_of[k] for k in constraints if k not in planned and internal_of.get(k)}
    if wrong:
        raise ValueError(
            f"sharding constraints name tables {sorted(wrong)} that the planner plans as their "
            f"internal tables (one per hash function): constrain {wrong} instead (each "
            "collection's internal_embedding_bag_configs() or internal_embedding_configs() "
            "lists them)"
        )


def without_empty_shards(options: list[ShardingOption]) -> list[ShardingOption]:
    """``options`` less those that give a shard no rows (a row-wise split of a table with
    too few rows: 1 row over 2 ranks is ``[1, 0]``), for every table that keeps another
    option; a table with no other keeps its own (the sharders then refuse it by name)."""
    by_table: dict[str, list[ShardingOption]] = defaultdict(list)
    for option in options:
        by_table[option.fqn].append(option)
    kept = []
    for table_options in by_table.values():
        full = [o for o in table_options if all(s.size[0] > 0 for s in o.shards)]
        kept.extend(full or table_options)
    return kept


class NonEmptyShardsEnumerator(EmbeddingEnumerator):
    """TorchRec's enumerator, less the sharding options :func:`without_empty_shards` drops:
    what :func:`make_planner` plans with on the CPU."""

    def enumerate(
        self, module: nn.Module, sharders: list[ModuleSharder[nn.Module]]
    ) -> list[ShardingOption]:
        return without_empty_shards(super().enumerate(module, sharders))


def make_topology(
    world_size: int, compute_device: str, local_world_size: int | None = None
) -> Topology:
    """TorchRec's default topology for ``world_size`` ranks, made the way TorchRec asks
    (``TopologyFactory``: a Topology built directly logs that it "will fail" in a later
    release): TorchRec's default capacities and bandwidths, the same as ``Topology(...)``.
    """
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=world_size, local_world_size=local_world_size or world_size
        ),
        kernel_config=KernelConfig(compute_device=compute_device),
    )


def make_planner(
    *,
    world_size: int,
    compute_device: str,
    batch_size: int,
    local_world_size: int | None = None,
    constraints: dict[str, ParameterConstraints] | None = None,
) -> EmbeddingShardingPlanner:
    """TorchRec's planner with :class:`LearnedHashStorageReservation` (and, on the CPU,
    :class:`NonEmptyShardsEnumerator`).

    Args:
        world_size: number of ranks.
        compute_device: ``"cpu"`` or ``"cuda"``.
        batch_size: per-rank batch size.
        local_world_size: ranks per host (default: ``world_size``).
        constraints: per-table constraints, e.g. allowed sharding types, keyed by the
            internal table names (``t__h<i>`` for a table of several hash functions;
            :class:`LearnedHashStorageReservation` refuses a logical name there).
    """
    if compute_device not in ("cpu", "cuda"):
        raise ValueError(f"compute_device must be 'cpu' or 'cuda', got {compute_device!r}")
    topology = make_topology(world_size, compute_device, local_world_size)
    enumerator = None  # (TorchRec's)
    if compute_device == "cpu":  # NOTE: FBGEMM's CUDA kernels take empty shards
        enumerator = NonEmptyShardsEnumerator(
            topology=topology, batch_size=batch_size, constraints=constraints
        )
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints,
        storage_reservation=LearnedHashStorageReservation(),
        enumerator=enumerator,
    )
