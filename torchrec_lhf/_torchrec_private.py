"""Every read or write of a TorchRec private attribute, in one place.

TorchRec offers no public way to do the six things below. Each function names what it
touches, why, and the public alternative that was tried; ``docs/TORCHREC_PRIVATE.md``
lists the same (and the private uses that were replaced by public ones). When TorchRec
is upgraded, ``tests/modules/test_mch.py``, ``tests/distributed/test_mch.py``,
``tests/distributed/test_embedding_bag_mean.py``,
``tests/distributed/test_variable_batches.py``,
``tests/distributed/test_sharding_types.py`` and ``tests/apps/test_train_distributed.py``
exercise them.
"""

from __future__ import annotations

import types
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


def _merge_vbe_outputs(lookup: Any, features_by_group: list, device: torch.device) -> Any:
    """``GroupedPooledEmbeddingsLookup._forward_with_vbe_merging`` that, on the CPU, merges
    its kernels' VBE outputs by concatenation (TorchRec's own path for MTIA)."""
    if device.type != "cpu":
        return type(lookup)._forward_with_vbe_merging(lookup, features_by_group, device)
    outputs = lookup._forward(features_by_group)
    return lookup._merge_variable_batch_embeddings(outputs, lookup._vbe_splits(features_by_group))


def _gather_uneven_gradients(original: Callable[..., Any]) -> Callable[..., Any]:
    """``ReduceScatterV_Wait.backward`` that, on a gloo group with uneven splits, gathers
    the ranks' gradients by one all-to-all instead of gloo's all-gather (which takes equal
    sizes only); else ``original``."""

    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        myreq = ctx.myreq
        splits = list(myreq.rsi.input_splits)
        if len(set(splits)) <= 1 or torch.distributed.get_backend(ctx.pg) != "gloo":
            return original(ctx, grad_output)
        if myreq.rsi.codecs is not None:
            grad_output = myreq.rsi.codecs.backward.encode(grad_output)
        grad_output = grad_output.contiguous()
        world_size = len(splits)
        grad_input = grad_output.new_empty(myreq.rsi.total_input_size)
        myreq.req = torch.distributed.all_to_all_single(
            grad_input,
            torch.cat([grad_output] * world_size),  # this rank's gradient to every rank
            output_split_sizes=splits,
            input_split_sizes=[grad_output.shape[0]] * world_size,
            group=ctx.pg,
            async_op=True,
        )
        myreq.tensor = grad_input
        return (None, None, myreq.dummy_tensor)

    backward.torchrec_lhf_fix = True  # type: ignore[attr-defined]
    return backward


def _inverse_indices_in_key_order(original: Callable[..., Any]) -> Callable[..., Any]:
    """``embeddingbag._create_mean_pooling_divisor`` given a VBE batch's inverse indices
    with their rows in the order of ``keys`` (the features as sharded), by name."""

    def divisor(**kwargs: Any) -> torch.Tensor:
        inverse = kwargs.get("inverse_indices")
        keys = list(kwargs["keys"])
        if kwargs.get("variable_batch_per_feature") and list(inverse[0]) != keys:
            row = {k: i for i, k in enumerate(inverse[0])}
            index = torch.tensor([row[k] for k in keys], device=inverse[1].device)
            kwargs["inverse_indices"] = (keys, inverse[1].index_select(0, index))
        return original(**kwargs)

    divisor.torchrec_lhf_fix = True  # type: ignore[attr-defined]
    return divisor


def fix_variable_batches(sharded: ShardedEmbeddingBagCollection) -> None:
    """Make a sharded EBC train on variable batches per feature (VBE) and on batches of
    unequal sizes across ranks, on the CPU as on CUDA.

    Three TorchRec 1.8 paths fail (checked on its own collection at world size 2):

    * **VBE with a MEAN table split row-wise, the batch's keys in another order than the
      sharding's** (TorchRec permutes the features into its order): the mean divisor
      (``embeddingbag._create_mean_pooling_divisor``) reads the batch's inverse indices
      in the batch's key order against the lengths in the sharding's order, reordering
      them only where a feature is shared. Some features' means came out divided by
      another feature's lengths (wrong by up to 10^6 where that bag was empty), or the
      lookup failed with an IndexError. On any device.
    * **VBE with several fused kernels on one rank** (a SUM and a MEAN table under one
      sharding type, or tables FBGEMM groups apart): the lookup merges their outputs into
      one preallocated tensor (``GroupedPooledEmbeddingsLookup._forward_with_vbe_merging``),
      which FBGEMM's CPU kernels refuse ("Using pre-allocated vbe_output is not supported
      on CPU").
    * **Row-wise (and table-row-wise) tables with ranks of unequal batches** (VBE strides
      or batch sizes that differ between ranks): the forward's reduce-scatter-v runs, but
      its backward (``comm_ops.ReduceScatterV_Wait.backward``) gathers the gradients with
      ``dist.all_gather`` of unequal sizes, which gloo refuses ("invalid tensor size").

    The fixes: the divisor function of ``torchrec.distributed.embeddingbag`` and the static
    backward of TorchRec's autograd function are wrapped, once for the process (both are
    module-level, read at each call), so that the divisor gets the inverse indices in its
    keys' order (by name), and on a gloo group with uneven splits the gradients are gathered
    by one ``all_to_all_single`` (each rank sending its gradient to every rank); every other
    call goes to TorchRec's unchanged. This collection's lookups (for these objects only)
    merge their VBE outputs on the CPU by concatenation, with TorchRec's own
    ``_merge_variable_batch_embeddings`` (its path for MTIA, which has the same limit).

    Public alternative tried: ``comm_ops.set_use_sync_collectives(True)`` routes the
    reduce-scatter-v through an all-to-all too, but it makes every collective of the
    process blocking, pipelines included; TorchRec has no per-module or per-backend choice
    of either path, and no switch for the other two.
    """
    from torchrec.distributed import comm_ops, embeddingbag
    from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup

    # NOTE: TorchRec private names (see docstring).
    backward = comm_ops.ReduceScatterV_Wait.backward
    if not getattr(backward, "torchrec_lhf_fix", False):
        comm_ops.ReduceScatterV_Wait.backward = staticmethod(_gather_uneven_gradients(backward))
    divisor = embeddingbag._create_mean_pooling_divisor
    if not getattr(divisor, "torchrec_lhf_fix", False):
        embeddingbag._create_mean_pooling_divisor = _inverse_indices_in_key_order(divisor)
    for lookup in sharded._lookups:
        if isinstance(lookup, GroupedPooledEmbeddingsLookup):
            lookup._forward_with_vbe_merging = types.MethodType(_merge_vbe_outputs, lookup)
