"""A learned plan under a byte budget: the remap's bytes before clustering, by hand; the
plan built in one process and by the job at world size 2 fit and agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.hash_build.test_job import HEIGHTS, MIN_ROWS, _build, _teacher
from torchrec_lhf.compression.budget import BudgetTooSmall, byte_budget
from torchrec_lhf.compression.registry import plan_bytes
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.byte_budget import (
    fit_head_to_bytes,
    learned_index_bytes,
    learned_rows_for_bytes,
    rows_by_counts,
)
from torchrec_lhf.hash_build.config import BuildConfig, fitted_head_tail, table_rows
from torchrec_lhf.hash_build.head_tail import HeadTail
from torchrec_lhf.hash_build.plan_builder import build_plan

FILL_SHARE = 0.07
"""A fill share that binds in the world-size-2 test's tables (with a head of the ids seen at
least 20 times, the remap takes 7.3% of the budget with its fill, held ranked, and 6.8%
without)."""


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
    # a filled head's rows are its ranks: held ranked, 2 bytes an id and 4 a block of 2**16
    # ids (and the end)
    fill = (0.5, {"a": (700, 999)})
    got = learned_index_bytes(sizes, heads, {"a": [300], "b": [20]}, "compact", fill)
    assert got["a"] == 150 * 2 + 2 * 4
    got = learned_index_bytes(sizes, heads, {"a": [5000], "b": [20]}, "compact", fill)
    assert got["a"] == 700 * 2 + 2 * 4  # no more than the ids seen
    # any head no larger than its region (known before the build: tail_fraction) too
    got = learned_index_bytes(sizes, heads, {"a": [300, 50]}, "compact", tail_fraction=0.5)
    assert got["a"] == (100 * 2 + 2 * 4) + 100 * 6  # at 50 rows (25 head rows): clustered
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
        HeadTail(min_count=28, tail_fraction=0.05, tail_region="fill", row_allocation="counts"),
        HeadTail(min_count=1, tail_fraction=0.05, tail_region="fill", index_share=0.2),
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
    fit = dict(fraction=fraction, embedding_dim=16, min_table_rows=100)
    head_tail = fit_head_to_bytes(sizes, counts, head_tail or HeadTail(), **fit)
    rows, predicted = learned_rows_for_bytes(sizes, counts, **fit, head_tail=head_tail)
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


@pytest.mark.parametrize(
    "allocation",
    [
        {},
        {"tail_region": "fill", "tail_fraction": 0.05, "row_allocation": "counts"},
        {"tail_region": "fill", "tail_fraction": 0.05, "index_share": 0.2},
        {
            "tail_region": "fill",
            "tail_fraction": 0.05,
            "fill_share": FILL_SHARE,
            "head_min_count": 20,
        },
    ],
)
def test_job_and_build_plan_agree_on_bytes_at_world_size_2(
    tmp_path: Path, allocation: dict
) -> None:
    art = _teacher(tmp_path / "teacher")
    kw = dict(fraction=0.1, budget="bytes", embedding_dim=8, **{"head_min_count": 3, **allocation})
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
    spec = fitted_head_tail(dict(HEIGHTS), config, art.counts)
    if "index_share" in allocation:  # the threshold it raised, recorded
        assert spec.min_count > 3 and single.metadata["head_min_count_fitted"] == spec.min_count
        assert plan_bytes(single, HEIGHTS, 8).to_dict()["index"] <= 0.2 * budget
    else:
        assert spec.min_count == kw["head_min_count"]
        assert "head_min_count_fitted" not in single.metadata
    if "fill_share" in allocation:  # the fill's threshold it raised, recorded
        assert 1 < spec.fill_min_count < 20
        assert single.metadata["fill_min_count_fitted"] == spec.fill_min_count
        assert plan_bytes(single, HEIGHTS, 8).to_dict()["index"] <= FILL_SHARE * budget
    else:
        assert "fill_min_count_fitted" not in single.metadata
    assert TeacherArtifact.load(tmp_path / "teacher").counts.keys() == HEIGHTS.keys()


def test_rows_by_counts_by_hand() -> None:
    # a: 10 ids seen 9 times, 90 never; b: 100 seen once, 200 never; c: 40 seen 5, 10 once
    sizes = {"a": 100, "b": 300, "c": 50}
    counts = {
        "a": torch.tensor([9] * 10 + [0] * 90),
        "b": torch.tensor([1] * 100 + [0] * 200),
        "c": torch.tensor([5] * 40 + [1] * 10),
    }
    rule = rows_by_counts(sizes, counts, tail_fraction=0.5)
    total = 160  # ids seen
    at = lambda k: rule(k / (2 * total))  # noqa: E731  the k most frequent ids get rows
    # a head region of k rows needs 2k rows at a 50% tail (round half to even: 2k-1 is short)
    assert at(0) == {"a": 1, "b": 1, "c": 1}
    assert at(10) == {"a": 20, "b": 1, "c": 1}  # a's ids first: seen 9 times
    assert at(30) == {"a": 20, "b": 1, "c": 40}  # then c's seen 5 times
    assert at(50) == {"a": 20, "b": 1, "c": 50}  # c needs 80 rows: capped at N, full
    # ids seen once tie over b (100) and c (10): 60 of them shared as 100:10, rounded down
    assert at(110) == {"a": 20, "b": 2 * 54, "c": 50}
    # from f = 1/2 every seen id has a row (b: 100 ids in 200 rows)
    assert rule(0.5) == {"a": 20, "b": 200, "c": 50}
    assert rule(0.9) == {"a": 80, "b": 240, "c": 50}  # then by size: 80% of each table
    # never fewer rows for a larger f, in every table
    grid = [rule(i / 400) for i in range(401)]
    for lo, hi in zip(grid, grid[1:]):
        assert all(hi[t] >= lo[t] for t in sizes)


def test_row_allocation_counts_gives_rows_to_the_most_frequent_ids_of_all_tables() -> None:
    # b's ids are seen far more often than a's, a is 10x larger: by size a gets most rows
    g = torch.Generator().manual_seed(1)
    sizes = {"a": 5000, "b": 500}
    emb = {k: torch.randn(n, 4, generator=g) for k, n in sizes.items()}
    counts = {
        "a": torch.randint(0, 4, (5000,), generator=g),
        "b": torch.randint(5, 60, (500,), generator=g),
    }
    kw = dict(fraction=0.05, budget="bytes", embedding_dim=16, min_table_rows=100)
    spec = dict(min_count=50, tail_fraction=0.05, tail_region="fill", encoding="compact")
    heads, rows = {}, {}
    for allocation in ("size", "counts"):
        plan = build_plan(emb, counts, head_tail=HeadTail(**spec, row_allocation=allocation), **kw)
        heads[allocation] = {t.name: t.mappings[0].head_ids for t in plan}
        rows[allocation] = {t.name: t.num_rows for t in plan}
        assert plan_bytes(plan, sizes, 16).total <= byte_budget(sizes, 0.05, 16)
    assert rows["size"]["a"] > 5 * rows["size"]["b"]
    assert rows["counts"]["a"] == 1  # a table's fewest rows: every id of a shares its one row

    def own_and_hashed(allocation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts of the ids with rows of their own (tables above one row), of the others."""
        own, hashed = [], []
        for t, n in sizes.items():
            in_head = torch.isin(torch.arange(n), heads[allocation][t])
            (own if rows[allocation][t] > 1 else hashed).append(counts[t][in_head])
            hashed.append(counts[t][~in_head])
        return torch.cat(own), torch.cat(hashed)

    # by counts, every id with a row of its own is seen at least as often as every id
    # without one, whichever table either is in
    own, hashed = own_and_hashed("counts")
    assert int(own.min()) >= int(hashed.max())
    # by size it is not so: b's frequent ids share rows while a's rare ones have their own
    own, hashed = own_and_hashed("size")
    assert int(own.min()) < int(hashed.max())


