"""Build the DLRM on the meta device, convert it with a hash plan, shard it, optimize it.

Shape legend: ``N`` logical table height, ``D`` embedding dim, ``d`` the model's table dim
(``D``, or MLET's narrower ``round(mlet_fraction * D)``), ``k`` MLET's inner width.

One embedding table per sparse feature, named after the feature (``.`` -> ``_``, since
table names are module names), so a hash plan or teacher artifact names tables by feature.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from apps.dlrm.config import TrainConfig
from torchrec_lhf.compression.budget import (
    ModelBytes,
    byte_budget,
    fit_to_bytes,
    full_table_bytes,
    lowest_fraction,
)
from torchrec_lhf.compression.registry import index_bytes
from torchrec_lhf.distributed.embedding_bag import (
    LearnedHashEmbeddingBagCollectionSharder,
    PlainEmbeddingBagCollectionSharder,
    remap_bytes,
)
from torchrec_lhf.distributed.mch import ManagedCollisionSharder
from torchrec_lhf.distributed.mlet import PipelinedMLET
from torchrec_lhf.distributed.planner import make_planner
from torchrec_lhf.distributed.sharding_types import check_fused_dims
from torchrec_lhf.modules.embedding_bag import (
    LearnedHashEmbeddingBagCollection,
    apply_hash_plan,
    internal_table_configs,
)
from torchrec_lhf.modules.mch import (
    SERVING_BUFFERS,
    MCHEmbeddingBagCollection,
    mch_rows,
    mch_state_bytes,
)
from torchrec_lhf.modules.mlet import apply_mlet, uncollapsible_tables
from torchrec_lhf.modules.quant import check_quantizable_dims
from torchrec_lhf.modules.remap_layout import hashed_name
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)

EBC_FQN = "model.sparse_arch.embedding_bag_collection"
"""Where the embedding tables live in ``DLRMTrain`` (state-dict prefix)."""


def table_name(feature: str) -> str:
    """The table of ``feature``: its name with ``.`` replaced by ``_``."""
    return feature.replace(".", "_")


def table_configs(
    feature_names: Sequence[str], num_embeddings: Sequence[int], embedding_dim: int
) -> list[EmbeddingBagConfig]:
    """One ``(N, D)`` table per feature.

    Raises:
        ValueError: lengths differ or two features map to the same table name.
    """
    if len(feature_names) != len(num_embeddings):
        raise ValueError(
            f"{len(feature_names)} features {list(feature_names)} but {len(num_embeddings)} "
            f"table heights {list(num_embeddings)}"
        )
    names = [table_name(f) for f in feature_names]
    if len(set(names)) != len(names):
        raise ValueError(f"features {list(feature_names)} give duplicate table names {names}")
    return [
        EmbeddingBagConfig(
            name=t, embedding_dim=embedding_dim, num_embeddings=int(n), feature_names=[f]
        )
        for t, f, n in zip(names, feature_names, num_embeddings)
    ]


def check_table_dims(
    config: TrainConfig, tables: list[EmbeddingBagConfig], plan: HashPlan | None
) -> None:
    """Before the model is built (after the plan, which may split a dim): every table the
    model shards fits TorchRec's fused kernels (:func:`check_fused_dims`), and with
    ``--export_model`` every table of the exported model fits FBGEMM's int8 rows (an even
    dim; MLET exports its tables at the model's dim). Before, the first failed where
    TorchRec built its kernel, the second after the whole training, in the export.

    With ``--export_model`` and MLET it also checks that the plan's tables can be collapsed
    (:func:`~torchrec_lhf.modules.mlet.uncollapsible_tables`), as the export does.

    Raises:
        ValueError: naming the (internal) table, its dim and what it needs.
    """

    def dims(width: int) -> dict[str, int]:  # internal table -> its dim
        out: dict[str, int] = {}
        for t in tables:
            th = plan[t.name] if plan is not None and t.name in plan else None
            if th is None:
                out[t.name] = width
                continue
            for h, dim in enumerate(th.internal_dims(width)):
                out[hashed_name(t.name, h, th.num_hashes)] = dim
        return out

    check_fused_dims(dims(config.sharded_dim), config.sharding_types)
    if config.export_model and config.mlet_fraction is not None and plan is not None:
        bad = uncollapsible_tables(plan, [t.name for t in tables])
        if bad:  # (before: refused by the export's collapse, after the whole training)
            raise ValueError(
                f"--export_model serves MLET collapsed (W @ P per table), which tables {bad} "
                "cannot be: their plan combines by mult/scaled_sum (not linear per table); "
                "export without --mlet_fraction, or with a sum or concat plan"
            )
    if config.export_model:
        try:
            check_quantizable_dims(dims(config.model_dim), torch.qint8)
        except ValueError as e:
            raise ValueError(
                "--export_model writes int8 tables, which need other dims (--embedding_dim, "
                f"--mlet_fraction or the plan's combine): {e}"
            ) from None


def build_model(
    config: TrainConfig,
    tables: list[EmbeddingBagConfig],
    *,
    num_dense: int,
    plan: HashPlan | None,
    dense_device: torch.device,
    world_size: int | None = None,
) -> DLRMTrain:
    """The unsharded DLRM (tables on the meta device), converted by ``plan`` if given.

    Args:
        config: architecture flags (``mlet_fraction``: the tables train as MLET).
        tables: the logical tables (see :func:`table_configs`); with ``mlet_fraction`` they
            are narrowed to the model's dim ``d``.
        num_dense: dense input features.
        plan: a hash plan; its tables become learned-hash tables (``apply_hash_plan``), the
            inner tables of MLET with ``mlet_fraction``.
        dense_device: where the MLPs are built.
        world_size: ranks the model will be sharded over (default: the default process
            group's, else 1); ``--compression mch`` sizes its row-wise tables by it.
    """
    if config.model_dim != tables[0].embedding_dim:  # MLET: the model's tables are narrower
        tables = [dataclasses.replace(t, embedding_dim=config.model_dim) for t in tables]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    common = dict(
        embedding_bag_collection=ebc,
        dense_in_features=num_dense,
        dense_arch_layer_sizes=list(config.dense_arch_layer_sizes),
        over_arch_layer_sizes=list(config.over_arch_layer_sizes),
        dense_device=dense_device,
    )
    if config.interaction_type == "dcn":
        dlrm: DLRM = DLRM_DCN(
            dcn_num_layers=config.dcn_num_layers, dcn_low_rank_dim=config.dcn_low_rank_dim, **common
        )
    else:
        dlrm = DLRM(**common)
    if config.mlet_fraction is not None:
        mlet = apply_mlet(
            ebc, config.sharded_dim / config.model_dim, plan=plan, out_of_range=config.out_of_range
        )
        dlrm.sparse_arch.embedding_bag_collection = PipelinedMLET(mlet)
    elif plan is not None:
        apply_hash_plan(dlrm, plan, out_of_range=config.out_of_range)
    elif config.compression == "mch":
        dlrm.sparse_arch.embedding_bag_collection = _mch_collection(config, tables, world_size)
    return DLRMTrain(dlrm)


def _mch_collection(
    config: TrainConfig, tables: list[EmbeddingBagConfig], world_size: int | None
) -> MCHEmbeddingBagCollection:
    """``--compression mch``: TorchRec's managed collisions, rows from ``--fraction`` and
    ``--budget`` (:func:`~torchrec_lhf.modules.mch.mch_rows`)."""
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_initialized() else 1
    assert config.fraction is not None  # TrainConfig checks it
    sizes = {t.name: t.num_embeddings for t in tables}
    if config.budget == "bytes":
        zch_sizes = mch_rows_for_bytes(
            sizes,
            config.fraction,
            embedding_dim=config.embedding_dim,
            min_table_rows=config.min_table_rows,
            world_size=world_size,
        )
    else:
        zch_sizes = mch_rows(
            sizes,
            fraction=config.fraction,
            min_table_rows=config.min_table_rows,
            world_size=world_size,
            budget=config.budget,
        )
    return MCHEmbeddingBagCollection(
        tables, zch_sizes=zch_sizes, world_size=world_size, device=torch.device("meta")
    )


MCH_INDEX_BYTES_PER_ROW = 8 * len(SERVING_BUFFERS)
"""``mch``'s stored index: an int64 per row in each serving buffer (sorted raw ids, rows),
as :func:`~torchrec_lhf.modules.mch.mch_state_bytes` counts them."""


def mch_rows_for_bytes(
    sizes: dict[str, int],
    fraction: float,
    *,
    embedding_dim: int,
    min_table_rows: int,
    world_size: int,
) -> dict[str, int]:
    """``mch``'s managed rows at ``fraction`` of the full fp32 table bytes: the largest
    per-table row fraction whose rows (``4 D`` bytes each, plus
    :data:`MCH_INDEX_BYTES_PER_ROW`) and full tables fit (``budget="bytes"``).

    Raises:
        ValueError: the budget is below the bytes at one row per table (naming the table).
    """

    def bytes_at(f: float) -> ModelBytes:
        rows = mch_rows(sizes, fraction=f, min_table_rows=min_table_rows, world_size=world_size)
        tables = {t: 4 * embedding_dim * rows.get(t, n) for t, n in sizes.items()}
        return ModelBytes(tables, {t: MCH_INDEX_BYTES_PER_ROW * r for t, r in rows.items()}, {})

    f, _ = fit_to_bytes(
        bytes_at,
        byte_budget(sizes, fraction, embedding_dim),
        lowest=lowest_fraction(sizes),
        what=f"--compression mch at {fraction} of the full table bytes",
        full_bytes=full_table_bytes(sizes, embedding_dim),
    )
    return mch_rows(sizes, fraction=f, min_table_rows=min_table_rows, world_size=world_size)


def embedding_collection(model: nn.Module) -> EmbeddingBagCollection:
    """The (unsharded) embedding collection of a :func:`build_model` model: the sharded
    one (MLET's inner collection)."""
    ebc = model.get_submodule(EBC_FQN)
    return ebc.inner if isinstance(ebc, PipelinedMLET) else ebc


def table_stats(
    model: nn.Module, *, full_dim: int | None = None, plan: HashPlan | None = None
) -> dict[str, int]:
    """Rows and fp32 bytes of the saved, trained and logical tables of an unsharded model.

    Args:
        model: from :func:`build_model`.
        full_dim: the uncompressed dim ``D`` of ``full_embedding_bytes`` (default: the
            logical tables' own dim).
        plan: the model's hash plan (decides whether MLET can collapse).

    Returns:
        ``rows`` (internal rows), ``embedding_bytes`` (the tables as saved: MLET collapsed
        to ``(rows, d)``, or inner tables plus projections where a ``mult``/``scaled_sum``
        plan cannot collapse), ``train_embedding_bytes`` (what trains: MLET's inner tables
        and projections), ``full_rows``, ``full_embedding_bytes`` (``sum N * D * 4``),
        ``remap_bytes`` (learned-hash remap buffers, or the ``mch`` modules' serving lookup:
        sorted raw ids and their rows); and what a deployment stores, as a byte budget
        counts it (:mod:`torchrec_lhf.compression.budget`): ``table_bytes`` (the tables as
        saved, projections apart), ``index_bytes`` (the stored index: a plan's
        :func:`~torchrec_lhf.compression.registry.index_bytes`, nothing for a hash computed
        from the id; ``mch``'s serving lookup), ``extra_bytes`` (MLET projections that
        cannot collapse) and ``total_bytes``.
    """
    top = model.get_submodule(EBC_FQN)
    ebc = embedding_collection(model)
    internal = internal_table_configs(ebc)
    logical = (
        ebc.logical_configs()
        if isinstance(ebc, (LearnedHashEmbeddingBagCollection, MCHEmbeddingBagCollection))
        else internal
    )
    train_bytes = sum(4 * c.num_embeddings * c.embedding_dim for c in internal)
    saved_bytes = train_bytes
    if isinstance(top, PipelinedMLET):
        proj_bytes = sum(4 * p.numel() for p in top.mlet.parameters())
        train_bytes += proj_bytes
        dims = {c.name: c.embedding_dim for c in top.embedding_bag_configs()}
        collapsible = plan is None or all(
            t.num_hashes == 1 or t.combine in ("sum", "concat") for t in plan if t.name in dims
        )
        if collapsible:  # collapse: every internal table becomes (M_h, d)
            saved_bytes = sum(
                4 * c.num_embeddings * dims[_logical_name(c.name, dims)] for c in internal
            )
        else:
            saved_bytes = train_bytes
    table_bytes = sum(4 * c.num_embeddings * c.embedding_dim for c in internal)
    if isinstance(top, PipelinedMLET) and collapsible:
        table_bytes = saved_bytes
    index = sum(index_bytes(plan).values()) if plan is not None else mch_state_bytes(model)
    return {
        "rows": sum(c.num_embeddings for c in internal),
        "embedding_bytes": saved_bytes,
        "train_embedding_bytes": train_bytes,
        "full_rows": sum(c.num_embeddings for c in logical),
        "full_embedding_bytes": sum(
            4 * c.num_embeddings * (full_dim or c.embedding_dim) for c in logical
        ),
        "remap_bytes": remap_bytes(model) + mch_state_bytes(model),
        "table_bytes": table_bytes,
        "index_bytes": index,
        "extra_bytes": saved_bytes - table_bytes,
        "total_bytes": saved_bytes + index,
    }


def _logical_name(internal: str, logical: dict[str, int]) -> str:
    """The logical table of an internal table (``t`` or ``t__h<i>``, see ``hashed_name``)."""
    return internal if internal in logical else internal.rpartition("__h")[0]


def make_sharders(config: TrainConfig) -> list:
    """Learned-hash, managed-collision and plain EBC sharders with the fused row-wise Adagrad
    (the plain one TorchRec's, offering row-wise types on the CPU too)."""
    fused_params = {
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "learning_rate": config.table_learning_rate,
        "eps": 1e-8,
    }
    return [
        LearnedHashEmbeddingBagCollectionSharder(fused_params=fused_params),
        ManagedCollisionSharder(fused_params=fused_params),
        PlainEmbeddingBagCollectionSharder(fused_params=fused_params),
    ]


def shard_model(
    model: nn.Module, config: TrainConfig, *, device: torch.device, world_size: int
) -> DistributedModelParallel:
    """Plan with the planner (collectively) and wrap ``model`` in DistributedModelParallel."""
    sharders = make_sharders(config)
    table_names = [c.name for c in internal_table_configs(embedding_collection(model))]
    types = list(config.sharding_types)
    if config.compression == "cce" and config.cce_phases:  # (its phases need sharded tables)
        types = [t for t in types if t != "data_parallel"]
    constraints = {t: ParameterConstraints(sharding_types=types) for t in table_names}
    planner = make_planner(
        world_size=world_size,
        compute_device=device.type,
        batch_size=config.batch_size,
        local_world_size=_local_world_size(world_size),
        constraints=constraints,
    )
    pg = dist.GroupMember.WORLD
    sharding_plan = planner.collective_plan(model, sharders, pg)
    return DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(pg),
        device=device,
        plan=sharding_plan,
        sharders=sharders,
    )


def _local_world_size(world_size: int) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))


def make_optimizer(model: DistributedModelParallel, config: TrainConfig) -> CombinedOptimizer:
    """The fused table optimizer plus Adagrad or Adam on every non-fused parameter."""
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    lr = config.learning_rate
    if config.dense_optimizer == "adam":
        factory = lambda params: torch.optim.Adam(params, lr=lr)  # noqa: E731
    else:
        factory = lambda params: torch.optim.Adagrad(params, lr=lr, eps=1e-8)  # noqa: E731
    dense_opt: KeyedOptimizer = KeyedOptimizerWrapper(dense, factory)
    return CombinedOptimizer([model.fused_optimizer, dense_opt])
