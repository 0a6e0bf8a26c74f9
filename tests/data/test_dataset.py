"""RecDataset: validation, hand-checked KJT batches, distributed slicing, counts, save/load.

Legend: N samples, F features, B batch size.
"""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.data import RecDataset
from torchrec_lhf.data._util import (
    EMPTY,
    feature_major_to_sample_major,
    frequency_encode,
    gather_segments,
    split_by_order,
)


def _splits(train, val=(), test=()):
    t = lambda x: torch.tensor(list(x), dtype=torch.int64)  # noqa: E731
    return {"train": t(train), "val": t(val), "test": t(test)}


def tiny(**overrides) -> RecDataset:
    """3 samples, features a (height 3) and b (height 5, multi-hot).

    sample 0: a=[0],  b=[4, 1]
    sample 1: a=[2],  b=[]
    sample 2: a=[],   b=[3]
    """
    kwargs = dict(
        name="tiny",
        feature_names=["a", "b"],
        num_embeddings=[3, 5],
        dense_names=["row"],
        dense=torch.tensor([[0.0], [1.0], [2.0]]),
        lengths=torch.tensor([[1, 2], [1, 0], [0, 1]], dtype=torch.int32),
        values=torch.tensor([0, 4, 1, 2, 3]),
        labels=torch.tensor([0.0, 1.0, 1.0]),
        splits=_splits([0, 1, 2]),
        info={"source": "hand"},
    )
    kwargs.update(overrides)
    return RecDataset(**kwargs)


def sequential(n: int) -> RecDataset:
    """n one-hot samples; the dense column is the row index, so batches name their rows."""
    return RecDataset(
        name="seq",
        feature_names=["a"],
        num_embeddings=[n],
        dense_names=["row"],
        dense=torch.arange(n, dtype=torch.float32).view(-1, 1),
        lengths=torch.ones(n, 1, dtype=torch.int32),
        values=torch.arange(n),
        labels=torch.zeros(n),
        splits=split_by_order(torch.arange(n)),
        info={},
    )


def test_hand_checked_kjt():
    ds = tiny()
    batch = ds.make_batch(torch.tensor([2, 0]))
    kjt = batch.sparse_features
    assert kjt.keys() == ["a", "b"]
    # feature-major: a of rows (2, 0), then b of rows (2, 0)
    assert kjt.lengths().tolist() == [0, 1, 1, 2]
    assert kjt.lengths().dtype == torch.int32
    assert kjt.values().tolist() == [0, 3, 4, 1]
    assert kjt.values().dtype == torch.int64
    assert [t.tolist() for t in kjt["b"].to_dense()] == [[3], [4, 1]]
    assert batch.dense_features.tolist() == [[2.0], [0.0]]
    assert batch.labels.tolist() == [1.0, 0.0]


def test_batches_drop_tail_and_limit():
    ds = tiny()
    assert [b.labels.tolist() for b in ds.batches("train", 2)] == [[0.0, 1.0]]
    assert ds.num_batches("train", 2) == 1
    assert ds.num_batches("train", 4) == 0 and list(ds.batches("train", 4)) == []
    assert len(list(ds.batches("train", 1, limit=2))) == 2
    assert len(ds) == 3


