"""Train a DLRM with TorchRec, optionally with learned hashing (``--learned_hash PLAN``).

Run it as one process, with torchrun, or with torchx::

    python -m apps.dlrm.train --dataset movielens-100k --epochs 2 --metrics_json m.json
    python -m apps.dlrm.train --learned_hash plan.safetensors ...      # learned hashing
    python -m apps.dlrm.train --compression modulo --fraction 0.1 ...  # the hashing trick
    torchrun --nproc_per_node 2 -m apps.dlrm.train --dataset synthetic ...

The model is TorchRec's DLRM (``--interaction_type original|dcn``), its embedding
collection built on the meta device, converted by the hash plan (``apply_hash_plan``),
planned by TorchRec's planner and sharded by DistributedModelParallel; the tables train
with FBGEMM's fused row-wise Adagrad, the MLPs with Adagrad or Adam, through
TrainPipelineSparseDist.

Splits (deterministic, from ``torchrec_lhf.data``): 80 / 10 / 10 train / val / test, in
time order where the data has time (MovieLens by timestamp, Criteo by file order, a CSV by
its ``time`` column), along a seeded permutation otherwise (synthetic, a CSV without
time). Validation after each epoch and the test at the end cover the whole split.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from apps.dlrm.config import (
    TrainConfig,
    add_compression_flags,
    add_training_flags,
    config_from_args,
)
from apps.dlrm.loop import build_session, fit, load_data
from apps.dlrm.model import table_name
from apps.dlrm.runtime import distributed, setup_logging
from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.build.baselines import modulo_plan
from torchrec_lhf.data import RecDataset
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)

METRIC_KEYS = (
    "auc",
    "logloss",
    "val_auc",
    "val_logloss",
    "embedding_bytes",
    "remap_bytes",
    "full_embedding_bytes",
    "samples_per_s",
    "config",
    "plan_fingerprint",
)
"""Keys ``--metrics_json`` always has (more: rows, full_rows, epochs, steps, history, ...)."""


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the app's flags into a validated :class:`TrainConfig`.

    Raises:
        ValueError: a flag value is invalid (the message names it).
    """
    parser = argparse.ArgumentParser(
        prog="python -m apps.dlrm.train",
        description="Train a DLRM with TorchRec, optionally with learned hashing.",
    )
    add_training_flags(parser, embedding_dim=16)
    add_compression_flags(parser)
    return config_from_args(parser.parse_args(argv))


def resolve_plan(
    config: TrainConfig, dataset: RecDataset, tables_heights: list[int]
) -> HashPlan | None:
    """The hash plan of ``--learned_hash`` or ``--compression``, or None."""
    if config.learned_hash is not None:
        return HashPlan.load(config.learned_hash)
    if config.compression == "modulo":
        heights = {table_name(f): n for f, n in zip(dataset.feature_names, tables_heights)}
        return modulo_plan(heights, fraction=config.fraction, min_table_rows=config.min_table_rows)
    return None


def run(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate as configured; returns the metrics (the same on every rank)."""
    with distributed(config.backend) as env:
        setup_logging(env.rank)
        dataset = load_data(config)
        logger.info("dataset: %s", dataset)
        heights = config.num_embeddings_per_feature or list(dataset.num_embeddings)
        plan = resolve_plan(config, dataset, heights)
        if plan is not None:
            logger.info(
                "hash plan %s:\n%s",
                plan.fingerprint()[:12],
                plan.format_summary(config.embedding_dim),
            )
        session = build_session(config, env, dataset, plan)
        metrics = fit(session)
        metrics.update(
            config=config.to_dict(), plan_fingerprint=session.plan_fingerprint, dataset=dataset.name
        )
        if env.is_main:
            if config.metrics_json:
                atomic_write_json(config.metrics_json, metrics)
            logger.info(
                "done: test auc %.5f logloss %.5f, tables %d rows / %.2f MB (full %.2f MB) + remap %.2f MB, "
                "%.0f samples/s",
                metrics["auc"],
                metrics["logloss"],
                metrics["rows"],
                metrics["embedding_bytes"] / 2**20,
                metrics["full_embedding_bytes"] / 2**20,
                metrics["remap_bytes"] / 2**20,
                metrics["samples_per_s"],
            )
        return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: ``python -m apps.dlrm.train --help``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
