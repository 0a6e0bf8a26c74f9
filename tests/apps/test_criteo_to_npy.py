"""``python -m apps.criteo_to_npy``: flags, a directory of TSV files, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apps import criteo_to_npy
from torchrec_lhf.data import load_dataset

LINE = "\t".join(["0", *["1"] * 12, "", *["1f"] * 25, ""])


def test_converts_a_directory_into_a_dataset(tmp_path: Path) -> None:
    src = tmp_path / "tsv"
    src.mkdir()
    for day, rows in ((0, 6), (1, 4)):
        (src / f"day_{day}").write_text((LINE + "\n") * rows)
    (src / "notes.txt").write_text("not criteo")
    rows = criteo_to_npy.main(["--input", str(src), "--out", str(tmp_path / "npy")])
    assert rows == {"day_0": 6, "day_1": 4}
    sparse = np.load(tmp_path / "npy" / "day_1_sparse.npy")
    assert sparse.shape == (4, 26) and sparse[0, 0] == 0x1F and sparse[0, 25] == 0
    ds = load_dataset(f"criteo-npy:{tmp_path / 'npy'}")
    assert [ds.splits[k].numel() for k in ("train", "val", "test")] == [6, 2, 2]


def test_flags_come_from_the_config(capsys) -> None:
    with pytest.raises(SystemExit):
        criteo_to_npy.parse_args(["--help"])
    assert "--input" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        criteo_to_npy.parse_args(["--input", "x"])  # --out is required


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or directory"):
        criteo_to_npy.main(["--input", str(tmp_path / "nope"), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="expected Criteo TSV files"):
        criteo_to_npy.main(["--input", str(tmp_path), "--out", str(tmp_path)])
