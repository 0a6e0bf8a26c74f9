"""Sharding for :class:`LearnedHashEmbeddingBagCollection`.

The compressed tables shard exactly like a stock EmbeddingBagCollection's (TorchRec's
fused FBGEMM kernels, any of the tested sharding types); this file adds only the remap
(inside ``input_dist``, so TrainPipelineSparseDist still overlaps it with compute) and
the combine of internal embeddings (a callback on the output awaitable).

TorchRec's ShardedEmbeddingBagCollection reads the tables it shards from the module's
``embedding_bag_configs()``; the learned-hash module answers that with its *logical*
configs (for DLRM), so the sharded twin hands TorchRec the module's
:meth:`~torchrec_lhf.modules.embedding_bag.LearnedHashEmbeddingBagCollection.internal_tables`
view instead. The planner and sharding plans name the internal tables (``t__h<i>``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.distributed.embedding_types import KJTList
from torchrec.distributed.embeddingbag import (
    EmbeddingBagCollectionContext,
    EmbeddingBagCollectionSharder,
    ShardedEmbeddingBagCollection,
)
from torchrec.distributed.types import (
    Awaitable,
    LazyAwaitable,
    ParameterSharding,
    QuantizedCommCodecs,
    ShardingEnv,
    ShardingType,
)
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf._torchrec_private import divide_row_wise_means_only, fix_variable_batches
from torchrec_lhf.distributed.embedding import ShardedLearnedHashEmbeddingCollection
from torchrec_lhf.distributed.sharding_types import (
    check_fused_placements,
    check_no_empty_fused_groups,
    check_placements,
    requested_types,
)
from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding import LearnedHashEmbeddingCollection
from torchrec_lhf.modules.embedding_bag import (
    LearnedHashEmbeddingBagCollection,
    _check_remap_on_load,
)

# The sharding types covered by tests/distributed (world size 2, gloo and CPU).
TESTED_SHARDING_TYPES: tuple[str, ...] = (
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.DATA_PARALLEL.value,
)

VBE_SHARDING_TYPES: tuple[str, ...] = (
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
)
"""The sharding types that take a variable batch per feature (VBE): TorchRec 1.8's own
collection fails on one under the others (checked on CPU/gloo at world size 2: its output
dist splits the pooled embeddings by the full batch), so the sharded module refuses it
there, naming the type."""


class ShardedLearnedHashEmbeddingBagCollection(ShardedEmbeddingBagCollection):
    """The sharded twin of :class:`LearnedHashEmbeddingBagCollection`.

    NOTE: one subclass level under ShardedEmbeddingBagCollection: TrainPipelineSparseDist
    calls ``input_dist`` and ``compute_and_output_dist`` of the sharded module directly, so
    the remap and the combine have to live in those methods.

    The remap (``remap.mapping``) is replicated on every rank and is part of the state dict
    under the same key as in the unsharded module. As the unsharded module,
    ``embedding_bag_configs()`` gives the logical tables and
    ``internal_embedding_bag_configs()`` the sharded (compressed) ones.
    """

    def __init__(
        self,
        module: LearnedHashEmbeddingBagCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        env: ShardingEnv,
        *,
        fused_params: dict[str, Any] | None = None,
        device: torch.device | None = None,
        qcomm_codecs_registry: dict[str, QuantizedCommCodecs] | None = None,
        module_fqn: str | None = None,
    ) -> None:
        super().__init__(
            module=module.internal_tables(),  # TorchRec shards the internal tables
            table_name_to_parameter_sharding=table_name_to_parameter_sharding,
            env=env,
            fused_params=fused_params,
            device=device,
            qcomm_codecs_registry=qcomm_codecs_registry,
            module_fqn=module_fqn,
        )
        logical_view.copy_learned_hash_parts(module, self, device=logical_view.remap_device(device))
        self._internal_configs = module.internal_embedding_bag_configs()
        self.first_batch_vbe: bool | None = None  # (set by the first input_dist)
        divide_row_wise_means_only(self, self._internal_configs)
        fix_variable_batches(self)
        if self.combine is not None:  # the sharded output's key order, not the module's
            self.combine = self.combine.for_input_order(self._embedding_names, self._embedding_dims)
        self.register_load_state_dict_pre_hook(_check_remap_on_load)

    # the logical tables (as the unsharded module's), bound from logical_view
    embedding_bag_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The compressed tables' configs (what is sharded)."""
        return self._internal_configs

    def input_dist(
        self, ctx: EmbeddingBagCollectionContext, features: KeyedJaggedTensor
    ) -> Awaitable[Awaitable[KJTList]]:
        """Remap raw ids to internal rows on this rank, then TorchRec's input_dist.

        TorchRec builds a sharded collection's output dist for the kind of its first batch,
        with a variable batch per feature (VBE) or without, and fails on the other kind
        (row-wise: a ``TypeError``; any type: a VBE batch after plain ones). So after a
        VBE first batch, a plain batch goes as VBE (each feature's stride the batch, its
        inverse indices the identity): training on VBE and evaluating on plain batches
        works; a VBE batch after a plain first batch is refused by name.

        Raises:
            ValueError: a VBE batch where a table is sharded by a type not in
                :data:`VBE_SHARDING_TYPES`, or after a first batch without VBE.
        """
        vbe = features.variable_stride_per_key()
        if vbe:
            refused = [t for t in self._sharding_types if t not in VBE_SHARDING_TYPES]
            if refused:
                raise ValueError(
                    f"features {features.keys()} have a variable batch per feature (VBE), "
                    f"which TorchRec's {refused[0]} sharding does not take: expected tables "
                    f"sharded {', '.join(VBE_SHARDING_TYPES)} only"
                )
        if self.first_batch_vbe is None:
            self.first_batch_vbe = vbe
        if vbe and not self.first_batch_vbe:
            raise ValueError(
                f"features {features.keys()} have a variable batch per feature (VBE), "
                "but this sharded collection's first batch had none, and TorchRec 1.8 "
                "builds its output dist for the first batch's kind: expected batches "
                "without VBE, or a VBE first batch (a plain batch can be given as VBE: "
                "stride_per_key_per_rank [[B]] per feature, inverse_indices the "
                "identity), after which both kinds are taken"
            )
        if not vbe and self.first_batch_vbe:
            features = as_variable_batch(features)
        return super().input_dist(ctx, self.remap(features))

    def output_dist(
        self, ctx: EmbeddingBagCollectionContext, output: list[torch.Tensor]
    ) -> LazyAwaitable[KeyedTensor]:
        return self._with_combine(super().output_dist(ctx, output))

    def compute_and_output_dist(
        self, ctx: EmbeddingBagCollectionContext, input: KJTList
    ) -> LazyAwaitable[KeyedTensor]:
        return self._with_combine(super().compute_and_output_dist(ctx, input))

    def _with_combine(self, awaitable: LazyAwaitable[KeyedTensor]) -> LazyAwaitable[KeyedTensor]:
        if self.combine is not None:
            awaitable.callbacks.append(self.combine)
        return awaitable

    @property
    def unsharded_module_type(self) -> type[LearnedHashEmbeddingBagCollection]:
        return LearnedHashEmbeddingBagCollection


class LearnedHashEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """Shards :class:`LearnedHashEmbeddingBagCollection` with TorchRec's fused tables.

    Pass it to ``DistributedModelParallel`` and the planner together with TorchRec's
    defaults: ``sharders=[LearnedHashEmbeddingBagCollectionSharder(), *get_default_sharders()]``
    (the planner picks sharders by exact module type).

    Args:
        fused_params: as for EmbeddingBagCollectionSharder (optimizer, learning rate, ...).
        qcomm_codecs_registry: as for EmbeddingBagCollectionSharder.
        sharding_types: restrict the offered types to these (default: all tested types).

    Raises:
        ValueError: ``sharding_types`` empty, or a type not among the tested ones; (on
            ``shard``) a table placed by a type not offered, or on a fused kernel at a dim
            it rejects (:func:`~torchrec_lhf.distributed.sharding_types.check_fused_dims`).
    """

    def __init__(
        self,
        fused_params: dict[str, Any] | None = None,
        qcomm_codecs_registry: dict[str, QuantizedCommCodecs] | None = None,
        *,
        sharding_types: list[str] | None = None,
    ) -> None:
        super().__init__(fused_params=fused_params, qcomm_codecs_registry=qcomm_codecs_registry)
        self._sharding_types = requested_types(
            sharding_types, TESTED_SHARDING_TYPES, "learned-hash tables"
        )

    def sharding_types(self, compute_device_type: str) -> list[str]:
        # NOTE: TorchRec's base offers row-wise only on CUDA; on CPU (gloo) it works and is tested.
        return list(self._sharding_types)

    def shard(
        self,
        module: LearnedHashEmbeddingBagCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedLearnedHashEmbeddingBagCollection:
        check_placements(params, self._sharding_types)
        dims = {c.name: c.embedding_dim for c in module.internal_embedding_bag_configs()}
        check_fused_placements(params, dims)
        sharded = ShardedLearnedHashEmbeddingBagCollection(
            module,
            params,
            env,
            fused_params=self.fused_params,
            device=device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
            module_fqn=module_fqn,
        )
        check_no_empty_fused_groups(sharded, device)
        return sharded

    @property
    def module_type(self) -> type[LearnedHashEmbeddingBagCollection]:
        return LearnedHashEmbeddingBagCollection

    @property
    def sharded_module_type(self) -> type[ShardedLearnedHashEmbeddingBagCollection]:
        return ShardedLearnedHashEmbeddingBagCollection


class PlainEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """TorchRec's sharder of plain EmbeddingBagCollections, offering on the CPU too the types
    the learned-hash sharder is tested with (:data:`TESTED_SHARDING_TYPES`): TorchRec's
    offers ``row_wise`` and ``table_row_wise`` on CUDA only, so a plain model (the full
    baseline, a teacher) restricted to them failed to plan on CPU ("No available sharding
    type and compute kernel combination"), where its learned-hash twin, over the same
    fused kernels, shards. Elsewhere TorchRec's own list.

    NOTE: one subclass level, as the planner matches sharders by exact module type (the
    module type is TorchRec's EmbeddingBagCollection).
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        return types + [t for t in TESTED_SHARDING_TYPES if t not in types]

    def shard(
        self,
        module: EmbeddingBagCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedEmbeddingBagCollection:
        sharded = super().shard(module, params, env, device, module_fqn)
        divide_row_wise_means_only(sharded, module.embedding_bag_configs())
        fix_variable_batches(sharded)
        check_no_empty_fused_groups(sharded, device)
        return sharded


def as_variable_batch(features: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """``features`` (``B`` samples, no VBE) as a variable batch per feature of the same
    bags: each feature's stride ``B``, its inverse indices ``0 .. B - 1``."""
    stride, keys = features.stride(), features.keys()
    identity = torch.arange(stride, device=features.device()).expand(len(keys), stride)
    return KeyedJaggedTensor(
        keys=keys,
        values=features.values(),
        lengths=features.lengths(),
        weights=features.weights_or_none(),
        stride_per_key_per_rank=[[stride]] * len(keys),
        inverse_indices=(keys, identity.contiguous()),
    )


def remap_bytes(model: nn.Module) -> int:
    """Bytes of all learned-hash remap buffers in ``model`` (replicated on every rank): of
    its pooled and sequence collections, sharded or not."""
    kinds = (
        LearnedHashEmbeddingBagCollection,
        ShardedLearnedHashEmbeddingBagCollection,
        LearnedHashEmbeddingCollection,
        ShardedLearnedHashEmbeddingCollection,
    )
    return sum(m.remap.remap_bytes() for m in model.modules() if isinstance(m, kinds))
