"""TorchRec's preprocessed Criteo format (``*_{dense,sparse,labels}.npy``): a streaming
per-rank dataset (the bounded-memory converter from the raw TSV is
:mod:`torchrec_lhf.data.criteo_convert`).

Shape legend: ``N`` rows, ``B`` per-rank batch size, ``W`` world size, ``F`` = 26 sparse
features, ``D`` = 13 dense features, ``T`` ids of all tables together (``sum`` heights).

The format is what ``python -m torchrec.datasets.scripts.npy_preproc_criteo`` writes
(``BinaryCriteoUtils.tsv_to_npys``): per file stem, ``{stem}_dense.npy`` float32 ``(N, 13)``
(``log(x - min + 2)`` with ``min`` the smallest integer of the whole file, empty -> 0;
a NaN or inf is a ValueError naming its file and row when its batch is read),
``{stem}_sparse.npy`` int64 ``(N, 26)`` (the hex value as an integer, empty -> 0) and
``{stem}_labels.npy`` int32 ``(N, 1)`` (0 or 1: another label is a ValueError naming its file
and row when its batch is read). A directory holds either the Criteo 1TB days
``day_0 .. day_{K-1}`` or the Kaggle ``train`` stem (``test`` has no labels and is not read).

Splits (contiguous, in file order; never overlapping):
    * days: ``day_0 .. day_{K-2}`` train; the last day's first ``ceil(n / 2)`` rows val and
      the rest test, as TorchRec's ``InMemoryBinaryCriteoIterDataPipe`` (``K = 24``: days 0..22
      train, day 23 val / test).
    * Kaggle ``train``: the first 80 % of its rows train, the next 10 % val, the last 10 %
      test. NOTE: the reference Kaggle path evaluates on part of its training rows; ours
      does not.

Ids are reduced ``% num_embeddings_per_feature`` when a batch is read, as the reference
does with its ``hashes``; the heights default to ``criteo_npy.json`` in the directory
(written by :mod:`torchrec_lhf.data.synthetic_criteo`), else the MLPerf heights.
Batches follow ``RecDataset``'s grid, which is TorchRec's: rank ``r``'s ``i``-th batch is
rows ``[(i * W + r) * B, (i * W + r + 1) * B)`` of the split. Each rank reads only those
rows, with positioned reads (``np.fromfile(offset=...)``), not long-lived memory maps,
whose touched pages would count in the process RSS up to the size of the files.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.datasets.criteo import (
    CAT_FEATURE_COUNT,
    DEFAULT_CAT_NAMES,
    DEFAULT_INT_NAMES,
)
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_lhf.cli import check_int
from torchrec_lhf.data._npy_files import PART_COLUMNS, PART_DTYPES, PARTS
from torchrec_lhf.data._npy_files import NpyFile as _NpyFile  # noqa: F401 (the old name)
from torchrec_lhf.data._npy_files import discover as _discover
from torchrec_lhf.data._util import SPLIT_FRACTIONS, SPLIT_NAMES
from torchrec_lhf.data.dataset import _check_batching

logger = logging.getLogger(__name__)

MLPERF_NUM_EMBEDDINGS: tuple[int, ...] = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip
"""The MLPerf DLRM table heights of Criteo 1TB, capped at 40M (204M ids in all)."""

META_FILE = "criteo_npy.json"
"""Optional JSON in the directory: ``{"num_embeddings_per_feature": [...], ...}``."""

_SPLIT_RULE = {
    "train": "train_*.npy in file order, contiguous 80/10/10",
    "days": "all days but the last train; the last day's first ceil(n/2) rows val, rest test",
}


class _SplitRows(Mapping):
    """``split -> torch.arange`` of its global rows, made on access (8 bytes per row)."""

    def __init__(self, ranges: dict[str, tuple[int, int]]) -> None:
        self._ranges = ranges

    def __getitem__(self, split: str) -> torch.Tensor:
        return torch.arange(*self._ranges[split])

    def __iter__(self) -> Iterator[str]:
        return iter(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)


class _BatchStream(IterableDataset):
    """This rank's batches, given by their first global rows ``starts_S``; in a
    ``DataLoader`` worker ``w`` of ``K`` yields those of positions ``w, w + K, ...``."""

    def __init__(self, dataset: CriteoNpyDataset, starts_S: torch.Tensor, batch_size: int) -> None:
        self.dataset, self.starts_S, self.batch_size = dataset, starts_S, batch_size

    def __len__(self) -> int:
        return int(self.starts_S.numel())

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        mine = self.starts_S if info is None else self.starts_S[info.id :: info.num_workers]
        for start in mine.tolist():
            yield self.dataset.read_batch(start, self.batch_size)


def check_npy_options(
    *,
    num_embeddings_per_feature: list[int] | None,
    chunk_rows: int,
    num_workers: int,
    prefetch_factor: int,
) -> None:
    """The checks of :func:`load_criteo_npy`'s options (the registry runs them before any
    file is read; None heights: the directory's). Raises ValueError naming a bad value."""
    heights = num_embeddings_per_feature
    if heights is not None and (
        not isinstance(heights, (list, tuple))
        or len(heights) != CAT_FEATURE_COUNT
        or any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in heights)
    ):
        raise ValueError(
            f"num_embeddings_per_feature must be {CAT_FEATURE_COUNT} ints >= 1, got {heights!r}"
        )
    check_int("chunk_rows", chunk_rows, low=1)
    check_int("num_workers", num_workers, low=0)
    check_int("prefetch_factor", prefetch_factor, low=1)


