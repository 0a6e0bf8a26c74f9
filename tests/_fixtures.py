"""Tiny fixtures shared by the module, sharding, inference and checkpoint tests, and the
entry points' command-line tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchrec import EmbeddingBagConfig, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    ParameterShardingGenerator,
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan

from torchrec_lhf import HashPlan

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root: where ``python -m apps.X`` runs."""


def run_module(
    module: str, argv: list[str], *, env: Mapping[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python -m module *argv`` from the repository's root (on ``PYTHONPATH`` too), its
    output captured as text; ``env``: the process's environment (default this one's)."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


MOVIELENS_HEIGHTS = {
    "user": 943,
    "item": 1682,
    "age": 7,
    "gender": 2,
    "occupation": 21,
    "zip": 795,
    "genres": 19,
    "year": 72,
}
"""MovieLens-100K's tables and their heights (``torchrec_lhf.data.movielens``)."""


def three_tables(
    heights: tuple[int, int, int] = (40, 30, 12), dims: tuple[int, int, int] = (8, 8, 8)
) -> list[EmbeddingBagConfig]:
    """Tables ``t0`` (features ``f0``, ``f1``), ``t1`` (``f2``) and ``t2`` (``f3``)."""
    features = [["f0", "f1"], ["f2"], ["f3"]]
    return [
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=d, num_embeddings=n, feature_names=f)
        for i, (n, d, f) in enumerate(zip(heights, dims, features))
    ]


def sequence_tables() -> list[EmbeddingConfig]:
    """:func:`three_tables` as sequence tables (``t0``: ``f0``, ``f1``; ``t1``: ``f2``;
    ``t2``: ``f3``; dim 8)."""
    return [
        EmbeddingConfig(
            name=c.name,
            embedding_dim=c.embedding_dim,
            num_embeddings=c.num_embeddings,
            feature_names=list(c.feature_names),
        )
        for c in three_tables()
    ]


SEQUENCE_KEYS = ["f3", "f0", "f2", "f1"]  # not the tables' order
SEQUENCE_HEIGHTS = {"f0": 40, "f1": 40, "f2": 30, "f3": 12}
"""The features of :func:`sequence_tables` and their tables' heights."""


def sequence_batch(seed: int = 0) -> KeyedJaggedTensor:
    """Ids of the four features of :func:`sequence_tables` for 3 samples, 0 to 3 a sample."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(SEQUENCE_KEYS), 3), generator=g)
    values = torch.cat(
        [
            torch.randint(0, SEQUENCE_HEIGHTS[k], (int(lengths[i].sum()),), generator=g)
            for i, k in enumerate(SEQUENCE_KEYS)
        ]
    )
    return KeyedJaggedTensor(keys=SEQUENCE_KEYS, values=values, lengths=lengths.flatten())


def two_hash_plan(combine: str) -> HashPlan:
    """A random plan for :func:`three_tables` (default heights): ``t0`` to 10 rows, ``t1``
    by two hash functions to 8 and 6 rows (combined by ``combine``), ``t2`` uncompressed."""
    g = torch.Generator().manual_seed(0)
    return HashPlan.from_multi_mappings(
        {
            "t0": [torch.randint(0, 10, (40,), generator=g)],
            "t1": [
                torch.randint(0, 8, (30,), generator=g),
                torch.randint(0, 6, (30,), generator=g),
            ],
        },
        combine=combine,
        heights={"t0": [10], "t1": [8, 6]},
    )


def placement(sharding_type: str, index: int, world_size: int) -> ParameterShardingGenerator:
    """The test placement of the ``index``-th table sharded by ``sharding_type`` (fused
    kernels; table-wise tables alternate over the ranks, column-wise ones span two)."""
    fused = EmbeddingComputeKernel.FUSED.value
    if sharding_type == "table_wise":
        return table_wise(rank=index % world_size, compute_kernel=fused)
    if sharding_type == "row_wise":
        return row_wise(compute_kernel=fused)
    if sharding_type == "column_wise":
        return column_wise(ranks=[0, 1], compute_kernel=fused)
    if sharding_type == "table_row_wise":
        return table_row_wise(host_index=0)
    if sharding_type == "data_parallel":
        return data_parallel()
    raise ValueError(f"no test placement for sharding type {sharding_type!r}")


def shard_on_cpu(
    module: torch.nn.Module,
    sharder: ModuleSharder,
    per_param_sharding: dict[str, ParameterShardingGenerator],
    world_size: int,
) -> DistributedModelParallel:
    """``module`` wrapped by DMP on CPU over the default process group, its tables placed
    as ``per_param_sharding`` says (table name, internal for learned-hash tables ->
    placement such as ``table_wise(rank=0)``)."""
    module_plan = construct_module_sharding_plan(
        module,
        per_param_sharding=per_param_sharding,
        sharder=sharder,
        local_size=world_size,
        world_size=world_size,
        device_type="cpu",
    )
    return DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        plan=ShardingPlan({"": module_plan}),
        sharders=[sharder],
        device=torch.device("cpu"),
    )


def pipeline_losses(pipeline: Any, batches: list) -> list[float]:
    """Each step's loss of a TorchRec train ``pipeline`` (``progress``) run over ``batches``."""
    it, losses = iter(batches), []
    while True:
        try:
            loss, _, _ = pipeline.progress(it)
        except StopIteration:
            return losses
        losses.append(float(loss))


def count_learned_trainings(monkeypatch, train_module) -> list[str | None]:
    """Record the plan of every ``train_module.run`` call (the DLRM app's entry point as a
    job module imported it) in the returned list, the runs themselves unchanged."""
    trained: list[str | None] = []
    run = train_module.run

    def counting(config):
        trained.append(config.learned_hash)
        return run(config)

    monkeypatch.setattr(train_module, "run", counting)
    return trained