def test_id_counts_hand_checked():
    ds = tiny()
    a, b = ds.id_counts("train")
    assert a.tolist() == [1, 0, 1] and b.tolist() == [0, 1, 0, 1, 1]
    ds2 = tiny(splits=_splits([1], [0], [2]))
    assert [c.tolist() for c in ds2.id_counts("val")] == [[1, 0, 0], [0, 1, 0, 0, 1]]
    assert all(c.dtype == torch.int64 for c in ds2.id_counts("test"))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_slicing_disjoint_covering_equal(world_size):
    ds, batch_size = sequential(103), 4
    split_rows = ds.splits["train"].tolist()  # 82 rows
    per_rank = [
        [
            b.dense_features[:, 0].long().tolist()
            for b in ds.batches("train", batch_size, rank=r, world_size=world_size)
        ]
        for r in range(world_size)
    ]
    counts = {len(p) for p in per_rank}
    expected = len(split_rows) // (batch_size * world_size)
    assert counts == {expected} == {ds.num_batches("train", batch_size, world_size)}
    rows = [row for p in per_rank for batch in p for row in batch]
    assert all(len(batch) == batch_size for p in per_rank for batch in p)
    assert len(rows) == len(set(rows)) == expected * batch_size * world_size
    assert sorted(rows) == split_rows[: len(rows)]  # the dropped rows are the tail
    # rank r holds slice r of each global batch
    assert per_rank[-1][0] == split_rows[(world_size - 1) * batch_size : world_size * batch_size]


def test_shuffle_same_on_all_ranks_and_new_per_epoch():
    ds = sequential(100)

    def rows(rank, epoch, world_size=2):
        it = ds.batches(
            "train", 5, rank=rank, world_size=world_size, shuffle=True, seed=7, epoch=epoch
        )
        return [int(x) for b in it for x in b.dense_features[:, 0]]

    r0, r1 = rows(0, 0), rows(1, 0)
    assert set(r0).isdisjoint(r1) and sorted(r0 + r1) == list(range(80))
    assert rows(0, 0) == r0  # deterministic
    assert rows(0, 1) != r0  # epoch changes the order
    assert r0 != list(range(0, 80))[: len(r0)]


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(values=torch.tensor([0, 5, 1, 2, 3])), "feature 'b': id 5 out of range"),
        (dict(values=torch.tensor([0, 4, 1, 2])), "lengths sum to 5"),
        (dict(labels=torch.tensor([0.0, 2.0, 1.0])), "labels must be 0 or 1, found 2.0"),
        (dict(splits=_splits([0, 1], [1], [2])), "row 1 is used 2 times"),
        (dict(splits={"train": torch.tensor([0])}), "exactly the keys"),
        (dict(splits=_splits([0, 3])), r"\[0, 3\], expected \[0, 3\)"),
        (dict(dense_names=[], dense=torch.zeros(3, 0)), "at least one dense column"),
        (dict(dense=torch.zeros(3, 1, dtype=torch.float64)), "dense must be torch.float32"),
        (dict(lengths=torch.tensor([[1, 2], [1, 0], [0, 1]])), "lengths must be torch.int32"),
        (dict(num_embeddings=[3]), "num_embeddings must be 2 values"),
        (dict(num_embeddings=[3, 5.5]), r"num_embeddings must be 2 values >= 1 .* got \[3, 5.5\]"),
        (dict(num_embeddings=[3, "5"]), r"num_embeddings must be 2 values >= 1 .* got \[3, '5'\]"),
        (
            dict(num_embeddings=[True, 5]),
            r"num_embeddings must be 2 values >= 1 .* got \[True, 5\]",
        ),
        (dict(feature_names=["a", "a"]), "distinct names"),
        (dict(info={"x": torch.zeros(1)}), "JSON-serializable"),
    ],
)
def test_validation_names_the_bad_value(override, message):
    with pytest.raises(ValueError, match=message):
        tiny(**override)


def test_batch_argument_errors():
    ds = tiny()
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        list(ds.batches("dev", 1))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        list(ds.batches("train", 1, rank=2, world_size=2))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        ds.num_batches("train", 0)


