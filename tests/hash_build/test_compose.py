"""Compositional hashes by hand: cells, residuals, the split, and the distinct-pairs promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.hash_build.test_job import MIN_ROWS, _build, _config
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.compose import cell_ids, residual_values, split_cells
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.hash_build.head_tail import HeadTail
from torchrec_lhf.hash_build.plan_builder import build_plan, build_table_hash
from torchrec_lhf.plan_compact import dense_mapping


def _dense(mapping, n: int = 12) -> torch.Tensor:
    return dense_mapping(mapping, n).to(torch.int64)


def test_cells_are_the_ids_sharing_every_row() -> None:
    a, b = torch.tensor([0, 0, 1, 1, 0]), torch.tensor([2, 3, 2, 2, 2])
    cells = cell_ids([a, b])
    assert cells[0] == cells[4] and cells[2] == cells[3]
    assert len({int(cells[0]), int(cells[1]), int(cells[2])}) == 3


def test_split_by_rank_within_each_cell() -> None:
    values = torch.tensor([0.3, -1.0, 2.0, 5.0, 4.0, 7.0, 7.0])
    cells = torch.tensor([9, 9, 9, 4, 4, 1, 1])  # any labels
    # cell 9 ranks: id1, id0, id2 -> rows floor((2r+1)*3/6) = 0, 1, 2; cell 4: id4, id3 ->
    # floor(3/4), floor(9/4) = 0, 2; cell 1 (a tie, kept in position order): id5, id6 -> 0, 2
    assert split_cells(values, cells, 3).tolist() == [1, 0, 2, 2, 0, 0, 2]
    # a cell larger than the rows is cut into runs of consecutive ranks (quantiles)
    big = split_cells(torch.arange(6.0).flip(0), torch.zeros(6, dtype=torch.long), 2)
    assert big.tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        split_cells(values, cells, 0)


def test_residuals_are_taken_from_the_weighted_cell_mean() -> None:
    emb = torch.tensor([[0.0, 1.0], [0.0, 3.0], [10.0, 0.0], [10.0, 0.0]])
    counts = torch.tensor([2.0, 0.0, 5.0, 5.0])  # weights counts + 1: 3 and 1
    values = residual_values(emb, counts, torch.tensor([0, 0, 1, 1]))
    # cell 0's mean is (0, (3 * 1 + 1 * 3) / 4) = (0, 1.5): residuals (0, -0.5), (0, 1.5);
    # cell 1's are 0; the residuals' first component (centered) is the second axis
    shifted = (values - values[2]).abs().tolist()
    assert shifted == pytest.approx([0.5, 1.5, 0.0, 0.0], abs=1e-6)
    assert (values[0] - values[2]) * (values[1] - values[2]) < 0 and values[2] == values[3]


def _groups(num_groups: int, per_group: int, dim: int = 4) -> torch.Tensor:
    """``num_groups`` far-apart groups of ``per_group`` ids with small differences inside."""
    torch.manual_seed(0)
    centers = torch.arange(num_groups, dtype=torch.float32)[:, None] * 100.0 * torch.ones(dim)
    emb = centers.repeat_interleave(per_group, 0)
    return emb + 0.1 * torch.randn(num_groups * per_group, dim)


def test_two_residual_hashes_give_every_id_its_own_pair() -> None:
    emb = _groups(4, 3)  # hash 0: 4 rows, one group each; hash 1: 4 rows >= 3 ids a cell
    table, info = build_table_hash("t", emb, None, rows=8, num_hashes=2, compose="residual")
    rows0, rows1 = (_dense(m) for m in table.mappings)
    assert info["heights"] == [4, 4] and info["compose"] == "residual"
    assert len(set(rows0.tolist())) == 4  # hash 0: the groups
    pairs = set(zip(rows0.tolist(), rows1.tolist()))
    assert len(pairs) == 12  # the promise: cells of at most 4 ids get distinct rows
    # independent hashes cluster the second component, which cannot tell the ids apart here
    ind, _ = build_table_hash("t", emb, None, rows=8, num_hashes=2)
    assert len(set(zip(*(_dense(m).tolist() for m in ind.mappings)))) < 12


def test_with_a_head_only_the_head_is_split_and_the_tail_is_hashed() -> None:
    emb = _groups(3, 4)  # 12 ids: ids 0..7 seen often, 8..11 rarely
    counts = torch.tensor([20.0] * 8 + [1.0] * 4)
    head = HeadTail(min_count=10, tail_fraction=0.25, encoding="dense")
    table, info = build_table_hash(
        "t", emb, counts, rows=6, num_hashes=2, compose="residual", head_tail=head
    )
    rows0, rows1 = (_dense(m) for m in table.mappings)
    assert info["head_ids"] == 8 and [lay["head_rows"] for lay in info["layouts"]] == [2, 2]
    # hash 0 puts the head's two groups in its two head rows; each cell (4 ids) is larger
    # than the 2 head rows of hash 1: two ids on each, and the tail stays in its region
    assert rows0[:4].unique().numel() == 1 and rows0[4:8].unique().numel() == 1
    assert rows0[0] != rows0[4]
    assert sorted(rows1[:4].tolist()) == [0, 0, 1, 1] == sorted(rows1[4:8].tolist())
    assert bool((rows1[8:] == 2).all()) and bool((rows0[8:] == 2).all())
    compact, _ = build_table_hash(
        "t", emb, counts, rows=6, num_hashes=2, compose="residual",
        head_tail=HeadTail(min_count=10, tail_fraction=0.25, encoding="compact"),
    )  # fmt: skip
    for a, b in zip(compact.mappings, table.mappings):
        assert torch.equal(_dense(a), b)


def test_the_setting_is_validated_and_recorded() -> None:
    emb = _groups(2, 3)
    with pytest.raises(ValueError, match="compose must be one of .*got 'sideways'"):
        build_table_hash("t", emb, None, rows=4, num_hashes=2, compose="sideways")
    with pytest.raises(ValueError, match="compose must be one of .*got 'x'"):
        BuildConfig(teacher="t", fraction=0.5, out="p", compose="x")
    kw = dict(teacher_embeddings={"t": emb}, counts=None, rows={"t": 4}, num_hashes=2)
    plain, composed = build_plan(**kw), build_plan(**kw, compose="residual")
    assert composed.metadata["compose"] == "residual" and "compose" not in plain.metadata


@pytest.mark.parametrize("world_size", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_build_job_composes_like_build_plan(tmp_path: Path, teacher_dir: Path, world_size: int):
    plan = _build(tmp_path, teacher_dir, "c", world_size, num_hashes=2, compose="residual")
    art = TeacherArtifact.load(teacher_dir)
    spec: HeadTail = _config(tmp_path, teacher_dir, "x").head_tail()  # the build's defaults
    kw = dict(fraction=0.1, min_table_rows=MIN_ROWS, head_tail=spec, num_hashes=2)
    direct = build_plan(art.embeddings, art.counts, compose="residual", **kw)
    independent = build_plan(art.embeddings, art.counts, **kw)
    assert plan == direct and plan.metadata["compose"] == "residual"
    assert plan != independent  # hash 1 is built otherwise
    for table in plan:  # hash 0 is the same clustering either way
        assert torch.equal(
            _dense(table.mappings[0], table.num_embeddings),
            _dense(independent[table.name].mappings[0], table.num_embeddings),
        )


def test_residual_hashes_split_the_head_the_fill_region_extended() -> None:
    """Rows 17 split 9 + 8: hash 0's head region of 7 rows takes the 4 ids seen 20 times and,
    filled (``tail_region="fill"``), the 3 next most frequent ones; hash 1's 6 head rows are
    fewer than those 7 ids, so it splits their cells. Before, the residual stage kept the
    head before the fill, and its cells (4) did not match the 7 values: an IndexError."""
    emb = _groups(3, 4)
    counts = torch.tensor([20.0] * 4 + [5.0, 4.0, 3.0, 2.0] + [0.0] * 4)
    for encoding in ("dense", "compact"):
        spec = HeadTail(min_count=10, tail_fraction=0.25, encoding=encoding, tail_region="fill")
        table, info = build_table_hash(
            "t", emb, counts, rows=17, num_hashes=2, compose="residual", head_tail=spec
        )
        assert info["heights"] == [9, 8]
        assert [lay["head_rows"] for lay in info["layouts"]] == [7, 6]
        rows0, rows1 = (_dense(m) for m in table.mappings)
        assert sorted(rows0[:7].tolist()) == list(range(7))  # a row each, in the filled head
        assert bool((rows1[:7] < 6).all()) and bool((rows1[7:] >= 6).all())  # head / tail
        assert len(set(zip(rows0[:7].tolist(), rows1[:7].tolist()))) == 7
