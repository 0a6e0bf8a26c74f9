"""A user's own CSV file (header row) -> :class:`RecDataset`.

Shape legend: ``N`` data rows, ``C`` categorical columns, ``D`` dense columns.

Columns: ``label`` holds 0 / 1 (or any number with ``label_threshold``: label =
value >= threshold); every ``categorical`` column is one one-hot feature whose
strings are mapped to contiguous ids by descending frequency, with id ``0``
reserved for empty cells and for values seen fewer than ``min_count`` times;
``dense`` columns are numbers (empty cells -> 0.0, with a warning). Without dense
columns the dataset gets one constant column ``"bias"`` (all 1.0), because DLRM's
dense arch needs at least one input.

Splits: with a ``time`` column (any number, e.g. a Unix timestamp), rows are sorted
by it (ties by file order) and cut 80 / 10 / 10; without one, a permutation seeded
by ``seed`` is cut 80 / 10 / 10.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from torchrec_lhf.cli import check_int, is_finite_number
from torchrec_lhf.data._util import EMPTY, frequency_encode, seeded_permutation, split_by_order
from torchrec_lhf.data.dataset import RecDataset

logger = logging.getLogger(__name__)

BIAS_COLUMN = "bias"


def load_csv(
    path: str | os.PathLike,
    *,
    label: str,
    categorical: Sequence[str],
    dense: Sequence[str] = (),
    time: str | None = None,
    min_count: int = 1,
    label_threshold: float | None = None,
    seed: int = 0,
    delimiter: str = ",",
) -> RecDataset:
    """Load a CSV file with a header row.

    Args:
        path: the file.
        label: the label column: 0 / 1, or numbers cut by ``label_threshold``.
        categorical: the categorical columns, one sparse feature (and table) each.
        dense: numeric columns; empty cells read as 0.0.
        time: a numeric column giving time order for the splits, or None.
        min_count: categorical values seen fewer times map to the reserved id 0.
        label_threshold: if set, label = (label value >= label_threshold).
        seed: the split permutation's seed when there is no ``time`` column.
        delimiter: the field separator.

    Returns:
        A ``RecDataset`` named after the file, features named after the columns.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a named column is missing or repeated, a row is short, or a label,
            dense or time cell is not a number (the error names column, row and value).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    categorical, dense, wanted = check_csv_options(
        label=label,
        categorical=categorical,
        dense=dense,
        time=time,
        min_count=min_count,
        label_threshold=label_threshold,
        seed=seed,
        delimiter=delimiter,
    )
    line_N, cells = _read_cells(path, wanted, delimiter)
    num_rows, num_cat = len(line_N), len(categorical)
    label_N = _labels(cells[:, 0], label, label_threshold, line_N, path)
    ids_NC, num_embeddings = _categorical_ids(cells[:, 1 : 1 + num_cat], min_count)
    dense_ND, dense_names = _dense(
        cells[:, 1 + num_cat : 1 + num_cat + len(dense)], dense, line_N, path
    )
    time_N = None
    if time is not None:
        time_N = torch.from_numpy(_numeric(cells[:, -1], time, line_N, path, allow_empty=False))
    order_N, split_rule = _split_order(time, time_N, num_rows, seed)
    logger.info("csv %s: %d rows, tables %s", path, num_rows, num_embeddings)
    return RecDataset(
        name=path.stem,
        feature_names=categorical,
        num_embeddings=num_embeddings,
        dense_names=dense_names,
        dense=dense_ND,
        lengths=torch.ones(num_rows, num_cat, dtype=torch.int32),
        values=ids_NC.reshape(-1),
        labels=torch.from_numpy(label_N).to(torch.float32),
        splits=split_by_order(order_N),
        info={
            "source": str(path),
            "format": "csv",
            "label": label if label_threshold is None else f"{label} >= {label_threshold:g}",
            "min_count": min_count,
            "reserved_id": "0: empty cells and values seen fewer than min_count times",
            "dense": dense_names if dense else "none in the file: constant 1.0 column 'bias'",
            "split": split_rule,
        },
    )


def check_csv_options(
    *,
    label: str,
    categorical: Sequence[str],
    dense: Sequence[str],
    time: str | None,
    min_count: int,
    label_threshold: float | None,
    seed: int,
    delimiter: str,
) -> tuple[list[str], list[str], list[str]]:
    """The checks of :func:`load_csv`'s options (the registry runs them before the file is
    read); returns :func:`_check_columns`'s lists.

    Raises:
        ValueError: naming a bad value (see :func:`_check_columns` for the columns).
    """
    names = [label, *([] if isinstance(categorical, str) else categorical)]
    names += [] if isinstance(dense, str) else list(dense)
    names += [time] if time is not None else []
    bad = [c for c in names if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"column names must be non-empty strings, got {bad[0]!r}")
    columns = _check_columns(label, categorical, dense, time, min_count)
    if label_threshold is not None and not is_finite_number(label_threshold):
        raise ValueError(
            f"label_threshold must be a finite number or None, got {label_threshold!r}"
        )
    check_int("seed", seed, low=0)
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be one character, got {delimiter!r}")
    return columns


def _check_columns(
    label: str,
    categorical: Sequence[str],
    dense: Sequence[str],
    time: str | None,
    min_count: int,
) -> tuple[list[str], list[str], list[str]]:
    """Check the column arguments of :func:`load_csv`.

    Returns:
        ``(categorical, dense, wanted)`` as lists; ``wanted`` is every column to read, in
        the order label, categorical, dense, time.

    Raises:
        ValueError: ``categorical`` or ``dense`` is a string, ``categorical`` is empty,
            ``min_count < 1``, or a column is named twice.
    """
    if isinstance(categorical, str) or isinstance(dense, str):
        raise ValueError(
            f"categorical and dense must be lists of column names, got {categorical!r}, {dense!r}"
        )
    categorical, dense = list(categorical), list(dense)
    if not categorical:
        raise ValueError("categorical must name at least one column (one embedding table each)")
    check_int("min_count", min_count, low=1)
    wanted = [label, *categorical, *dense] + ([time] if time is not None else [])
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:
        raise ValueError(f"columns used twice among label/categorical/dense/time: {repeated}")
    return categorical, dense, wanted