def test_save_load_roundtrip_and_corruption(tmp_path):
    ds = tiny()
    path = tmp_path / "tiny.safetensors"
    ds.save(path)
    back = RecDataset.load(path)
    assert back.feature_names == ds.feature_names and back.info == ds.info
    for name in ("dense", "lengths", "values", "labels"):
        assert torch.equal(getattr(back, name), getattr(ds, name))
    assert all(torch.equal(back.splits[k], ds.splits[k]) for k in ds.splits)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch|not a readable"):
        RecDataset.load(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_embeddings", [3, 5.5], r"invalid dataset: num_embeddings must be 2 values >= 1"),
        ("num_embeddings", [3, "5"], r"invalid dataset: num_embeddings must be 2 values >= 1"),
        ("name", None, r"manifest and tensors disagree \(KeyError\('name'\)"),
        ("splits", ["train", "nope"], r"manifest and tensors disagree \(KeyError\('split_nope'\)"),
    ],
)
def test_a_hand_edited_manifest_is_named(tmp_path, key, value, message):
    """Before, a float or string height loaded as one (``int`` only compared it), and a
    missing entry was a KeyError naming no file."""
    from torchrec_lhf._io import load_tensors, save_tensors

    path = tmp_path / "tiny.safetensors"
    tiny().save(path)
    tensors, manifest = load_tensors(path, "rec_dataset")
    manifest.pop("sha256")
    if value is None:
        del manifest[key]
    else:
        manifest[key] = value
    save_tensors(path, tensors, manifest)
    with pytest.raises(ValueError, match=rf"tiny\.safetensors: {message}"):
        RecDataset.load(path)


def test_frequency_encode_hand_checked():
    # column 0: 7 x3, 5 x2, 9 x1, one empty; column 1: all 4
    raw = torch.tensor([[7, 4], [5, 4], [7, 4], [EMPTY, 4], [9, 4], [5, 4], [7, 4]])
    ids, heights = frequency_encode(raw)
    assert ids[:, 0].tolist() == [1, 2, 1, 0, 3, 2, 1] and heights == [4, 2]
    assert ids[:, 1].tolist() == [1] * 7
    ids, heights = frequency_encode(raw, min_count=2)
    assert ids[:, 0].tolist() == [1, 2, 1, 0, 0, 2, 1] and heights == [3, 2]
    ids, heights = frequency_encode(torch.tensor([[3], [1], [3]]), reserve=False)
    assert ids[:, 0].tolist() == [0, 1, 0] and heights == [2]
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        frequency_encode(raw, min_count=0)


def test_jagged_helpers():
    values = torch.tensor([10, 11, 12, 13, 14])
    got = gather_segments(values, torch.tensor([3, 0, 1]), torch.tensor([2, 0, 2]))
    assert got.tolist() == [13, 14, 11, 12]
    # feature-major [a0, a1 | b0 b0' , b1] -> sample-major [a0, b0, b0', a1, b1]
    lengths = torch.tensor([[1, 2], [1, 1]], dtype=torch.int32)
    out = feature_major_to_sample_major(torch.tensor([1, 2, 30, 31, 40]), lengths)
    assert out.tolist() == [1, 30, 31, 2, 40]


def test_frequency_encode_wide_values_take_the_compressing_path():
    big = 2**61
    raw = torch.tensor([[big, 5], [EMPTY, 5], [big, 6], [3, 6], [big, 6]])
    ids, heights = frequency_encode(raw)
    assert ids[:, 0].tolist() == [1, 0, 1, 2, 1] and ids[:, 1].tolist() == [2, 2, 1, 1, 1]
    assert heights == [3, 3]


def test_batches_feed_a_torchrec_embedding_bag_collection():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    ds = tiny()
    tables = [
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=1, num_embeddings=n, feature_names=[f])
        for f, n in zip(ds.feature_names, ds.num_embeddings)
    ]
    ebc = EmbeddingBagCollection(tables=tables)
    with torch.no_grad():  # row i of every table holds the value i, so a bag sums its ids
        for w in ebc.parameters():
            w.copy_(torch.arange(w.shape[0], dtype=torch.float32).view(-1, 1))
    pooled = ebc(next(ds.batches("train", 3)).sparse_features).to_dict()
    assert pooled["a"][:, 0].tolist() == [0.0, 2.0, 0.0]  # a=[0], [2], []
    assert pooled["b"][:, 0].tolist() == [5.0, 0.0, 3.0]  # b=[4, 1], [], [3]
