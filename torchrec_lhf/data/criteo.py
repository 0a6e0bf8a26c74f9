"""Criteo Kaggle / Terabyte raw TSV -> :class:`RecDataset`.

Shape legend: ``N`` rows, ``L`` characters per categorical string (at most 15).

The format: one click per line, 40 tab-separated fields: the label (0 or 1), 13
integer features ``int_0..int_12`` (may be empty), then 26 categorical features
``cat_0..cat_25`` (hashed values written as hex strings, may be empty). Names and
counts come from ``torchrec.datasets.criteo``.

Preprocessing (the one of the DLRM reference): integers become
``log(1 + max(x, 0))`` with empty -> 0. Each categorical column is mapped to
contiguous ids by descending frequency over the loaded rows: id ``0`` is reserved
and shared by empty fields and by values seen fewer than ``min_count`` times; kept
values get ids ``1, 2, ...`` (most frequent first). Every categorical feature is
one-hot (length 1), empty fields included.

Splits: Criteo files are in time order, so the rows are split contiguously, first
80 % train, next 10 % val, last 10 % test. ``.gz`` files are read transparently.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torchrec.datasets.criteo import (
    CAT_FEATURE_COUNT,
    DEFAULT_CAT_NAMES,
    DEFAULT_INT_NAMES,
    INT_FEATURE_COUNT,
)

from torchrec_lhf.cli import check_int
from torchrec_lhf.data._util import EMPTY, frequency_encode, split_by_order
from torchrec_lhf.data.dataset import RecDataset

logger = logging.getLogger(__name__)

NUM_FIELDS = 1 + INT_FEATURE_COUNT + CAT_FEATURE_COUNT

_BLOCK_BYTES = 1 << 24
_TAB, _NL, _CR = ord("\t"), ord("\n"), ord("\r")

# Digit value per byte; -1 marks a byte that is not a digit of the base.
_DEC_LUT = np.full(256, -1, dtype=np.int64)
_DEC_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_LUT = _DEC_LUT.copy()
_HEX_LUT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_LUT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def check_tsv_options(*, min_count: int, max_rows: int | None) -> None:
    """The checks of :func:`load_criteo_tsv`'s options (the registry runs them before any
    data is read). Raises ValueError naming a bad value."""
    check_int("min_count", min_count, low=1)
    if max_rows is not None:
        check_int("max_rows", max_rows, low=1)


def load_criteo_tsv(
    path: str | os.PathLike, *, min_count: int = 1, max_rows: int | None = None
) -> RecDataset:
    """Load a Criteo Kaggle or Terabyte raw TSV file.

    Args:
        path: the TSV (``train.txt``, ``day_0``, or a ``.gz`` of either).
        min_count: categorical values seen fewer times map to the reserved id 0.
        max_rows: read at most this many lines from the top of the file.

    Returns:
        A ``RecDataset`` with 26 one-hot features ``cat_0..cat_25`` and 13 dense
        features ``int_0..int_12``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line does not have 40 fields, or a field is malformed (the error
            names the line, the column and the value), or ``min_count`` / ``max_rows``
            is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    check_tsv_options(min_count=min_count, max_rows=max_rows)
    t0 = time.perf_counter()
    labels, ints, cats = [], [], []
    first_line = 1
    for block in _read_blocks(path, max_rows):
        label_N, int_NI, cat_NC = _parse_block(block, path, first_line)
        labels.append(label_N)
        ints.append(int_NI)
        cats.append(cat_NC)
        first_line += label_N.shape[0]
    if not labels:
        raise ValueError(f"{path}: no data lines")
    label_N = torch.from_numpy(np.concatenate(labels)).to(torch.float32)
    int_NI = torch.from_numpy(np.concatenate(ints))
    raw_NC = torch.from_numpy(np.concatenate(cats))
    ids_NC, num_embeddings = frequency_encode(raw_NC, min_count=min_count)
    num_rows = label_N.numel()
    num_empty = int((raw_NC == EMPTY).sum())
    num_rare = int(((ids_NC == 0) & (raw_NC != EMPTY)).sum())
    logger.info(
        "criteo %s: %d rows in %.1fs, tables %s, %d empty and %d rare categorical fields -> id 0",
        path,
        num_rows,
        time.perf_counter() - t0,
        num_embeddings,
        num_empty,
        num_rare,
    )
    return RecDataset(
        name="criteo",
        feature_names=list(DEFAULT_CAT_NAMES),
        num_embeddings=num_embeddings,
        dense_names=list(DEFAULT_INT_NAMES),
        dense=torch.log1p(int_NI.clamp(min=0).to(torch.float64)).to(torch.float32),
        lengths=torch.ones(num_rows, CAT_FEATURE_COUNT, dtype=torch.int32),
        values=ids_NC.reshape(-1),
        labels=label_N,
        splits=split_by_order(torch.arange(num_rows)),
        info={
            "source": str(path),
            "format": "criteo-tsv",
            "rows": num_rows,
            "min_count": min_count,
            "max_rows": max_rows,
            "reserved_id": "0: empty fields and values seen fewer than min_count times",
            "dense_transform": "log(1 + max(x, 0)), empty -> 0",
            "split": "file (time) order, contiguous 80/10/10",
            "empty_categorical_fields": num_empty,
            "rare_categorical_fields": num_rare,
        },
    )


