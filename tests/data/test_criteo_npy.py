"""Criteo ``.npy`` dataset and TSV converter: against TorchRec's own reader and preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

from torchrec_lhf.data import criteo_npy, load_dataset
from torchrec_lhf.data.criteo_npy import (
    META_FILE,
    MLPERF_NUM_EMBEDDINGS,
    load_criteo_npy,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CRITEO_HEAD = SHARED_DATA / "criteo-kaggle-head10k" / "train.txt"
DAY_ROWS = (37, 50, 23, 41)  # odd sizes: batches straddle days, day 3 splits 21 / 20
HEIGHTS = [7 + 3 * f for f in range(26)]
PARTS = ("dense", "sparse", "labels")


def _write_set(directory: Path, stems: list[str], rows: list[int], seed: int = 0) -> None:
    """Random files in the reference's dtypes; dense column 0 holds the global row index."""
    rng = np.random.default_rng(seed)
    first = 0
    for stem, n in zip(stems, rows):
        dense = rng.random((n, 13), dtype=np.float32)
        dense[:, 0] = np.arange(first, first + n)
        np.save(directory / f"{stem}_dense.npy", dense)
        np.save(directory / f"{stem}_sparse.npy", rng.integers(0, 2**32, (n, 26)))
        np.save(directory / f"{stem}_labels.npy", rng.integers(0, 2, (n, 1), dtype=np.int32))
        first += n


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("days")
    _write_set(directory, [f"day_{d}" for d in range(len(DAY_ROWS))], list(DAY_ROWS))
    return directory


def _rows_of(batches) -> list[int]:
    return [int(r) for b in batches for r in b.dense_features[:, 0].tolist()]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_batches_equal_torchrecs_reader(days: Path, split: str, world_size: int) -> None:
    ds = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS)
    stems = ["day_0", "day_1", "day_2"] if split == "train" else ["day_3"]
    for rank in range(world_size):
        ours = list(ds.batches(split, 4, rank=rank, world_size=world_size))
        theirs = list(
            InMemoryBinaryCriteoIterDataPipe(
                split,
                *([str(days / f"{s}_{p}.npy") for s in stems] for p in PARTS),
                batch_size=4,
                rank=rank,
                world_size=world_size,
                drop_last=True,
                hashes=HEIGHTS,
            )
        )
        assert len(ours) == len(theirs) == ds.num_batches(split, 4, world_size) > 0
        for a, b in zip(ours, theirs):
            assert torch.equal(a.dense_features, b.dense_features)
            assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
            assert torch.equal(a.sparse_features.lengths(), b.sparse_features.lengths())
            assert a.sparse_features.keys() == b.sparse_features.keys()
            assert torch.equal(a.labels, b.labels.float())


def test_splits_are_disjoint_and_follow_the_days(days: Path) -> None:
    ds = load_criteo_npy(days)
    assert ds.num_embeddings == list(MLPERF_NUM_EMBEDDINGS)  # no META_FILE: the MLPerf heights
    rows = {k: ds.splits[k].tolist() for k in ("train", "val", "test")}
    assert rows["train"] == list(range(110))  # days 0..2
    assert rows["val"] == list(range(110, 131)) and rows["test"] == list(range(131, 151))


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_rows_whose_union_is_the_split(
    days: Path, shuffle: bool, monkeypatch
) -> None:
    ds = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS)
    reads: list[tuple[int, int]] = []
    real_read = criteo_npy._NpyFile.read
    monkeypatch.setattr(
        criteo_npy._NpyFile,
        "read",
        lambda self, a, b: reads.append((a, b)) or real_read(self, a, b),
    )
    world_size, batch = 3, 5
    seen = []
    for rank in range(world_size):
        reads.clear()
        got = _rows_of(
            ds.batches("train", batch, rank=rank, world_size=world_size, shuffle=shuffle)
        )
        # NOTE: each rank reads exactly its rows (3 parts each), never more of a file
        assert sum(b - a for a, b in reads) == 3 * len(got)
        seen += got
    num = ds.num_batches("train", batch, world_size) * batch * world_size
    assert len(seen) == len(set(seen)) == num == 105
    assert sorted(seen) == ds.splits["train"][:num].tolist()


