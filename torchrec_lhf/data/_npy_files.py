"""The files of a Criteo ``.npy`` directory: headers read once, rows read on demand
(:mod:`torchrec_lhf.data.criteo_npy` is the dataset over them)."""

from __future__ import annotations

import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchrec.datasets.criteo import CAT_FEATURE_COUNT, INT_FEATURE_COUNT

PARTS = ("dense", "sparse", "labels")
PART_COLUMNS = {"dense": INT_FEATURE_COUNT, "sparse": CAT_FEATURE_COUNT, "labels": 1}
PART_DTYPES = {"dense": np.float32, "sparse": np.int64, "labels": np.int32}
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
_DAY = re.compile(r"day_(\d+)_dense\.npy")


@dataclass(frozen=True)
class NpyFile:
    """One 2-D ``.npy`` file, its header read once; rows are read on demand."""

    path: Path
    num_rows: int
    num_cols: int
    dtype: np.dtype
    offset: int

    @classmethod
    def open(cls, path: Path, part: str) -> NpyFile:
        if not path.is_file():
            raise ValueError(f"{path}: missing; expected the {part} part of a Criteo npy set")
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read = _HEADER_READERS.get(version)
                if read is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = read(f)
            except (ValueError, SyntaxError, tokenize.TokenError) as e:
                # (NumPy tokenizes the header: a damaged one can raise TokenError)
                raise ValueError(f"{path}: not an .npy file ({e!r})") from None
            offset = f.tell()
        cols = PART_COLUMNS[part]
        kind_ok = dtype.kind == "f" if part == "dense" else dtype.kind in "iu"
        shape_ok = len(shape) == 2 and shape[1] == cols or (part == "labels" and len(shape) == 1)
        if not (shape_ok and kind_ok) or fortran:
            raise ValueError(
                f"{path}: expected a C-order {'float' if part == 'dense' else 'integer'} "
                f"array of shape (N, {cols}), got {dtype} {shape}"
            )
        size = offset + shape[0] * cols * dtype.itemsize
        if path.stat().st_size < size:
            raise ValueError(f"{path}: truncated: {path.stat().st_size} bytes, expected {size}")
        return cls(path, int(shape[0]), cols, dtype, offset)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``: shape ``(stop - start, num_cols)``, one positioned read."""
        count = (stop - start) * self.num_cols
        at = self.offset + start * self.num_cols * self.dtype.itemsize
        out = np.fromfile(self.path, dtype=self.dtype, count=count, offset=at)
        return out.reshape(stop - start, self.num_cols)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order): a memory map opened for this call only."""
        mm = np.load(self.path, mmap_mode="r")
        return np.asarray(mm[rows]).reshape(rows.size, self.num_cols)


def discover(directory: Path) -> tuple[list[str], list[dict[str, NpyFile]]]:
    """The stems (``train`` or ``day_0 .. day_{K-1}``) and their validated files."""
    days = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _DAY.fullmatch(p.name)))
    kaggle = (directory / "train_dense.npy").is_file()
    if kaggle == bool(days):
        raise ValueError(
            f"{directory}: expected either day_{{N}}_{{dense,sparse,labels}}.npy (Criteo 1TB) "
            f"or train_{{dense,sparse,labels}}.npy (Kaggle), found "
            f"{'both' if kaggle else 'neither'}"
        )
    if days and (days != list(range(len(days))) or len(days) < 2):
        raise ValueError(
            f"{directory}: expected days 0..K-1 with K >= 2 (the last is val / test), got {days}"
        )
    stems = [f"day_{d}" for d in days] if days else ["train"]
    files = []
    for stem in stems:
        parts = {p: NpyFile.open(directory / f"{stem}_{p}.npy", p) for p in PARTS}
        counts = {p: f.num_rows for p, f in parts.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"{directory}/{stem}_*.npy: expected equal row counts, got {counts}")
        files.append(parts)
    return stems, files