def _read_blocks(path: Path, max_rows: int | None) -> Iterator[np.ndarray]:
    """Yield the file as uint8 arrays of whole lines (each ends with a newline, no CR)."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows_left = max_rows
    carry = b""
    with opener(path, "rb") as f:
        while rows_left is None or rows_left > 0:
            chunk = f.read(_BLOCK_BYTES)
            data = carry + chunk
            if not chunk:  # end of file: trailing blank lines are ignored
                data = data.rstrip(b"\r\n")
                if not data:
                    return
                block, carry = data + b"\n", b""
            else:
                # NOTE: a block ends with its last complete line; the newlines after it
                # stay in `carry`, so that blank lines at the very end are not data.
                body = data[: data.rfind(b"\n") + 1].rstrip(b"\r\n")
                if not body:
                    carry = data
                    continue
                rest = data[len(body) :]
                block, carry = body + b"\n", rest[2:] if rest.startswith(b"\r\n") else rest[1:]
            buf = np.frombuffer(block, dtype=np.uint8)
            if rows_left is not None:
                newlines = np.flatnonzero(buf == _NL)
                if newlines.size >= rows_left:
                    buf = buf[: newlines[rows_left - 1] + 1]
                rows_left -= min(rows_left, newlines.size)
            yield buf[buf != _CR] if _CR in block else buf


def _parse_block(
    buf: np.ndarray, path: Path, first_line: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole lines of bytes -> (labels ``(N,)``, integers ``(N, 13)``, raw categoricals ``(N, 26)``).

    Vectorized over the bytes: the field boundaries are the tabs and newlines, and each
    number is accumulated one character position at a time over all fields at once.
    """
    sep_S = np.flatnonzero((buf == _TAB) | (buf == _NL))
    newline_N = np.flatnonzero(buf == _NL)
    fields_N = np.diff(np.searchsorted(sep_S, newline_N), prepend=-1)
    bad = fields_N != NUM_FIELDS
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise ValueError(
            f"{path}:{first_line + i}: expected {NUM_FIELDS} tab-separated fields, found {fields_N[i]}"
        )
    num_rows = newline_N.size
    end_NK = sep_S.reshape(num_rows, NUM_FIELDS)
    start_NK = np.empty_like(end_NK)
    start_NK.reshape(-1)[0] = 0
    start_NK.reshape(-1)[1:] = sep_S[:-1] + 1
    fields = _Fields(buf, start_NK, end_NK - start_NK, path, first_line)
    label_N = fields.decimal(slice(0, 1), ["label"])[:, 0]
    bad = ((label_N != 0) & (label_N != 1)) | (fields.length_NK[:, 0] == 0)
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise ValueError(
            f"{path}:{first_line + i}: label must be 0 or 1, got {fields.text(i, 0)!r}"
        )
    int_NI = fields.decimal(slice(1, 1 + INT_FEATURE_COUNT), DEFAULT_INT_NAMES)
    cat_NC = fields.hexadecimal(slice(1 + INT_FEATURE_COUNT, NUM_FIELDS), DEFAULT_CAT_NAMES)
    return label_N, int_NI, cat_NC