def test_shuffle_permutes_batches_by_seed_and_epoch(days: Path) -> None:
    ds = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS)

    def order(**kw) -> list[int]:
        return _rows_of(ds.batches("train", 4, rank=1, world_size=2, shuffle=True, **kw))

    assert order(epoch=0) == order(epoch=0) != order(epoch=1)
    assert sorted(order(epoch=1)) == sorted(_rows_of(ds.batches("train", 4, rank=1, world_size=2)))
    assert len(list(ds.batches("train", 4, shuffle=True, limit=3))) == 3


def test_make_batch_and_id_counts_stream(days: Path) -> None:
    ds = load_criteo_npy(days, num_embeddings_per_feature=HEIGHTS, chunk_rows=6)
    rows = torch.tensor([140, 3, 60, 60, 37])  # any order, across days, repeats
    batch = ds.make_batch(rows)
    assert batch.dense_features[:, 0].long().tolist() == rows.tolist()
    sparse = np.concatenate([np.load(days / f"day_{d}_sparse.npy") for d in range(4)])
    want = sparse[rows.numpy()] % np.array(HEIGHTS)
    assert batch.sparse_features.values().tolist() == want.T.reshape(-1).tolist()
    counts = ds.id_counts("train")
    train = sparse[:110] % np.array(HEIGHTS)
    for f in (0, 13, 25):
        assert counts[f].tolist() == np.bincount(train[:, f], minlength=HEIGHTS[f]).tolist()
    assert sum(int(c.sum()) for c in counts) == 110 * 26


def test_kaggle_layout_splits_80_10_10_and_reads_the_meta_heights(tmp_path: Path) -> None:
    _write_set(tmp_path, ["train"], [101])
    (tmp_path / META_FILE).write_text(json.dumps({"num_embeddings_per_feature": HEIGHTS}))
    ds = load_dataset(f"criteo-npy:{tmp_path}")
    assert ds.num_embeddings == HEIGHTS
    assert [ds.splits[k].numel() for k in ("train", "val", "test")] == [80, 10, 11]
    assert _rows_of(ds.batches("val", 5, rank=1, world_size=2)) == list(range(85, 90))
    assert _rows_of(ds.batches("test", 3)) == list(range(90, 99))


@pytest.mark.parametrize("label", [2, -1])
def test_a_label_other_than_0_or_1_is_named_where_its_batch_is_read(
    tmp_path: Path, label: int
) -> None:
    """Before, a label of 2 (or -1) was read as the float 2.0 and trained against without
    a word. The files load (a label is read with its batch); that batch names the file and
    the row, by ``batches`` and by ``make_batch``; the other batches read as before."""
    _write_set(tmp_path, ["day_0", "day_1"], [10, 12])
    labels = np.load(tmp_path / "day_1_labels.npy")
    labels[7, 0] = label  # global row 17
    np.save(tmp_path / "day_1_labels.npy", labels)
    ds = load_criteo_npy(tmp_path, num_embeddings_per_feature=HEIGHTS)
    match = rf"day_1_labels\.npy: row 7 has label {label}; expected 0 or 1"
    assert _rows_of(ds.batches("val", 3)) == list(range(10, 16))  # day 1's first half
    with pytest.raises(ValueError, match=match):
        list(ds.batches("test", 3))  # rows 16..21: the first batch holds row 17
    with pytest.raises(ValueError, match=match):
        ds.make_batch(torch.tensor([3, 17, 2]))
    assert ds.make_batch(torch.tensor([3, 16, 2])).labels.shape == (3,)


