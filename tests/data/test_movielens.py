"""MovieLens-100K loader: the real data (skipped when PyPI is unreachable) and the offline error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from torchrec_lhf.data import DatasetUnavailableError, load_dataset, load_movielens_100k, movielens


@pytest.fixture(scope="module")
def ml():
    try:
        return load_movielens_100k()
    except DatasetUnavailableError as e:
        pytest.skip(f"MovieLens-100K unavailable (PyPI unreachable and not cached): {e}")


def _inter_column(ds, col: int) -> list[str]:
    lines = (Path(ds.info["cache_dir"]) / "ml-100k.inter").read_text().splitlines()[1:]
    return [line.split("\t")[col] for line in lines]


def test_counts_and_features(ml):
    assert len(ml) == 100_000
    assert ml.feature_names == [
        "user",
        "item",
        "age",
        "gender",
        "occupation",
        "zip",
        "genres",
        "year",
    ]
    assert ml.num_embeddings[:5] == [943, 1682, 7, 2, 21] and ml.num_embeddings[6] == 19
    per_split = [ml.id_counts(s) for s in ("train", "val", "test")]
    users, items = (sum(c[f] for c in per_split) for f in (0, 1))
    assert int(users.sum()) == int(items.sum()) == 100_000
    assert int((users > 0).sum()) == 943 and int((items > 0).sum()) == 1682
    genre_lengths = ml.lengths[:, 6]
    assert int(genre_lengths.min()) == 1 and int(genre_lengths.max()) == 6
    assert bool((ml.lengths[:, [0, 1, 2, 3, 4, 5, 7]] == 1).all())
    ratings = [float(r) for r in _inter_column(ml, 2)]
    assert ml.labels.tolist() == [float(r >= 4) for r in ratings]
    assert 0.5 < float(ml.labels.mean()) < 0.6


def test_first_rating_by_hand(ml):
    # ml-100k.inter line 1: user 196, item 242 (Kolya, 1996, Comedy), rating 3;
    # ml-100k.user: 196 is 49, M, writer, 55105.
    b = ml.make_batch(torch.tensor([0]))
    kjt = b.sparse_features.to_dict()
    assert kjt["user"].values().tolist() == [195] and kjt["item"].values().tolist() == [241]
    assert kjt["age"].values().tolist() == [4]  # 45-49
    assert kjt["gender"].values().tolist() == [1]  # F < M
    genres = ml.info["genres"]
    assert [genres[g] for g in kjt["genres"].values().tolist()] == ["Comedy"]
    assert b.labels.tolist() == [0.0]
    assert b.dense_features[0].tolist() == pytest.approx([0.49, 0.96])


def test_split_is_time_ordered(ml):
    ml = load_movielens_100k(cache_dir=ml.info["cache_dir"], split="time")
    ts = torch.tensor([int(float(t)) for t in _inter_column(ml, 3)])
    sizes = [ml.splits[k].numel() for k in ("train", "val", "test")]
    assert sizes == [80_000, 10_000, 10_000]
    train, val, test = (ts[ml.splits[k]] for k in ("train", "val", "test"))
    assert int(train.max()) <= int(val.min()) and int(val.max()) <= int(test.min())
    assert bool((torch.diff(ts[torch.cat(list(ml.splits.values()))]) >= 0).all())


def test_random_split_is_seeded_and_disjoint(ml):
    sizes = [ml.splits[k].numel() for k in ("train", "val", "test")]
    assert sizes == [80_000, 10_000, 10_000]
    assert torch.cat(list(ml.splits.values())).sort().values.equal(torch.arange(100_000))
    # A random split interleaves time: the test rows are not the latest ratings.
    ts = torch.tensor([int(float(t)) for t in _inter_column(ml, 3)])
    assert int(ts[ml.splits["test"]].min()) < int(ts[ml.splits["train"]].max())
    again = load_dataset("movielens-100k", split_seed=0)
    other = load_dataset("movielens-100k", split_seed=1)
    assert again.splits["test"].equal(ml.splits["test"])
    assert not other.splits["test"].equal(ml.splits["test"])


def test_bad_split_names_value(ml):
    with pytest.raises(ValueError, match="'weekly'"):
        load_movielens_100k(cache_dir=ml.info["cache_dir"], split="weekly")


def test_registry_spec(ml):
    assert load_dataset("movielens-100k").num_embeddings == ml.num_embeddings


def test_offline_raises_dataset_unavailable(tmp_path, monkeypatch):
    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network)")

    monkeypatch.setattr(movielens.subprocess, "run", no_network)
    with pytest.raises(DatasetUnavailableError, match="is PyPI reachable") as info:
        load_movielens_100k(cache_dir=tmp_path / "empty")
    assert isinstance(info.value, RuntimeError)
    assert not (tmp_path / "empty" / "ml-100k.inter").exists()


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert movielens.default_cache_dir() == tmp_path / "torchrec_lhf" / "movielens-100k"
