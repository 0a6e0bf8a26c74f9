"""CCE's phase change on a learned-hash collection (single device).

Legend:
    N   logical table height;  M0, M1  rows of a column's clustered and hashed internal table
    J   internal features of the collection's remap

The algorithm is :func:`torchrec_lhf.compression.cce.recluster_table`, run for each column
of each table (:func:`recluster_columns`); this file reads a column's current hash
functions from the collection's :class:`FeatureRemap` (the dense clustered index in
``remap.mapping``, the hashed table's seed in ``remap.tail_seed_J``), writes the new ones
back in place, copies the new rows into the tables and zeroes their optimizer state. The
sharded twin is :mod:`torchrec_lhf.distributed.cce`.

Example::

    >>> import torch
    >>> from torchrec import EmbeddingBagConfig
    >>> from torchrec_lhf import LearnedHashEmbeddingBagCollection
    >>> from torchrec_lhf.compression.cce import CCEConfig
    >>> from torchrec_lhf.compression.methods import make_plan
    >>> plan = make_plan("cce", {"t": 50}, fraction=0.2, columns=2)
    >>> ebc = LearnedHashEmbeddingBagCollection(
    ...     tables=[EmbeddingBagConfig(name="t", embedding_dim=8, num_embeddings=50, feature_names=["f"])],
    ...     plan=plan,
    ... )
    >>> new_plan = recluster(ebc, plan, phase=1, config=CCEConfig())
    >>> int(ebc.remap.mapping.max()) < 5, new_plan["t"].num_columns
    (True, 2)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from torchrec_lhf.compression.cce import (
    CLUSTERED,
    HASHED,
    CCEConfig,
    Reclustered,
    cce_tables,
    column_combine,
    num_columns,
    phase_seed,
    recluster_table,
    reclustered_table,
)
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.modules.logical_view import hold_plan
from torchrec_lhf.modules.remap import FeatureRemap, hashed_name
from torchrec_lhf.plan import HashPlan, TableHash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemapSlots:
    """Where one column's hash functions of a CCE table live in a :class:`FeatureRemap`.

    Args:
        offset: start of the column's clustered index in ``remap.mapping`` (``N`` entries).
        num_embeddings: ``N``.
        hashed_J: indices (into ``remap.features``) of the column's hashed internal features.
    """

    offset: int
    num_embeddings: int
    hashed_J: list[int]


def internal_table(table: TableHash, column: int, h: int) -> str:
    """The internal table (or feature, given its name as ``table``) of column ``column``'s
    hash ``h`` (``CLUSTERED`` or ``HASHED``)."""
    return hashed_name(table.name, 2 * column + h, table.num_hashes)


def remap_slots(
    remap: FeatureRemap, table: TableHash, features: list[str], column: int = 0
) -> RemapSlots:
    """The slots of ``table``'s column ``column`` (logical ``features``) in ``remap``.

    Raises:
        ValueError: the remap has no such internal features, or the hashed one is not a
            pure seeded hash.
    """
    index = {f.name: j for j, f in enumerate(remap.features)}
    h0, h1 = (2 * column + h for h in (CLUSTERED, HASHED))
    names = [
        (hashed_name(f, h0, table.num_hashes), hashed_name(f, h1, table.num_hashes))
        for f in features
    ]
    missing = [n for pair in names for n in pair if n not in index]
    if missing:
        raise ValueError(f"table {table.name!r}: the remap has no internal features {missing}")
    clustered = remap.features[index[names[0][0]]]
    hashed_J = [index[h] for _, h in names]
    if clustered.tail is not None or any(remap.features[j].tail is None for j in hashed_J):
        raise ValueError(
            f"table {table.name!r}: cce needs a dense clustered index and a seeded hash"
        )
    return RemapSlots(clustered.offset, table.num_embeddings, hashed_J)


def read_rows(remap: FeatureRemap, slots: RemapSlots) -> tuple[torch.Tensor, torch.Tensor]:
    """The column's current rows: clustered index and hashed rows, int64 ``(N,)`` each."""
    n, j = slots.num_embeddings, slots.hashed_J[0]
    clustered_N = remap.mapping[slots.offset : slots.offset + n].long()
    ids_N = torch.arange(n, device=remap.mapping.device)
    hashed_N = int(remap.tail_offset_J[j]) + tail_hash(
        ids_N, int(remap.tail_seed_J[j]), int(remap.tail_rows_J[j])
    )
    return clustered_N, hashed_N


def write_rows(remap: FeatureRemap, slots: RemapSlots, result: Reclustered) -> None:
    """Write the column's new clustered index and hash seed into ``remap``'s buffers, in place."""
    n = slots.num_embeddings
    with torch.no_grad():
        mapping = remap.mapping
        mapping[slots.offset : slots.offset + n] = result.clustered_N.to(mapping)
        remap.tail_seed_J[slots.hashed_J] = result.tail_seed


def table_generator(plan: HashPlan, table: str, phase: int) -> torch.Generator:
    """The CPU generator of a table's k-means at ``phase`` (the same on every rank; its
    columns draw from it in order)."""
    seed = phase_seed(plan.metadata.get("seed", 0), table, phase, role="kmeans")
    return torch.Generator().manual_seed(seed)


def new_tail_seed(plan: HashPlan, table: str, phase: int, column: int = 0) -> int:
    """Column ``column``'s hashed table's seed after ``phase``."""
    return phase_seed(plan.metadata.get("seed", 0), table, phase, column=column)


