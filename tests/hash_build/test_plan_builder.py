"""The single-process plan builder: tiny tables checkable by hand."""

import pytest
import torch

import torchrec_lhf
from torchrec_lhf.hash_build import build_plan, build_table_hash
from torchrec_lhf.hash_build.head_tail import HeadTail, tail_seed
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan import HashPlan

# Two well-separated groups on coordinate 0; coordinate 1 splits the ids differently.
EMB = torch.tensor([[0.0, 9.0], [5.0, 0.0], [0.1, 0.1], [5.2, 9.1], [0.2, 9.2], [5.1, 0.2]])


def test_build_table_hash_one_hash():
    table, info = build_table_hash("t", EMB, None, rows=2, projection="dim:0")
    assert table.mappings[0].dtype == torch.int32
    assert table.mappings[0].tolist() == [0, 1, 0, 1, 0, 1]
    assert (table.name, table.num_embeddings, table.heights) == ("t", 6, (2,))
    assert info["fallback_merges"] == 0 and info["seconds"] >= 0 and info["rows"] == 2


def test_build_table_hash_two_hashes_use_two_coordinates():
    table, info = build_table_hash(
        "t", EMB, torch.ones(6), rows=4, num_hashes=2, combine="concat", projection="dim:0"
    )
    assert table.heights == (2, 2) and table.combine == "concat"
    assert table.mappings[0].tolist() == [0, 1, 0, 1, 0, 1]  # coordinate 0
    assert table.mappings[1].tolist() == [1, 0, 0, 1, 1, 0]  # coordinate 1
    assert info["heights"] == [2, 2]


def test_build_table_hash_methods_and_options():
    q, _ = build_table_hash("t", EMB, None, rows=3, clustering="quantile", projection="dim:0")
    # Sorted by coordinate 0: ids 0, 2, 4, 1, 5, 3 -> pairs {0, 2}, {4, 1}, {5, 3}.
    assert q.mappings[0].tolist() == [0, 1, 0, 2, 1, 2]
    with pytest.raises(ValueError, match="unknown clustering 'kmeans'"):
        build_table_hash("t", EMB, None, rows=3, clustering="kmeans")
    with pytest.raises(ValueError, match="unknown agglomerative option"):
        build_table_hash("t", EMB, None, rows=3, bogus=1)
    t, _ = build_table_hash("t", EMB, None, rows=2, projection="dim:0", max_cluster_size=2)
    assert t.num_rows == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rows=7), "more than the table's 6 ids"),
        (dict(rows=1, num_hashes=2), "rows must be an int >= num_hashes=2"),
        (dict(rows=2, combine="mean"), "combine must be one of"),
        (dict(rows=2, projection="dim:5"), "teacher dim is 2"),
    ],
)
def test_build_table_hash_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_table_hash("t", EMB, None, **kwargs)


def test_build_plan_fraction_skips_small_tables():
    emb = {"big": EMB, "small": torch.zeros(3, 2)}
    counts = {"big": torch.ones(6), "small": torch.ones(3)}
    plan = build_plan(emb, counts, fraction=0.5, min_table_rows=4, projection="dim:0")
    assert plan.table_names == ["big"]
    assert plan["big"].heights == (3,)
    assert plan.metadata["source"] == "build_plan"
    for key, value in dict(
        clustering="agglomerative",
        fraction=0.5,
        projection="dim:0",
        num_hashes=1,
        combine="sum",
        min_table_rows=4,
    ).items():
        assert plan.metadata[key] == value
    assert plan.metadata["build_info"]["big"]["fallback_merges"] == 0


def test_build_plan_rows_int_and_dict_and_num_hashes():
    emb = {"a": EMB, "b": EMB.flip(0)}
    plan = build_plan(emb, None, rows=4, num_hashes=2, min_table_rows=1, projection="dim:0")
    assert [t.heights for t in plan] == [(2, 2), (2, 2)]
    assert plan["a"].mappings[1].tolist() == [1, 0, 0, 1, 1, 0]
    plan = build_plan(emb, None, rows={"b": 3}, min_table_rows=1)
    assert plan.table_names == ["b"] and plan["b"].heights == (3,)
    # fraction -> max(H, round(fraction * N)) rows: round(0.1 * 6) = 1 -> 2 with H = 2.
    plan = build_plan(emb, None, fraction=0.1, num_hashes=2, min_table_rows=1)
    assert plan["a"].heights == (1, 1)


