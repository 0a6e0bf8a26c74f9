"""Train a DLRM with TorchRec, optionally with learned hashing (``--learned_hash PLAN``).

Run it as one process, with torchrun, or with torchx::

    python -m apps.dlrm.train --dataset movielens-100k --epochs 2 --metrics_json m.json
    python -m apps.dlrm.train --learned_hash plan.safetensors ...      # learned hashing
    python -m apps.dlrm.train --compression modulo --fraction 0.1 ...  # the hashing trick
    python -m apps.dlrm.train --compression qr --fraction 0.1 --compression_options '{"combine": "sum"}'
    python -m apps.dlrm.train --compression mlet --fraction 0.5 ...    # MLET: half the width
    python -m apps.dlrm.train --compression fbdh --fraction 0.1 --mlet_fraction 0.5 ...  # both
    python -m apps.dlrm.train --compression mch --fraction 0.1 ...     # TorchRec's managed collisions
    torchrun --nproc_per_node 2 -m apps.dlrm.train --dataset synthetic ...

The model is TorchRec's DLRM (``--interaction_type original|dcn``), its embedding
collection built on the meta device, converted by the hash plan (``apply_hash_plan``),
planned by TorchRec's planner and sharded by DistributedModelParallel; the tables train
with FBGEMM's fused row-wise Adagrad, the MLPs with Adagrad or Adam, through
TrainPipelineSparseDist.

Splits (deterministic, from ``torchrec_lhf.data``): 80 / 10 / 10 train / val / test, in
time order where the data has time (Criteo by file order, a CSV by its ``time`` column,
MovieLens with ``--dataset_options '{"split": "time"}'``), along a seeded permutation
otherwise (MovieLens by default, synthetic, a CSV without time). Validation after each
epoch and the test at the end cover the whole split.

After training, ``--export_model PATH`` writes the serving model (``apps/dlrm/export.py``);
``--init_from TEACHER`` starts the tables at a teacher's cluster centroids
(``torchrec_lhf/warm_start.py``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from apps.dlrm.config import PLAN_METHODS, TrainConfig, add_train_flags, train_config_from_args
from apps.dlrm.export import check_replaceable, export_model
from apps.dlrm.loop import build_session, check_trains, fit, load_data
from apps.dlrm.model import EBC_FQN, build_model, table_name, table_stats
from apps.dlrm.runtime import distributed, setup_logging
from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.cli import FlagError, check_input_path, check_output_path, run_command
from torchrec_lhf.compression.cce import fit_columns
from torchrec_lhf.compression.methods import make_plan
from torchrec_lhf.data import RecDataset, check_dataset_files
from torchrec_lhf.hash_build.artifact import TENSORS_FILE as TEACHER_TENSORS_FILE
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.plan import HashPlan
from torchrec_lhf.warm_start import check_teacher, warm_start

logger = logging.getLogger(__name__)

METRIC_KEYS = (
    "auc",
    "logloss",
    "val_auc",
    "val_logloss",
    "ne",
    "calibration",
    "rec_auc",
    "val_ne",
    "val_calibration",
    "val_rec_auc",
    "embedding_bytes",
    "remap_bytes",
    "full_embedding_bytes",
    "remap_computable",
    "qps",
    "samples_per_s",
    "config",
    "plan_fingerprint",
    "start_plan_fingerprint",
)
"""Keys ``--metrics_json`` always has (more: rows, full_rows, epochs, steps, history, ...).

``auc`` / ``logloss`` are the test split's (torchmetrics, natural log), ``ne`` (normalized
entropy), ``calibration`` and ``rec_auc`` its ``torchrec.metrics`` (see
``torchrec_lhf/metrics.py``); ``val_*`` the same for the last validation. ``qps`` (also
``samples_per_s``) is the training throughput of all ranks, timed by the slowest.