class CriteoNpyDataset:
    """A directory of Criteo ``.npy`` files, read per rank and per batch (see the module doc).

    The interface of ``RecDataset`` that the training loop uses: ``batches``,
    ``num_batches``, ``make_batch``, ``id_counts``, ``splits`` (global row indices: rows of
    the stems concatenated in order), ``feature_names``, ``num_embeddings``, ``dense_names``.

    Args:
        directory: holds ``day_{N}_{part}.npy`` or ``train_{part}.npy``.
        num_embeddings_per_feature: 26 heights; ids are reduced modulo them.
        chunk_rows: rows read at once by :meth:`id_counts`.
        num_workers: ``torch.utils.data`` worker processes of :meth:`loader` (0: none).
        prefetch_factor: batches each worker reads ahead.

    Raises:
        ValueError: a bad directory, missing files, wrong shapes or mismatched row counts
            (the message names the path and what was expected), or bad heights.
    """

    def __init__(
        self,
        directory: Path,
        num_embeddings_per_feature: list[int],
        *,
        chunk_rows: int,
        num_workers: int = 0,
        prefetch_factor: int = 4,
    ) -> None:
        check_npy_options(
            num_embeddings_per_feature=num_embeddings_per_feature,
            chunk_rows=chunk_rows,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
        )
        heights = [int(h) for h in num_embeddings_per_feature]
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.name = "criteo-npy"
        self.feature_names = list(DEFAULT_CAT_NAMES)
        self.dense_names = list(DEFAULT_INT_NAMES)
        self.num_embeddings = heights
        self.chunk_rows = chunk_rows
        self.stems, self.files = _discover(Path(directory))
        rows = [f["dense"].num_rows for f in self.files]
        self._starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._ranges = _split_ranges(self.stems, rows)
        self.splits = _SplitRows(self._ranges)
        self._heights_1F = np.asarray(heights, dtype=np.int64).reshape(1, -1)
        self.info = {
            "source": str(directory),
            "format": "criteo-npy",
            "stems": self.stems,
            "rows": rows,
            "num_embeddings_per_feature": heights,
            "split": _SPLIT_RULE["train" if self.stems == ["train"] else "days"],
        }

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        sizes = {k: hi - lo for k, (lo, hi) in self._ranges.items()}
        return (
            f"CriteoNpyDataset(source={self.info['source']!r}, stems={self.stems}, "
            f"samples={len(self)}, num_embeddings={self.num_embeddings}, splits={sizes})"
        )

    def _range(self, split: str) -> tuple[int, int]:
        if split not in self._ranges:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_NAMES)}")
        return self._ranges[split]

    def num_batches(self, split: str, batch_size: int, world_size: int = 1) -> int:
        """Batches per rank that :meth:`batches` yields (the incomplete tail is dropped)."""
        _check_batching(batch_size, 0, world_size)
        lo, hi = self._range(split)
        return (hi - lo) // (batch_size * world_size)

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
        start: int = 0,
    ) -> Iterator[Batch]:
        """Yield this rank's batches of ``split``, reading only its ``batch_size`` rows of each.

        ``start`` skips that many of this rank's batches without reading them (a resumed
        run's data position).

        Same arguments and grid as ``RecDataset.batches``. NOTE: ``shuffle`` permutes the
        order of the global batches (seeded by ``seed + epoch``), not the rows: a row
        permutation would cost 8 bytes per row and random reads. The rows of a batch stay
        contiguous; pre-shuffle the files (``BinaryCriteoUtils.shuffle``) for i.i.d. rows.

        Yields:
            ``Batch``: dense ``(B, 13)`` float32, a KJT over ``cat_0..cat_25`` (int64
            values reduced modulo the heights, int32 lengths of ones), labels ``(B,)`` float32.
        """
        return iter(
            self._stream(split, batch_size, rank, world_size, shuffle, seed, epoch, limit, start)
        )

    def loader(
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
        start: int = 0,
    ) -> Iterable[Batch]:
        """The batches of :meth:`batches`, in the same order, read by ``num_workers``
        ``torch.utils.data`` worker processes (a ``DataLoader`` over an ``IterableDataset``;
        worker ``w`` reads batches ``w, w + num_workers, ...`` of this rank's sequence, which
        the loader returns in order), or in this process without workers."""
        stream = self._stream(
            split, batch_size, rank, world_size, shuffle, seed, epoch, limit, start
        )
        if self.num_workers == 0:
            return stream
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor,
            persistent_workers=False,
        )

    def _stream(
        self,
        split: str,
        batch_size: int,
        rank: int,
        world_size: int,
        shuffle: bool,
        seed: int,
        epoch: int,
        limit: int | None,
        start: int,
    ) -> _BatchStream:
        _check_batching(batch_size, rank, world_size)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        lo, _ = self._range(split)
        num = self.num_batches(split, batch_size, world_size)
        order = torch.arange(num)
        if shuffle:
            order = torch.randperm(num, generator=torch.Generator().manual_seed(seed + epoch))
        starts = lo + (order * world_size + rank) * batch_size
        stop = num if limit is None else min(num, limit)
        return _BatchStream(self, starts[start:stop], batch_size)

    def read_batch(self, start: int, batch_size: int) -> Batch:
        """The ``Batch`` of global rows ``[start, start + batch_size)``.

        Raises:
            ValueError: a label other than 0 or 1 or a non-finite dense value, naming its
                file and row.
        """
        dense, sparse, labels = self._read_range(start, start + batch_size)
        self._check_rows(dense, labels, lambda i: start + i)
        return self._to_batch(dense, sparse, labels)

    def make_batch(self, rows_B: torch.Tensor) -> Batch:
        """The ``Batch`` of global rows ``rows_B`` (int64, shape ``(B,)``), in that order.

        Raises:
            ValueError: a row outside the files, a label other than 0 or 1 or a non-finite
                dense value (named).
        """
        rows = rows_B.numpy().astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"rows must be in [0, {len(self)}), got [{rows.min()}, {rows.max()}]")
        file_B = np.searchsorted(self._starts, rows, side="right") - 1
        out = {p: np.empty((rows.size, PART_COLUMNS[p]), PART_DTYPES[p]) for p in PARTS}
        for i in np.unique(file_B).tolist():  # NOTE: a loop per file, not per row
            mask = file_B == i
            for p in PARTS:
                out[p][mask] = self.files[i][p].take(rows[mask] - self._starts[i])
        self._check_rows(out["dense"], out["labels"], lambda i: int(rows[i]))
        return self._to_batch(out["dense"], out["sparse"], out["labels"])

    def _check_rows(
        self, dense: np.ndarray, labels: np.ndarray, global_row: Callable[[int], int]
    ) -> None:
        """Raise ValueError, naming the file, row and value, unless every label of a batch
        is 0 or 1 (a click or not: another value trains against a target the loss does not
        define) and every dense value is finite (a NaN or inf would make the loss NaN),
        without a word either way before. Two compares of ``B`` rows a batch;
        ``global_row(i)``, the batch's ``i``-th row in the files, is asked only for a bad one.
        """
        labels_B = labels.reshape(-1)
        bad_labels_B = (labels_B != 0) & (labels_B != 1)
        bad_dense_BD = ~np.isfinite(dense)
        for part, bad_B, expected in (
            ("labels", bad_labels_B, "expected 0 or 1"),
            ("dense", bad_dense_BD.any(axis=1), "expected finite values"),
        ):
            if not bad_B.any():
                continue
            i = int(np.flatnonzero(bad_B)[0])
            if part == "labels":
                what = f"label {labels_B[i]}"
            else:
                col = int(np.flatnonzero(bad_dense_BD[i])[0])
                what = f"dense value {dense[i, col]} in column {col}"
            row = global_row(i)
            f = int(np.searchsorted(self._starts, row, side="right")) - 1
            raise ValueError(
                f"{self.files[f][part].path}: row {row - self._starts[f]} has {what}; {expected}"
            )

    def id_counts(self, split: str = "train") -> list[torch.Tensor]:
        """Per feature, how often each id (after the modulo) occurs in ``split``: int64
        ``(num_embeddings[f],)``; streamed in chunks of ``chunk_rows`` rows."""
        lo, hi = self._range(split)
        offsets_1F = torch.from_numpy(np.cumsum(self._heights_1F) - self._heights_1F)
        counts_T = torch.zeros(sum(self.num_embeddings), dtype=torch.int64)
        for start in range(lo, hi, self.chunk_rows):
            sparse = self._read_part("sparse", start, min(hi, start + self.chunk_rows))
            keys = torch.from_numpy(sparse.astype(np.int64) % self._heights_1F) + offsets_1F
            keys = keys.reshape(-1)
            counts_T.index_add_(0, keys, torch.ones_like(keys))
        return list(torch.split(counts_T, self.num_embeddings))

    def _read_part(self, part: str, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        pieces = []
        for i in range(first, len(self.files)):  # NOTE: a loop per file of the range
            a, b = max(start, self._starts[i]), min(stop, self._starts[i + 1])
            if a >= b:
                break
            pieces.append(self.files[i][part].read(a - self._starts[i], b - self._starts[i]))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        return tuple(self._read_part(p, start, stop) for p in PARTS)

    def _to_batch(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> Batch:
        num_rows = dense.shape[0]
        ids_FB = (sparse.astype(np.int64) % self._heights_1F).T.reshape(-1)
        kjt = KeyedJaggedTensor(
            keys=list(self.feature_names),
            values=torch.from_numpy(np.ascontiguousarray(ids_FB)),
            lengths=torch.ones(CAT_FEATURE_COUNT * num_rows, dtype=torch.int32),
        )
        return Batch(
            dense_features=torch.from_numpy(dense.astype(np.float32, copy=False)),
            sparse_features=kjt,
            labels=torch.from_numpy(labels.reshape(-1).astype(np.float32)),
        )


def load_criteo_npy(
    path: str | os.PathLike,
    *,
    num_embeddings_per_feature: list[int] | None = None,
    chunk_rows: int = 1 << 16,
    num_workers: int = 0,
    prefetch_factor: int = 4,
) -> CriteoNpyDataset:
    """Open a directory of Criteo ``.npy`` files (the ``criteo-npy:DIR`` dataset).

    Args:
        path: the directory.
        num_embeddings_per_feature: 26 table heights; default the directory's
            :data:`META_FILE`, else :data:`MLPERF_NUM_EMBEDDINGS`.
        chunk_rows: rows per read of the streaming :meth:`CriteoNpyDataset.id_counts`.
        num_workers: DataLoader workers of :meth:`CriteoNpyDataset.loader` (the training
            loop's batches), e.g. ``--dataset_options '{"num_workers": 2}'``.
        prefetch_factor: batches each worker reads ahead.

    Raises:
        ValueError: see :class:`CriteoNpyDataset`.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory; expected a directory of Criteo .npy files")
    if num_embeddings_per_feature is None:
        meta = directory / META_FILE
        heights = MLPERF_NUM_EMBEDDINGS
        if meta.is_file():
            try:
                heights = json.loads(meta.read_text())["num_embeddings_per_feature"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{meta}: expected a JSON object with num_embeddings_per_feature ({e!r})"
                ) from None
            if not isinstance(heights, list):  # (a string would read as its characters)
                raise ValueError(
                    f"{meta}: num_embeddings_per_feature must be a list of "
                    f"{CAT_FEATURE_COUNT} ints >= 1, got {heights!r}"
                )
        num_embeddings_per_feature = list(heights)
    ds = CriteoNpyDataset(
        directory,
        num_embeddings_per_feature,
        chunk_rows=chunk_rows,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
    )
    logger.info("%r", ds)
    return ds


def _split_ranges(stems: list[str], rows: list[int]) -> dict[str, tuple[int, int]]:
    total = sum(rows)
    if stems == ["train"]:
        n_train, n_val = int(total * SPLIT_FRACTIONS[0]), int(total * SPLIT_FRACTIONS[1])
        cuts = [0, n_train, n_train + n_val, total]
    else:
        last = total - rows[-1]
        cuts = [0, last, last + math.ceil(rows[-1] / 2), total]
    return {k: (cuts[i], cuts[i + 1]) for i, k in enumerate(SPLIT_NAMES)}
