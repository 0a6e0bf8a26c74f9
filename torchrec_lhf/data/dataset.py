"""``RecDataset``: an in-memory click dataset and its per-rank TorchRec batches.

Shape legend: ``N`` samples, ``F`` sparse features (one embedding table each),
``D`` dense features, ``V`` ids in total (``lengths.sum()``), ``B`` per-rank batch
size, ``S`` = ``F * B`` segments of one batch's KeyedJaggedTensor.

Layout: ``values`` is sample-major (sample 0's feature 0 ids, sample 0's feature 1
ids, ..., then sample 1's); a batch is gathered and reordered to TorchRec's
feature-major KJT layout with vectorized torch (no loop per feature or row).

Splits: every loader gives deterministic ``"train"``, ``"val"`` and ``"test"`` row
indices, 80 / 10 / 10 along time order where the data has time (Criteo by file order, a
CSV by its ``time`` column, MovieLens with ``split="time"``) and along a seeded
permutation otherwise (MovieLens by default, synthetic data, a CSV without ``time``).

Example::

    >>> import torch
    >>> from torchrec_lhf.data import RecDataset
    >>> ds = RecDataset(
    ...     name="tiny", feature_names=["a", "b"], num_embeddings=[3, 5],
    ...     dense_names=["x"], dense=torch.zeros(2, 1),
    ...     lengths=torch.tensor([[1, 2], [1, 0]], dtype=torch.int32),
    ...     values=torch.tensor([0, 4, 1, 2]), labels=torch.tensor([0.0, 1.0]),
    ...     splits={"train": torch.tensor([0, 1]), "val": torch.tensor([], dtype=torch.int64),
    ...             "test": torch.tensor([], dtype=torch.int64)},
    ...     info={})
    >>> batch = next(ds.batches("train", batch_size=2))
    >>> batch.sparse_features["b"].values().tolist()
    [4, 1]
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_lhf._io import load_tensors, save_tensors
from torchrec_lhf.data._util import SPLIT_NAMES, exclusive_cumsum, gather_segments

logger = logging.getLogger(__name__)

_KIND = "rec_dataset"


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be obtained on this machine (e.g. PyPI is unreachable)."""