def test_build_plan_is_deterministic_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = {"t": torch.randn(300, 4, generator=g)}
    counts = {"t": torch.randint(0, 100, (300,), generator=g)}
    one = build_plan(emb, counts, fraction=0.1, min_table_rows=100)
    two = torchrec_lhf.build_plan(emb, counts, fraction=0.1, min_table_rows=100)
    assert one == two and one["t"].heights == (30,)
    one.save(tmp_path / "plan.safetensors")
    assert HashPlan.load(tmp_path / "plan.safetensors") == one


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "exactly one of fraction / rows"),
        (dict(fraction=0.5, rows=3), "exactly one of fraction / rows"),
        (dict(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (dict(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (dict(rows={"zzz": 3}), r"rows names tables \['zzz'\]"),
        (dict(fraction=0.5, min_table_rows=-1), "min_table_rows must be an int >= 0, got -1"),
        (dict(fraction=0.5, clustering="kmeans"), "unknown clustering"),
        # before: accepted where no table reaches the clustering (here 't' stays full)
        (
            dict(fraction=0.5, min_table_rows=100, clustering_options={"bogus": 1}),
            r"unknown agglomerative option\(s\) \['bogus'\]",
        ),
        (
            dict(fraction=0.5, min_table_rows=100, clustering_options={"max_cluster_size": 0}),
            "max_cluster_size must be an int >= 1",
        ),
        (
            dict(fraction=0.5, clustering="quantile", clustering_options={"bogus": 1}),
            r"clustering 'quantile' takes no options, got \['bogus'\]",
        ),
        # before: a TypeError from dict() naming nothing
        (
            dict(fraction=0.5, clustering_options=[1]),
            r"clustering options must be a mapping of names, got \[1\]",
        ),
    ],
)
def test_build_plan_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_plan({"t": EMB}, None, **kwargs)


def test_build_plan_missing_counts():
    with pytest.raises(ValueError, match="table 't': no access counts"):
        build_plan({"t": EMB}, {"other": torch.ones(6)}, fraction=0.5, min_table_rows=1)


def test_tail_ids_are_hashed_not_clustered():
    # Values on coordinate 0: ids 0, 2, 4 near 0, ids 1, 3, 5 near 5. Ids 2 and 5 were seen
    # once (tail at head_min_count=2): they leave the clustering and go to their tail hash
    # over both rows; the four head ids fit two rows only by clustering, as before.
    counts = torch.tensor([3.0, 4.0, 1.0, 2.0, 5.0, 1.0])
    spec = HeadTail(min_count=2)
    table, info = build_table_hash("t", EMB, counts, rows=2, projection="dim:0", head_tail=spec)
    tail = tail_hash(torch.arange(6), tail_seed("t", 0), 2)
    expected = [0, 1, int(tail[2]), 1, 0, int(tail[5])]
    assert table.mappings[0].tolist() == expected
    assert info["head_ids"] == 4 and info["head_tail"]["head_min_count"] == 2
    assert info["layouts"] == [{"head_rows": 2, "tail_offset": 0, "tail_rows": 2}]
    # fewer head ids than rows: each keeps a row of its own (in id order), no clustering
    one, _ = build_table_hash(
        "t", EMB, torch.tensor([9.0, 1, 1, 1, 1, 1]), rows=3, projection="dim:0", head_tail=spec
    )
    tail3 = tail_hash(torch.arange(6), tail_seed("t", 0), 3)
    assert one.dense_mapping(0).tolist() == [0, *tail3[1:].tolist()]


def test_head_needs_counts_and_valid_settings():
    with pytest.raises(ValueError, match="needs counts, got None"):
        build_table_hash("t", EMB, None, rows=2, head_tail=HeadTail(min_count=2))
    with pytest.raises(ValueError, match="head min_count must be an int >= 0, got -1"):
        HeadTail(min_count=-1)
    with pytest.raises(ValueError, match="needs counts, got counts=None"):
        build_plan(
            {"t": EMB}, None, fraction=0.5, min_table_rows=1, head_tail=HeadTail(min_count=2)
        )
    plan = build_plan(
        {"t": EMB},
        {"t": torch.ones(6)},
        fraction=0.5,
        min_table_rows=1,
        head_tail=HeadTail(min_count=2),
    )
    # every id in the tail: nothing to store, the compact encoding is empty
    assert plan["t"].mappings[0].num_head == 0
    expected = tail_hash(torch.arange(6), tail_seed("t", 0), 3).tolist()
    assert plan["t"].dense_mapping(0).tolist() == expected
    assert plan.metadata["head_tail"]["head_min_count"] == 2
