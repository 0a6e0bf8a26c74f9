"""TorchRec's managed-collision hashing (MCH) as an outside compression baseline.

Shape legend: ``N`` a table's height (raw ids ``0..N-1``), ``R`` its managed rows
(``zch_size``), ``D`` embedding dim, ``B`` batch size.

A compressed table of ``R`` rows gets TorchRec's :class:`MCHManagedCollisionModule`: it
keeps the ``R - 1`` raw ids with the best DistanceLFU score (access count over recency) in
rows of their own and sends every other id to its last row (the "miss" row), re-deciding
every ``eviction_interval`` training steps; evaluation only looks ids up. Its state lives
in persistent buffers of ``R`` int64 each (sorted raw ids, their rows, counts, last access)
plus TorchRec's fixed sharding metadata (1,025 int64 output segments and the step counter);
:func:`mch_state_bytes` counts what serving needs (the sorted raw ids and their rows).

NOTE: TorchRec sizes a module's id history (the ids it counts between eviction rounds) by
the first training batch it sees, 1.25 times that, and drops the ids of any later step
beyond it from the counts. A module's ids per step vary wherever features are multi-hot or
tables are row-wise sharded (each rank gets the ids of its block), so the counts depended on
the first batch, and a resumed run, whose first batch is another, counted other ids.
:class:`GrowingHistoryMCH` grows the history instead: every id is counted.

NOTE: row-wise sharded over ``W`` ranks, each rank manages the ids of its block of the raw
id range ``[0, N)`` with its block of rows, and keeps a miss row of its own (``W`` miss rows
in all).

Tables left out of ``zch_sizes`` stay full, in a plain EmbeddingBagCollection beside the
managed one (TorchRec's collision collection needs a module for every table it holds).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_lhf._torchrec_private import (
    MCH_SERVING_BUFFERS,
    grow_mch_history,
    mch_serving_buffers,
)
from torchrec_lhf.compression.budget import allocate_rows
from torchrec_lhf.modules.remap import refuse_negative_lengths, refuse_variable_batch

torch.fx.wrap("refuse_negative_lengths")  # one opaque node where the train pipeline traces
torch.fx.wrap("refuse_variable_batch")

logger = logging.getLogger(__name__)

DEFAULT_EVICTION_INTERVAL = 1
"""Training steps between two eviction rounds (TorchRec's examples use 1 to a few)."""


def mch_rows(
    num_embeddings: Mapping[str, int],
    *,
    fraction: float,
    min_table_rows: int = 0,
    world_size: int = 1,
    budget: str = "table",
) -> dict[str, int]:
    """The managed rows ``R`` of each compressed table: ``max(1, round(fraction * N))``.

    Tables with ``N < min_table_rows`` are left out (they stay full); with
    ``budget="total"``, ``R`` comes from :func:`~torchrec_lhf.compression.budget.allocate_rows`
    over all tables and tables it keeps whole stay full. With ``world_size``
    above 1, ``R`` is raised (with a warning) to the least value that row-wise shards with
    at least one row on every rank (each rank's MCH module needs one); a table where that
    exceeds ``N`` stays full.

    Args:
        num_embeddings: table name -> height ``N``.
        fraction: rows kept, in ``(0, 1]``.
        min_table_rows: smaller tables stay full.
        world_size: ranks the tables will be row-wise sharded over.
        budget: ``"table"`` or ``"total"`` (see :mod:`torchrec_lhf.compression.budget`).

    Returns:
        table name -> ``R`` for the compressed tables, in the order given.

    Raises:
        ValueError: ``fraction``, ``min_table_rows``, ``world_size`` or a height is bad.
    """
    if isinstance(fraction, bool) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if (
        isinstance(min_table_rows, bool)
        or not isinstance(min_table_rows, int)
        or min_table_rows < 0
    ):
        raise ValueError(f"min_table_rows must be an int >= 0, got {min_table_rows!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    allocated = allocate_rows(  # also checks the heights, naming a bad one
        dict(num_embeddings), fraction, budget=budget, min_table_rows=max(1, min_table_rows)
    )
    rows: dict[str, int] = {}
    for name, n in num_embeddings.items():
        if name not in allocated or (budget == "total" and allocated[name] >= n):
            continue
        r = allocated[name]
        shardable = _row_wise_shardable(r, world_size)
        if shardable > n:
            _warn_once(
                f"table {name!r}: {n} rows cannot be row-wise sharded over {world_size} ranks "
                "with a row on each; it stays full"
            )
            continue
        if shardable != r:
            _warn_once(
                f"table {name!r}: {r} managed rows cannot be row-wise sharded over "
                f"{world_size} ranks with a row on each; using {shardable}"
            )
        rows[name] = shardable
    return rows


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _row_wise_shardable(rows: int, world_size: int) -> int:
    """The least ``R >= rows`` whose row-wise blocks (``ceil(R / W)`` rows, TorchRec's
    rule) leave no rank empty."""
    r = max(rows, world_size)
    while (world_size - 1) * math.ceil(r / world_size) >= r:
        r += 1
    return r


class GrowingHistoryMCH(MCHManagedCollisionModule):
    """TorchRec's MCH module whose id history grows to hold every training step's ids.

    The base class truncates a step's ids to the history it sized on its first batch (see
    the module's NOTE); this one enlarges the history first where a step brings more ids
    than are left, keeping what it holds, so no id goes uncounted and the counts do not
    depend on which batch came first. The sharder rebuilds per-rank modules as
    ``type(self)``, so they are of this class too.
    """

    def profile(self, features: dict[str, JaggedTensor]) -> dict[str, JaggedTensor]:
        """Grow the history where ``features`` (``{name: JaggedTensor}``) do not fit in it
        (:func:`~torchrec_lhf._torchrec_private.grow_mch_history`), then record and evict
        as TorchRec does."""
        if self.training:
            grow_mch_history(self, sum(f.values().numel() for f in features.values()))
        return super().profile(features)

    def remap(
        self,
        features: dict[str, JaggedTensor],
        mutate_miss_lengths: bool = True,
        write_weights: torch.Tensor | None = None,
    ) -> dict[str, JaggedTensor]:
        """TorchRec's remap, for int32 ids too: TorchRec's writes its int64 rows into a
        tensor made like the ids, which fails on int32 ones (``Index put requires the source
        and destination dtypes match``). Such ids are looked up as int64 and their rows
        (``< R``) returned as int32, like the ids; int64 ids as before, no copy."""
        if all(f.values().dtype == torch.int64 for f in features.values()):
            return super().remap(features, mutate_miss_lengths, write_weights)
        wide = {name: _with_values(f, f.values().long()) for name, f in features.items()}
        rows = super().remap(wide, mutate_miss_lengths, write_weights)
        return {
            name: _with_values(f, f.values().to(features[name].values().dtype))
            for name, f in rows.items()
        }


def _with_values(feature: JaggedTensor, values: torch.Tensor) -> JaggedTensor:
    """``feature`` with other ``values`` of the same shape (lengths, offsets and weights
    kept)."""
    return JaggedTensor(
        values=values,
        lengths=feature.lengths(),
        offsets=feature.offsets(),
        weights=feature.weights_or_none(),
    )


def managed_collision_collection(
    tables: Sequence[EmbeddingBagConfig],
    zch_sizes: Mapping[str, int],
    *,
    eviction_interval: int = DEFAULT_EVICTION_INTERVAL,
    world_size: int = 1,
    device: torch.device | None = None,
) -> ManagedCollisionEmbeddingBagCollection:
    """TorchRec's MC-EBC over ``tables``, table ``t`` cut to ``zch_sizes[t]`` rows.

    Every table gets an MCH module (:class:`GrowingHistoryMCH`) with ``zch_size = R``,
    ``input_hash_size = N`` (the raw id range, which row-wise sharding splits into
    ``world_size`` blocks, TorchRec's ``buckets``) and a DistanceLFU eviction policy.

    Args:
        tables: the logical ``(N, D)`` tables; not modified.
        zch_sizes: table name -> managed rows ``R``, one entry per table.
        eviction_interval: training steps between eviction rounds.
        world_size: ranks the tables will be row-wise sharded over (TorchRec's planner
            requires the MCH modules' buckets to be a multiple of it).
        device: where tables and buffers live (``meta`` before sharding).

    Returns:
        The MC-EBC; its forward returns ``(KeyedTensor, None)``.

    Raises:
        ValueError: ``zch_sizes`` does not name exactly the tables, or a size is not in
            ``[1, N]``, or ``eviction_interval < 1``.

    Example::

        >>> from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        >>> t = EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=100, feature_names=["f"])
        >>> mc = managed_collision_collection([t], {"t": 10})
        >>> kjt = KeyedJaggedTensor(keys=["f"], values=torch.tensor([7, 42]), lengths=torch.tensor([1, 1]))
        >>> mc(kjt)[0].values().shape
        torch.Size([2, 4])
    """
    names = [t.name for t in tables]
    if sorted(zch_sizes) != sorted(names):
        raise ValueError(f"zch_sizes must name exactly the tables {names}, got {sorted(zch_sizes)}")
    for name, value in (("eviction_interval", eviction_interval), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    device = device if device is not None else torch.device("cpu")
    configs, modules = _managed_configs(tables, zch_sizes), {}
    for t in tables:
        r = zch_sizes[t.name]
        # NOTE: the MCH buffers are never on meta: the sharder rebuilds them per rank anyway.
        modules[t.name] = GrowingHistoryMCH(
            zch_size=r,
            device=device if device.type != "meta" else torch.device("cpu"),
            eviction_policy=DistanceLFU_EvictionPolicy(),
            eviction_interval=eviction_interval,
            input_hash_size=t.num_embeddings,
            name=t.name,
            buckets=world_size,
        )
    return ManagedCollisionEmbeddingBagCollection(
        EmbeddingBagCollection(tables=configs, device=device),
        ManagedCollisionCollection(modules, configs),
        return_remapped_features=False,
    )


def _managed_configs(
    tables: Sequence[EmbeddingBagConfig], zch_sizes: Mapping[str, int]
) -> list[EmbeddingBagConfig]:
    """The ``(R, D)`` configs of the managed tables (new objects; ``tables`` untouched).

    Raises:
        ValueError: a size is not an int in ``[1, N]``.
    """
    configs = []
    for t in tables:
        r = zch_sizes[t.name]
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= t.num_embeddings:
            raise ValueError(
                f"table {t.name!r}: zch size must be an int in [1, {t.num_embeddings}], got {r!r}"
            )
        configs.append(
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=t.embedding_dim,
                num_embeddings=r,
                feature_names=list(t.feature_names),
                pooling=t.pooling,
                weight_init_max=t.weight_init_max,
                weight_init_min=t.weight_init_min,
            )
        )
    return configs


MANAGED = "TorchRec's managed-collision EmbeddingBagCollection"


class MCHEmbeddingBagCollection(nn.Module):
    """Managed-collision tables plus full tables, returning one KeyedTensor like an EBC.

    As the learned-hash collection, ``embedding_bag_configs()`` gives the logical tables
    (what DLRM reads) and ``internal_embedding_bag_configs()`` the tables as trained.

    Args:
        tables: the logical ``(N, D)`` tables; not modified.
        zch_sizes: table name -> managed rows ``R`` (see :func:`mch_rows`); the other
            tables stay full.
        eviction_interval: training steps between eviction rounds.
        world_size: ranks the managed tables will be row-wise sharded over.
        device: where tables live (``meta`` before sharding).

    Raises:
        ValueError: ``zch_sizes`` names an unknown table, or a bad size (see
            :func:`managed_collision_collection`).

    Example::

        >>> from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        >>> tables = [
        ...     EmbeddingBagConfig(name="a", embedding_dim=4, num_embeddings=100, feature_names=["a"]),
        ...     EmbeddingBagConfig(name="b", embedding_dim=4, num_embeddings=3, feature_names=["b"]),
        ... ]
        >>> ebc = MCHEmbeddingBagCollection(tables, zch_sizes={"a": 10})
        >>> kjt = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([7, 2]), lengths=torch.tensor([1, 1]))
        >>> ebc(kjt).to_dict()["b"].shape
        torch.Size([1, 4])
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        *,
        zch_sizes: Mapping[str, int],
        eviction_interval: int = DEFAULT_EVICTION_INTERVAL,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(zch_sizes) - {t.name for t in tables})
        if unknown:
            raise ValueError(
                f"zch_sizes names tables {unknown} that are not among {[t.name for t in tables]}"
            )
        managed = [t for t in tables if t.name in zch_sizes]
        full = [t for t in tables if t.name not in zch_sizes]
        self._logical_configs = list(tables)
        sizes = {t.name: zch_sizes[t.name] for t in managed}
        self._internal_configs = _managed_configs(managed, sizes) + list(full)
        # NOTE: children only where there are tables: an empty EBC cannot be built or sharded.
        self.managed = (
            managed_collision_collection(
                managed,
                sizes,
                eviction_interval=eviction_interval,
                world_size=world_size,
                device=device,
            )
            if managed
            else None
        )
        self.full = EmbeddingBagCollection(tables=full, device=device) if full else None
        self.merge = _MergeKeyedTensors()

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The logical ``(N, D)`` tables, as given."""
        return list(self._logical_configs)

    def logical_configs(self) -> list[EmbeddingBagConfig]:
        """Same as :meth:`embedding_bag_configs`."""
        return list(self._logical_configs)

    def internal_embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The tables as trained: managed ones with ``R`` rows, then the full ones."""
        return list(self._internal_configs)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Args: features: raw ids of every feature. Returns: the pooled ``(B, sum D)``
        embeddings (managed features first).

        Raises:
            ValueError: (CPU) a negative length, named
                (:func:`~torchrec_lhf.modules.remap.refuse_negative_lengths`), or a variable
                batch per feature (VBE: TorchRec's managed collisions drop its batch sizes,
                and its pooled bags came out at different batch sizes).
        """
        # (TorchRec's managed collisions read a negative length out of bounds: a garbage bag,
        # or a corrupted heap that aborts the process)
        refuse_negative_lengths(features)
        features = refuse_variable_batch(features, MANAGED)
        # NOTE: indexing, not unpacking: TrainPipelineSparseDist FX-traces this method.
        pooled = self.managed(features)[0] if self.managed is not None else None
        full = self.full(features) if self.full is not None else None
        return self.merge(pooled, full)

    def is_weighted(self) -> bool:
        return False


class _MergeKeyedTensors(nn.Module):
    """Concatenates two KeyedTensors (either may be None).

    NOTE: a module of its own, holding nothing sharded, so that the pipeline's tracer keeps
    it as a leaf: it reads keys and lengths, which a trace cannot.
    """

    def forward(self, first: KeyedTensor | None, second: KeyedTensor | None) -> KeyedTensor:
        if first is None or second is None:
            out = first if first is not None else second
            assert out is not None, "MCHEmbeddingBagCollection has no tables"
            return out
        return KeyedTensor(
            keys=first.keys() + second.keys(),
            length_per_key=first.length_per_key() + second.length_per_key(),
            values=torch.cat([first.values(), second.values()], dim=first.key_dim()),
            key_dim=first.key_dim(),
        )


SERVING_BUFFERS = MCH_SERVING_BUFFERS
"""The MCH buffers a deployment needs to map raw ids to rows (TorchRec private names)."""


def mch_state_bytes(module: nn.Module) -> int:
    """Bytes of the id -> row lookup of the MCH modules in ``module`` (sharded or not).

    That is what serving stores besides the tables: the sorted raw ids and their rows
    (:data:`SERVING_BUFFERS`, ``R`` int64 each, 16 bytes a row). The eviction metadata
    (counts, last access: 16 more bytes a row) and TorchRec's fixed bookkeeping (a
    1,025-entry output-segment buffer and a step counter, 8,208 bytes a table) are
    training state and are not counted, as a learned plan's build state is not. A sharded
    module counts this rank's modules only.
    """
    total = 0
    for m in module.modules():
        if isinstance(m, MCHManagedCollisionModule):
            total += sum(b.numel() * b.element_size() for b in mch_serving_buffers(m))
    return total
