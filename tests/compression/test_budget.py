"""Row budgets: per table (the paper) and over the whole model (small tables full while cheap)."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.compression.budget import allocate_rows, split_rows
from torchrec_lhf.compression.methods import make_plan
from torchrec_lhf.hash_build.job import BuildConfig, table_rows
from torchrec_lhf.hash_build.plan_builder import build_plan

ML = {
    "user": 943,
    "item": 1682,
    "age": 7,
    "gender": 2,
    "occupation": 21,
    "zip": 795,
    "genres": 19,
    "year": 72,
}


def test_table_budget_is_the_papers_rule() -> None:
    assert allocate_rows({"a": 1000, "b": 5, "c": 40}, 0.1, min_table_rows=10) == {"a": 100, "c": 4}
    assert allocate_rows({"a": 3}, 0.1, num_hashes=2) == {"a": 2}


def test_total_budget_by_hand() -> None:
    # 3,541 ids at 10% = 354 rows. The five tables under 100 ids (121 rows) stay full;
    # user, item and zip (3,420 ids) share 233 rows: 233 * N / 3420 = 64.25, 114.59, 54.16,
    # rounded by largest remainder to 64, 115, 54.
    rows = allocate_rows(ML, 0.1, budget="total", min_table_rows=100)
    assert rows == {
        "user": 64,
        "item": 115,
        "age": 7,
        "gender": 2,
        "occupation": 21,
        "zip": 54,
        "genres": 19,
        "year": 72,
    }
    # At 5% (177 rows) the small tables may take at most half (88): gender, age, genres and
    # occupation (49 rows) fit, year (72 more) does not and is compressed with the big ones.
    rows = allocate_rows(ML, 0.05, budget="total", min_table_rows=100)
    assert [rows[k] for k in ("gender", "age", "genres", "occupation")] == [2, 7, 19, 21]
    assert rows["year"] < 72 and sum(rows.values()) == 177


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.2, 0.1, 0.05, 0.01, 0.003])
@pytest.mark.parametrize("floor", [1, 100])
def test_total_budget_adds_up(fraction: float, floor: int) -> None:
    rows = allocate_rows(ML, fraction, budget="total", min_table_rows=floor)
    assert list(rows) == list(ML)
    assert sum(rows.values()) == round(fraction * sum(ML.values()))
    assert all(1 <= rows[k] <= n for k, n in ML.items())


def test_budget_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="'weekly'"):
        allocate_rows(ML, 0.1, budget="weekly")
    with pytest.raises(ValueError, match="got 0"):
        allocate_rows(ML, 0, budget="total")
    with pytest.raises(ValueError, match="cannot give 8 tables 2 row"):
        allocate_rows(ML, 0.003, budget="total", num_hashes=2)
    with pytest.raises(ValueError, match="table sizes"):
        allocate_rows({"a": 0}, 0.5)


def test_build_plan_and_job_agree_on_total_budget() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = {k: torch.randn(n, 2, generator=gen) for k, n in ML.items()}
    plan = build_plan(emb, None, fraction=0.1, budget="total", min_table_rows=100)
    assert {t.name: t.num_rows for t in plan} == {"user": 64, "item": 115, "zip": 54}
    config = BuildConfig(fraction=0.1, budget="total", min_table_rows=100, work_dir="w", out="o")
    assert table_rows(ML, config) == {"user": 64, "item": 115, "zip": 54}
    with pytest.raises(ValueError, match="needs a fraction"):
        BuildConfig(rows_per_table={"user": 5}, budget="total", work_dir="w", out="o")


@pytest.mark.parametrize("method", ["modulo", "qr", "fbdh", "memrec"])
def test_compression_methods_take_the_total_budget(method: str) -> None:
    counts = {k: torch.ones(n) for k, n in ML.items()} if method == "fbdh" else None
    plan = make_plan(method, ML, fraction=0.1, budget="total", min_table_rows=100, counts=counts)
    rows = {t.name: t.num_rows for t in plan}
    assert set(rows) == {"user", "item", "zip"} and plan.metadata["budget"] == "total"
    # qr cannot hit every size exactly (it picks the nearest m + ceil(N/m)); the others do
    assert rows == {"user": 64, "item": 115, "zip": 54} or method == "qr"
    assert abs(sum(rows.values()) - 233) <= 5


def test_split_rows():
    assert split_rows(10, 3) == [4, 3, 3]
    assert split_rows(2, 2) == [1, 1]
    with pytest.raises(ValueError, match="rows must be an int >= num_hashes=3"):
        split_rows(2, 3)
