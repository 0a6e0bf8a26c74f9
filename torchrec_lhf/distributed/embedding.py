"""Sharding for :class:`~torchrec_lhf.modules.embedding.LearnedHashEmbeddingCollection`.

The sequence twin of :mod:`torchrec_lhf.distributed.embedding_bag`: the compressed tables
shard as a stock EmbeddingCollection's (TorchRec's fused FBGEMM kernels), the remap runs
inside ``input_dist`` (so TrainPipelineSparseDist overlaps it with compute) and the combine
of a table's internal embeddings is a callback on the output awaitable. TorchRec is handed
the module's :meth:`~torchrec_lhf.modules.embedding.LearnedHashEmbeddingCollection.internal_tables`
view; the planner and sharding plans name the internal tables (``t__h<i>``).
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.distributed.embedding import (
    EmbeddingCollectionContext,
    EmbeddingCollectionSharder,
    ShardedEmbeddingCollection,
)
from torchrec.distributed.embedding_types import KJTList
from torchrec.distributed.types import (
    Awaitable,
    LazyAwaitable,
    ParameterSharding,
    QuantizedCommCodecs,
    ShardingEnv,
    ShardingType,
)
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_lhf.distributed.sharding_types import (
    check_no_empty_fused_groups,
    check_placements,
    requested_types,
)
from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding import LearnedHashEmbeddingCollection
from torchrec_lhf.modules.embedding_bag import _check_remap_on_load

SEQUENCE_SHARDING_TYPES: tuple[str, ...] = (
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
)
"""The sharding types offered for learned-hash sequence tables, each covered by
tests/distributed at world size 2 on CPU/gloo. TorchRec's EmbeddingCollectionSharder also
offers data parallel, but TorchRec 1.8's own collection fails under it there, even with
the same batch on both ranks (its output is split by lengths that add up to more rows than
its lookup returns)."""


class ShardedLearnedHashEmbeddingCollection(ShardedEmbeddingCollection):
    """The sharded twin of :class:`LearnedHashEmbeddingCollection`.

    The remap (``remap.*``) is replicated on every rank and is part of the state dict under
    the same keys as in the unsharded module. ``embedding_configs()`` gives the logical
    tables and ``internal_embedding_configs()`` the sharded (compressed) ones.
    """

    def __init__(
        self,
        module: LearnedHashEmbeddingCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        env: ShardingEnv,
        fused_params: dict[str, Any] | None = None,
        device: torch.device | None = None,
        qcomm_codecs_registry: dict[str, QuantizedCommCodecs] | None = None,
        use_index_dedup: bool = False,
        module_fqn: str | None = None,
    ) -> None:
        super().__init__(
            module=module.internal_tables(),  # TorchRec shards the internal tables
            table_name_to_parameter_sharding=table_name_to_parameter_sharding,
            env=env,
            fused_params=fused_params,
            device=device,
            qcomm_codecs_registry=qcomm_codecs_registry,
            use_index_dedup=use_index_dedup,
            module_fqn=module_fqn,
        )
        logical_view.copy_learned_hash_parts(module, self, device=logical_view.remap_device(device))
        self._internal_configs = module.internal_embedding_configs()
        self.register_load_state_dict_pre_hook(_check_remap_on_load)

    # the logical tables (as the unsharded module's), bound from logical_view
    embedding_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_configs(self) -> list[EmbeddingConfig]:
        """The compressed tables' configs (what is sharded)."""
        return self._internal_configs

    embedding_names_by_table = logical_view.logical_embedding_names

    def input_dist(
        self, ctx: EmbeddingCollectionContext, features: KeyedJaggedTensor
    ) -> Awaitable[Awaitable[KJTList]]:
        """Remap raw ids to internal rows on this rank, then TorchRec's input_dist.

        Raises:
            ValueError: a variable batch per feature (VBE), not covered for sequence tables.
        """
        if isinstance(features, KeyedJaggedTensor) and features.variable_stride_per_key():
            raise ValueError(
                f"features {features.keys()} have a variable batch per feature (VBE), which "
                "learned-hash sequence tables do not take; expected one batch size for all"
            )
        return super().input_dist(ctx, self.remap(features))

    def output_dist(
        self, ctx: EmbeddingCollectionContext, output: list[torch.Tensor]
    ) -> LazyAwaitable[dict[str, JaggedTensor]]:
        return self._with_combine(super().output_dist(ctx, output))

    def compute_and_output_dist(
        self, ctx: EmbeddingCollectionContext, input: KJTList
    ) -> LazyAwaitable[dict[str, JaggedTensor]]:
        return self._with_combine(super().compute_and_output_dist(ctx, input))

    def _with_combine(
        self, awaitable: LazyAwaitable[dict[str, JaggedTensor]]
    ) -> LazyAwaitable[dict[str, JaggedTensor]]:
        if self.combine is not None:
            awaitable.callbacks.append(self.combine)
        return awaitable

    @property
    def unsharded_module_type(self) -> type[LearnedHashEmbeddingCollection]:
        return LearnedHashEmbeddingCollection


class LearnedHashEmbeddingCollectionSharder(EmbeddingCollectionSharder):
    """Shards :class:`LearnedHashEmbeddingCollection` with TorchRec's fused tables.

    Pass it to ``DistributedModelParallel`` and the planner beside the other sharders:
    ``sharders=[LearnedHashEmbeddingCollectionSharder(), LearnedHashEmbeddingBagCollectionSharder(),
    *get_default_sharders()]`` (the planner picks sharders by exact module type).

    Args:
        fused_params: as for EmbeddingCollectionSharder (optimizer, learning rate, ...).
        qcomm_codecs_registry: as for EmbeddingCollectionSharder.
        use_index_dedup: as for EmbeddingCollectionSharder.
        sharding_types: restrict the offered types to these (default: all of
            :data:`SEQUENCE_SHARDING_TYPES`).

    Raises:
        ValueError: ``sharding_types`` empty, or a type not among
            :data:`SEQUENCE_SHARDING_TYPES`.
    """

    def __init__(
        self,
        fused_params: dict[str, Any] | None = None,
        qcomm_codecs_registry: dict[str, QuantizedCommCodecs] | None = None,
        use_index_dedup: bool = False,
        *,
        sharding_types: list[str] | None = None,
    ) -> None:
        super().__init__(fused_params, qcomm_codecs_registry, use_index_dedup)
        self._sharding_types = requested_types(
            sharding_types, SEQUENCE_SHARDING_TYPES, "learned-hash sequence tables"
        )

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(self._sharding_types)

    def shard(
        self,
        module: LearnedHashEmbeddingCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedLearnedHashEmbeddingCollection:
        check_placements(params, self._sharding_types)
        sharded = ShardedLearnedHashEmbeddingCollection(
            module,
            params,
            env,
            self.fused_params,
            device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
            use_index_dedup=self._use_index_dedup,
            module_fqn=module_fqn,
        )
        check_no_empty_fused_groups(sharded, device)
        return sharded

    @property
    def module_type(self) -> type[LearnedHashEmbeddingCollection]:
        return LearnedHashEmbeddingCollection

    @property
    def sharded_module_type(self) -> type[ShardedLearnedHashEmbeddingCollection]:
        return ShardedLearnedHashEmbeddingCollection
