"""Row budgets: per table (the paper) and over the whole model (small tables full while cheap)."""

from __future__ import annotations

import pytest
import torch

from tests._fixtures import MOVIELENS_HEIGHTS
from torchrec_lhf.cli import FlagError
from torchrec_lhf.compression.budget import (
    BudgetTooSmall,
    ModelBytes,
    allocate_rows,
    byte_budget,
    fit_to_bytes,
    rows_for_bytes,
    split_rows,
    table_bytes,
)
from torchrec_lhf.compression.methods import make_plan
from torchrec_lhf.compression.registry import plan_bytes
from torchrec_lhf.hash_build.job import BuildConfig, table_rows
from torchrec_lhf.hash_build.plan_builder import build_plan

ML = MOVIELENS_HEIGHTS


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
    # a usage error of the entry points (BudgetTooSmall, a FlagError), with a fraction that
    # fits: 16 rows of the 3,541 ids
    match = r"cannot give 8 tables 2 row\(s\) each; expected a fraction of the ids of at least "
    with pytest.raises(BudgetTooSmall, match=match + "0.00452"):
        allocate_rows(ML, 0.003, budget="total", num_hashes=2)
    rows = allocate_rows(ML, 0.00452, budget="total", num_hashes=2)
    assert sum(rows.values()) == 16 and min(rows.values()) == 2
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


# ------------------------------------------------------------------------- bytes
def test_byte_budget_by_hand_a_growing_remap_takes_rows_away() -> None:
    # 1,010 ids at dim 4 (16 bytes a row): 16,160 bytes; 20% = 3,232. "b" (10 ids) stays
    # full (160 bytes); "a" gets the rest: 3,072 bytes = 192 rows without an index.
    sizes = {"a": 1000, "b": 10}
    rows, at = rows_for_bytes(sizes, 0.2, embedding_dim=4, min_table_rows=100)
    assert rows == {"a": 192} and at.to_dict() == {
        "tables": 3232, "index": 0, "extras": 0, "total": 3232
    }  # fmt: skip
    # an index of 1 byte per id (1,000) takes 1,000 / 16 = 62.5 -> 63 rows away; of 2 bytes, 125
    for per_id, expected in ((1, 129), (2, 67)):
        rows, at = rows_for_bytes(
            sizes,
            0.2,
            embedding_dim=4,
            min_table_rows=100,
            index_bytes=lambda h, per_id=per_id: {t: per_id * 1000 for t in h},
        )
        assert rows == {"a": expected} and at.index == {"a": per_id * 1000}
        assert at.total <= 3232 < at.total + 16  # one more row would not fit


def test_byte_budget_counts_the_full_tables_and_concat_widths() -> None:
    # concat of 2 internal tables: D = 4 split 2 + 2; 11 rows -> heights 6 + 5 -> 88 bytes
    assert table_bytes(11, 2, "concat", 4) == 4 * (6 * 2 + 5 * 2)
    assert table_bytes(11, 2, "sum", 4) == 4 * 11 * 4
    rows, at = rows_for_bytes({"a": 100, "b": 100}, 0.5, embedding_dim=4, num_hashes=2)
    assert rows == {"a": 50, "b": 50} and at.total == 1600


def test_byte_budget_too_small_names_the_table_and_the_bytes() -> None:
    # every table at its fewest rows (1) still stores a's 2 bytes per id: 2,016 bytes
    with pytest.raises(BudgetTooSmall, match=r"table 'a' alone stores 2,016 bytes .*2,000 index"):
        rows_for_bytes(
            {"a": 1000, "b": 10},
            0.1,
            embedding_dim=4,
            index_bytes=lambda h: {t: 2000 for t in h if t == "a"},
        )
    with pytest.raises(ValueError, match="budget 'bytes' needs the model's bytes"):
        allocate_rows({"a": 10}, 0.5, budget="bytes")
    assert issubclass(BudgetTooSmall, ValueError)
    assert issubclass(BudgetTooSmall, FlagError)  # an entry point's usage error, exit 2


