"""Score a file of requests with an exported serving model, in batches.

::

    python -m apps.dlrm.train --dataset synthetic --export_model runs/model ...
    python -m apps.serve --model runs/model --dataset synthetic --split test --out scores.csv

The model is a directory written by ``--export_model`` (``apps/dlrm/export.py``): this app
loads its TorchScript file (``model_int8.pt``, or ``model_fp32.pt`` with ``--dtype fp32``)
with ``torch.jit.load``, and needs the project's code only to read the requests and to define
the remap's operators (``torchrec_lhf::fused_remap`` and ``fused_remap_bags``, which a
compact plan's model calls).

Requests are rows of a dataset in the project's own formats (:mod:`torchrec_lhf.data`):
``--dataset`` is a ``load_dataset`` spec (``csv:PATH``, ``criteo-tsv:PATH``, ...) with
``--dataset_options``, and ``--split`` picks its ``train``, ``val`` or ``test`` rows, or
``all``. Its sparse features must be the model's, in the same order, and its dense columns
as many as the model's. Ids beyond a table's height fold modulo it, as in training.

The scores go to ``--out`` (atomically): a CSV with a header ``row,score,label``, one line
per request in split order: the dataset row index, the predicted probability of a click
(``%.9g``), and the row's label.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from apps.dlrm.batches import fold_ids
from apps.dlrm.export import EXPORT_DTYPES, load_scripted_model, scripted_file
from apps.dlrm.model import table_configs
from apps.dlrm.runtime import setup_logging
from torchrec_lhf._io import atomic_write
from torchrec_lhf.cli import (
    FlagError,
    add_config_flags,
    check_input_path,
    check_int,
    check_output_path,
    checked_fields,
    config_from_args,
    run_command,
)
from torchrec_lhf.data import RecDataset, check_dataset_files, check_dataset_spec, load_dataset

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")


@dataclass(kw_only=True)
class ServeConfig:
    """What to score, with which model, and where the scores go."""

    model: str
    """The directory ``--export_model`` wrote."""
    dtype: str = field(default="int8", metadata={"choices": EXPORT_DTYPES})
    """Which scripted model to serve: int8 tables (``model_int8.pt``) or fp32."""
    dataset: str
    """The requests: a ``torchrec_lhf.data.load_dataset`` spec."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the loader (a JSON object)."""
    split: str = field(default="test", metadata={"choices": SPLITS})
    """Which rows of the dataset to score."""
    batch_size: int = 1024
    """Requests per call of the model."""
    out: str
    """The scores CSV to write."""

    @checked_fields
    def __post_init__(self) -> None:
        check_dataset_spec(self.dataset, self.dataset_options)
        check_int("batch_size", self.batch_size, low=1)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.dtype not in EXPORT_DTYPES:
            raise ValueError(f"dtype must be one of {EXPORT_DTYPES}, got {self.dtype!r}")


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    """Parse the flags (:class:`ServeConfig`'s fields)."""
    p = argparse.ArgumentParser(prog="python -m apps.serve", description=__doc__.split("\n")[0])
    add_config_flags(p, ServeConfig)
    return config_from_args(ServeConfig, p.parse_args(argv))


def _rows(dataset: RecDataset, split: str) -> torch.Tensor:
    if split == "all":
        return torch.arange(len(dataset))
    return dataset.splits[split]


def _check_requests(dataset: RecDataset, manifest: dict[str, Any], path: str, spec: str) -> None:
    """A usage error (the ``--dataset`` given for the ``--model``) where the requests'
    features are not the model's."""
    features, num_dense = manifest["feature_names"], manifest["num_dense"]
    if list(dataset.feature_names) != features:
        raise FlagError(
            f"--dataset {spec!r}: requests have sparse features "
            f"{list(dataset.feature_names)}, the model {path} takes {features}; expected "
            "requests of the data the model was trained on"
        )
    if len(dataset.dense_names) != num_dense:
        raise FlagError(
            f"--dataset {spec!r}: requests have {len(dataset.dense_names)} dense "
            f"features, the model {path} takes {num_dense}; expected requests of the data "
            "the model was trained on"
        )


def score(config: ServeConfig) -> torch.Tensor:
    """Score the requests and write ``config.out``; returns the scores ``(R,)``.

    Raises:
        FlagError: the requests do not fit the model (features, dense columns).
        FileNotFoundError: no such model.
    """
    model, manifest = load_scripted_model(config.model, config.dtype)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    _check_requests(dataset, manifest, config.model, config.dataset)
    tables = table_configs(
        manifest["feature_names"], [t["num_embeddings"] for t in manifest["tables"]], 1
    )
    fold = fold_ids(tables, dataset)
    rows_R = _rows(dataset, config.split)
    scores: list[torch.Tensor] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for rows_B in torch.split(rows_R, config.batch_size):
            batch = fold(dataset.make_batch(rows_B))
            kjt = batch.sparse_features
            scores.append(model(batch.dense_features, kjt.values(), kjt.lengths().long()))
    seconds = time.perf_counter() - start
    scores_R = torch.cat(scores) if scores else torch.zeros(0)
    labels_R = dataset.labels[rows_R]
    with atomic_write(config.out, "w") as f:
        f.write("row,score,label\n")
        for row, s, y in zip(rows_R.tolist(), scores_R.tolist(), labels_R.tolist()):
            f.write(f"{row},{s:.9g},{y:g}\n")
    logger.info(
        "%d requests (%s, %s tables) scored in %.3f s (%.0f/s) -> %s",
        rows_R.numel(),
        config.split,
        config.dtype,
        seconds,
        rows_R.numel() / max(seconds, 1e-9),
        config.out,
    )
    return scores_R


def check_model_files(config: ServeConfig) -> None:
    """Check, where the command starts, that ``--model`` holds the scripted model of
    ``--dtype`` (a usage error naming what is missing, before any data is loaded)."""
    check_input_path(
        "--model",
        config.model,
        expected=f"the directory --export_model wrote (--dtype {config.dtype})",
        holds=scripted_file(config.dtype),
    )


def main(argv: list[str] | None = None) -> torch.Tensor:
    """Command-line entry point: ``python -m apps.serve --help``."""
    config = parse_args(argv)
    check_dataset_files(config.dataset)
    check_model_files(config)
    check_output_path("--out", config.out)
    return score(config)


if __name__ == "__main__":
    setup_logging(int(os.environ.get("RANK", "0")))
    run_command(main)  # a bad flag value: a usage error, no traceback
