"""Batches for the DLRM app's loop: ids folded to the model's heights, and a rank's batches
from a data position on (shared by training, evaluation and ``apps.serve``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_lhf.data import RecDataset

logger = logging.getLogger(__name__)


def fold_ids(tables: list[EmbeddingBagConfig], dataset: RecDataset) -> Callable[[Batch], Batch]:
    """Batch transform folding ids modulo the table heights where they are below the data's."""
    heights_F = torch.tensor([c.num_embeddings for c in tables], dtype=torch.int64)
    if all(c.num_embeddings >= n for c, n in zip(tables, dataset.num_embeddings)):
        return lambda batch: batch
    logger.warning(
        "--num_embeddings_per_feature %s is below the data's heights %s for some features: "
        "their ids fold modulo the logical table height",
        heights_F.tolist(),
        dataset.num_embeddings,
    )

    def fold(batch: Batch) -> Batch:
        kjt = batch.sparse_features
        feature_V = torch.repeat_interleave(
            torch.arange(len(tables)),
            torch.tensor(kjt.length_per_key()),
            output_size=kjt.values().numel(),
        )
        values_V = kjt.values() % heights_F[feature_V]
        folded = KeyedJaggedTensor(keys=kjt.keys(), values=values_V, lengths=kjt.lengths())
        return Batch(
            dense_features=batch.dense_features, sparse_features=folded, labels=batch.labels
        )

    return fold


def batches_from(
    ds: RecDataset, start: int, split: str, batch_size: int, **kw: Any
) -> Iterator[Batch]:
    """This rank's batches of ``split`` from its ``start``-th on: through the dataset's
    ``loader`` (``torch.utils.data`` workers, the skipped batches never read) where it has
    one, else the skipped batches are built and dropped."""
    if hasattr(ds, "loader"):
        return iter(ds.loader(split, batch_size, start=start, **kw))
    return islice(ds.batches(split, batch_size, **kw), start, None)
