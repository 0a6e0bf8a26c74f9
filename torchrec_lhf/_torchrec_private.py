"""Every read or write of a TorchRec private attribute, in one place.

TorchRec offers no public way to do the five things below. Each function names what it
touches, why, and the public alternative that was tried; ``docs/TORCHREC_PRIVATE.md``
lists the same (and the private uses that were replaced by public ones). When TorchRec
is upgraded, ``tests/modules/test_mch.py``, ``tests/distributed/test_mch.py``,
``tests/distributed/test_embedding_bag_mean.py``,
``tests/distributed/test_sharding_types.py`` and ``tests/apps/test_train_distributed.py``
exercise them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torchrec.modules.mc_modules import MCHManagedCollisionModule

if TYPE_CHECKING:  # the modules side must not import torchrec.distributed
    from torch import nn
    from torchrec.distributed.embedding_types import GroupedEmbeddingConfig
    from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
    from torchrec.distributed.mc_embeddingbag import (
        ShardedManagedCollisionEmbeddingBagCollection,
    )
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

MCH_SERVING_BUFFERS: tuple[str, ...] = ("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping")
"""The buffers of an MCH module a deployment needs to map raw ids to rows."""


def mch_serving_buffers(module: MCHManagedCollisionModule) -> list[torch.Tensor]:
    """The sorted raw ids and their rows of one MCH module (``R`` int64 each).

    Reads the buffers ``_mch_sorted_raw_ids`` and ``_mch_remapped_ids_mapping`` (by name,
    through the public ``named_buffers``) to count what serving stores.

    Public alternative tried: ``MCHManagedCollisionModule`` has no accessor for its id map
    (``output_size()`` and ``input_size()`` give sizes only), and counting all its buffers
    would add the eviction metadata (counts, last access) and TorchRec's fixed bookkeeping,
    which serving does not need.
    """
    return [b for name, b in module.named_buffers(recurse=False) if name in MCH_SERVING_BUFFERS]


def wrap_eviction_tables(
    sharded: ShardedManagedCollisionEmbeddingBagCollection,
    wrap: Callable[[Any], Any],
) -> None:
    """Replace each fused table module TorchRec resets evicted rows through by ``wrap(tbe)``.

    Reads and writes ``ShardedManagedCollisionEmbeddingBagCollection._table_to_tbe_and_index``
    (table name -> ``(fused FBGEMM module, table index)``), which TorchRec looks up at every
    eviction to call ``reset_embedding_weight_momentum``; that FBGEMM op has no CPU kernel,
    so on CPU the sharder swaps in a module with a CPU reset.

    Public alternative tried: the fused modules are reachable through the sharded EBC's
    ``named_modules()``, but TorchRec reads this private map, not the module tree, at
    eviction time; replacing the module in the tree would not change what it calls, and
    TorchRec has no hook for the reset.
    """
    # NOTE: TorchRec private attribute (see docstring).
    table_to_tbe = sharded._table_to_tbe_and_index
    sharded._table_to_tbe_and_index = {
        table: (wrap(tbe), index) for table, (tbe, index) in table_to_tbe.items()
    }


def grow_mch_history(module: MCHManagedCollisionModule, incoming: int) -> None:
    """Enlarge an MCH module's id history where ``incoming`` more ids would not fit in it.

    Reads ``_input_history_buffer_size`` (-1 before the first training batch, which sizes
    it: nothing to do then) and ``_current_history_buffer_offset`` (the ids recorded since
    the last eviction round); where they and ``incoming`` exceed the size, replaces
    ``_history_accumulator`` and each ``_history_{name}`` buffer of ``_history_metadata``
    by one of 1.25 times what is needed, holding the recorded entries, and sets the size.
    Without it, ``profile`` drops the ids beyond the size from the counts.

    Public alternative tried: none; the history is sized once, from the first batch
    (``_init_history_buffers``), by ``eviction_interval`` and that batch only, and neither
    bounds the ids a step brings where features are multi-hot or a row-wise shard gets the
    ids of its block.
    """
    # NOTE: TorchRec private attributes (see docstring).
    size = module._input_history_buffer_size
    kept = module._current_history_buffer_offset
    needed = kept + incoming
    if size == -1 or needed <= size:
        return
    size = needed + needed // 4
    accumulator = module._history_accumulator.new_empty(size)
    accumulator[:kept] = module._history_accumulator[:kept]
    module._history_accumulator = accumulator
    for name, old in list(module._history_metadata.items()):
        new = old.new_zeros(size)
        new[:kept] = old[:kept]
        module.register_buffer(f"_history_{name}", new, persistent=False)
        module._history_metadata[name] = new
    module._input_history_buffer_size = size


def fused_groups_per_rank(sharded: nn.Module) -> list[list[GroupedEmbeddingConfig]]:
    """The tables of a sharded EBC or EC as TorchRec groups them into one kernel each, for
    every rank (``[rank][group]``; each group's ``embedding_tables`` with their
    ``local_rows``), over all its sharding types; ``[]`` for another module.

    Reads ``ShardedEmbeddingBagCollection._embedding_shardings`` (a list) or
    ``ShardedEmbeddingCollection._sharding_type_to_sharding`` (a dict), and each sharding's
    ``_grouped_embedding_configs_per_rank``: what every rank builds a fused kernel of,
    known on every rank from the global plan, so that a check of it raises on all ranks
    alike (no rank goes on alone into the next collective).

    Public alternative tried: the kernels themselves (``BatchedFusedEmbeddingBag.config``)
    are public, but this rank's only, and not in the public module tree (TorchRec keeps
    its lookups in a plain list); the plan's ``ParameterSharding`` gives each shard's rows
    but not the grouping into kernels (by pooling, fused params, data type, ...).
    """
    # NOTE: TorchRec private attributes (see docstring).
    shardings = getattr(sharded, "_embedding_shardings", None)
    if shardings is None:
        shardings = list(getattr(sharded, "_sharding_type_to_sharding", {}).values())
    per_rank: list[list[GroupedEmbeddingConfig]] = []
    for sharding in shardings:
        for rank, groups in enumerate(getattr(sharding, "_grouped_embedding_configs_per_rank", [])):
            while len(per_rank) <= rank:
                per_rank.append([])
            per_rank[rank].extend(groups)
    return per_rank


def divide_row_wise_means_only(
    sharded: ShardedEmbeddingBagCollection, configs: list[EmbeddingBagConfig]
) -> None:
    """Keep TorchRec's mean-pooling division to the features of row-wise MEAN tables.

    A sharded EBC with a MEAN table split row-wise (``row_wise``, ``table_row_wise``)
    divides its whole pooled output by a divisor built from each feature's lengths, where
    only the features of row-wise SUM tables get length 1 (TorchRec 1.8,
    ``_create_mean_pooling_divisor``). So the features of every table-wise, column-wise or
    data-parallel table, SUM or MEAN (already averaged by its kernel), were divided by their
    lengths too: wrong outputs and gradients, without a word. Adding those features to
    ``_pooling_type_to_rs_features["SUM"]`` (which only that divisor reads) gives them
    length 1.

    Args:
        sharded: the sharded collection, just built.
        configs: the tables it shards (``embedding_bag_configs()`` of the module sharded).

    Public alternative tried: none; the divisor is built inside ``input_dist`` from this
    private map, and the only public switch is the pooling itself.
    """
    # NOTE: TorchRec private attribute (see docstring).
    by_pooling = sharded._pooling_type_to_rs_features
    if "MEAN" not in by_pooling:  # (no division at all)
        return
    row_split = set(by_pooling["MEAN"]) | set(by_pooling["SUM"])
    by_pooling["SUM"].extend(f for c in configs for f in c.feature_names if f not in row_split)
