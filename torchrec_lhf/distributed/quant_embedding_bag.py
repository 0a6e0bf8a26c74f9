"""Inference sharding for :class:`QuantLearnedHashEmbeddingBagCollection`.

The quantized twin of :mod:`torchrec_lhf.distributed.embedding_bag`: TorchRec's
``ShardedQuantEmbeddingBagCollection`` shards the compressed tables (FBGEMM's int8/int4
kernels, the sharding types below), and this file adds only the remap (before
``input_dist``) and the combine of internal embeddings (after ``output_dist``). Pass the
sharder to ``torchrec.inference.modules.shard_quant_model`` (or use
:func:`torchrec_lhf.inference.shard_for_inference`, which does so).

As the float sharder, it hands TorchRec a view of the compressed tables
(:class:`~torchrec_lhf.modules.embedding_bag.InternalTables`): TorchRec reads the tables it
shards from ``embedding_bag_configs()``, which the learned-hash modules answer with the
*logical* tables. The planner and the sharding plan name the internal tables (``t__h<i>``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.distributed.fused_params import (
    FUSED_PARAM_QUANT_STATE_DICT_SPLIT_SCALE_BIAS,
    FUSED_PARAM_REGISTER_TBE_BOOL,
)
from torchrec.distributed.quant_embeddingbag import (
    QuantEmbeddingBagCollectionSharder,
    ShardedQuantEmbeddingBagCollection,
)
from torchrec.distributed.types import NullShardedModuleContext, ParameterSharding, ShardingEnv
from torchrec.modules.embedding_configs import (
    EmbeddingBagConfig,
    data_type_to_sparse_type,
    dtype_to_data_type,
)
from torchrec.quant.embedding_modules import MODULE_ATTR_QUANT_STATE_DICT_SPLIT_SCALE_BIAS
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding_bag import InternalTables
from torchrec_lhf.modules.quant import QuantLearnedHashEmbeddingBagCollection

# Inference sharding types covered by tests/distributed/test_quant_embedding_bag.py (one
# CPU rank). NOTE: TorchRec's inference row- and column-wise shardings place shards on
# CUDA devices; they are left out until a GPU run has tested them.
TESTED_SHARDING_TYPES: tuple[str, ...] = ("table_wise",)


def _internal_view(module: QuantLearnedHashEmbeddingBagCollection) -> InternalTables:
    """The quantized compressed tables as a plain collection (shares the buffers)."""
    weight = next(module.embedding_bags.buffers(), None)
    return InternalTables(
        module.internal_embedding_bag_configs(),
        module.embedding_bags,
        is_weighted=module.is_weighted(),
        device=weight.device if weight is not None else torch.device("cpu"),
    )


class ShardedQuantLearnedHashEmbeddingBagCollection(ShardedQuantEmbeddingBagCollection):
    """The sharded twin of :class:`QuantLearnedHashEmbeddingBagCollection`.

    NOTE: one subclass level under ShardedQuantEmbeddingBagCollection: TorchRec's inference
    flow (``shard_quant_model``, FX tracing, TorchScript) replaces modules by exact type
    and calls ``input_dist`` / ``output_dist`` of the sharded module, so the remap and the
    combine have to live in those methods.

    The remap buffers are replicated (state-dict key ``remap.mapping``, as in the
    unsharded module); ``embedding_bag_configs()`` gives the logical tables and
    ``internal_embedding_bag_configs()`` the sharded (compressed) ones.
    """

    def __init__(
        self,
        module: QuantLearnedHashEmbeddingBagCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        env: ShardingEnv,
        *,
        fused_params: dict[str, Any] | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(
            _internal_view(module),  # TorchRec shards the internal tables
            table_name_to_parameter_sharding,
            env,
            fused_params,
            device=device,
        )
        logical_view.copy_learned_hash_parts(module, self, device=logical_view.remap_device(device))

    # the logical tables (as the unsharded module's), bound from logical_view
    embedding_bag_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The quantized compressed tables' configs (what is sharded)."""
        return super().embedding_bag_configs()

    def input_dist(self, ctx: NullShardedModuleContext, features: KeyedJaggedTensor) -> Any:
        """Remap raw ids to internal rows, then TorchRec's input_dist."""
        return super().input_dist(ctx, self.remap(features))

    def output_dist(
        self, ctx: NullShardedModuleContext, output: list[list[torch.Tensor]]
    ) -> KeyedTensor:
        pooled = super().output_dist(ctx, output)
        return pooled if self.combine is None else self.combine(pooled)


class QuantLearnedHashEmbeddingBagCollectionSharder(QuantEmbeddingBagCollectionSharder):
    """Shards :class:`QuantLearnedHashEmbeddingBagCollection` for inference.

    Pass it with TorchRec's default inference sharders (the planner picks sharders by
    exact module type), for example
    ``shard_quant_model(model, sharders=[QuantLearnedHashEmbeddingBagCollectionSharder(
    fused_params=DEFAULT_FUSED_PARAMS), *DEFAULT_SHARDERS])``.

    Args:
        fused_params: as for QuantEmbeddingBagCollectionSharder (TBE options).

    Raises:
        ValueError: (in ``shard``) a table is placed with an untested sharding type.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(TESTED_SHARDING_TYPES)

    def shardable_parameters(
        self, module: QuantLearnedHashEmbeddingBagCollection
    ) -> dict[str, nn.Parameter]:
        """The compressed tables, keyed by internal table name (no remap buffer)."""
        return super().shardable_parameters(_internal_view(module))

    def shard(
        self,
        module: QuantLearnedHashEmbeddingBagCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedQuantLearnedHashEmbeddingBagCollection:
        for name, ps in params.items():
            if ps.sharding_type not in TESTED_SHARDING_TYPES:
                raise ValueError(
                    f"table {name!r}: sharding type {ps.sharding_type!r} is not supported for "
                    f"quantized learned-hash tables; expected one of {list(TESTED_SHARDING_TYPES)}"
                )
        # As QuantEmbeddingBagCollectionSharder.shard, without mutating self.fused_params.
        fused_params = dict(self.fused_params or {})
        fused_params["output_dtype"] = data_type_to_sparse_type(
            dtype_to_data_type(module.output_dtype())
        )
        fused_params.setdefault(
            FUSED_PARAM_QUANT_STATE_DICT_SPLIT_SCALE_BIAS,
            getattr(module, MODULE_ATTR_QUANT_STATE_DICT_SPLIT_SCALE_BIAS, False),
        )
        fused_params.setdefault(
            FUSED_PARAM_REGISTER_TBE_BOOL, getattr(module, FUSED_PARAM_REGISTER_TBE_BOOL, False)
        )
        return ShardedQuantLearnedHashEmbeddingBagCollection(
            module, params, env, fused_params=fused_params, device=device
        )

    @property
    def module_type(self) -> type[QuantLearnedHashEmbeddingBagCollection]:
        return QuantLearnedHashEmbeddingBagCollection
