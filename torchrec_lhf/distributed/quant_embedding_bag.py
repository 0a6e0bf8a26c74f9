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
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
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
from torchrec_lhf.modules.quant import QUANTIZED, QuantLearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.remap import refuse_variable_batch
from torchrec_lhf.modules.remap_ops import IDENTITY

torch.fx.wrap("refuse_variable_batch")  # one node of a trace here too (it reads the keys)

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
        # NOTE: shared, not copied, on the same device: nothing changes an inference remap
        logical_view.copy_learned_hash_parts(
            module, self, device=logical_view.remap_device(device), share=True
        )
        self.remap_in_kernel = _remap_in_kernel(self)

    # the logical tables (as the unsharded module's), bound from logical_view
    embedding_bag_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The quantized compressed tables' configs (what is sharded)."""
        return super().embedding_bag_configs()

    def input_dist(self, ctx: NullShardedModuleContext, features: KeyedJaggedTensor) -> Any:
        """Remap raw ids to internal rows, then TorchRec's input_dist (raw ids go to FBGEMM
        where it remaps them itself, range-checked first: see :func:`_remap_in_kernel`)."""
        features = refuse_variable_batch(features, QUANTIZED)
        if self.remap_in_kernel:
            return super().input_dist(ctx, self.remap.check_ids(features))
        return super().input_dist(ctx, self.remap(features))

    def output_dist(
        self, ctx: NullShardedModuleContext, output: list[list[torch.Tensor]]
    ) -> KeyedTensor:
        pooled = super().output_dist(ctx, output)
        if self.combine is None:
            return pooled
        if self.combine.in_keys != self._embedding_names:
            # NOTE: TorchRec lists the output's keys (grouped by sharding type and rank) on
            # the first call, which precedes tracing; the combine follows their order
            self.combine = self.combine.for_input_order(self._embedding_names, self._embedding_dims)
        return self.combine(pooled)


def _remap_in_kernel(sharded: ShardedQuantLearnedHashEmbeddingBagCollection) -> bool:
    """Hand the dense remap to FBGEMM's inference kernels where it is one: returns whether.

    FBGEMM's int-n-bit TBE remaps raw ids itself (``pruned_array_lookup``: one fused op over
    every table, the path TorchRec's pruned tables take), so where every compressed table
    has one dense hash function (no compact head/tail, no combine) and raw ids must be in
    range (``out_of_range="error"``), the served model is the plain quantized collection
    plus that op and a range check of the ids: no lookup of ours per batch (tables read by
    one feature each, as in DLRM; FBGEMM cannot remap shared tables). Each TBE gets, per
    table, the int32 rows of its ids (None: uncompressed). That op reads its array at the
    raw id unchecked (an id past it: another id's row, a garbage row or a crash), hence
    the check (``FeatureRemap.check_ids``, one pass; the served model's wrapper makes it
    on the request: ``inference.RemapOnRequest``).
    """
    remap = sharded.remap
    if remap.has_compact or sharded.combine is not None or remap.out_of_range != "error":
        return False
    features = {f.name: f for f in remap.features}
    if len({f.source for f in remap.features}) != len(features):
        return False  # a logical feature feeds several internal ones: the remap splits it
    table_feature = {
        c.name: features[c.feature_names[0]]
        for c in sharded.internal_embedding_bag_configs()
        if c.feature_names and c.feature_names[0] in features
    }
    tbes = [m for m in sharded.modules() if isinstance(m, IntNBitTableBatchedEmbeddingBagsCodegen)]
    specs = [spec[0] for tbe in tbes for spec in tbe.embedding_specs]
    if not tbes or set(specs) != set(table_feature) or len(specs) != len(table_feature):
        return False  # not every table in one of the TBEs found (another layout)
    if any(tbe.feature_table_map != list(range(len(tbe.embedding_specs))) for tbe in tbes):
        # NOTE: FBGEMM's pruned_array_lookup segments the ids by feature but its remapping
        # arrays are per table: tables shared by several features would be misread
        return False
    for tbe in tbes:
        remappings = []
        for spec in tbe.embedding_specs:
            f = table_feature[spec[0]]
            if f.offset == IDENTITY:
                remappings.append(None)
            else:
                mapping = remap.mapping[f.offset : f.offset + f.num_embeddings]
                remappings.append(mapping.to(torch.int32))
        if any(m is not None for m in remappings):
            tbe.set_index_remappings_array(remappings)
    return True


def shard_fused_params(sharder: Any, module: nn.Module) -> dict[str, Any]:
    """The TBE options a quantized sharder's ``shard`` passes for ``module``, as TorchRec's
    quantized sharders make them (the module's output dtype, and its scale-bias split and
    TBE registration unless given), without mutating ``sharder.fused_params``."""
    fused_params = dict(sharder.fused_params or {})
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
    return fused_params


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
        return ShardedQuantLearnedHashEmbeddingBagCollection(
            module, params, env, fused_params=shard_fused_params(self, module), device=device
        )

    @property
    def module_type(self) -> type[QuantLearnedHashEmbeddingBagCollection]:
        return QuantLearnedHashEmbeddingBagCollection
