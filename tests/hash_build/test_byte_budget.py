"""A learned plan under a byte budget: the remap's bytes before clustering, by hand; the
plan built in one process and by the job at world size 2 fit and agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.hash_build.test_job import HEIGHTS, MIN_ROWS, _build, _teacher
from torchrec_lhf.compression.budget import BudgetTooSmall, byte_budget
from torchrec_lhf.compression.registry import plan_bytes
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.byte_budget import learned_index_bytes, learned_rows_for_bytes
from torchrec_lhf.hash_build.config import BuildConfig, table_rows
from torchrec_lhf.hash_build.head_tail import HeadTail
from torchrec_lhf.hash_build.plan_builder import build_plan


def test_learned_index_bytes_by_hand() -> None:
    sizes = {"a": 1000, "b": 40_000}
    heads = {"a": (100, 999), "b": None}  # b: every id clustered (the paper): dense
    # dense: a byte an id while every dense height is at most 256 (uint8), 2 while int16
    assert learned_index_bytes(sizes, heads, {"a": [10], "b": [20]}, "dense") == {
        "a": 1000,
        "b": 40_000,
    }
    assert learned_index_bytes(sizes, heads, {"a": [10], "b": [257]}, "dense") == {
        "a": 2000,
        "b": 80_000,
    }
    # a dense height above 2**15 widens every dense hash of the module to int32
    assert learned_index_bytes(sizes, heads, {"a": [10], "b": [33_000]}, "dense") == {
        "a": 4000,
        "b": 160_000,
    }
    # compact: 100 head ids x (int32 id + int16 row); auto takes it (600 < 2,000)
    for encoding in ("compact", "auto"):
        got = learned_index_bytes(sizes, heads, {"a": [300, 300], "b": [400]}, encoding)
        assert got == {"a": 1200, "b": 80_000}
    # "fill": a head of 100 ids grows to its region's rows (half of 300), up to the 700 ids
    # seen; the largest id seen sets the key width
    fill = (0.5, {"a": (700, 999)})
    got = learned_index_bytes(sizes, heads, {"a": [300], "b": [20]}, "compact", fill)
    assert got["a"] == 150 * 6
    got = learned_index_bytes(sizes, heads, {"a": [5000], "b": [20]}, "compact", fill)
    assert got["a"] == 700 * 6  # no more than the ids seen
    # a head of 400 ids: compact 2,400 > dense 2,000, so auto stays dense; compact does not
    big = {"a": (400, 999), "b": None}
    assert learned_index_bytes(sizes, big, {"a": [300], "b": [400]}, "auto")["a"] == 2000
    assert learned_index_bytes(sizes, big, {"a": [300], "b": [400]}, "compact")["a"] == 2400
    # at most 256 rows, dense is a byte an id: 100 head ids (600) against 1,000
    assert learned_index_bytes(sizes, heads, {"a": [10], "b": [20]}, "auto")["a"] == 600
    assert learned_index_bytes(sizes, big, {"a": [10], "b": [20]}, "auto")["a"] == 1000


def _teacher_tables() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sizes = {"a": 3000, "b": 500, "c": 20}
    emb = {k: torch.randn(n, 4, generator=g) for k, n in sizes.items()}
    counts = {k: torch.randint(0, 30, (n,), generator=g) for k, n in sizes.items()}
    return emb, counts


@pytest.mark.parametrize(
    "head_tail",
    [
        None,
        HeadTail(min_count=10, tail_fraction=0.7),
        HeadTail(min_count=25, encoding="compact"),
        HeadTail(min_count=28, tail_fraction=0.5, encoding="compact", tail_region="fill"),
    ],
)
@pytest.mark.parametrize("fraction", [0.2, 0.1])
def test_build_plan_fits_the_bytes_it_predicted(
    head_tail: HeadTail | None, fraction: float
) -> None:
    emb, counts = _teacher_tables()
    sizes = {k: e.shape[0] for k, e in emb.items()}
    plan = build_plan(
        emb, counts, fraction=fraction, budget="bytes", embedding_dim=16, min_table_rows=100,
        head_tail=head_tail,
    )  # fmt: skip
    rows, predicted = learned_rows_for_bytes(
        sizes, counts, fraction=fraction, embedding_dim=16, min_table_rows=100,
        head_tail=head_tail,
    )  # fmt: skip
    at = plan_bytes(plan, sizes, 16)
    assert {t.name: t.num_rows for t in plan} == rows
    assert at == predicted and sum(at.index.values()) == plan.remap_bytes()
    budget = byte_budget(sizes, fraction, 16)
    assert budget - 2 * 64 < at.total <= budget  # within two rows of 64 bytes
    assert at.tables["c"] == 20 * 64  # under min_table_rows: full, and counted


def test_a_smaller_remap_buys_rows() -> None:
    emb, counts = _teacher_tables()
    kw = dict(fraction=0.1, budget="bytes", embedding_dim=16, min_table_rows=100)
    dense = build_plan(emb, counts, head_tail=HeadTail(min_count=28, encoding="dense"), **kw)
    compact = build_plan(emb, counts, head_tail=HeadTail(min_count=28, encoding="compact"), **kw)
    assert compact.remap_bytes() < dense.remap_bytes()
    saved = dense.remap_bytes() - compact.remap_bytes()
    rows_gained = sum(t.num_rows for t in compact) - sum(t.num_rows for t in dense)
    assert abs(rows_gained - saved / 64) <= 2  # the bytes saved, in rows of 64 bytes


def test_byte_budget_too_small_for_the_remap_names_the_table() -> None:
    emb, counts = _teacher_tables()
    # 1% of 56,320 bytes = 563: a's dense remap alone (uint8: under 256 rows) is 3,000
    with pytest.raises(BudgetTooSmall, match=r"table 'a' alone stores 3,064 bytes .*3,000 index"):
        build_plan(emb, None, fraction=0.01, budget="bytes", embedding_dim=16, min_table_rows=100)
    with pytest.raises(ValueError, match="needs a fraction and embedding_dim"):
        build_plan(emb, None, fraction=0.1, budget="bytes", min_table_rows=100)
    with pytest.raises(ValueError, match="budget='bytes' needs embedding_dim"):
        BuildConfig(fraction=0.1, budget="bytes", out="o")
    with pytest.raises(ValueError, match="embedding_dim must be an int >= 1, got 0"):
        BuildConfig(fraction=0.1, budget="bytes", embedding_dim=0, out="o")


def test_job_and_build_plan_agree_on_bytes_at_world_size_2(tmp_path: Path) -> None:
    art = _teacher(tmp_path / "teacher")
    kw = dict(fraction=0.1, budget="bytes", embedding_dim=8, head_min_count=3)
    config = BuildConfig(min_table_rows=MIN_ROWS, out=tmp_path / "x.plan", **kw)
    expected = table_rows(dict(HEIGHTS), config, art.counts)
    single = _build(tmp_path, tmp_path / "teacher", "one", 1, **kw)
    sharded = _build(tmp_path, tmp_path / "teacher", "two", 2, **kw)
    assert {t.name: t.num_rows for t in single} == expected
    assert single == sharded
    at = plan_bytes(single, HEIGHTS, 8)
    budget = byte_budget(HEIGHTS, 0.1, 8)
    assert budget - 3 * 32 < at.total <= budget
    assert single.metadata["embedding_dim"] == 8 and single.metadata["budget"] == "bytes"
    assert TeacherArtifact.load(tmp_path / "teacher").counts.keys() == HEIGHTS.keys()
