"""Train the teacher: the app's DLRM with a tiny embedding dim, counting id accesses.

Shape legend: ``N`` logical table height, ``D`` teacher embedding dim (``--embedding_dim``,
default 4), ``V`` ids of a batch, ``T`` ids of all tables together (``sum N``).

The teacher is the DLRM app's architecture at full logical table height (no compression), trained
through the same loop on any number of ranks. While it trains its first epoch, every rank
counts how often each id of each table is accessed in the training batches it sees (exact
int64, summed over ranks with ``all_reduce``): the counts are those of one pass over the
training split whatever ``--epochs`` is, so a threshold such as ``--head_min_count 10``
means seen 10 times in the data, not 10 times over the teacher's epochs. At the end the
tables are streamed to rank 0 one at a time whatever the sharding (none is copied where
rank 0 holds all of it) and written with the counts as a
:class:`~torchrec_lhf.hash_build.artifact.TeacherArtifact` (safetensors + JSON manifest,
atomically, one table in memory: :func:`~torchrec_lhf.hash_build.artifact.write_teacher`)
to ``--out``; at the MLPerf heights (204M ids) the fused tables, their
optimizer state and the counts are all the teacher holds::

    python -m apps.teacher --dataset movielens-100k --epochs 2 --out runs/teacher
    torchrun --nproc_per_node 2 -m apps.teacher --dataset synthetic --out runs/teacher
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec.datasets.utils import Batch

from apps.dlrm.config import (
    COMPRESSION_FIELDS,
    TrainConfig,
    add_train_flags,
    train_config_from_args,
)
from apps.dlrm.loop import BatchHook, Session, build_session, check_trains, fit, load_data
from apps.dlrm.model import EBC_FQN
from apps.dlrm.runtime import DistEnv, distributed, setup_logging
from apps.dlrm.train import check_train_outputs
from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.cli import (
    add_config_flags,
    check_output_path,
    checked_fields,
    config_from_args,
    run_command,
)
from torchrec_lhf.data import RecDataset, check_dataset_files
from torchrec_lhf.distributed.gather import gather_to_rank0
from torchrec_lhf.distributed.sharding_types import FUSED_DIM_MULTIPLE
from torchrec_lhf.hash_build.artifact import stream_order, write_teacher

logger = logging.getLogger(__name__)

TableItem = tuple[str, torch.Tensor, torch.Tensor]

TEACHER_DEFAULTS: dict[str, Any] = {"embedding_dim": 4}
"""Where the teacher's flags default otherwise than :class:`TrainConfig`'s (the one source of
the teacher's dim, also for ``apps.pipeline``)."""


def teacher_sharding_types(embedding_dim: int) -> list[str] | None:
    """``["data_parallel"]`` for a dim FBGEMM's fused tables reject (narrower teachers, the
    paper's dim 2, train with the dense kernel and the dense optimizer), else ``None`` (the
    :class:`TrainConfig` default, which checks the dim against the sharding types)."""
    return ["data_parallel"] if embedding_dim % FUSED_DIM_MULTIPLE else None


@dataclass(kw_only=True)
class TeacherConfig:
    """The teacher's run: a DLRM training config (no compression) and where to write."""

    train: TrainConfig
    """Model, data and optimization (``--embedding_dim`` defaults to 4 here)."""
    out: str
    """Directory of the teacher artifact."""
    train_window: float = 1.0
    """A held-out teacher: it trains on the first ``train_window`` of the training split in
    the split's row order (file order, i.e. an earlier time window, where the data has time;
    the loader's seeded permutation otherwise), the same rows every epoch, while the access
    counts stay those of the whole training split, exactly as a full teacher counts them.
    Its values then carry no memory of the other rows' labels (1: every row, the paper's)."""

    @checked_fields
    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError(f"out must name a directory, got {self.out!r}")
        check_train_window(self.train_window)
        if self.train.learned_hash is not None or self.train.compression != "none":
            raise ValueError(
                f"the teacher trains full tables; got learned_hash={self.train.learned_hash!r}, "
                f"compression={self.train.compression!r}"
            )


def check_train_window(w: object) -> None:
    """Raises ValueError unless ``w`` is a number in ``(0, 1]`` (``train_window``)."""
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w <= 1:
        raise ValueError(f"train_window must be a number in (0, 1], got {w!r}")


TEACHER_OWN_FIELDS = tuple(
    f.name for f in dataclasses.fields(TeacherConfig) if f.name not in ("train", "out")
)
"""The teacher's flags that are not :class:`TrainConfig`'s (``--train_window``)."""


class IdCounter:
    """Counts accesses per id per table of the batches passing through it (this rank's).

    Each batch costs ``O(V)`` (an ``index_add_`` of its ids), not ``O(T)``.

    Args:
        num_embeddings: the table heights, in the batches' feature order.
        device: where the counts live.

    Attributes:
        counts_T: int64 ``(T,)``, the tables' counts one after another.
        samples: int64 ``(1,)``, samples counted.
    """

    def __init__(self, num_embeddings: list[int], device: torch.device) -> None:
        self.num_embeddings = list(num_embeddings)
        self.offsets_F = torch.tensor([0, *num_embeddings[:-1]], device=device).cumsum(0)
        self.counts_T = torch.zeros(sum(num_embeddings), dtype=torch.int64, device=device)
        self.samples = torch.zeros(1, dtype=torch.int64, device=device)

    def first_epoch(self, session: Session) -> BatchHook:
        """A hook for :func:`fit` that counts ``session``'s first epoch only (resumed
        mid-epoch too: the checkpoint holds the counts so far), so the counts are one pass
        over the training split however many epochs the teacher trains."""
        return lambda batches: self(batches) if session.epoch == 0 else batches

    def __call__(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for batch in batches:
            kjt = batch.sparse_features
            values_V = kjt.values().to(self.counts_T.device)
            per_key_F = torch.tensor(kjt.length_per_key(), device=values_V.device)
            feature_V = torch.repeat_interleave(
                torch.arange(len(per_key_F), device=values_V.device),
                per_key_F,
                output_size=values_V.numel(),
            )
            index_V = self.offsets_F[feature_V] + values_V
            self.counts_T.index_add_(0, index_V, torch.ones_like(index_V))
            self.samples += batch.labels.numel()
            yield batch

    def state(self) -> dict[str, torch.Tensor]:
        """The counts summed over ranks (collective; this rank's counts are unchanged)."""
        counts_T, samples = self.counts_T.clone(), self.samples.clone()
        dist.all_reduce(counts_T)
        dist.all_reduce(samples)
        return {"counts": counts_T.cpu(), "samples": samples.cpu()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (rank 0 holds the sums, the other ranks restart at 0)."""
        if tuple(state["counts"].shape) != tuple(self.counts_T.shape):
            raise ValueError(
                f"checkpointed counts have shape {tuple(state['counts'].shape)}, expected {tuple(self.counts_T.shape)}"
            )
        keep = dist.get_rank() == 0
        self.counts_T.copy_(state["counts"] if keep else torch.zeros_like(state["counts"]))
        self.samples.copy_(state["samples"] if keep else torch.zeros_like(state["samples"]))


def _table_on_rank0(t: torch.Tensor, key: str, env: DistEnv) -> torch.Tensor | None:
    """The full table ``t`` (a state-dict leaf) on rank 0, ``None`` elsewhere; collective
    unless rank 0 already holds all of it, which it then returns without a copy."""
    if isinstance(t, ShardedTensor):
        shards = t.metadata().shards_metadata
        if len(shards) == 1 and shards[0].placement.rank() == 0:
            return t.local_shards()[0].tensor if env.is_main else None
    elif not isinstance(t, DTensor):  # replicated (data_parallel): every rank has it
        return t if env.is_main else None
    full = gather_to_rank0({key: t}, device=env.device)
    return None if full is None else full[key]


def stream_tables(session: Session, counter: IdCounter) -> Iterator[TableItem | None]:
    """Per table in :func:`stream_order`: ``(name, embeddings_ND, counts_N)`` on rank 0 (the
    counts summed over ranks), ``None`` elsewhere. Collective: every rank iterates it all.

    One table is gathered at a time (at ``world_size`` 1 none: the fused table is handed
    out as it is), and ``counter``'s counts are summed over ranks in place, table by table.
    """
    state = session.model.state_dict()
    keys = {cfg.name: f"{EBC_FQN}.embedding_bags.{cfg.name}.weight" for cfg in session.tables}
    missing = sorted(k for k in keys.values() if k not in state)
    if missing:
        raise ValueError(
            f"the model has no tables {missing}; it has {[k for k in state if 'embedding_bags' in k]}"
        )
    counts = dict(zip(keys, torch.split(counter.counts_T, counter.num_embeddings)))
    for name in stream_order(list(keys)):
        dist.all_reduce(counts[name])  # NOTE: in place: the counter is done
        table_ND = _table_on_rank0(state[keys[name]], keys[name], session.env)
        yield None if table_ND is None else (name, table_ND, counts[name].cpu())
        del table_ND


def window_dataset(dataset: RecDataset, train_window: float) -> RecDataset:
    """``dataset`` with its training split cut to its first ``round(train_window * R)``
    rows (at least one), in the split's order; validation and test unchanged.

    Raises:
        ValueError: ``dataset`` is not an in-memory :class:`RecDataset` (a streamed one has
            no row list to cut).
    """
    if train_window == 1:
        return dataset
    if not isinstance(dataset, RecDataset):
        raise ValueError(
            f"train_window={train_window} needs an in-memory dataset, got {type(dataset).__name__}"
        )
    rows_R = dataset.splits["train"]
    keep = max(1, round(train_window * rows_R.numel()))
    return dataclasses.replace(dataset, splits={**dataset.splits, "train": rows_R[:keep]})


def count_training_rows(session: Session, dataset: RecDataset, counter: IdCounter) -> None:
    """Count the accesses of the first epoch's training batches of ``dataset``, exactly those
    a teacher trained on all of it counts (same shuffle, limit and id folding), without
    training (a held-out teacher's counts)."""
    cfg, env = session.config, session.env
    batches = dataset.batches(
        "train", cfg.batch_size, rank=env.rank, world_size=env.world_size, shuffle=True,
        seed=cfg.seed, epoch=0, limit=cfg.limit_train_batches,
    )  # fmt: skip
    for _ in counter(map(session.prepare, batches)):
        pass


def train_teacher(config: TeacherConfig, env: DistEnv) -> tuple[Session, dict[str, Any]]:
    """Train the teacher and write its artifact (rank 0) to ``config.out``.

    Returns:
        The session (its sharded model, for inspection) and the metrics: the DLRM app's
        keys plus ``out``, ``samples_seen`` and ``tables``.
    """
    cfg = config.train
    dataset = load_data(cfg)
    logger.info("teacher dataset: %s", dataset)
    held_out = config.train_window < 1
    seen = window_dataset(dataset, config.train_window)
    if held_out:
        logger.info(
            "held-out teacher: trains on %d of the %d training rows; counts over all of them",
            seen.splits["train"].numel(),
            dataset.splits["train"].numel(),
        )
    window = f"the first {config.train_window:g} of the training split (--train_window)"
    check_trains(cfg, env, seen, split=window if held_out else "the training split")
    session = build_session(cfg, env, seen, plan=None)
    counter = IdCounter([c.num_embeddings for c in session.tables], env.device)
    hook = None if held_out else counter.first_epoch(session)
    metrics = fit(session, hook=hook, extra_state=counter)
    if held_out:  # NOTE: after a resume too: the checkpointed counts are then zeros
        count_training_rows(session, dataset, counter)
    dist.all_reduce(counter.samples)
    samples_seen = int(counter.samples)
    shapes = {c.name: (c.num_embeddings, c.embedding_dim) for c in session.tables}
    tables = stream_tables(session, counter)
    if env.is_main:
        manifest = {
            "dataset": cfg.dataset,
            "dataset_name": dataset.name,
            "feature_names": list(dataset.feature_names),
            "samples_seen": samples_seen,
            "train_window": config.train_window,
            "epochs": metrics["epochs"],
            "count_epochs": 1,
            "world_size": env.world_size,
            "config": cfg.to_dict(),
            "metrics": {k: metrics[k] for k in ("auc", "logloss", "val_auc", "val_logloss")},
        }
        write_teacher(config.out, shapes, tables, manifest)
        logger.info(
            "teacher artifact -> %s: %d tables, %d samples seen, test auc %.5f",
            config.out,
            len(shapes),
            samples_seen,
            metrics["auc"],
        )
    else:
        for _ in tables:  # NOTE: the other ranks' part of the per-table collectives
            pass
    dist.barrier()
    metrics.update(
        out=config.out,
        samples_seen=samples_seen,
        tables=[c.name for c in session.tables],
        config=cfg.to_dict(),
    )
    return session, metrics


def parse_args(argv: list[str] | None = None) -> TeacherConfig:
    """Parse the teacher's flags.

    Raises:
        ValueError: a flag value is invalid (the message names it).
    """
    parser = argparse.ArgumentParser(
        prog="python -m apps.teacher",
        description="Train the teacher DLRM (tiny embedding dim, full tables) and write its "
        "embeddings and id access counts for the hash build.",
    )
    add_train_flags(parser, exclude=COMPRESSION_FIELDS, defaults=TEACHER_DEFAULTS)
    parser.add_argument("--out", required=True, help="directory of the teacher artifact")
    add_config_flags(parser, TeacherConfig, exclude=("train", "out"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out
    del args.out
    own = {k: getattr(args, k) for k in TEACHER_OWN_FIELDS if hasattr(args, k)}
    for k in own:
        delattr(args, k)
    dim = getattr(args, "embedding_dim", TEACHER_DEFAULTS["embedding_dim"])
    fixed: dict[str, Any] = {}
    if not hasattr(args, "sharding_types") and teacher_sharding_types(dim):
        logger.info(
            "teacher dim %d is not a multiple of %d: training the tables data_parallel "
            "(dense kernel, --dense_optimizer)",
            dim,
            FUSED_DIM_MULTIPLE,
        )
        fixed["sharding_types"] = teacher_sharding_types(dim)
    train = train_config_from_args(args, defaults=TEACHER_DEFAULTS, **fixed)
    return config_from_args(TeacherConfig, own, train=train, out=out)


def run(config: TeacherConfig) -> dict[str, Any]:
    """Train the teacher on this process's rank (any world size) and write its artifact.

    Returns:
        The metrics of :func:`train_teacher` (the same on every rank).
    """
    with distributed(config.train.backend) as env:
        setup_logging(env.rank)
        _, metrics = train_teacher(config, env)
        if env.is_main and config.train.metrics_json:
            atomic_write_json(config.train.metrics_json, metrics)
        return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``python -m apps.teacher --help``."""
    config = parse_args(argv)
    check_dataset_files(config.train.dataset)
    check_output_path("--out", config.out, directory=True)
    check_train_outputs(config.train)
    return run(config)


if __name__ == "__main__":
    run_command(main)  # a bad flag value: a usage error, no traceback