# NOTE: eq=False because the generated __eq__ / __hash__ would compare tensors and lists.
@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class RecDataset:
    """An in-memory click dataset: sparse ids, dense features, labels and splits.

    Args:
        name: short name, e.g. ``"movielens-100k"``.
        feature_names: the ``F`` sparse features; one embedding table per feature.
        num_embeddings: per feature, ids are in ``[0, num_embeddings[f])``.
        dense_names: the ``D >= 1`` dense columns.
        dense: float32, shape ``(N, D)``.
        lengths: int32, shape ``(N, F)``: ids per sample per feature (0 = missing).
        values: int64, shape ``(V,)`` with ``V = lengths.sum()``, sample-major.
        labels: float32 in ``{0, 1}``, shape ``(N,)``.
        splits: ``"train"``, ``"val"``, ``"test"`` -> disjoint int64 row indices.
        info: JSON-serializable description (source, split rule, ...).

    Raises:
        ValueError: shapes, dtypes, ids, labels or splits are inconsistent.
    """

    name: str
    feature_names: list[str]
    num_embeddings: list[int]
    dense_names: list[str]
    dense: torch.Tensor
    lengths: torch.Tensor
    values: torch.Tensor
    labels: torch.Tensor
    splits: dict[str, torch.Tensor]
    info: dict
    _starts_NF: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _validate(self)
        starts_NF = exclusive_cumsum(self.lengths.reshape(-1)).view(self.lengths.shape)
        object.__setattr__(self, "_starts_NF", starts_NF)

    def __len__(self) -> int:
        return self.labels.numel()

    def __repr__(self) -> str:
        sizes = {k: v.numel() for k, v in self.splits.items()}
        return (
            f"RecDataset(name={self.name!r}, samples={len(self)}, features={self.feature_names}, "
            f"num_embeddings={self.num_embeddings}, dense={self.dense_names}, splits={sizes})"
        )

    def _split_rows(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        return self.splits[split]

    def num_batches(self, split: str, batch_size: int, world_size: int = 1) -> int:
        """Batches per rank that :meth:`batches` yields (the incomplete tail is dropped)."""
        _check_batching(batch_size, 0, world_size)
        return self._split_rows(split).numel() // (batch_size * world_size)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        limit: int | None = None,
    ) -> Iterator[Batch]:
        """Yield this rank's batches of ``batch_size`` rows of ``split``.

        Global batch ``b`` is rows ``[b * batch_size * world_size, (b + 1) * ...)`` of the
        split (after the shuffle); rank ``r`` takes its ``r``-th slice of ``batch_size``
        rows. The incomplete last global batch is dropped, so every rank yields the same
        number of batches and distributed training never waits on a missing one.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            batch_size: rows per rank per batch ``B``.
            rank: this rank, in ``[0, world_size)``.
            world_size: the number of ranks.
            shuffle: permute the split with ``seed + epoch`` (the same on every rank).
            seed: shuffle seed.
            epoch: added to ``seed`` so that every epoch has its own order.
            limit: at most this many batches.

        Yields:
            ``Batch`` with ``dense_features`` ``(B, D)`` float32, ``sparse_features`` a
            KJT over ``feature_names`` (int64 values, int32 lengths of shape ``(F * B,)``)
            and ``labels`` ``(B,)`` float32.
        """
        _check_batching(batch_size, rank, world_size)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        rows_R = self._split_rows(split)
        if shuffle:
            gen = torch.Generator().manual_seed(seed + epoch)
            rows_R = rows_R[torch.randperm(rows_R.numel(), generator=gen)]
        num = rows_R.numel() // (batch_size * world_size)
        if limit is not None:
            num = min(num, limit)
        for b in range(num):
            start = (b * world_size + rank) * batch_size
            yield self.make_batch(rows_R[start : start + batch_size])

    def make_batch(self, rows_B: torch.Tensor) -> Batch:
        """The ``Batch`` of rows ``rows_B`` (int64 indices, shape ``(B,)``), in that order."""
        lengths_FB = self.lengths[rows_B].t().reshape(-1)
        starts_FB = self._starts_NF[rows_B].t().reshape(-1)
        kjt = KeyedJaggedTensor(
            keys=list(self.feature_names),
            values=gather_segments(self.values, starts_FB, lengths_FB),
            lengths=lengths_FB.contiguous(),
        )
        return Batch(
            dense_features=self.dense[rows_B], sparse_features=kjt, labels=self.labels[rows_B]
        )

    def id_counts(self, split: str = "train") -> list[torch.Tensor]:
        """Per feature, how often each id occurs in ``split``: int64 tensors ``(num_embeddings[f],)``."""
        rows_R = self._split_rows(split)
        lengths_RF = self.lengths[rows_R]
        starts_RF = self._starts_NF[rows_R]
        ids_W = gather_segments(self.values, starts_RF.reshape(-1), lengths_RF.reshape(-1))
        feature_W = _feature_of_values(lengths_RF, ids_W.numel())
        table_offsets = exclusive_cumsum(torch.tensor(self.num_embeddings, dtype=torch.int64))
        counts = torch.bincount(
            table_offsets[feature_W] + ids_W, minlength=sum(self.num_embeddings)
        )
        return list(torch.split(counts, self.num_embeddings))

    def save(self, path: str | os.PathLike) -> None:
        """Write the dataset to a safetensors file (atomically, with a checksum)."""
        tensors = {
            "dense": self.dense,
            "lengths": self.lengths,
            "values": self.values,
            "labels": self.labels,
            **{f"split_{k}": v for k, v in self.splits.items()},
        }
        manifest = {
            "kind": _KIND,
            "name": self.name,
            "feature_names": list(self.feature_names),
            "num_embeddings": [int(n) for n in self.num_embeddings],
            "dense_names": list(self.dense_names),
            "splits": sorted(self.splits),
            "info": self.info,
        }
        save_tensors(path, tensors, manifest)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RecDataset:
        """Read a file written by :meth:`save`; raises ``ValueError`` naming ``path`` if it
        is damaged (its manifest edited included)."""
        tensors, m = load_tensors(path, _KIND)
        try:
            return cls(
                name=m["name"],
                feature_names=m["feature_names"],
                num_embeddings=m["num_embeddings"],
                dense_names=m["dense_names"],
                dense=tensors["dense"],
                lengths=tensors["lengths"],
                values=tensors["values"],
                labels=tensors["labels"],
                splits={k: tensors[f"split_{k}"] for k in m["splits"]},
                info=m["info"],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: manifest and tensors disagree ({e!r} missing or malformed)"
            ) from e
        except ValueError as e:
            raise ValueError(f"{path}: invalid dataset: {e}") from e