def recluster_columns(
    plan: HashPlan,
    table: TableHash,
    weights: list[tuple[torch.Tensor, torch.Tensor]],
    rows: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    phase: int,
    config: CCEConfig,
) -> list[Reclustered]:
    """Every column's phase change of one table, in column order (one generator).

    Args:
        plan: the ``cce`` plan (its metadata's seed seeds the phase).
        table: the table.
        weights: per column, its clustered and hashed tables ``(M0, D0)``, ``(M1, D1)``.
        rows: per column, its current clustered index and hashed rows, ``(N,)`` each.
        phase: the phase's number, 1 for the first.
        config: see :class:`~torchrec_lhf.compression.cce.CCEConfig`.
    """
    generator = table_generator(plan, table.name, phase)
    return [
        recluster_table(
            w0,
            w1,
            clustered_N,
            hashed_N,
            combine=column_combine(table),
            tail_seed=new_tail_seed(plan, table.name, phase, i),
            config=config,
            generator=generator,
        )
        for i, ((w0, w1), (clustered_N, hashed_N)) in enumerate(zip(weights, rows))
    ]


def replanned(plan: HashPlan, results: dict[str, list[Reclustered]], phase: int) -> HashPlan:
    """``plan`` after ``phase``: its tables' new clustered indices and seeds (the plan a
    model holds after the phase; its metadata records the phase)."""
    tables = [reclustered_table(t, results[t.name]) if t.name in results else t for t in plan]
    return HashPlan(tables, metadata={**plan.metadata, "cce_phase": phase})


def restore_phase(collection: nn.Module, plan: HashPlan, phase: int) -> HashPlan:
    """The plan ``collection`` holds after ``phase`` phase changes of ``plan``, once its
    state was loaded from a checkpoint taken after them (a resumed run).

    The state holds each column's clustered index (the remap's ``mapping``); the hashed
    tables' seeds follow from the phase (:func:`new_tail_seed`) and are written into the
    remap here too, so the collection is whole whether its state held them or not. Local:
    the remap is replicated, so each rank restores its own (sharded or not).

    Args:
        collection: a (sharded or unsharded) learned-hash collection built from ``plan``,
            its state loaded.
        plan: the ``cce`` plan the run started from.
        phase: the phase changes done before the checkpoint, 0 for none.

    Returns:
        The plan the collection holds: ``plan`` itself for phase 0, else :func:`replanned`.

    Raises:
        ValueError: ``phase`` is not an int >= 0.
    """
    if isinstance(phase, bool) or not isinstance(phase, int) or phase < 0:
        raise ValueError(f"phase must be an int >= 0, got {phase!r}")
    if phase == 0:
        return plan
    features = table_features(collection)
    no_rows = torch.zeros(0, 0)
    results = {}
    for table in cce_tables(plan):
        results[table.name] = []
        for i in range(num_columns(table)):
            slots = remap_slots(collection.remap, table, features[table.name], i)
            clustered_N, _ = read_rows(collection.remap, slots)
            seed = new_tail_seed(plan, table.name, phase, i)
            result = Reclustered(clustered_N, no_rows, no_rows, seed)
            write_rows(collection.remap, slots, result)
            results[table.name].append(result)
    return hold_plan(collection, replanned(plan, results, phase))


def table_features(collection: nn.Module) -> dict[str, list[str]]:
    """Logical table name -> its feature names (the table's name when it has none)."""
    return {c.name: list(c.feature_names) or [c.name] for c in collection.logical_configs()}


def recluster(
    collection: nn.Module,
    plan: HashPlan,
    *,
    phase: int,
    config: CCEConfig,
    optimizer: torch.optim.Optimizer | None = None,
) -> HashPlan:
    """CCE's phase change of every column of every table of ``plan`` in an unsharded
    collection, in place.

    Args:
        collection: a :class:`~torchrec_lhf.modules.embedding_bag.LearnedHashEmbeddingBagCollection`
            built with ``plan``.
        plan: the ``cce`` plan (its metadata's seed seeds the phase; the current hash
            functions are read from the collection).
        phase: the phase's number, 1 for the first.
        config: see :class:`~torchrec_lhf.compression.cce.CCEConfig`.
        optimizer: its state of the re-initialised tables is zeroed (with
            ``config.reset_optimizer``).

    Returns:
        The plan the collection now holds (:func:`replanned`).
    """
    features = table_features(collection)
    results = {}
    for table in cce_tables(plan):
        columns = range(num_columns(table))
        slots = [remap_slots(collection.remap, table, features[table.name], i) for i in columns]
        weights = [
            tuple(
                collection.embedding_bags[internal_table(table, i, h)].weight
                for h in (CLUSTERED, HASHED)
            )
            for i in columns
        ]
        rows = [read_rows(collection.remap, s) for s in slots]
        results[table.name] = recluster_columns(
            plan, table, weights, rows, phase=phase, config=config
        )
        for (w0, w1), s, result in zip(weights, slots, results[table.name]):
            with torch.no_grad():
                w0.copy_(result.weight0)
                w1.copy_(result.weight1)
            write_rows(collection.remap, s, result)
            if optimizer is not None and config.reset_optimizer:
                reset_optimizer_state(optimizer, [w0, w1])
    logger.info("cce phase %d: re-clustered %d tables", phase, len(plan))
    return hold_plan(collection, replanned(plan, results, phase))


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Zero ``optimizer``'s per-row state of ``params`` (every tensor of it with the
    parameter's leading dim; step counts are kept)."""
    for p in params:
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == p.shape[0]:
                value.zero_()
