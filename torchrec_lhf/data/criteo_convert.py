"""A bounded-memory converter from the raw Criteo TSV to TorchRec's preprocessed npy format.

What ``python -m torchrec.datasets.scripts.npy_preproc_criteo`` (``BinaryCriteoUtils.tsv_to_npys``)
writes, block by block instead of the whole file at once: see
:mod:`torchrec_lhf.data.criteo_npy` for the format and the dataset that reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torchrec.datasets.criteo import INT_FEATURE_COUNT

from torchrec_lhf._io import atomic_path
from torchrec_lhf.data._util import EMPTY
from torchrec_lhf.data.criteo import _parse_block, _read_blocks
from torchrec_lhf.data.criteo_npy import PART_COLUMNS, PART_DTYPES, PARTS

logger = logging.getLogger(__name__)


class NpyParts:
    """Writes rows into the temporary ``{stem}_{part}.npy`` files of :func:`write_npy_parts`.

    NOTE: each write maps the file for that call only: pages written through a long-lived
    memory map count in the process RSS until it is unmapped (up to the file's size).
    """

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths

    def write(self, part: str, start: int, values: np.ndarray, view: type | None = None) -> None:
        """Rows ``[start, start + len(values))`` of ``part`` (seen as dtype ``view`` if given)."""
        mm = np.load(self._paths[part], mmap_mode="r+")
        target = mm if view is None else mm.view(view)
        target[start : start + len(values)] = values.reshape(len(values), -1)
        mm.flush()

    def read(self, part: str, start: int, stop: int, view: type | None = None) -> np.ndarray:
        mm = np.load(self._paths[part], mmap_mode="r")
        return np.array(mm[start:stop] if view is None else mm.view(view)[start:stop])


@contextlib.contextmanager
def write_npy_parts(out_dir: str | os.PathLike, stem: str, num_rows: int) -> Iterator[NpyParts]:
    """Create ``{stem}_{dense,sparse,labels}.npy`` in ``out_dir``: float32 ``(N, 13)``, int64
    ``(N, 26)``, int32 ``(N, 1)``, filled through the yielded :class:`NpyParts`.

    Each file is created (``np.lib.format.open_memmap``) under a temporary name in
    ``out_dir`` and moved over its destination when the block succeeds (atomic per file);
    on an error all are removed.
    """
    with contextlib.ExitStack() as stack:
        paths = {}
        for p in PARTS:
            paths[p] = stack.enter_context(atomic_path(Path(out_dir) / f"{stem}_{p}.npy"))
            shape = (num_rows, PART_COLUMNS[p])
            np.lib.format.open_memmap(
                paths[p], mode="w+", dtype=PART_DTYPES[p], shape=shape
            ).flush()
        yield NpyParts(paths)


def tsv_to_npy(
    in_file: str | os.PathLike, out_dir: str | os.PathLike, stem: str | None = None
) -> int:
    """Convert one raw Criteo TSV (or ``.gz``) like ``BinaryCriteoUtils.tsv_to_npys``, streaming.

    Equal output, in memory bounded by ``torchrec_lhf.data.criteo``'s block size: pass 1
    counts the lines; pass 2 parses block by block into memory maps (the raw int32 dense
    values go into the dense file itself, viewed as int32) while tracking their minimum;
    pass 3 applies ``log(x - min + 2)`` in place, chunk by chunk.

    Args:
        in_file: ``train.txt``, ``day_N`` or either ``.gz``.
        out_dir: where ``{stem}_{dense,sparse,labels}.npy`` go.
        stem: default the file name without ``.gz`` / ``.txt``.

    Returns:
        The number of rows.

    Raises:
        ValueError: a missing or empty file, a malformed line (named with its line number),
            or an integer outside int32.
    """
    path = Path(in_file)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected a Criteo TSV (train.txt, day_N)")
    stem = stem or re.sub(r"(\.txt)?(\.gz)?$", "", path.name)
    num_rows = sum(int(np.count_nonzero(b == ord("\n"))) for b in _read_blocks(path, None))
    if num_rows == 0:
        raise ValueError(f"{path}: no data lines; expected 40 tab-separated fields per line")
    low = np.iinfo(np.int32)
    with write_npy_parts(out_dir, stem, num_rows) as out:
        row, minimum = 0, int(low.max)
        for block in _read_blocks(path, None):
            label_N, int_NI, cat_NC = _parse_block(block, path, row + 1)
            bad = (int_NI < low.min) | (int_NI > low.max)
            if bad.any():
                i = int(bad.nonzero()[0][0])
                raise ValueError(f"{path}:{row + i + 1}: an integer feature is outside int32")
            out.write("dense", row, int_NI.astype(np.int32), view=np.int32)  # raw, for now
            out.write("sparse", row, np.where(cat_NC == EMPTY, 0, cat_NC))
            out.write("labels", row, label_N.astype(np.int32))
            minimum, row = min(minimum, int(int_NI.min())), row + label_N.shape[0]
        assert row == num_rows, (row, num_rows)
        shift = np.int32(minimum) - np.int32(2)  # NOTE: int32 arithmetic, as the reference
        step = max(1, (1 << 22) // INT_FEATURE_COUNT)
        for a in range(0, num_rows, step):
            x = out.read("dense", a, min(num_rows, a + step), view=np.int32)
            x -= shift
            out.write("dense", a, np.log(x, dtype=np.float32))
    logger.info("%s -> %s/%s_*.npy: %d rows", path, out_dir, stem, num_rows)
    return num_rows


def convert_criteo_tsv(input_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, int]:
    """Convert a TSV file, or a directory's ``day_N`` / ``train.txt`` (or ``.gz``), with
    :func:`tsv_to_npy`, as ``npy_preproc_criteo`` does (Kaggle's ``test.txt`` has no labels
    and is skipped).

    Returns:
        ``{stem: rows}`` of the converted files.

    Raises:
        ValueError: ``input_path`` is missing or a directory without Criteo TSV files.
    """
    src = Path(input_path)
    if src.is_file():
        files = [src]
    elif src.is_dir():
        pattern = re.compile(r"(day_\d+|train\.txt)(\.gz)?")
        files = sorted(p for p in src.iterdir() if pattern.fullmatch(p.name))
        if not files:
            raise ValueError(f"{src}: expected Criteo TSV files day_N or train.txt (or .gz)")
    else:
        raise ValueError(f"{src}: no such file or directory; expected a Criteo TSV or a directory")
    return {
        (stem := re.sub(r"(\.txt)?(\.gz)?$", "", p.name)): tsv_to_npy(p, out_dir, stem)
        for p in files
    }