def test_row_allocation_counts_needs_fill_and_a_byte_budget() -> None:
    with pytest.raises(ValueError, match="row_allocation 'counts' .* tail_region='fixed'"):
        HeadTail(min_count=10, tail_region="fixed", row_allocation="counts")
    with pytest.raises(ValueError, match="row_allocation 'counts' .* min_count=0"):
        HeadTail(tail_region="fill", row_allocation="counts")
    with pytest.raises(ValueError, match="row_allocation must be one of .* got 'rows'"):
        HeadTail(min_count=10, tail_region="fill", row_allocation="rows")
    with pytest.raises(ValueError, match="needs budget='bytes', got budget='table'"):
        BuildConfig(fraction=0.1, row_allocation="counts", out="o")
    spec = HeadTail(min_count=10, tail_region="fill", row_allocation="counts")
    with pytest.raises(ValueError, match="table 'a': a head by access counts needs counts"):
        learned_rows_for_bytes({"a": 1000}, None, fraction=0.1, embedding_dim=4, head_tail=spec)


def _index_at(sizes, counts, spec: HeadTail, fit: dict, **changes) -> int | None:  # noqa: ANN001
    """The fitted model's stored remap with ``spec``'s ``changes`` (a head or fill
    threshold), or None where it cannot fit."""
    try:
        _, at = learned_rows_for_bytes(
            sizes, counts, **fit, head_tail=dataclasses.replace(spec, **changes)
        )
    except BudgetTooSmall:
        return None
    return sum(at.index.values())