``embedding_bytes`` are the fp32 tables as saved (MLET: collapsed to the narrow dim;
``train_embedding_bytes`` has what trains), ``remap_bytes`` the materialized id -> row
lookup tables (``mch``: its modules' persistent buffers, see ``torchrec_lhf.modules.mch``).
``remap_computable`` is True when those can be computed from the id at serving time
instead (modulo, qr, fbdh, memrec: seeded hashes; for fbdh the frequent ids' rows still
need a small id -> row map), False for a learned plan, ``cce`` and ``mch``, None without
either. ``plan_fingerprint`` is the fingerprint of the plan the model holds at the end
(``cce``: after its last phase; ``start_plan_fingerprint`` the starting plan's, and
``cce_phases`` the phases done)."""


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the app's flags into a validated :class:`TrainConfig`.

    Raises:
        ValueError: a flag value is invalid (the message names it).
    """
    parser = argparse.ArgumentParser(
        prog="python -m apps.dlrm.train",
        description="Train a DLRM with TorchRec, optionally with learned hashing.",
    )
    add_train_flags(parser)
    return train_config_from_args(parser.parse_args(argv))


def resolve_plan(
    config: TrainConfig, dataset: RecDataset, tables_heights: list[int]
) -> HashPlan | None:
    """The hash plan of ``--learned_hash`` or ``--compression``, or None.

    ``fbdh`` gets the access counts of the training split (ids folded to ``tables_heights``).
    """
    if config.learned_hash is not None:
        return HashPlan.load(config.learned_hash)
    if config.compression not in PLAN_METHODS:
        return None
    names = [table_name(f) for f in dataset.feature_names]
    heights = dict(zip(names, tables_heights))
    options: dict[str, Any] = dict(config.compression_options)
    if config.compression == "fbdh":
        options["counts"] = {
            name: _fold_counts(c_N, n)
            for name, c_N, n in zip(names, dataset.id_counts("train"), tables_heights)
        }
    if config.compression == "cce":
        options["columns"] = fit_columns(config.embedding_dim, config.cce_columns)
    return make_plan(
        config.compression,
        heights,
        fraction=config.fraction,
        min_table_rows=config.min_table_rows,
        budget=config.budget,
        embedding_dim=config.embedding_dim,
        seed=config.seed,
        **options,
    )


def _remap_computable(config: TrainConfig, plan: HashPlan | None) -> bool | None:
    """True for hashes computable from the id, False for learned plans, ``cce`` (its
    clustered index is stored) and ``mch``."""
    if config.compression in ("mch", "cce"):
        return False
    return None if plan is None else config.learned_hash is None


def _fold_counts(counts_N: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """Counts of a table of logical height ``num_embeddings``: ids beyond it fold modulo
    it, as in training."""
    if counts_N.numel() <= num_embeddings:
        return torch.nn.functional.pad(counts_N, (0, num_embeddings - counts_N.numel()))
    ids_N = torch.arange(counts_N.numel()) % num_embeddings
    return torch.zeros(num_embeddings, dtype=counts_N.dtype).index_add_(0, ids_N, counts_N)


def run(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate as configured; returns the metrics (the same on every rank)."""
    with distributed(config.backend) as env:
        setup_logging(env.rank)
        dataset = load_data(config)
        logger.info("dataset: %s", dataset)
        check_trains(config, env, dataset)
        heights = config.num_embeddings_per_feature or list(dataset.num_embeddings)
        plan = resolve_plan(config, dataset, heights)
        if plan is not None:
            logger.info(
                "hash plan %s:\n%s",
                plan.fingerprint()[:12],
                plan.format_summary(config.embedding_dim),
            )
        teacher = None
        if config.init_from:
            if config.mlet_fraction is not None:  # also refused by TrainConfig
                raise ValueError("--init_from does not combine with MLET (its tables are wider)")
            teacher = TeacherArtifact.load(config.init_from)
            # (before the model is built and sharded: at scale that takes minutes)
            names = [table_name(f) for f in dataset.feature_names]
            check_teacher(teacher, plan, config.embedding_dim, dict(zip(names, heights)))
        session = build_session(config, env, dataset, plan)
        if teacher is not None:
            warm_start(
                session.model,
                teacher,
                plan=session.plan,
                dim=config.embedding_dim,
                collection_fqn=EBC_FQN,
            )
        metrics = fit(session)
        if config.export_model:
            export_model(session, config.export_model, num_dense=len(dataset.dense_names))
        # NOTE: the loop's statistics know neither D nor the plan; recount on a meta copy
        # (cheap) so MLET reports its collapsed bytes against the full-width model.
        metrics.update(
            table_stats(
                build_model(
                    config,
                    session.tables,
                    num_dense=len(dataset.dense_names),
                    plan=plan,
                    dense_device=torch.device("meta"),
                ),
                full_dim=config.embedding_dim,
                plan=plan,
            )
        )
        metrics.update(
            config=config.to_dict(),
            plan_fingerprint=session.plan_fingerprint,
            start_plan_fingerprint=None if plan is None else plan.fingerprint(),
            **({"cce_phases": session.cce_phase} if config.compression == "cce" else {}),
            dataset=dataset.name,
            remap_computable=_remap_computable(config, plan),
        )
        if env.is_main:
            if config.metrics_json:
                atomic_write_json(config.metrics_json, metrics)
            logger.info(
                "done: test auc %.5f logloss %.5f ne %.5f calibration %.4f, "
                "tables %d rows / %.2f MB (full %.2f MB) + remap %.2f MB, %.0f samples/s",
                metrics["auc"],
                metrics["logloss"],
                metrics["ne"],
                metrics["calibration"],
                metrics["rows"],
                metrics["embedding_bytes"] / 2**20,
                metrics["full_embedding_bytes"] / 2**20,
                metrics["remap_bytes"] / 2**20,
                metrics["qps"],
            )
        return metrics


def check_train_outputs(config: TrainConfig) -> None:
    """Check, where a command starts, that the run's outputs can be written where its flags
    say (:func:`~torchrec_lhf.cli.check_output_path`): before, a file in the way failed the
    run where it wrote, after training."""
    for flag, path, directory in (
        ("--metrics_json", config.metrics_json, False),
        ("--checkpoint_dir", config.checkpoint_dir, True),
        ("--export_model", config.export_model, True),
    ):
        if path:
            check_output_path(flag, path, directory=directory)
    if config.export_model:  # (export_model replaces an earlier export only)
        try:
            check_replaceable(Path(config.export_model))
        except ValueError as e:
            raise FlagError(f"--export_model: {e}") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``python -m apps.dlrm.train --help``."""
    config = parse_args(argv)
    check_dataset_files(config.dataset)
    check_train_outputs(config)
    if config.learned_hash is not None:
        check_input_path("--learned_hash", config.learned_hash, expected="a hash plan file")
    if config.init_from is not None:
        check_input_path(
            "--init_from",
            config.init_from,
            expected="a teacher artifact directory (apps.teacher --out)",
            holds=TEACHER_TENSORS_FILE,
        )
    return run(config)


if __name__ == "__main__":
    run_command(main)  # a bad flag value: a usage error, no traceback
