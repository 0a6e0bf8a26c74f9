"""The learned hash's candidate plans (``apps.plan_candidates``): their builds by hand and
the trainings not run twice; the pipeline's choice among them is in test_pipeline.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from apps import plan_candidates
from apps.dlrm.config import TrainConfig
from torchrec_lhf.hash_build.config import BuildConfig


def _build(tmp_path: Path, **kwargs) -> BuildConfig:
    return BuildConfig(
        teacher=str(tmp_path / "teacher"), fraction=0.1, budget="bytes", embedding_dim=16,
        head_min_count=10, out=tmp_path / "plan.safetensors", **kwargs,
    )  # fmt: skip


def test_no_flag_leaves_the_learned_hash_its_own_plan(tmp_path) -> None:
    build = _build(tmp_path)
    assert plan_candidates.candidate_builds(build) == {"clustered": build}


@pytest.mark.parametrize("allocation, other", [("size", "counts"), ("counts", "size")])
def test_every_flag_builds_its_candidates_as_their_names_say(tmp_path, allocation, other) -> None:
    build = _build(tmp_path, row_allocation=allocation)
    builds = plan_candidates.candidate_builds(
        build, head_select=True, rows_select=True, width_select=True
    )
    names = [
        "clustered", f"clustered-{other}", "frequency", f"frequency-{other}",
        "clustered-mlet", f"clustered-{other}-mlet", "clustered-half", f"clustered-{other}-half",
    ]  # fmt: skip
    assert list(builds) == names
    assert builds["clustered"] is build  # first: it wins ties
    for name, b in builds.items():
        if name != "clustered":  # each its own file beside the plan, built afresh
            assert b.out == tmp_path / f"plan_{name}.safetensors"
            assert b.work_dir == Path(f"{b.out}.work"), name  # not the build's folder
        assert b.row_allocation == (other if other in name else allocation), name
        # rows by frequency: a head no id reaches, every other setting the build's
        assert (b.head_min_count > 10**9) == name.startswith("frequency"), name
        # at 10% of the bytes the sqrt split's width is 5 of 16: the rows take 0.1 * 16 / 5;
        # at half the width 0.1 * 16 / 8
        expected = {"-mlet": (5, 0.32), "-half": (8, 0.2)}.get(name[-5:], (16, 0.1))
        assert (b.embedding_dim, b.fraction) == expected, name
        assert (b.tail_fraction, b.tail_region) == (build.tail_fraction, build.tail_region)


def test_narrow_widths_are_narrower_and_distinct(tmp_path) -> None:
    build = _build(tmp_path)
    assert plan_candidates.narrow_widths(build) == {"-mlet": 5, "-half": 8}
    # at 25% of the bytes the sqrt split's width is half the width: one candidate width
    assert plan_candidates.narrow_widths(dataclasses.replace(build, fraction=0.25)) == {"-mlet": 8}
    assert plan_candidates.narrow_widths(dataclasses.replace(build, embedding_dim=1)) == {}
    # half_select's alone: half the width, even where it is the sqrt split's
    assert plan_candidates.narrow_widths(build, sqrt=False) == {"-half": 8}
    quarter = dataclasses.replace(build, fraction=0.25)
    assert plan_candidates.narrow_widths(quarter, sqrt=False) == {"-half": 8}
    # a width is kept only while the rows it buys fit the full tables: at half the width,
    # fractions up to 0.5 (0.5 * 16 / 8 = all the rows); at 0.6 the sqrt split's 12 only
    half = dataclasses.replace(build, fraction=0.5)
    assert plan_candidates.narrow_widths(half, sqrt=False) == {"-half": 8}
    over = dataclasses.replace(build, fraction=0.6)
    assert plan_candidates.narrow_widths(over) == {"-mlet": 12}
    assert plan_candidates.narrow_widths(over, sqrt=False) == {}
    assert plan_candidates.narrow_widths(dataclasses.replace(build, fraction=1.0)) == {}
    with pytest.raises(ValueError, match="fraction=None"):
        plan_candidates.narrow_widths(
            dataclasses.replace(build, budget="table", fraction=None, rows_per_table={"t": 3})
        )


def test_each_flag_alone(tmp_path) -> None:
    build = _build(tmp_path)
    select = plan_candidates.candidate_builds
    assert list(select(build, head_select=True)) == ["clustered", "frequency"]
    assert list(select(build, rows_select=True)) == ["clustered", "clustered-counts"]
    widths = ["clustered", "clustered-mlet", "clustered-half"]
    assert list(select(build, width_select=True)) == widths
    halves = select(build, half_select=True)
    assert list(halves) == ["clustered", "clustered-half"]
    assert (halves["clustered-half"].embedding_dim, halves["clustered-half"].fraction) == (8, 0.2)
    assert list(select(build, half_select=True, width_select=True)) == widths  # one half
    both = ["clustered", "clustered-counts", "clustered-half", "clustered-counts-half"]
    assert list(select(build, rows_select=True, half_select=True)) == both
    # no narrower plan fits: the learned hash's own alone
    assert list(select(dataclasses.replace(build, fraction=0.8), half_select=True)) == ["clustered"]


def test_half_rows_shares_the_half_width_plans_rows_its_own_way(tmp_path) -> None:
    build = _build(tmp_path)  # rows shared by the tables' sizes
    select = plan_candidates.candidate_builds
    counts = select(build, half_select=True, half_rows="counts")
    assert list(counts) == ["clustered", "clustered-counts-half"]
    half = counts["clustered-counts-half"]
    assert (half.row_allocation, half.embedding_dim, half.fraction) == ("counts", 8, 0.2)
    assert half.out == tmp_path / "plan_clustered-counts-half.safetensors"
    assert counts["clustered"] is build  # the learned hash's own plan untouched
    # the build's own allocation: the candidate as without half_rows
    assert list(select(build, half_select=True, half_rows="size")) == [
        "clustered",
        "clustered-half",
    ]
    # with width_select the sqrt split's plan keeps the build's allocation
    widths = select(build, width_select=True, half_rows="counts")
    assert list(widths) == ["clustered", "clustered-mlet", "clustered-counts-half"]
    assert widths["clustered-mlet"].row_allocation == "size"
    # rows_select: both allocations at every width already, half_rows changes nothing
    both = ["clustered", "clustered-counts", "clustered-half", "clustered-counts-half"]
    assert list(select(build, rows_select=True, half_select=True, half_rows="counts")) == both
    with pytest.raises(ValueError, match="half_rows must be one of .* got 'rows'"):
        select(build, half_select=True, half_rows="rows")
    # a head and tail that cannot share rows by counts (no fill region; no head by counts):
    # the plan at half the width shares them as the build does, by size
    for other in ({"tail_region": "fixed"}, {"head_min_count": 0}):
        cannot = dataclasses.replace(build, **other)
        assert plan_candidates.shares_rows_by(cannot, "size")
        assert not plan_candidates.shares_rows_by(cannot, "counts")
        fallback = select(cannot, half_select=True, half_rows="counts")
        assert list(fallback) == ["clustered", "clustered-half"]
        assert fallback["clustered-half"].row_allocation == "size"
        assert fallback["clustered-half"].tail_region == cannot.tail_region
    assert plan_candidates.shares_rows_by(build, "counts")


def test_same_plans_finds_candidates_whose_plan_an_earlier_one_has(tmp_path) -> None:
    import torch

    from torchrec_lhf import HashPlan

    def plan(name: str, rows: list[int]) -> str:
        path = tmp_path / f"{name}.safetensors"
        HashPlan.from_mappings({"t0": torch.tensor(rows)}, metadata={"built_as": name}).save(path)
        return str(path)

    paths = {
        "lhf": plan("a", [0, 1, 1, 2]),
        "lhf-clustered-counts": plan("b", [0, 1, 2, 2]),
        "lhf-frequency": plan("c", [0, 1, 1, 2]),  # lhf's mapping, other metadata
        "lhf-frequency-counts": plan("d", [0, 1, 2, 2]),
    }
    trains = {m: TrainConfig(learned_hash=p) for m, p in paths.items()}
    trains["modulo"] = TrainConfig(compression="modulo", fraction=0.5)
    # lhf's plan trained otherwise: not the same training
    trains["lhf-slower"] = TrainConfig(learned_hash=paths["lhf"], learning_rate=0.01)
    assert plan_candidates.same_plans(trains) == {
        "lhf-frequency": "lhf",
        "lhf-frequency-counts": "lhf-clustered-counts",
    }