def test_index_share_raises_the_head_threshold_to_the_first_that_fits() -> None:
    emb, counts = _teacher_tables()
    sizes = {k: e.shape[0] for k, e in emb.items()}
    fit = dict(fraction=0.05, embedding_dim=16, min_table_rows=100)
    spec = HeadTail(min_count=1, tail_fraction=0.05, tail_region="fill", encoding="compact")
    budget = byte_budget(sizes, 0.05, 16)  # 11,264 bytes
    # at min_count 1 the head is nearly every id (3,384 of 3,500 ids: 20,304 bytes)
    assert _index_at(sizes, counts, spec, fit, min_count=1) is None
    with pytest.raises(BudgetTooSmall):
        build_plan(emb, counts, budget="bytes", head_tail=spec, **fit)
    for share in (0.5, 0.25, 0.1):
        capped = dataclasses.replace(spec, index_share=share)
        got = fit_head_to_bytes(sizes, counts, capped, **fit)
        assert got == dataclasses.replace(capped, min_count=got.min_count)
        # the threshold found stores at most the share; the count just below it does not
        # (counts are 0..29, so every threshold from 2 to 30 is a candidate)
        index = _index_at(sizes, counts, capped, fit, min_count=got.min_count)
        assert index is not None and index <= share * budget
        below = _index_at(sizes, counts, capped, fit, min_count=got.min_count - 1)
        assert below is None or below > share * budget
        plan = build_plan(emb, counts, budget="bytes", head_tail=capped, **fit)
        assert plan.remap_bytes() == index
        # the plan's head: the ids seen at least that often (and the fill's, a row each)
        head = plan["a"].mappings[0]
        assert set((counts["a"] >= got.min_count).nonzero().squeeze(1).tolist()) <= set(
            head.head_ids.tolist()
        )
        assert plan.metadata["head_tail"]["head_min_count"] == got.min_count
    # a smaller share, a higher threshold
    thresholds = [
        fit_head_to_bytes(sizes, counts, dataclasses.replace(spec, index_share=s), **fit).min_count
        for s in (0.5, 0.25, 0.1)
    ]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]


def test_fill_share_raises_the_fill_threshold_to_the_first_that_fits() -> None:
    emb, counts = _teacher_tables()  # counts 0..29
    sizes = {k: e.shape[0] for k, e in emb.items()}
    fit = dict(fraction=0.3, embedding_dim=16, min_table_rows=100)
    spec = HeadTail(min_count=28, tail_fraction=0.05, tail_region="fill", encoding="compact")
    budget = byte_budget(sizes, 0.3, 16)
    full = _index_at(sizes, counts, spec, fit, fill_min_count=1)
    alone = _index_at(sizes, counts, spec, fit, fill_min_count=28)  # no extension: the head only
    # held ranked (2 bytes an id): 0.8% and 2.8%
    assert alone < 0.01 * budget and 0.027 * budget < full
    for share in (0.027, 0.02, 0.012):
        capped = dataclasses.replace(spec, fill_share=share)
        got = fit_head_to_bytes(sizes, counts, capped, **fit)
        assert got == dataclasses.replace(capped, fill_min_count=got.fill_min_count)
        assert got.min_count == 28  # the clustered head is never touched
        index = _index_at(sizes, counts, capped, fit, fill_min_count=got.fill_min_count)
        assert index is not None and index <= share * budget
        below = _index_at(sizes, counts, capped, fit, fill_min_count=got.fill_min_count - 1)
        assert below is None or below > share * budget
        plan = build_plan(emb, counts, budget="bytes", head_tail=capped, **fit)
        assert plan.remap_bytes() == index
        assert plan.metadata["head_tail"]["fill_min_count"] == got.fill_min_count
        # the head: the clustered ids and the fill's, each seen at least the threshold
        head = set(plan["a"].mappings[0].head_ids.tolist())
        assert head <= set((counts["a"] >= got.fill_min_count).nonzero().squeeze(1).tolist())
        assert set((counts["a"] >= 28).nonzero().squeeze(1).tolist()) <= head
    # a smaller share, a higher threshold
    thresholds = [
        fit_head_to_bytes(sizes, counts, dataclasses.replace(spec, fill_share=s), **fit)
        for s in (0.027, 0.02, 0.012)
    ]
    assert [t.fill_min_count for t in thresholds] == sorted(t.fill_min_count for t in thresholds)
    assert thresholds[0].fill_min_count < thresholds[-1].fill_min_count


