"""Criteo-shaped synthetic writer: files the npy dataset reads, deterministic, with structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from torchrec_lhf.data import load_dataset
from torchrec_lhf.data import synthetic_criteo as sc
from torchrec_lhf.data.criteo_npy import META_FILE, MLPERF_NUM_EMBEDDINGS
from torchrec_lhf.data.synthetic_criteo import (
    SyntheticCriteoConfig,
    planted_groups,
    write_synthetic_criteo,
)

TINY = dict(scale=1e-4, days=3, rows_per_day=250)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.npy"))}


def test_tiny_scale_writes_files_the_npy_dataset_reads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sc, "BLOCK_ROWS", 100)  # several blocks per day
    config = SyntheticCriteoConfig(**TINY)
    heights = write_synthetic_criteo(tmp_path, config)
    assert heights == [max(1, round(h * 1e-4)) for h in MLPERF_NUM_EMBEDDINGS]
    assert heights[:3] == [4000, 4, 2] and heights[5] == 1
    assert len(_files(tmp_path)) == 9
    ds = load_dataset(f"criteo-npy:{tmp_path}")
    assert ds.num_embeddings == heights
    assert [ds.splits[k].numel() for k in ("train", "val", "test")] == [500, 125, 125]
    batch = next(ds.batches("train", 50, rank=1, world_size=2))
    assert batch.dense_features.shape == (50, 13) and batch.labels.shape == (50,)
    ids = np.load(tmp_path / "day_2_sparse.npy")
    assert ids.dtype == np.int64 and (ids >= 0).all() and (ids < np.array(heights)).all()
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["config"]["seed"] == 0 and len(meta["effect"]) == 26


def test_deterministic_by_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_synthetic_criteo(tmp_path / name, SyntheticCriteoConfig(**TINY, seed=seed))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert all(a[k] != c[k] for k in a)


def test_planted_structure_and_zipf_popularity(tmp_path: Path) -> None:
    config = SyntheticCriteoConfig(
        scale=1e-3, days=2, rows_per_day=20_000, num_groups=4, group_scale=1.5,
        interaction_scale=0.0, dense_scale=0.0,
    )  # fmt: skip
    write_synthetic_criteo(tmp_path, config)
    ids = np.load(tmp_path / "day_0_sparse.npy")[:, 0]
    labels = np.load(tmp_path / "day_0_labels.npy")[:, 0]
    groups = planted_groups(config, 0)
    assert groups.shape == (40_000,) and set(groups.unique().tolist()) == {0, 1, 2, 3}
    effect = np.array(json.loads((tmp_path / META_FILE).read_text())["effect"])[0]
    ctr = np.array([labels[groups.numpy()[ids] == g].mean() for g in range(4)])
    assert np.corrcoef(ctr, effect)[0, 1] > 0.9  # clicks follow the planted group effect
    counts = np.bincount(ids, minlength=40_000)
    assert counts.max() > 500 * counts.mean()  # Zipf: a few ids carry much of the traffic
    assert (counts > 0).sum() > 2_000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0}, "scale must be a finite number > 0"),
        ({"scale": float("inf")}, "scale must be a finite number > 0, got inf"),
        ({"days": 1}, "days must be an int >= 2, got 1"),
        ({"rows_per_day": 0}, "rows_per_day must be an int >= 1, got 0"),
        ({"num_groups": 0}, "num_groups must be an int >= 1, got 0"),
        ({"zipf_exponent": -1.0}, "zipf_exponent must be a finite number >= 0"),
        ({"group_scale": float("inf")}, "group_scale must be a finite number >= 0, got inf"),
        ({"base_logit": float("nan")}, "base_logit must be a finite number, got nan"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
        # before: a TypeError from a comparison, or accepted and failing (or not) later
        ({"scale": "x"}, "scale must be a finite number > 0, got 'x'"),
        ({"days": 2.5}, "days must be an int >= 2, got 2.5"),
        ({"rows_per_day": True}, "rows_per_day must be an int >= 1, got True"),
        ({"num_groups": None}, "num_groups must be an int >= 1, got None"),
        ({"seed": 1.5}, "seed must be an int >= 0, got 1.5"),
        ({"zipf_exponent": "1"}, "zipf_exponent must be a finite number >= 0, got '1'"),
        ({"base_logit": None}, "base_logit must be a finite number, got None"),
        # before: written, with a * rank wrapping in int64 (ids no longer a permutation)
        (
            {"scale": 1e9},
            r"scale 1000000000.0 makes the largest table 40,000,000,000,000,000 ids; expected "
            r"at most 3,037,000,499 \(a scale of at most 75.9\)",
        ),
    ],
)
def test_bad_config_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticCriteoConfig(**kwargs)


@pytest.mark.parametrize("s", [0.0, 1.0, 1.05])
def test_zipf_ranks_stay_in_range_and_favour_the_head(s: float) -> None:
    u = np.random.default_rng(0).random((5000, 2))
    ranks = sc._zipf_ranks(u, np.array([1, 50]), s)
    assert (ranks[:, 0] == 0).all() and ranks[:, 1].min() == 0 and ranks[:, 1].max() <= 49
    head = (ranks[:, 1] < 5).mean()
    assert head == pytest.approx(0.1, abs=0.03) if s == 0 else head > 0.3
