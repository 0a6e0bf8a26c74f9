"""CSV loader on tiny temp files: ids by frequency, splits, and the error messages."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.data import load_csv, load_dataset

TINY = """click,city,device,price,ts
1,paris,ios,1.5,30
0,rome,android,2.0,10
1,paris,,0.5,20
0,oslo,ios,,40
1,paris,android,3,50
"""


@pytest.fixture
def tiny_csv(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(TINY)
    return path


def test_tiny_by_hand(tiny_csv):
    ds = load_csv(
        tiny_csv, label="click", categorical=["city", "device"], dense=["price"], time="ts"
    )
    assert ds.name == "clicks" and ds.feature_names == ["city", "device"]
    ids = ds.values.view(5, 2)
    # city: paris x3 -> 1, then oslo and rome x1 (ties alphabetical) -> 2, 3
    assert ids[:, 0].tolist() == [1, 3, 1, 2, 1]
    # device: android x2 (1), ios x2 (2), one empty -> reserved 0
    assert ids[:, 1].tolist() == [2, 1, 0, 2, 1]
    assert ds.num_embeddings == [4, 3]
    assert ds.dense[:, 0].tolist() == [1.5, 2.0, 0.5, 0.0, 3.0]  # empty -> 0.0
    assert ds.labels.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # time order: ts 10, 20, 30, 40, 50 -> rows 1, 2, 0, 3, 4; 80/10/10 of 5 = 4/0/1
    assert ds.splits["train"].tolist() == [1, 2, 0, 3] and ds.splits["test"].tolist() == [4]


def test_min_count_no_dense_and_seeded_split(tiny_csv):
    ds = load_csv(tiny_csv, label="click", categorical=["city"], min_count=2)
    assert ds.values.tolist() == [1, 0, 1, 0, 1] and ds.num_embeddings == [2]
    assert ds.dense_names == ["bias"] and ds.dense.tolist() == [[1.0]] * 5
    again = load_csv(tiny_csv, label="click", categorical=["city"], min_count=2)
    assert all(torch.equal(ds.splits[k], again.splits[k]) for k in ds.splits)
    assert sorted(torch.cat(list(ds.splits.values())).tolist()) == [0, 1, 2, 3, 4]


def test_label_threshold_and_registry(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,rating\na,5\nb,3\nc,4\n")
    ds = load_dataset(f"csv:{path}", label="rating", categorical=["user"], label_threshold=4)
    assert ds.labels.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        (TINY, dict(categorical=["town"]), r"columns \['town'\] not found"),
        (
            TINY,
            dict(categorical=["city"], dense=["device"]),
            r"clicks.csv:2: column 'device' must be a finite number, got 'ios'",
        ),
        (
            TINY.replace("0,oslo", "maybe,oslo"),
            dict(categorical=["city"]),
            r"clicks.csv:5: column 'click' must be a finite number, got 'maybe'",
        ),
        (
            TINY.replace("0,oslo", "2,oslo"),
            dict(categorical=["city"]),
            r"clicks.csv:5: column 'click' must be 0 or 1 .*got '2'",
        ),
        (
            TINY.replace("1,paris,,0.5,20", "1,paris"),
            dict(categorical=["city"]),
            r"clicks.csv:4: expected 5 fields, found 2",
        ),
        (
            TINY,
            dict(categorical=["city"], dense=["price"], time="device"),
            r"column 'device' is empty",
        ),
        (
            TINY.replace("3,50", "inf,50"),
            dict(categorical=["city"], dense=["price"]),
            r"clicks.csv:6: column 'price' must be a finite number, got 'inf'",
        ),
        (TINY, dict(categorical=["city", "city"]), r"columns used twice.*'city'"),
        (TINY, dict(categorical="city"), "must be lists of column names"),
        (TINY, dict(categorical=[]), "at least one column"),
        ("", dict(categorical=["city"]), "empty file"),
        ("click,city\n", dict(categorical=["city"]), "no data rows"),
        (
            TINY.replace("click,city,device,price,ts", "click,city,city,price,ts"),
            dict(categorical=["city"]),
            r"columns \['city'\] appear more than once in the header",
        ),
    ],
)
def test_errors_name_column_row_and_value(tmp_path, text, kwargs, message):
    path = tmp_path / "clicks.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_csv(path, label="click", **kwargs)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    """Before, a spreadsheet export's byte-order mark made the first column '\\ufeffclick':
    ``columns ['click'] not found``."""
    path = tmp_path / "clicks.csv"
    path.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    ds = load_csv(path, label="click", categorical=["city", "device"], dense=["price"], time="ts")
    plain = tmp_path / "plain.csv"
    plain.write_text(TINY)
    want = load_csv(
        plain, label="click", categorical=["city", "device"], dense=["price"], time="ts"
    )
    assert torch.equal(ds.labels, want.labels) and torch.equal(ds.values, want.values)
