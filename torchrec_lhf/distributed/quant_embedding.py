"""Inference sharding for :class:`~torchrec_lhf.modules.quant.QuantLearnedHashEmbeddingCollection`.

The sequence twin of :mod:`torchrec_lhf.distributed.quant_embedding_bag`: TorchRec's
``ShardedQuantEmbeddingCollection`` shards the quantized compressed tables (FBGEMM's
int8/int4 kernels, table-wise on one rank), and this file adds the remap (before
``input_dist``) and the combine of a table's internal embeddings (after ``output_dist``).
:func:`torchrec_lhf.inference.shard_for_inference` passes the sharder to TorchRec's
``shard_quant_model``; the planner and the sharding plan name the internal tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.distributed.quant_embedding import (
    EmbeddingCollectionContext,
    QuantEmbeddingCollectionSharder,
    ShardedQuantEmbeddingCollection,
)
from torchrec.distributed.types import ParameterSharding, ShardingEnv
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_lhf.distributed.quant_embedding_bag import TESTED_SHARDING_TYPES, shard_fused_params
from torchrec_lhf.distributed.sharding_types import check_placements
from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding import InternalEmbeddings
from torchrec_lhf.modules.quant import QUANTIZED_SEQUENCE, QuantLearnedHashEmbeddingCollection
from torchrec_lhf.modules.remap import refuse_variable_batch

torch.fx.wrap("refuse_variable_batch")  # one node of a trace here too (it reads the keys)


class _QuantInternalEmbeddings(InternalEmbeddings):
    """The quantized compressed tables seen as TorchRec's quantized EmbeddingCollection
    (its configs with their data types, its output dtype, the same buffers)."""

    def __init__(self, module: QuantLearnedHashEmbeddingCollection) -> None:
        weight = next(module.embeddings.buffers(), None)
        super().__init__(
            module.internal_embedding_configs(),
            module.embeddings,
            device=weight.device if weight is not None else torch.device("cpu"),
        )
        self._output_dtype = module.output_dtype()

    def output_dtype(self) -> torch.dtype:
        return self._output_dtype


class ShardedQuantLearnedHashEmbeddingCollection(ShardedQuantEmbeddingCollection):
    """The sharded twin of :class:`QuantLearnedHashEmbeddingCollection` (TorchRec's
    inference flow replaces modules by exact type and calls ``input_dist`` and
    ``output_dist`` of the sharded module, so the remap and the combine live there).

    The remap buffers are shared with the quantized module (nothing changes an inference
    remap); ``embedding_configs()`` gives the logical tables and
    ``internal_embedding_configs()`` the sharded (compressed) ones.
    """

    def __init__(
        self,
        module: QuantLearnedHashEmbeddingCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        env: ShardingEnv,
        fused_params: dict[str, Any] | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(
            _QuantInternalEmbeddings(module),  # TorchRec shards the internal tables
            table_name_to_parameter_sharding,
            env,
            fused_params,
            device=device,
        )
        logical_view.copy_learned_hash_parts(
            module, self, device=logical_view.remap_device(device), share=True
        )

    # the logical tables (as the unsharded module's), bound from logical_view
    embedding_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    embedding_names_by_table = logical_view.logical_embedding_names
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_configs(self) -> list[EmbeddingConfig]:
        """The quantized compressed tables' configs (what is sharded)."""
        return self._embedding_configs

    def input_dist(self, ctx: EmbeddingCollectionContext, features: KeyedJaggedTensor) -> Any:
        """Remap raw ids to internal rows, then TorchRec's input_dist."""
        features = refuse_variable_batch(features, QUANTIZED_SEQUENCE)
        return super().input_dist(ctx, self.remap(features))

    def output_dist(
        self, ctx: EmbeddingCollectionContext, output: list[list[torch.Tensor]]
    ) -> dict[str, JaggedTensor]:
        embeddings = super().output_dist(ctx, output)
        return embeddings if self.combine is None else self.combine(embeddings)


class QuantLearnedHashEmbeddingCollectionSharder(QuantEmbeddingCollectionSharder):
    """Shards :class:`QuantLearnedHashEmbeddingCollection` for inference (table-wise, as
    the pooled one: TorchRec's inference row- and column-wise shardings place shards on
    CUDA devices).

    Args:
        fused_params: as for QuantEmbeddingCollectionSharder (TBE options).

    Raises:
        ValueError: (in ``shard``) a table placed with a sharding type other than
            table-wise.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(TESTED_SHARDING_TYPES)

    def shardable_parameters(
        self, module: QuantLearnedHashEmbeddingCollection
    ) -> dict[str, nn.Parameter]:
        """The compressed tables, keyed by internal table name (no remap buffer)."""
        return super().shardable_parameters(_QuantInternalEmbeddings(module))

    def shard(
        self,
        module: QuantLearnedHashEmbeddingCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedQuantLearnedHashEmbeddingCollection:
        check_placements(params, list(TESTED_SHARDING_TYPES))
        return ShardedQuantLearnedHashEmbeddingCollection(
            module, params, env, fused_params=shard_fused_params(self, module), device=device
        )

    @property
    def module_type(self) -> type[QuantLearnedHashEmbeddingCollection]:
        return QuantLearnedHashEmbeddingCollection
