"""The Criteo npy dataset through ``torch.utils.data`` workers, and resuming at a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_lhf.data.criteo_npy import load_criteo_npy

HEIGHTS = [5 + f for f in range(26)]
DAY_ROWS = (61, 40, 30)


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("days")
    rng = np.random.default_rng(1)
    first = 0
    for d, n in enumerate(DAY_ROWS):
        dense = rng.random((n, 13), dtype=np.float32)
        dense[:, 0] = np.arange(first, first + n)  # the global row index
        np.save(directory / f"day_{d}_dense.npy", dense)
        np.save(directory / f"day_{d}_sparse.npy", rng.integers(0, 2**31, (n, 26)))
        np.save(directory / f"day_{d}_labels.npy", rng.integers(0, 2, (n, 1), dtype=np.int32))
        first += n
    return directory


def _same(a, b) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        torch.testing.assert_close(x.dense_features, y.dense_features)
        torch.testing.assert_close(x.labels, y.labels)
        assert torch.equal(x.sparse_features.values(), y.sparse_features.values())
        assert torch.equal(x.sparse_features.lengths(), y.sparse_features.lengths())


@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_with_workers_yields_the_batches_in_order(days: Path, world_size: int) -> None:
    plain = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS)
    workers = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS, num_workers=2)
    for rank in range(world_size):
        kw = dict(rank=rank, world_size=world_size, shuffle=True, seed=3, epoch=1)
        expected = list(plain.batches("train", 4, **kw))
        _same(list(workers.loader("train", 4, **kw)), expected)
        _same(list(plain.loader("train", 4, **kw)), expected)


def test_start_skips_batches_without_reading_them(days: Path, monkeypatch) -> None:
    ds = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS)
    kw = dict(shuffle=True, seed=0, epoch=0, limit=9)
    expected = list(ds.batches("train", 8, **kw))[4:]
    assert len(expected) == 5  # 101 train rows: 12 batches of 8, limited to 9
    reads = []
    original = ds.read_batch
    monkeypatch.setattr(ds, "read_batch", lambda s, b: reads.append(s) or original(s, b))
    _same(list(ds.batches("train", 8, start=4, **kw)), expected)
    assert len(reads) == 5
    first_rows = [int(b.dense_features[0, 0]) for b in expected]
    assert reads == first_rows


def test_bad_loader_options_are_named(days: Path) -> None:
    with pytest.raises(ValueError, match="num_workers"):
        load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS, num_workers=-1)
    ds = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS)
    with pytest.raises(ValueError, match="start must be >= 0, got -1"):
        ds.batches("train", 4, start=-1)
