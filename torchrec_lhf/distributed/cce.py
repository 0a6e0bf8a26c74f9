"""CCE's phase change on a sharded learned-hash collection (DMP, fused FBGEMM tables).

Legend: ``N`` logical table height, ``M0``/``M1`` rows and ``D0``/``D1`` dims of a
column's clustered and hashed internal table.

The twin of :func:`torchrec_lhf.modules.cce.recluster`, collective over the default process
group: rank 0 gathers the internal tables of each CCE table (they are compressed, so
small), computes every column's phase change on its device exactly as the single-device
code does (:func:`~torchrec_lhf.modules.cce.recluster_columns`, so nondeterministic GPU
kernels cannot make ranks disagree) and broadcasts each column's new clustered index and
rows; then every rank writes the index and the new hash seed into its replicated remap
buffers in place, copies the new rows into its own shards of the fused tables and zeroes
the fused optimizer's state of those tables (its local shards).
Every rank so ends with the same remap, whatever the sharding type, and the sharded model
equals the unsharded one after the same phase (``tests/distributed/test_cce.py``).

NOTE: data-parallel tables are refused: their optimizer state lives in the dense optimizer.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor

from torchrec_lhf.compression.cce import CLUSTERED, HASHED, CCEConfig, Reclustered, cce_tables
from torchrec_lhf.compression.cce import num_columns as cce_columns
from torchrec_lhf.distributed.embedding_bag import ShardedLearnedHashEmbeddingBagCollection
from torchrec_lhf.distributed.gather import _dtensor_pieces, copy_into, gather_to_rank0
from torchrec_lhf.modules.cce import (
    internal_table,
    new_tail_seed,
    read_rows,
    recluster_columns,
    remap_slots,
    replanned,
    restore_phase,
    table_features,
    write_rows,
)
from torchrec_lhf.modules.logical_view import hold_plan
from torchrec_lhf.plan import HashPlan, TableHash

logger = logging.getLogger(__name__)


def recluster_sharded(
    collection: ShardedLearnedHashEmbeddingBagCollection,
    plan: HashPlan,
    *,
    phase: int,
    config: CCEConfig,
    device: torch.device,
) -> HashPlan:
    """CCE's phase change of every column of every table of ``plan`` in a sharded
    collection. Collective.

    Args:
        collection: the sharded collection built from ``plan`` (every rank's).
        plan: the ``cce`` plan, the same on every rank.
        phase: the phase's number, 1 for the first.
        config: see :class:`~torchrec_lhf.compression.cce.CCEConfig`.
        device: the process group's device (CUDA for nccl) for the transfers.

    Returns:
        The plan the collection now holds, the same on every rank
        (:func:`~torchrec_lhf.modules.cce.replanned`).

    Raises:
        ValueError: a CCE table is data-parallel (not sharded).
    """
    tables = cce_tables(plan)
    state = collection.state_dict()
    keys = {t.name: _weight_keys(t) for t in tables}
    for name, table_keys in keys.items():
        for key in (k for pair in table_keys for k in pair):
            if not isinstance(state[key], (ShardedTensor, DTensor)):
                raise ValueError(
                    f"cce table {name!r}: {key} is not sharded (data_parallel?); cce re-clusters "
                    "fused tables only (table_wise, row_wise, column_wise, table_row_wise)"
                )
    wanted = {k: state[k] for pairs in keys.values() for pair in pairs for k in pair}
    full = gather_to_rank0(wanted, device=device)
    features = table_features(collection)
    dims = {c.name: c.embedding_dim for c in collection.internal_embedding_bag_configs()}
    results = {}
    for table in tables:
        columns = range(cce_columns(table))
        slots = [remap_slots(collection.remap, table, features[table.name], i) for i in columns]
        if full is not None:  # rank 0 computes (on the device), as the single-device code
            weights = [(full[k0].to(device), full[k1].to(device)) for k0, k1 in keys[table.name]]
            rows = [read_rows(collection.remap, s) for s in slots]
            computed = recluster_columns(plan, table, weights, rows, phase=phase, config=config)
        else:
            computed = [_empty_result(plan, table, i, phase, dims) for i in columns]
        results[table.name] = [_broadcast(r, device) for r in computed]
        for (k0, k1), s, result in zip(keys[table.name], slots, results[table.name]):
            copy_into(k0, state[k0], result.weight0)
            copy_into(k1, state[k1], result.weight1)
            write_rows(collection.remap, s, result)
            if config.reset_optimizer:
                _zero_fused_state(collection, [k0, k1])
    logger.info("cce phase %d: re-clustered %d tables", phase, len(tables))
    return hold_plan(collection, replanned(plan, results, phase))


def recluster_model(
    model: nn.Module, plan: HashPlan, *, phase: int, config: CCEConfig, device: torch.device
) -> HashPlan:
    """:func:`recluster_sharded` on the sharded learned-hash collection of ``model`` (a
    DistributedModelParallel) that holds the plan's tables. Collective.

    Returns:
        The plan the model now holds.

    Raises:
        ValueError: no sharded learned-hash collection holds the plan's tables.
    """
    collection = _collection_of(model, plan)
    return recluster_sharded(collection, plan, phase=phase, config=config, device=device)


def restore_model_phase(model: nn.Module, plan: HashPlan, phase: int) -> HashPlan:
    """:func:`~torchrec_lhf.modules.cce.restore_phase` on the sharded learned-hash
    collection of ``model`` that holds the plan's tables, its state loaded from a checkpoint
    taken after ``phase`` phase changes of ``plan`` (the starting plan). Local to each rank.

    Returns:
        The plan the model now holds.

    Raises:
        ValueError: no sharded learned-hash collection holds the plan's tables.
    """
    return restore_phase(_collection_of(model, plan), plan, phase)


def _collection_of(model: nn.Module, plan: HashPlan) -> ShardedLearnedHashEmbeddingBagCollection:
    """The sharded learned-hash collection of ``model`` that holds every table of ``plan``."""
    wanted = set(plan.table_names)
    for module in model.modules():
        if isinstance(module, ShardedLearnedHashEmbeddingBagCollection):
            if wanted <= {c.name for c in module.logical_configs()}:
                return module
    raise ValueError(f"no sharded learned-hash collection holds the cce tables {sorted(wanted)}")


def _weight_keys(table: TableHash) -> list[tuple[str, str]]:
    """Per column, the state dict keys of its clustered and hashed tables."""
    return [
        tuple(f"embedding_bags.{internal_table(table, i, h)}.weight" for h in (CLUSTERED, HASHED))
        for i in range(cce_columns(table))
    ]


def _empty_result(
    plan: HashPlan, table: TableHash, column: int, phase: int, dims: dict[str, int]
) -> Reclustered:
    """The buffers a rank other than 0 receives a column's result into."""
    m0, m1 = table.heights[2 * column + CLUSTERED], table.heights[2 * column + HASHED]
    return Reclustered(
        torch.empty(table.num_embeddings, dtype=torch.int64),
        torch.empty(m0, dims[internal_table(table, column, CLUSTERED)]),
        torch.empty(m1, dims[internal_table(table, column, HASHED)]),
        new_tail_seed(plan, table.name, phase, column),
    )


def _broadcast(result: Reclustered, device: torch.device) -> Reclustered:
    """Rank 0's result on every rank (CPU tensors)."""
    parts = []
    for t in (result.clustered_N, result.weight0, result.weight1):
        t = t.to(device).contiguous()
        dist.broadcast(t, src=0)
        parts.append(t.cpu())
    return Reclustered(*parts, result.tail_seed)


def _zero_fused_state(
    collection: ShardedLearnedHashEmbeddingBagCollection, keys: list[str]
) -> None:
    """Zero this rank's shards of the fused optimizer state of ``keys`` (the state dict's
    tensors are views of FBGEMM's own buffers)."""
    state = collection.fused_optimizer.state_dict()["state"]
    with torch.no_grad():
        for key in keys:
            for value in state.get(key, {}).values():
                if isinstance(value, ShardedTensor):
                    for shard in value.local_shards():
                        shard.tensor.zero_()
                elif isinstance(value, DTensor):
                    for _, piece in _dtensor_pieces(value):
                        piece.zero_()
                elif isinstance(value, torch.Tensor) and value.dim():
                    value.zero_()