def test_a_budget_too_small_gives_the_smallest_fraction_that_fits() -> None:
    """Before, the error gave the bytes only: a user of ``--fraction`` had to work out the
    fraction. By hand: at the fewest rows a stores 1 row of 16 bytes and its 2,000 bytes of
    index, b 1 row: 2,032 of the full 16,160 bytes, 0.12574..., rounded up to 0.126."""
    args = dict(embedding_dim=4, index_bytes=lambda h: {t: 2000 for t in h if t == "a"})
    with pytest.raises(BudgetTooSmall, match=r"of at least 0\.126$"):
        rows_for_bytes({"a": 1000, "b": 10}, 0.1, **args, what="m")
    rows, at = rows_for_bytes({"a": 1000, "b": 10}, 0.126, **args)
    assert rows == {"a": 1, "b": 1} and at.total == 2032
    with pytest.raises(BudgetTooSmall, match=r"^m: a byte budget of 2,031 bytes"):
        rows_for_bytes({"a": 1000, "b": 10}, 0.1257, **args, what="m")
    # an index above the full tables' 16,160 bytes: no fraction fits, and none is offered
    args["index_bytes"] = lambda h: {t: 20_000 for t in h if t == "a"}
    with pytest.raises(BudgetTooSmall, match="even there: no fraction fits$"):
        rows_for_bytes({"a": 1000, "b": 10}, 1.0, **args)


def test_fit_to_bytes_keeps_a_fitting_fraction_when_bytes_are_not_monotone() -> None:
    # a cost that dips at f = 0.6 (like qr's m + ceil(N/m)): the fit never exceeds the budget
    def bytes_at(f: float) -> ModelBytes:
        return ModelBytes({"t": 500 if 0.55 < f < 0.65 else round(1000 * f)}, {}, {})

    f, at = fit_to_bytes(bytes_at, 700, lowest=0.001, what="t")
    assert at.total <= 700 and at.total == bytes_at(f).total and f >= 0.69
    assert fit_to_bytes(bytes_at, 5000, lowest=0.001, what="t")[0] == 1.0


@pytest.mark.parametrize("method", ["modulo", "qr", "fbdh", "memrec"])
@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.05])
def test_every_plan_method_fits_the_bytes_and_is_not_far_under(
    method: str, fraction: float
) -> None:
    counts = {k: torch.arange(n, 0, -1).double() for k, n in ML.items()}
    if method == "qr" and fraction == 0.05:  # qr's least size, 2 sqrt(N) rows a table
        with pytest.raises(BudgetTooSmall, match="table 'item' alone stores 5,312 bytes"):
            make_plan(method, ML, fraction=fraction, budget="bytes", embedding_dim=16)
        return
    plan = make_plan(
        method, ML, fraction=fraction, budget="bytes", embedding_dim=16,
        min_table_rows=0, counts=counts if method == "fbdh" else None,
    )  # fmt: skip
    budget = byte_budget(ML, fraction, 16)
    at = plan_bytes(plan, ML, 16)
    assert at.total <= budget and plan.metadata["bytes"] == at.to_dict()
    # within a few rows of the budget (qr moves in steps of m + ceil(N/m))
    assert at.total >= budget - (8 if method == "qr" else 3) * len(ML) * 64
    assert plan.metadata["fraction"] == fraction and plan.metadata["budget"] == "bytes"
    if method != "fbdh":  # computed from the id: nothing stored
        assert at.index == {t: 0 for t in ML}
    else:  # its frequent ids, what the plan stores (twice: see fbdh_plan); none in tiny tables
        assert at.index == {t: plan[t].remap_bytes() if t in plan else 0 for t in ML}
        assert all(at.index[t] > 0 for t in ("user", "item", "zip"))
