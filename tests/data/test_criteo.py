"""Criteo TSV loader: the real 10k-line head (skipped when absent) and tiny hand-made files."""

from __future__ import annotations

import gzip
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from torchrec_lhf.data import criteo, load_criteo_tsv, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CRITEO_HEAD = SHARED_DATA / "criteo-kaggle-head10k" / "train.txt"


@pytest.fixture(scope="module")
def head():
    if not CRITEO_HEAD.is_file():
        pytest.skip(f"Criteo head not found at {CRITEO_HEAD} (the repo's sibling shared/data)")
    rows = [line.rstrip("\n").split("\t") for line in CRITEO_HEAD.open()]
    return load_criteo_tsv(CRITEO_HEAD), rows


def test_real_head_shapes_labels_splits(head):
    ds, rows = head
    assert len(ds) == len(rows) == 10_000
    assert len(ds.feature_names) == 26 and len(ds.dense_names) == 13
    assert ds.feature_names[0] == "cat_0" and ds.dense_names[-1] == "int_12"
    assert ds.dense.shape == (10_000, 13) and ds.lengths.shape == (10_000, 26)
    assert bool((ds.lengths == 1).all())
    label_rate = sum(r[0] == "1" for r in rows) / len(rows)
    assert abs(label_rate - 0.218) < 0.001
    assert float(ds.labels.mean()) == pytest.approx(label_rate)
    assert [ds.splits[k].tolist() for k in ("train", "val", "test")] == [
        list(range(8000)),
        list(range(8000, 9000)),
        list(range(9000, 10000)),
    ]


def test_real_head_ids_match_a_plain_python_reference(head):
    ds, rows = head
    ids = ds.values.view(-1, 26)
    for col in (0, 2, 19, 25):  # a few columns, incl. one with many empties
        strings = [r[14 + col] for r in rows]
        counts = Counter(s for s in strings if s)
        # id 1.. by descending count, ties by hex value; "" -> 0
        ranked = sorted(counts, key=lambda s: (-counts[s], int(s, 16)))
        expected = [0 if not s else 1 + ranked.index(s) for s in strings]
        assert ids[:, col].tolist() == expected
        assert ds.num_embeddings[col] == len(counts) + 1
    num_empty = sum(s == "" for r in rows for s in r[14:])
    assert (
        num_empty > 0 and int((ids == 0).sum()) == num_empty == ds.info["empty_categorical_fields"]
    )
    assert 4 <= min(ds.num_embeddings) and max(ds.num_embeddings) <= 5_522


def test_real_head_dense_transform(head):
    ds, rows = head
    for i in (0, 1, 2, 5000, 9999):
        expected = [math.log1p(max(int(x), 0)) if x else 0.0 for x in rows[i][1:14]]
        assert ds.dense[i].tolist() == pytest.approx(expected, rel=1e-6)
    assert float(ds.dense.min()) == 0.0


def test_real_head_min_count_and_max_rows(head):
    ds, _ = head
    rare = load_criteo_tsv(CRITEO_HEAD, min_count=5, max_rows=2000)
    assert len(rare) == 2000
    assert all(a <= b for a, b in zip(rare.num_embeddings, ds.num_embeddings))
    per_split = [rare.id_counts(s) for s in ("train", "val", "test")]
    totals = [sum(c) for c in zip(*per_split)]  # per feature, counts over all 2000 rows
    assert all(int(t[1:].min()) >= 5 for t in totals if t.numel() > 1)  # kept ids: >= 5 rows
    assert all(int(t.sum()) == 2000 for t in totals)
    assert rare.info["rare_categorical_fields"] > 0


def test_real_head_small_blocks_give_the_same_result(head, monkeypatch):
    ds, _ = head
    ref = load_criteo_tsv(CRITEO_HEAD, max_rows=1234)  # one 16 MiB block
    monkeypatch.setattr(criteo, "_BLOCK_BYTES", 997)  # blocks cut lines everywhere
    small = load_criteo_tsv(CRITEO_HEAD, max_rows=1234)
    assert len(small) == 1234 and small.num_embeddings == ref.num_embeddings
    assert torch.equal(small.values, ref.values)
    assert torch.equal(small.dense, ds.dense[:1234]) and torch.equal(small.labels, ds.labels[:1234])


LINE = "\t".join(["1", "5", "", "-3"] + ["1"] * 10 + ["a1b2c3d4", ""] + ["0f"] * 24)


def test_tiny_file_by_hand(tmp_path):
    path = tmp_path / "t.txt"
    other = LINE.replace("a1b2c3d4", "ffffffff").replace("1\t5\t", "0\t0\t", 1)
    path.write_text("\n".join([LINE, other, LINE]) + "\n")
    ds = load_criteo_tsv(path)
    assert ds.labels.tolist() == [1.0, 0.0, 1.0]
    assert ds.dense[0, :3].tolist() == pytest.approx([math.log(6), 0.0, 0.0])
    ids = ds.values.view(3, 26)
    assert ids[:, 0].tolist() == [1, 2, 1]  # a1b2c3d4 twice -> 1, ffffffff once -> 2
    assert ids[:, 1].tolist() == [0, 0, 0] and ds.num_embeddings[1] == 1  # always empty
    trailing = tmp_path / "trailing.txt"
    trailing.write_text("\n".join([LINE, other, LINE]) + "\n\n\n")
    assert torch.equal(load_criteo_tsv(trailing).values, ds.values)
    crlf = tmp_path / "crlf.txt"  # Windows line ends, no final newline
    crlf.write_text("\r\n".join([LINE, other, LINE]))
    assert torch.equal(load_criteo_tsv(crlf).values, ds.values)
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert torch.equal(load_criteo_tsv(gz).values, ds.values)
    assert torch.equal(load_dataset(f"criteo-tsv:{path}", max_rows=2).values, ds.values[:52])


@pytest.mark.parametrize(
    "line, message",
    [
        (LINE + "\textra", r"t.txt:2: expected 40 tab-separated fields, found 41"),
        (LINE.replace("a1b2c3d4", "xyz"), r"t.txt:2: column cat_0 must be a hex string, got 'xyz'"),
        (
            LINE.replace("\t5\t", "\tfive\t", 1),
            r"t.txt:2: column int_0 must be an integer, got 'five'",
        ),
        ("2" + LINE[1:], r"t.txt:2: label must be 0 or 1, got '2'"),
        (LINE[1:], r"t.txt:2: label must be 0 or 1, got ''"),
        ("", r"t.txt:2: expected 40 tab-separated fields, found 1"),  # a blank line inside
        (LINE.replace("\t5\t", "\t-\t", 1), r"t.txt:2: column int_0 must be an integer of at"),
        (LINE.replace("a1b2c3d4", "a" * 16), r"t.txt:2: column cat_0 must be a hex string of at"),
    ],
)
def test_malformed_lines_are_named(tmp_path, line, message):
    path = tmp_path / "t.txt"
    path.write_text(LINE + "\n" + line + "\n" + LINE + "\n")
    with pytest.raises(ValueError, match=message):
        load_criteo_tsv(path)


def test_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_criteo_tsv(tmp_path / "missing.txt")
    (tmp_path / "t.txt").write_text(LINE + "\n")
    with pytest.raises(ValueError, match="min_count must be an int >= 1, got 0"):
        load_criteo_tsv(tmp_path / "t.txt", min_count=0)
    with pytest.raises(ValueError, match="max_rows must be an int >= 1, got 0"):
        load_criteo_tsv(tmp_path / "t.txt", max_rows=0)