def _break(directory: Path, what: str) -> str:
    """Damage a copy of a 2-day set; return the text the ValueError must contain."""
    _write_set(directory, ["day_0", "day_1"], [10, 12])
    if what == "missing_part":
        (directory / "day_1_labels.npy").unlink()
        return "day_1_labels.npy: missing"
    if what == "wrong_shape":
        np.save(directory / "day_0_sparse.npy", np.zeros((10, 25), dtype=np.int64))
        return "day_0_sparse.npy: expected a C-order integer array of shape (N, 26)"
    if what == "mismatched_rows":
        np.save(directory / "day_1_dense.npy", np.zeros((11, 13), dtype=np.float32))
        return "day_1_*.npy: expected equal row counts"
    if what == "gap_in_days":
        for p in PARTS:
            (directory / f"day_1_{p}.npy").rename(directory / f"day_2_{p}.npy")
        return "expected days 0..K-1 with K >= 2"
    if what == "both_layouts":
        _write_set(directory, ["train"], [5])
        return "found both"
    if what == "truncated":
        path = directory / "day_1_sparse.npy"
        path.write_bytes(path.read_bytes()[:-8])
        return "day_1_sparse.npy: truncated"
    if what == "damaged_header":  # NumPy's header tokenizer raised TokenError
        path = directory / "day_0_labels.npy"
        path.write_bytes(path.read_bytes().replace(b"}", b" ", 1))
        return "day_0_labels.npy: not an .npy file"
    if what == "not_npy":
        (directory / "day_0_dense.npy").write_bytes(b"hello")
        return "day_0_dense.npy: not an .npy file"
    if what == "meta_string":
        (directory / META_FILE).write_text('{"num_embeddings_per_feature": "26"}')
        return f"{META_FILE}: num_embeddings_per_feature must be a list of 26 ints >= 1, got '26'"
    (directory / META_FILE).write_text("[1, 2]")
    return f"{META_FILE}: expected a JSON object with num_embeddings_per_feature"


@pytest.mark.parametrize(
    "what",
    [
        "missing_part",
        "wrong_shape",
        "mismatched_rows",
        "gap_in_days",
        "both_layouts",
        "truncated",
        "damaged_header",
        "not_npy",
        "meta",
        "meta_string",
    ],
)
def test_bad_directories_are_named(tmp_path: Path, what: str) -> None:
    message = _break(tmp_path, what)
    with pytest.raises(ValueError, match="^" + str(tmp_path)) as info:
        load_criteo_npy(tmp_path)
    assert message in str(info.value)


def test_bad_paths_and_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_criteo_npy(tmp_path / "nope")
    with pytest.raises(ValueError, match="found neither"):
        load_criteo_npy(tmp_path)
    _write_set(tmp_path, ["day_0", "day_1"], [4, 4])
    with pytest.raises(ValueError, match="num_embeddings_per_feature must be 26"):
        load_criteo_npy(tmp_path, num_embeddings_per_feature=[5, 5])
    with pytest.raises(ValueError, match="unknown split"):
        load_criteo_npy(tmp_path).num_batches("dev", 2)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_dense_value_is_named_where_its_batch_is_read(
    tmp_path: Path, value: float
) -> None:
    """Before, a NaN (or inf) dense value was read into its batch, and the loss of every
    step after it was NaN, without a word. As a bad label: the batch that holds it names
    the file, the row and the column; the other batches read as before."""
    _write_set(tmp_path, ["day_0", "day_1"], [10, 12])
    dense = np.load(tmp_path / "day_0_dense.npy")
    dense[6, 4] = value  # global row 6
    np.save(tmp_path / "day_0_dense.npy", dense)
    ds = load_criteo_npy(tmp_path, num_embeddings_per_feature=HEIGHTS)
    match = rf"day_0_dense\.npy: row 6 has dense value {value} in column 4; expected finite"
    assert _rows_of(ds.batches("train", 3, limit=2)) == list(range(6))
    with pytest.raises(ValueError, match=match):
        list(ds.batches("train", 3))  # the third batch holds rows 6..8
    with pytest.raises(ValueError, match=match):
        ds.make_batch(torch.tensor([9, 6]))
    assert ds.make_batch(torch.tensor([9, 5])).dense_features.shape == (2, 13)