class _Fields:
    """The fields of a block: byte offsets ``start_NK`` and lengths ``length_NK``."""

    def __init__(self, buf, start_NK, length_NK, path: Path, first_line: int) -> None:
        self.buf, self.start_NK, self.length_NK = buf, start_NK, length_NK
        self.path, self.first_line = path, first_line

    def text(self, i: int, k: int) -> str:
        s = int(self.start_NK[i, k])
        return bytes(self.buf[s : s + int(self.length_NK[i, k])]).decode("utf-8", "replace")

    def _error(self, bad_NK: np.ndarray, cols: slice, names: list[str], what: str) -> ValueError:
        i, k = (int(x[0]) for x in bad_NK.nonzero())
        return ValueError(
            f"{self.path}:{self.first_line + i}: column {names[k]} must be {what}, "
            f"got {self.text(i, cols.start + k)!r}"
        )

    def _accumulate(self, start_NK, length_NK, base: int, lut: np.ndarray):
        """Horner over character positions (<= 15 of them), vectorized over all fields."""
        value_NK = np.zeros(start_NK.shape, dtype=np.int64)
        invalid_NK = np.zeros(start_NK.shape, dtype=bool)
        last = self.buf.size - 1
        for k in range(int(length_NK.max(initial=0))):  # NOTE: per character position, not per id
            present_NK = length_NK > k
            digit_NK = lut[self.buf[np.minimum(start_NK + k, last)]]
            invalid_NK |= present_NK & (digit_NK < 0)
            value_NK = np.where(present_NK, value_NK * base + digit_NK, value_NK)
        return value_NK, invalid_NK

    def decimal(self, cols: slice, names: list[str]) -> np.ndarray:
        """Signed decimal integers -> int64 ``(N, K)``; empty -> 0."""
        start_NK, length_NK = self.start_NK[:, cols], self.length_NK[:, cols]
        neg_NK = (length_NK > 0) & (self.buf[np.minimum(start_NK, self.buf.size - 1)] == ord("-"))
        digits_NK = length_NK - neg_NK
        too_long = (digits_NK > 18) | (neg_NK & (digits_NK == 0))
        if too_long.any():
            raise self._error(too_long, cols, names, "an integer of at most 18 digits")
        value_NK, invalid_NK = self._accumulate(start_NK + neg_NK, digits_NK, 10, _DEC_LUT)
        if invalid_NK.any():
            raise self._error(invalid_NK, cols, names, "an integer")
        return np.where(neg_NK, -value_NK, value_NK)

    def hexadecimal(self, cols: slice, names: list[str]) -> np.ndarray:
        """Hex strings -> int64 ``(N, K)``; empty -> ``EMPTY``."""
        start_NK, length_NK = self.start_NK[:, cols], self.length_NK[:, cols]
        if (length_NK > 15).any():
            raise self._error(length_NK > 15, cols, names, "a hex string of at most 15 digits")
        value_NK, invalid_NK = self._accumulate(start_NK, length_NK, 16, _HEX_LUT)
        if invalid_NK.any():
            raise self._error(invalid_NK, cols, names, "a hex string")
        return np.where(length_NK == 0, EMPTY, value_NK)
