"""MovieLens-100K loader: the real data (skipped when PyPI is unreachable), and offline: the
error without network, the wheel's pinned sha256 and the cache check on a tiny fake wheel."""

from __future__ import annotations

import hashlib
import logging
import pickle
import subprocess
import zipfile
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


# A tiny stand-in for the recbole wheel: 2 users, 3 items (one without a year), 10 ratings.
_FAKE_FILES = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    + "".join(f"{1 + i % 2}\t{1 + i % 3}\t{1 + i % 5}\t{880000000 + i}\n" for i in range(10)),
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Comedy\n2\tGoldenEye\t1995\tAction\n3\tOld\tunkonwn\tDrama\n",
}


class _FakePyPI:
    """Serves a fake recbole wheel to ``movielens._download_wheel``; counts the downloads."""

    def __init__(self, root: Path):
        self.wheel = root / f"recbole-{movielens.RECBOLE_VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(self.wheel, "w") as zf:
            for name, text in _FAKE_FILES.items():
                zf.writestr(movielens._WHEEL_DIR + name, text)
        self.sha256 = hashlib.sha256(self.wheel.read_bytes()).hexdigest()
        self.dests: list[Path] = []
        self.offline = False

    def download(self, dest: Path) -> Path:
        if self.offline:
            raise DatasetUnavailableError("MovieLens-100K: fake PyPI is offline")
        self.dests.append(dest)
        out = dest / self.wheel.name
        out.write_bytes(self.wheel.read_bytes())
        return out


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """Pin the fake wheel's digests (as for the real one) and serve it instead of PyPI."""
    pypi = _FakePyPI(tmp_path)
    digests = {n: hashlib.sha256(t.encode()).hexdigest() for n, t in _FAKE_FILES.items()}
    monkeypatch.setattr(movielens, "WHEEL_SHA256", pypi.sha256)
    monkeypatch.setattr(movielens, "FILE_SHA256", digests)
    monkeypatch.setattr(movielens, "_download_wheel", pypi.download)
    return pypi


def _never_unpickle(*args, **kwargs):
    raise AssertionError("the MovieLens loader must never unpickle")


def test_fake_wheel_loads_without_unpickling(fake_pypi, tmp_path, monkeypatch):
    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, _never_unpickle)
    ds = load_movielens_100k(cache_dir=tmp_path / "cache")
    assert len(ds) == 10 and ds.num_embeddings[:2] == [2, 3]
    assert ds.labels.tolist() == [float(1 + i % 5 >= 4) for i in range(10)]
    assert len(fake_pypi.dests) == 1 and not fake_pypi.dests[0].exists()  # wheel not kept
    load_movielens_100k(cache_dir=tmp_path / "cache")
    assert len(fake_pypi.dests) == 1  # the verified cache is reused


def test_wheel_sha256_mismatch_names_both_digests(fake_pypi, tmp_path, monkeypatch):
    monkeypatch.setattr(movielens, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=f"sha256 {fake_pypi.sha256}, expected {'0' * 64}"):
        load_movielens_100k(cache_dir=tmp_path / "cache")
    assert not fake_pypi.dests[0].exists()  # the downloaded wheel is gone
    assert not any((tmp_path / "cache").glob("ml-100k.*"))  # nothing cached


def test_file_in_wheel_mismatch_caches_nothing(fake_pypi, tmp_path, monkeypatch):
    monkeypatch.setitem(movielens.FILE_SHA256, "ml-100k.item", "f" * 64)
    with pytest.raises(ValueError, match=r"ml-100k\.item .*expected f{64}"):
        load_movielens_100k(cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("ml-100k.*"))


def test_corrupt_cache_is_discarded_and_fetched_again(fake_pypi, tmp_path, caplog):
    cache = tmp_path / "cache"
    load_movielens_100k(cache_dir=cache)
    user_file = cache / "ml-100k.user"
    user_file.write_text(_FAKE_FILES["ml-100k.user"].replace("85711", "85712"))
    with caplog.at_level(logging.WARNING, logger=movielens.__name__):
        ds = load_movielens_100k(cache_dir=cache)
    assert "corrupted or altered" in caplog.text and str(user_file) in caplog.text
    assert len(fake_pypi.dests) == 2
    assert user_file.read_text() == _FAKE_FILES["ml-100k.user"]
    assert len(ds) == 10


def test_corrupt_cache_offline_raises_and_deletes_it(fake_pypi, tmp_path):
    cache = tmp_path / "cache"
    load_movielens_100k(cache_dir=cache)
    with open(cache / "ml-100k.inter", "a") as f:
        f.write("1\t1\t5\t880000099\n")  # an extra rating slipped in
    fake_pypi.offline = True
    with pytest.raises(DatasetUnavailableError, match="did not match the pinned sha256"):
        load_movielens_100k(cache_dir=cache)
    assert not (cache / "ml-100k.inter").exists()
    assert (cache / "ml-100k.user").is_file()  # intact files stay