def _read_cells(path: Path, wanted: list[str], delimiter: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the ``wanted`` columns of every non-blank row, cells stripped.

    Returns:
        ``(line_N, cells)``: the file line of each row, shape ``(N,)``, and the cells as
        strings, shape ``(N, len(wanted))`` (dtype object).

    Raises:
        ValueError: no header, a wanted column missing or named twice in it, a row of the
            wrong length, or no data rows.
    """
    # (utf-8-sig: a byte-order mark, as spreadsheet exports write, is not part of the first
    # column's name)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in header]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(f"{path}: columns {missing} not found; the header has {header}")
        twice = [c for c in dict.fromkeys(wanted) if header.count(c) > 1]
        if twice:
            raise ValueError(
                f"{path}: columns {twice} appear more than once in the header {header}; "
                "expected each column named once"
            )
        index = [header.index(c) for c in wanted]
        rows = []
        for line_no, row in enumerate(reader, start=2):  # NOTE: parsing text, once per row
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{line_no}: expected {len(header)} fields, found {len(row)}"
                )
            rows.append((line_no, [row[i].strip() for i in index]))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    line_N = np.array([r[0] for r in rows])
    cells = np.array([r[1] for r in rows], dtype=object)  # (N, len(wanted))
    return line_N, cells


def _labels(
    col: np.ndarray, name: str, threshold: float | None, line_N: np.ndarray, path: Path
) -> np.ndarray:
    """The label cells ``(N,)`` as float64 0 / 1 (``value >= threshold`` if one is given).

    Raises:
        ValueError: a cell is empty or not a number, or (without ``threshold``) not 0 or 1.
    """
    label_N = _numeric(col, name, line_N, path, allow_empty=False)
    if threshold is not None:
        label_N = (label_N >= threshold).astype(np.float64)
    bad = (label_N != 0) & (label_N != 1)
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise ValueError(
            f"{path}:{line_N[i]}: column {name!r} must be 0 or 1 (or pass label_threshold), "
            f"got {col[i]!r}"
        )
    return label_N


def _categorical_ids(cells_NC: np.ndarray, min_count: int) -> tuple[torch.Tensor, list[int]]:
    """Categorical strings ``(N, C)`` -> per-column frequency ids and table heights.

    The strings get global codes first (``EMPTY`` for ``""``), then each column is
    frequency-encoded with id 0 reserved (see :func:`~torchrec_lhf.data._util.frequency_encode`).
    """
    cat_strings = cells_NC.astype(str)
    _, inv = np.unique(cat_strings, return_inverse=True)
    raw_NC = torch.from_numpy(inv.reshape(cat_strings.shape).astype(np.int64))
    raw_NC[torch.from_numpy(cat_strings == "")] = EMPTY
    return frequency_encode(raw_NC, min_count=min_count)


def _dense(
    cells_ND: np.ndarray, names: list[str], line_N: np.ndarray, path: Path
) -> tuple[torch.Tensor, list[str]]:
    """The dense columns as float32 ``(N, D)`` and their names.

    Without dense columns: one constant column :data:`BIAS_COLUMN` of 1.0, shape ``(N, 1)``.
    """
    if not names:
        return torch.ones(len(line_N), 1), [BIAS_COLUMN]
    cols = [_numeric(cells_ND[:, j], c, line_N, path) for j, c in enumerate(names)]
    return torch.from_numpy(np.stack(cols, axis=1)).to(torch.float32), names


def _split_order(
    time: str | None, time_N: torch.Tensor | None, num_rows: int, seed: int
) -> tuple[torch.Tensor, str]:
    """The row order the 80/10/10 split cuts, shape ``(N,)``, and the rule in words.

    Rows by ``time_N`` (stable) if there is a ``time`` column, else a permutation seeded
    by ``seed``.
    """
    if time is not None:
        order_N = torch.sort(time_N, stable=True).indices
        return order_N, f"sorted by {time!r} (ties by file order), contiguous 80/10/10"
    return seeded_permutation(num_rows, seed), f"permutation seeded with {seed}, 80/10/10"


def _numeric(
    col: np.ndarray, name: str, line_N: np.ndarray, path: Path, *, allow_empty: bool = True
) -> np.ndarray:
    """Strings ``(N,)`` -> float64 ``(N,)``; "" -> 0.0 if ``allow_empty``; errors name the cell."""
    empty = col == ""
    if empty.any() and not allow_empty:
        i = int(empty.nonzero()[0][0])
        raise ValueError(f"{path}:{line_N[i]}: column {name!r} is empty; expected a number")
    try:
        out = np.where(empty, "0", col).astype(str).astype(np.float64)
    except ValueError:
        out = None
    if out is None or not np.isfinite(out).all():
        for i, s in enumerate(col):  # NOTE: error path only, to name the bad cell
            v = 0.0 if s == "" else _to_float(s)
            if v is None or not math.isfinite(v):
                raise ValueError(
                    f"{path}:{line_N[i]}: column {name!r} must be a finite number, got {s!r}"
                )
    if empty.any():
        logger.warning(
            "%s: column %r has %d empty cells, read as 0.0", path, name, int(empty.sum())
        )
    return out


def _to_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
