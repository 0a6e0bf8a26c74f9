"""``python -m apps.make_synthetic_criteo``: flags into the config, files the dataset reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps import make_synthetic_criteo
from torchrec_lhf.data import load_dataset


def test_writes_days_the_npy_dataset_reads(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--scale", "0.0001", "--days", "2", "--rows_per_day", "40"]
    heights = make_synthetic_criteo.main([*argv, "--seed", "1"])
    assert sorted(p.name for p in tmp_path.glob("*.npy"))[:3] == [
        "day_0_dense.npy",
        "day_0_labels.npy",
        "day_0_sparse.npy",
    ]
    ds = load_dataset(f"criteo-npy:{tmp_path}")
    assert ds.num_embeddings == heights and len(ds) == 80


def test_flags_parse_into_the_config() -> None:
    config, output = make_synthetic_criteo.parse_args(
        ["--out", "x", "--scale", "0.5", "--num_groups", "3"]
    )
    assert (config.scale, config.num_groups, config.days, str(output.out)) == (0.5, 3, 3, "x")
    with pytest.raises(
        ValueError, match=r"days must be an int >= 2, got 1 \(the last day is val / test\)"
    ):
        make_synthetic_criteo.parse_args(["--out", "x", "--days", "1"])
