"""Head/tail splits by hand: which ids are the head, and the rows each part gets."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.clustering import get_clustering
from torchrec_lhf.hash_build.head_tail import (
    HeadTail,
    cluster_hashes,
    fill_head,
    head_tail_mapping,
    tail_seed,
)
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan_compact import CompactMapping

COUNTS = torch.tensor([50.0, 0, 30, 1, 15, 4])  # accesses 100: ids 0, 2, 4 carry 95%


def test_head_by_count_and_by_mass() -> None:
    assert HeadTail().head(COUNTS, "t") is None  # the paper: every id is head
    assert HeadTail(min_count=10).head(COUNTS, "t").tolist() == [1, 0, 1, 0, 1, 0]
    # the fewest most frequent ids reaching the mass: 50 (0.5), +30 (0.8), +15 (0.95)
    assert HeadTail(mass=0.8).head(COUNTS, "t").tolist() == [1, 0, 1, 0, 0, 0]
    assert HeadTail(mass=0.81).head(COUNTS, "t").tolist() == [1, 0, 1, 0, 1, 0]
    assert HeadTail(mass=1.0).head(COUNTS, "t").tolist() == [1, 0, 1, 1, 1, 1]  # never id 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_count": -1}, "min_count must be an int >= 0, got -1"),
        ({"mass": 0}, r"mass must be a number in \(0, 1\], got 0"),
        ({"min_count": 2, "mass": 0.5}, "give one of head min_count"),
        ({"tail_fraction": 1.0}, r"tail_fraction must be a number in \[0, 1\), got 1.0"),
        ({"encoding": "zip"}, "encoding must be one of"),
        ({"tail_region": "half"}, "tail_region must be one of"),
        ({"fill_share": 0}, r"fill_share must be a number in \(0, 1\] or None, got 0"),
        ({"fill_min_count": 0}, "fill_min_count must be an int >= 1, got 0"),
        ({"fill_min_count": 3}, "fill_min_count=3 limits .* needs tail_region 'fill'"),
        ({"fill_share": 0.1, "min_count": 5}, "fill_share=0.1 .* got tail_region='fixed'"),
        ({"fill_share": 0.1, "tail_region": "fill"}, "fill_share=0.1 .* min_count=0"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeadTail(**kwargs)


def _mapping(head: list[int], height: int, tail_fraction: float, n: int = 40):
    head_N = torch.zeros(n, dtype=torch.bool)
    head_N[head] = True
    spec = HeadTail(min_count=1, tail_fraction=tail_fraction)
    values_N = torch.arange(n, dtype=torch.float32)
    return head_N, *head_tail_mapping(
        get_clustering("agglomerative"), values_N, None, head_N, height,
        spec=spec, seed=tail_seed("t", 0), options={},
    )  # fmt: skip


def test_a_small_head_keeps_a_row_each_in_its_region() -> None:
    # NOTE: the head's unused rows stay unused: handing them to the tail measured worse at
    # 10% of the rows (docs/RESULTS.md, "The rare-id regime")
    head_N, mapping_N, layout, result = _mapping([3, 7], height=10, tail_fraction=0.5)
    assert result is None  # nothing to cluster
    assert layout == {"head_rows": 5, "tail_offset": 5, "tail_rows": 5}
    assert mapping_N[[3, 7]].tolist() == [0, 1]
    tail = (~head_N).nonzero().squeeze(1)
    assert torch.equal(mapping_N[tail], 5 + tail_hash(tail, tail_seed("t", 0), 5))


def test_a_large_head_is_clustered_into_its_region() -> None:
    head_N, mapping_N, layout, result = _mapping(list(range(20)), height=10, tail_fraction=0.7)
    assert layout == {"head_rows": 3, "tail_offset": 3, "tail_rows": 7}
    assert result is not None and sorted(set(mapping_N[:20].tolist())) == [0, 1, 2]
    assert bool((mapping_N[20:] >= 3).all())
    # tail_fraction 0: the tail is hashed over all rows, the head's included
    _, shared_N, shared, _ = _mapping(list(range(20)), height=10, tail_fraction=0.0)
    assert shared == {"head_rows": 10, "tail_offset": 0, "tail_rows": 10}
    assert torch.equal(shared_N[20:], tail_hash(torch.arange(20, 40), tail_seed("t", 0), 10))


def test_the_build_stores_the_smaller_encoding() -> None:
    from torchrec_lhf.hash_build import build_table_hash

    emb = torch.randn(1000, 2)
    counts = torch.zeros(1000)
    counts[:50] = 20  # 50 head ids: 6 bytes each beat 2 bytes for each of 1,000 ids
    spec = HeadTail(min_count=10, tail_fraction=0.5)
    table, _ = build_table_hash("t", emb, counts, rows=100, projection="dim:0", head_tail=spec)
    (m,) = table.mappings
    assert isinstance(m, CompactMapping) and m.head_ids.tolist() == list(range(50))
    dense, _ = build_table_hash(
        "t", emb, counts, rows=100, projection="dim:0",
        head_tail=HeadTail(min_count=10, tail_fraction=0.5, encoding="dense"),
    )  # fmt: skip
    assert torch.equal(dense.mappings[0], table.dense_mapping(0))


def test_a_mass_tail_region_gets_the_tail_share_of_the_accesses() -> None:
    # ids 0-9 the head (10 accesses each: 100), ids 10-39 the tail (1 each: 30 of 130)
    n, height = 40, 13
    counts_N = torch.cat([torch.full((10,), 10.0), torch.ones(30)])
    head_N = counts_N >= 10
    spec = HeadTail(min_count=10, tail_fraction=0.5, tail_region="mass")  # fraction unused
    mapping_N, layout, _ = head_tail_mapping(
        get_clustering("agglomerative"), torch.arange(n, dtype=torch.float32), counts_N,
        head_N, height, spec=spec, seed=tail_seed("t", 0), options={},
    )  # fmt: skip
    assert layout == {"head_rows": 10, "tail_offset": 10, "tail_rows": 3}  # 30/130 of 13
    assert mapping_N[:10].tolist() == list(range(10))  # a row each
    assert bool((mapping_N[10:] >= 10).all())
    assert spec.to_dict()["tail_region"] == "mass"
    assert "tail_region" not in HeadTail(min_count=10).to_dict()  # old fingerprints kept


def test_a_fit_tail_region_takes_the_rows_a_small_head_leaves() -> None:
    # 4 head ids (10 accesses each), 36 tail ids; 20 rows, tail_fraction 0.5: "fixed" gives
    # the head 10 rows of which it uses 4; "fit" gives it 4 and the tail the other 16
    n, height = 40, 20
    counts_N = torch.cat([torch.full((4,), 10.0), torch.ones(36)])
    head_N = counts_N >= 10

    def layout_of(region: str, head: torch.Tensor = head_N) -> tuple[torch.Tensor, dict]:
        spec = HeadTail(min_count=10, tail_fraction=0.5, tail_region=region)
        mapping_N, layout, _ = head_tail_mapping(
            get_clustering("agglomerative"), torch.arange(n, dtype=torch.float32), counts_N,
            head, height, spec=spec, seed=tail_seed("t", 0), options={},
        )  # fmt: skip
        return mapping_N, layout

    _, fixed = layout_of("fixed")
    assert fixed == {"head_rows": 10, "tail_offset": 10, "tail_rows": 10}
    mapping_N, fit = layout_of("fit")
    assert fit == {"head_rows": 4, "tail_offset": 4, "tail_rows": 16}
    assert mapping_N[:4].tolist() == [0, 1, 2, 3]  # a row each, no tail id on them
    tail = torch.arange(4, n)
    assert torch.equal(mapping_N[4:], 4 + tail_hash(tail, tail_seed("t", 0), 16))
    # no head: the tail takes every row
    _, empty = layout_of("fit", torch.zeros(n, dtype=torch.bool))
    assert empty == {"head_rows": 0, "tail_offset": 0, "tail_rows": 20}
    # a head larger than its region is clustered into it, as with "fixed"
    _, large = layout_of("fit", torch.arange(n) < 15)
    assert large == {"head_rows": 10, "tail_offset": 10, "tail_rows": 10}


def test_a_fill_tail_region_gives_the_next_most_frequent_ids_the_rows_a_small_head_leaves() -> None:
    # 2 ids seen 10 times (the head), then ids seen 6, 5, 4, 3, 2, 1 times, 4 ids never seen;
    # 10 rows, tail_fraction 0.5: the head region has 5 rows, so 3 more ids join the head
    counts_N = torch.tensor([10.0, 10, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0])
    n, height = counts_N.numel(), 10
    head_N = counts_N >= 10
    filled = fill_head(head_N, counts_N, height, 0.5)
    assert filled.nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4]
    # a region larger than the ids seen: every seen id, never an unseen one
    assert fill_head(head_N, counts_N, 100, 0.1).nonzero().squeeze(1).tolist() == list(range(8))
    # ties by id; a head as large as its region is left alone
    ties = torch.tensor([9.0, 1, 1, 1])
    assert fill_head(ties >= 9, ties, 6, 0.5).tolist() == [True, True, True, False]
    assert torch.equal(fill_head(counts_N > 0, counts_N, height, 0.5), counts_N > 0)
    # through the build: the extended head gets a row each, the rest hashed into the tail
    spec = HeadTail(min_count=10, tail_fraction=0.5, tail_region="fill", encoding="compact")
    (mapping,), (layout,), _, _ = cluster_hashes(
        get_clustering("agglomerative"), torch.arange(n, dtype=torch.float32)[None],
        counts_N, [height], head_N, spec, "t", {},
    )  # fmt: skip
    assert isinstance(mapping, CompactMapping)
    assert mapping.head_ids.tolist() == [0, 1, 2, 3, 4]
    assert sorted(mapping.head_rows.tolist()) == [0, 1, 2, 3, 4]
    assert layout == {"head_rows": 5, "tail_offset": 5, "tail_rows": 5}


def test_a_fill_limited_by_counts_leaves_its_other_rows_to_the_tail() -> None:
    # as above, but the fill takes only ids seen at least 5 times: ids 2 and 3 join the
    # head of ids 0 and 1; the head region's fifth row goes to the tail, as with "fit"
    counts_N = torch.tensor([10.0, 10, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0])
    n, height = counts_N.numel(), 10
    head_N = counts_N >= 10
    assert fill_head(head_N, counts_N, height, 0.5, 5).nonzero().squeeze(1).tolist() == [0, 1, 2, 3]
    assert fill_head(head_N, counts_N, height, 0.5, 11).tolist() == head_N.tolist()
    spec = HeadTail(min_count=10, tail_fraction=0.5, tail_region="fill", encoding="compact",
                    fill_min_count=5)  # fmt: skip
    (mapping,), (layout,), _, _ = cluster_hashes(
        get_clustering("agglomerative"), torch.arange(n, dtype=torch.float32)[None],
        counts_N, [height], head_N, spec, "t", {},
    )  # fmt: skip
    assert mapping.head_ids.tolist() == [0, 1, 2, 3]
    assert sorted(mapping.head_rows.tolist()) == [0, 1, 2, 3]
    assert layout == {"head_rows": 4, "tail_offset": 4, "tail_rows": 6}
    assert (mapping.tail_seed, mapping.tail_offset, mapping.tail_rows) == (tail_seed("t", 0), 4, 6)
    # named in the plan's settings only when set (earlier plans keep their fingerprints)
    assert spec.to_dict()["fill_min_count"] == 5
    assert "fill_min_count" not in HeadTail(min_count=10).to_dict()
    assert "fill_share" not in HeadTail(min_count=10).to_dict()