def _feature_of_values(lengths_NF: torch.Tensor, total: int) -> torch.Tensor:
    """The feature index of every id of a sample-major layout: int64 ``(total,)``."""
    num_rows, num_features = lengths_NF.shape
    if total == lengths_NF.numel() and bool((lengths_NF == 1).all()):
        return torch.arange(num_features).repeat(num_rows)  # NOTE: one-hot fast path
    return torch.repeat_interleave(
        torch.arange(num_features).repeat(num_rows),
        lengths_NF.reshape(-1).to(torch.int64),
        output_size=total,
    )


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


def _check_tensor(name: str, t: Any, dtype: torch.dtype, shape: tuple[int | None, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if t.dtype != dtype or not ok:
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(
            f"{name} must be {dtype} of shape {want}, got {t.dtype} of shape {tuple(t.shape)}"
        )


def _validate(ds: RecDataset) -> None:
    if not isinstance(ds.name, str) or not ds.name:
        raise ValueError(f"name must be a non-empty string, got {ds.name!r}")
    num_features = len(ds.feature_names)
    if num_features < 1 or len(set(ds.feature_names)) != num_features:
        raise ValueError(f"feature_names must be >= 1 distinct names, got {ds.feature_names}")
    if len(ds.num_embeddings) != num_features or any(
        isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1
        for n in ds.num_embeddings
    ):
        raise ValueError(
            f"num_embeddings must be {num_features} values >= 1 (one per feature), got {ds.num_embeddings}"
        )
    if len(ds.dense_names) < 1:
        raise ValueError("dense_names must name at least one dense column (DLRM needs one)")
    _check_tensor("labels", ds.labels, torch.float32, (None,))
    n = ds.labels.numel()
    _check_tensor("dense", ds.dense, torch.float32, (n, len(ds.dense_names)))
    _check_tensor("lengths", ds.lengths, torch.int32, (n, num_features))
    _check_tensor("values", ds.values, torch.int64, (None,))
    if n and int(ds.lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, found {int(ds.lengths.min())}")
    total = int(ds.lengths.sum())
    if ds.values.numel() != total:
        raise ValueError(f"values has {ds.values.numel()} ids but lengths sum to {total}")
    if n and not bool(((ds.labels == 0) | (ds.labels == 1)).all()):
        bad = ds.labels[(ds.labels != 0) & (ds.labels != 1)][0].item()
        raise ValueError(f"labels must be 0 or 1, found {bad}")
    if total:
        feature_V = _feature_of_values(ds.lengths, total)
        high_V = torch.tensor([int(x) for x in ds.num_embeddings])[feature_V]
        bad_V = (ds.values < 0) | (ds.values >= high_V)
        if bool(bad_V.any()):
            i = int(bad_V.nonzero()[0])
            f = int(feature_V[i])
            raise ValueError(
                f"feature {ds.feature_names[f]!r}: id {int(ds.values[i])} out of range "
                f"[0, {ds.num_embeddings[f]})"
            )
    if set(ds.splits) != set(SPLIT_NAMES):
        raise ValueError(
            f"splits must have exactly the keys {SPLIT_NAMES}, got {sorted(ds.splits)}"
        )
    for k, rows in ds.splits.items():
        _check_tensor(f"splits[{k!r}]", rows, torch.int64, (None,))
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise ValueError(
                f"splits[{k!r}] has row indices in [{int(rows.min())}, {int(rows.max())}], expected [0, {n})"
            )
    used = torch.bincount(torch.cat([ds.splits[k] for k in SPLIT_NAMES]), minlength=n)
    if n and int(used.max()) > 1:
        raise ValueError(
            f"splits overlap or repeat rows: row {int(used.argmax())} is used {int(used.max())} times"
        )
    try:
        json.dumps(ds.info)
    except TypeError as e:
        raise ValueError(f"info must be JSON-serializable: {e}") from e