def test_fill_share_drops_the_fill_only_where_that_stores_less() -> None:
    emb, counts = _teacher_tables()
    sizes = {k: e.shape[0] for k, e in emb.items()}
    fit = dict(fraction=0.3, embedding_dim=16, min_table_rows=100)
    spec = HeadTail(min_count=28, tail_fraction=0.05, tail_region="fill", encoding="compact")
    # a share below the head's own bytes: no extension at all (the closest it can get)
    tiny = fit_head_to_bytes(sizes, counts, dataclasses.replace(spec, fill_share=0.001), **fit)
    assert tiny.fill_min_count == 28
    # dense remaps store every id whatever the head: nothing to gain, the fill is kept
    dense = dataclasses.replace(spec, encoding="dense", fill_share=0.001)
    assert fit_head_to_bytes(sizes, counts, dense, **fit) is dense
    # a remap within the share, or no counts: untouched
    roomy = dataclasses.replace(spec, fill_share=1.0)
    assert fit_head_to_bytes(sizes, counts, roomy, **fit) is roomy
    capped = dataclasses.replace(spec, fill_share=0.001)
    assert fit_head_to_bytes(sizes, None, capped, **fit) is capped  # nothing to count


def test_index_share_keeps_a_head_that_fits() -> None:
    emb, counts = _teacher_tables()
    sizes = {k: e.shape[0] for k, e in emb.items()}
    fit = dict(fraction=0.2, embedding_dim=16, min_table_rows=100)
    spec = HeadTail(min_count=28, tail_fraction=0.05, tail_region="fill", index_share=0.9)
    assert fit_head_to_bytes(sizes, counts, spec, **fit) is spec
    assert fit_head_to_bytes(sizes, None, spec, **fit) is spec  # nothing to count
    plain = dataclasses.replace(spec, index_share=None)
    assert fit_head_to_bytes(sizes, counts, plain, **fit) is plain
    # no count threshold to raise: a head by mass, or none (the paper's build)
    for other in (HeadTail(mass=0.99, index_share=0.01), HeadTail(index_share=0.01)):
        assert fit_head_to_bytes(sizes, counts, other, **fit) is other
    # the same plan as without the share
    a = build_plan(emb, counts, budget="bytes", head_tail=spec, **fit)
    b = build_plan(emb, counts, budget="bytes", head_tail=plain, **fit)
    assert a == b  # the tables (HashPlan equality; the metadata names the share)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_count": 10, "index_share": 0.0}, r"index_share must be a number in \(0, 1\]"),
        ({"min_count": 10, "index_share": 1.5}, r"index_share .* got 1.5"),
        ({"min_count": 10, "index_share": True}, r"index_share .* got True"),
    ],
)
def test_index_share_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HeadTail(**kwargs)
    with pytest.raises(ValueError, match=match):
        BuildConfig(
            fraction=0.1,
            head_min_count=kwargs.get("min_count", 0),
            head_mass=kwargs.get("mass"),
            index_share=kwargs["index_share"],
            out="o",
        )


def test_frequency_only_build_has_no_head_to_cluster(tmp_path) -> None:
    from torchrec_lhf.hash_build.config import FREQUENCY_ONLY_COUNT, BuildConfig

    config = BuildConfig(teacher="t", fraction=0.1, out=tmp_path / "p.safetensors")
    freq = config.frequency_only(tmp_path / "q.safetensors")
    assert freq.head_min_count == FREQUENCY_ONLY_COUNT and freq.out == tmp_path / "q.safetensors"
    assert freq.work_dir == tmp_path / "q.safetensors.work"
    # the plan's metadata says so, not only by a threshold no id reaches
    assert freq.plan_options()["frequency_only"] is True
    assert "frequency_only" not in config.plan_options()
    assert freq.head_tail().head(torch.tensor([0, 5, 10**12]), "t").sum() == 0
    with pytest.raises(ValueError, match="needs tail_region 'fill' .* got tail_region='fixed'"):
        BuildConfig(teacher="t", fraction=0.1, out="p", tail_region="fixed").frequency_only("q")
