"""Sharding for TorchRec's ManagedCollisionEmbeddingBagCollection on CPU (gloo) and CUDA.

TorchRec 1.8's MC-EBC sharder offers the intersection of its inner EBC sharder's types
and the managed-collision sharder's (``row_wise`` only); the stock EBC sharder offers no
``row_wise`` on CPU, so on CPU the intersection is empty and the planner finds no plan.
Here the inner EBC sharder offers ``row_wise`` on every device, as our learned-hash
sharder does (``torchrec_lhf/distributed/embedding_bag.py``); everything else is TorchRec's
own MC-EBC sharding (input dist by raw-id block, per-rank MCH modules, eviction resets).

One CPU gap is filled: TorchRec resets evicted rows' optimizer state through FBGEMM's
``reset_weight_momentum``, which has no CPU kernel (``NotImplementedError`` with row-wise
Adagrad); on CPU the sharder swaps in :class:`_CpuEvictionReset`, which zeroes those rows
through the fused module's optimizer-state views. TorchRec re-initializes their weights as
on GPU.

The sharded module (:class:`CheckedShardedManagedCollisionEBC`) refuses a negative length in
its input dist, before TorchRec's reads it: there the managed collisions read it out of
bounds and corrupted the heap (the process aborted), and under ``TrainPipelineSparseDist``
the input dist of a batch runs before the forward that would refuse it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.distributed.mc_embeddingbag import (
    ManagedCollisionEmbeddingBagCollectionSharder,
    ShardedManagedCollisionEmbeddingBagCollection,
)
from torchrec.distributed.mc_modules import ManagedCollisionCollectionSharder
from torchrec.distributed.types import (
    ParameterSharding,
    QuantizedCommCodecs,
    ShardingEnv,
    ShardingType,
)
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_lhf._torchrec_private import wrap_eviction_tables
from torchrec_lhf.distributed.embedding_bag import PlainEmbeddingBagCollectionSharder
from torchrec_lhf.modules.remap import refuse_negative_lengths

__all__ = [
    "RowWiseEmbeddingBagCollectionSharder",
    "ManagedCollisionSharder",
    "CheckedShardedManagedCollisionEBC",
]

# The sharding types covered by tests/distributed/test_mch.py (world size 2, gloo, CPU).
TESTED_SHARDING_TYPES: tuple[str, ...] = (ShardingType.ROW_WISE.value,)


class RowWiseEmbeddingBagCollectionSharder(PlainEmbeddingBagCollectionSharder):
    """The plain EBC sharder (TorchRec's, with its fixes: unequal batches across ranks on
    gloo, MEAN tables, empty shards refused), offering ``row_wise`` alone, on CPU too.

    NOTE: the MC-EBC sharder asks its inner EBC sharder for ``sharding_types(device)``, and
    the stock answer on CPU lacks ``row_wise``. Row-wise sharding itself runs on CPU with
    gloo (tested here and for the learned-hash sharder).
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(TESTED_SHARDING_TYPES)


class ManagedCollisionSharder(ManagedCollisionEmbeddingBagCollectionSharder):
    """TorchRec's MC-EBC sharder whose tables shard row-wise on CPU and CUDA.

    Pass it to the planner and ``DistributedModelParallel`` with the other sharders:
    ``sharders=[ManagedCollisionSharder(fused_params), EmbeddingBagCollectionSharder(...)]``.

    NOTE: one subclass level under TorchRec's MC-EBC sharder (the planner picks sharders by
    module type): its ``compute_kernels`` lists the UVM and key-value kernels on any device,
    and the planner's estimators reject those on CPU; here they are limited to the ones the
    inner EBC sharder offers for the device. On CPU, ``shard`` also fills the eviction-reset
    gap (see the file's docstring).

    Args:
        fused_params: as for EmbeddingBagCollectionSharder (optimizer, learning rate, ...).
        qcomm_codecs_registry: as for EmbeddingBagCollectionSharder.
    """

    def __init__(
        self,
        fused_params: dict[str, Any] | None = None,
        qcomm_codecs_registry: dict[str, QuantizedCommCodecs] | None = None,
    ) -> None:
        # our own references: TorchRec keeps the inner sharders in private attributes
        self.ebc_sharder = RowWiseEmbeddingBagCollectionSharder(
            fused_params=fused_params, qcomm_codecs_registry=qcomm_codecs_registry
        )
        self.mc_sharder = ManagedCollisionCollectionSharder()
        super().__init__(
            ebc_sharder=self.ebc_sharder,
            mc_sharder=self.mc_sharder,
            qcomm_codecs_registry=qcomm_codecs_registry,
        )

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
        offered = set(self.ebc_sharder.compute_kernels(sharding_type, compute_device_type))
        return [
            k for k in super().compute_kernels(sharding_type, compute_device_type) if k in offered
        ]

    def shard(
        self,
        module: ManagedCollisionEmbeddingBagCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedManagedCollisionEmbeddingBagCollection:
        # NOTE: as TorchRec's shard(), which puts the module on CUDA when device is None
        sharded = CheckedShardedManagedCollisionEBC(
            module,
            params,
            ebc_sharder=self.ebc_sharder,
            mc_sharder=self.mc_sharder,
            env=env,
            device=device if device is not None else torch.device("cuda"),
        )
        if device is not None and device.type == "cpu":
            wrap_eviction_tables(sharded, _CpuEvictionReset)
        return sharded


class CheckedShardedManagedCollisionEBC(ShardedManagedCollisionEmbeddingBagCollection):
    """TorchRec's sharded MC-EBC, refusing a negative length before its input dist reads
    the batch (:func:`~torchrec_lhf.modules.remap.refuse_negative_lengths`: a ValueError
    naming the feature and sample on CPU, the guard's device-side assert on CUDA)."""

    def input_dist(self, ctx: Any, features: KeyedJaggedTensor) -> Any:
        refuse_negative_lengths(features)
        return super().input_dist(ctx, features)


class _CpuEvictionReset:
    """A fused FBGEMM table module, with an eviction reset that runs on CPU.

    Everything but :meth:`reset_embedding_weight_momentum` goes to the wrapped module.

    Args:
        tbe: the ``SplitTableBatchedEmbeddingBagsCodegen`` of one group of tables.
    """

    def __init__(self, tbe: nn.Module) -> None:
        self._tbe = tbe

    def __getattr__(self, name: str) -> Any:
        if name == "_tbe" or name.startswith("__"):  # e.g. copy's probes before __init__
            raise AttributeError(name)
        return getattr(self._tbe, name)

    @torch.no_grad()
    def reset_embedding_weight_momentum(
        self,
        pruned_indices: torch.Tensor,
        pruned_indices_offsets: torch.Tensor,
        logical_table_ids: torch.Tensor,
        buffer_ids: torch.Tensor,
    ) -> None:
        """Zero the optimizer state of the evicted rows (FBGEMM's arguments).

        Args:
            pruned_indices: local rows of the tables, concatenated.
            pruned_indices_offsets: ``(T + 1,)`` offsets of each table's rows in them.
            logical_table_ids: ``(T,)`` the tables, by index in this module.
            buffer_ids: unused (FBGEMM's buffer selector).
        """
        states = self._tbe.split_optimizer_states()  # per table: views of its state
        offsets = pruned_indices_offsets.tolist()
        for i, table in enumerate(logical_table_ids.tolist()):  # one table per call in TorchRec
            rows = pruned_indices[offsets[i] : offsets[i + 1]].long()
            for state in states[table] if states else ():
                state[rows] = 0
