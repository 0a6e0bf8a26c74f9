"""Count-aware shrinkage of the teacher's values, by hand, and through the build job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.hash_build.test_job import MIN_ROWS, _build, _config
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.hash_build.head_tail import HeadTail
from torchrec_lhf.hash_build.plan_builder import build_plan, build_table_hash
from torchrec_lhf.hash_build.shrinkage import shrink_embeddings

EMB_ND = torch.tensor([[4.0, 0.0], [2.0, 2.0], [0.0, 0.0], [-2.0, 4.0]])
COUNTS_N = torch.tensor([2, 18, 1, 3])
HEAD_N = torch.tensor([True, True, False, False])


def test_shrinkage_by_hand_toward_the_tail() -> None:
    # prior: the tail (ids 2, 3) weighted by counts 1 and 3: (0, 0) / 4 + 3 (-2, 4) / 4
    # = (-1.5, 3); kept share n / (n + 2): 1/2, 9/10, 1/3, 3/5
    out_ND = shrink_embeddings(EMB_ND, COUNTS_N, 2.0, HEAD_N)
    expected = [[1.25, 1.5], [1.65, 2.1], [-1.0, 2.0], [-1.8, 3.6]]
    torch.testing.assert_close(out_ND, torch.tensor(expected))
    assert out_ND.dtype == EMB_ND.dtype


def test_shrinkage_without_a_head_uses_every_seen_id() -> None:
    emb_ND = torch.tensor([[0.0], [4.0], [100.0]])
    # prior (1 * 0 + 3 * 4) / 4 = 3 (the unseen id weighs nothing and lands on it)
    out = shrink_embeddings(emb_ND, torch.tensor([1, 3, 0]), 1.0).squeeze(1)
    assert out.tolist() == [1.5, 3.75, 3.0]
    # a head with no seen tail falls back to every seen id
    out = shrink_embeddings(emb_ND, torch.tensor([1, 3, 0]), 1.0, torch.tensor([1, 1, 0]) > 0)
    assert out.squeeze(1).tolist() == [1.5, 3.75, 3.0]


def test_zero_shrinkage_leaves_the_values() -> None:
    assert shrink_embeddings(EMB_ND, COUNTS_N, 0.0, HEAD_N) is EMB_ND
    assert shrink_embeddings(EMB_ND, None, 0) is EMB_ND  # needs no counts when off
    t0, _ = build_table_hash("t", EMB_ND, COUNTS_N, rows=2, projection="dim:0")
    t1, _ = build_table_hash("t", EMB_ND, COUNTS_N, rows=2, projection="dim:0", value_shrinkage=0)
    assert t0.equals(t1)


def test_shrinkage_changes_the_clusterings_order() -> None:
    # Two ids seen once at the extremes: raw, each joins its nearest well-seen pair; shrunk
    # by 50 / 60 (pairs) and 1 / 11 (singles) toward the mean 0, they meet in the middle.
    emb_ND = torch.tensor([[-3.0], [-1.0], [-0.9], [0.9], [1.0], [3.0]])
    counts_N = torch.tensor([1, 50, 50, 50, 50, 1])
    shrunk = shrink_embeddings(emb_ND, counts_N, 10.0).squeeze(1)
    torch.testing.assert_close(shrunk, torch.tensor([-3 / 11, -5 / 6, -0.75, 0.75, 5 / 6, 3 / 11]))
    options = {"rows": 3, "projection": "dim:0", "clustering": "quantile"}
    raw, _ = build_table_hash("t", emb_ND, counts_N, **options)
    pulled, info = build_table_hash("t", emb_ND, counts_N, value_shrinkage=10, **options)
    assert raw.mappings[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert pulled.mappings[0].tolist() == [1, 0, 0, 2, 2, 1]
    assert info["value_shrinkage"] == 10


@pytest.mark.parametrize("bad", [-1, float("nan"), math.inf, True, "3"])
def test_bad_shrinkage_is_named(bad: object, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=rf"value_shrinkage must be a finite number >= 0, got {bad!r}"
    ):
        BuildConfig(fraction=0.1, value_shrinkage=bad, out=tmp_path / "p")
    with pytest.raises(ValueError, match="value_shrinkage must be"):
        shrink_embeddings(EMB_ND, COUNTS_N, bad)  # type: ignore[arg-type]


def test_shrinkage_needs_counts_of_the_table() -> None:
    with pytest.raises(ValueError, match="value_shrinkage=2.0 needs counts"):
        build_plan({"t": EMB_ND}, None, fraction=0.5, value_shrinkage=2.0)
    with pytest.raises(ValueError, match=r"table 't': counts of shape \(3,\), expected \(4,\)"):
        shrink_embeddings(EMB_ND, COUNTS_N[:3], 2.0, table="t")
    with pytest.raises(ValueError, match="table 't': negative access counts"):
        shrink_embeddings(EMB_ND, -COUNTS_N, 2.0, table="t")


def test_fingerprint_names_shrinkage_only_when_on(tmp_path: Path) -> None:
    off = BuildConfig(fraction=0.1, out=tmp_path / "p").plan_options()
    on = BuildConfig(fraction=0.1, out=tmp_path / "p", value_shrinkage=10).plan_options()
    assert "value_shrinkage" not in off and on["value_shrinkage"] == 10.0
    assert {k: v for k, v in on.items() if k != "value_shrinkage"} == off


@pytest.mark.parametrize("world_size", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_build_job_shrinks_like_build_plan(tmp_path: Path, teacher_dir: Path, world_size: int):
    plan = _build(tmp_path, teacher_dir, "k", world_size, value_shrinkage=5.0)
    art = TeacherArtifact.load(teacher_dir)
    spec: HeadTail = _config(tmp_path, teacher_dir, "x").head_tail()  # the build's defaults
    direct = build_plan(
        art.embeddings, art.counts, fraction=0.1, min_table_rows=MIN_ROWS, head_tail=spec,
        value_shrinkage=5.0,
    )  # fmt: skip
    raw = build_plan(
        art.embeddings, art.counts, fraction=0.1, min_table_rows=MIN_ROWS, head_tail=spec
    )
    assert plan == direct
    assert plan.metadata["value_shrinkage"] == 5.0 and direct.metadata["value_shrinkage"] == 5.0
    assert "value_shrinkage" not in raw.metadata
    assert plan != raw  # it changes the plan: some table's head is clustered otherwise
