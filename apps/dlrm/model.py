"""Build the DLRM on the meta device, convert it with a hash plan, shard it, optimize it.

Shape legend: ``N`` logical table height, ``D`` embedding dim.

One embedding table per sparse feature, named after the feature (``.`` -> ``_``, since
table names are module names), so a hash plan or teacher artifact names tables by feature.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from apps.dlrm.config import TrainConfig
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.planner import make_planner
from torchrec_lhf.modules.embedding_bag import LearnedHashEmbeddingBagCollection, apply_hash_plan
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


def build_model(
    config: TrainConfig,
    tables: list[EmbeddingBagConfig],
    *,
    num_dense: int,
    plan: HashPlan | None,
    dense_device: torch.device,
) -> DLRMTrain:
    """The unsharded DLRM (tables on the meta device), converted by ``plan`` if given.

    Args:
        config: architecture flags.
        tables: the logical tables (see :func:`table_configs`).
        num_dense: dense input features.
        plan: a hash plan; its tables become learned-hash tables (``apply_hash_plan``).
        dense_device: where the MLPs are built.
    """
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
    if plan is not None:
        apply_hash_plan(dlrm, plan, out_of_range=config.out_of_range)
    return DLRMTrain(dlrm)


def embedding_collection(model: nn.Module) -> EmbeddingBagCollection:
    """The (unsharded) embedding collection of a :func:`build_model` model."""
    return model.get_submodule(EBC_FQN)


def table_stats(model: nn.Module) -> dict[str, int]:
    """Rows and fp32 bytes of the trained and of the logical tables of an unsharded model.

    Returns:
        ``rows``, ``embedding_bytes`` (the internal tables actually trained),
        ``full_rows``, ``full_embedding_bytes`` (``sum N * D * 4`` of the logical tables).
    """
    ebc = embedding_collection(model)
    internal = ebc.embedding_bag_configs()
    logical = (
        ebc.logical_configs() if isinstance(ebc, LearnedHashEmbeddingBagCollection) else internal
    )
    return {
        "rows": sum(c.num_embeddings for c in internal),
        "embedding_bytes": sum(4 * c.num_embeddings * c.embedding_dim for c in internal),
        "full_rows": sum(c.num_embeddings for c in logical),
        "full_embedding_bytes": sum(4 * c.num_embeddings * c.embedding_dim for c in logical),
    }


def make_sharders(config: TrainConfig) -> list:
    """Learned-hash and stock EBC sharders with the fused row-wise Adagrad."""
    fused_params = {
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "learning_rate": config.table_learning_rate,
        "eps": 1e-8,
    }
    return [
        LearnedHashEmbeddingBagCollectionSharder(fused_params=fused_params),
        EmbeddingBagCollectionSharder(fused_params=fused_params),
    ]


def shard_model(
    model: nn.Module, config: TrainConfig, *, device: torch.device, world_size: int
) -> DistributedModelParallel:
    """Plan with the planner (collectively) and wrap ``model`` in DistributedModelParallel."""
    sharders = make_sharders(config)
    table_names = [c.name for c in embedding_collection(model).embedding_bag_configs()]
    constraints = {
        t: ParameterConstraints(sharding_types=list(config.sharding_types)) for t in table_names
    }
    planner = make_planner(
        world_size=world_size,
        compute_device=device.type,
        batch_size=config.batch_size,
        local_world_size=_local_world_size(world_size),
        constraints=constraints,
    )
    pg = dist.GroupMember.WORLD
    plan = planner.collective_plan(model, sharders, pg)
    return DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(pg),
        device=device,
        plan=plan,
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
