"""CCE (``torchrec_lhf.compression.cce``): the plan, the schedule and the phase change by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from torchrec_lhf.compression import cce
from torchrec_lhf.compression.cce import (
    CCEConfig,
    Reclustered,
    cce_tables,
    fit_columns,
    kmeans,
    phase_seed,
    phase_steps,
    recluster_table,
    reclustered_table,
)
from torchrec_lhf.compression.methods import make_plan
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan import HashPlan, TableHash


def test_plan_is_a_clustered_index_and_a_pure_hash() -> None:
    plan = make_plan(
        "cce", {"t": 1000, "small": 50}, fraction=0.1, seed=4, min_table_rows=100, columns=1
    )
    assert plan.table_names == ["t"] and plan.metadata["method"] == "cce"
    t = plan["t"]
    assert t.heights == (50, 50) and t.combine == "sum" and t.encodings == ("dense", "compact")
    # the clustered index is stored (uint8 per id: 50 rows), the hash stores nothing per id
    assert plan.remap_bytes() == 1000
    assert t.mappings[1].tail_seed == phase_seed(4, "t", 0)
    # both hashes start random: every row used, and not the same map
    clustered, hashed = t.dense_mapping(0).long(), t.dense_mapping(1).long()
    assert torch.bincount(clustered, minlength=50).min() > 0
    assert not torch.equal(clustered, hashed)
    one = make_plan("cce", {"t": 10}, fraction=0.4, combine="concat", columns=1)
    assert one["t"].combine == "concat"
    with pytest.raises(ValueError, match="'mult'"):
        make_plan("cce", {"t": 10}, fraction=0.4, combine="mult")
    with pytest.raises(ValueError, match="columns must be an int >= 1, got 0"):
        make_plan("cce", {"t": 10}, fraction=0.4, columns=0)


def test_plan_with_columns_is_the_reference_layout() -> None:
    one = make_plan("cce", {"t": 1000}, fraction=0.1, seed=4, columns=1)
    plan = make_plan("cce", {"t": 1000}, fraction=0.1, seed=4)  # the reference's 4 columns
    t = plan["t"]
    assert (t.combine, t.num_columns, t.heights) == ("sum_concat", 4, (50, 50) * 4)
    assert t.encodings == ("dense", "compact") * 4
    # each column's tables have a quarter of the dim: the same table bytes as one column,
    # four clustered indices stored
    assert t.internal_dims(16) == [4] * 8 and one["t"].internal_dims(16) == [16, 16]
    assert plan.remap_bytes() == 4 * 1000
    # column 0 is the one-column plan; every column has its own seeds
    assert torch.equal(t.dense_mapping(0), one["t"].dense_mapping(0))
    seeds = [t.mappings[2 * i + 1].tail_seed for i in range(4)]
    assert seeds[0] == one["t"].mappings[1].tail_seed and len(set(seeds)) == 4
    assert len({tuple(t.dense_mapping(2 * i).tolist()) for i in range(4)}) == 4
    concat = make_plan("cce", {"t": 10}, fraction=0.4, combine="concat", columns=2)["t"]
    assert (concat.combine, concat.num_hashes, concat.internal_dims(8)) == ("concat", 4, [2] * 4)
    cce_tables(plan)  # accepted as a cce plan


def _combinations(t: TableHash) -> int:
    """How many distinct combinations of rows (one per hash function) the ids have."""
    rows_NH = torch.stack([t.dense_mapping(h).long() for h in range(t.num_hashes)], dim=1)
    return torch.unique(rows_NH, dim=0).shape[0]


def test_columns_give_ids_distinct_combinations() -> None:
    # 1,000 ids, 20 rows of the full dim: M0 = M1 = 10 rows per internal table
    one = make_plan("cce", {"t": 1000}, fraction=0.02, seed=3, columns=1)["t"]
    four = make_plan("cce", {"t": 1000}, fraction=0.02, seed=3, columns=4)["t"]
    # one column: at most M0 * M1 = 100 combinations (pigeonhole), ten ids a combination
    assert _combinations(one) <= 100
    # four columns with independent hashes: (M0 * M1) ** 4 = 1e8 combinations, so a pair
    # of ids shares all eight rows with probability 1e-8 (about 0.005 such pairs expected
    # among the 499,500): every id has its own combination
    assert _combinations(four) == 1000
    # ...which needs the columns' hashes to differ: four copies of one column would not do
    same = TableHash("t", 1000, one.mappings * 4, one.heights * 4, "sum_concat", 4)
    assert _combinations(same) <= 100


def test_fit_columns_keeps_fused_widths() -> None:
    assert [fit_columns(d, 4) for d in (16, 8, 4, 12, 6, 7)] == [4, 2, 1, 3, 3, 1]
    assert fit_columns(64, 2) == 2 and fit_columns(16, 1) == 1


def test_plan_with_columns_round_trips(tmp_path) -> None:
    plan = make_plan("cce", {"t": 100, "u": 30}, fraction=0.2, seed=1, columns=2)
    plan.save(tmp_path / "plan.safetensors")
    loaded = HashPlan.load(tmp_path / "plan.safetensors")
    assert loaded == plan and loaded.fingerprint() == plan.fingerprint()
    assert loaded["t"].num_columns == 2 and loaded["t"].combine == "sum_concat"
    assert cce_tables(loaded)[0].equals(plan["t"])
    # the columns are part of the plan: the same mappings in 1 column of 4 hashes differ
    t = plan["t"]
    other = HashPlan([dataclasses.replace(t, num_columns=1), plan["u"]])
    assert other != plan and other.fingerprint() != plan.fingerprint()


def test_phase_steps_split_training_into_equal_slices() -> None:
    assert phase_steps(100, 3) == [25, 50, 75]
    assert phase_steps(10, 1) == [5]
    assert phase_steps(2, 3) == [1]  # repeats and the ends are dropped
    assert phase_steps(100, 0) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phases": -1}, "phases"),
        ({"kmeans_iters": 0}, "kmeans_iters"),
        ({"sample_factor": 1.5}, "sample_factor"),
        ({"reset_optimizer": 1}, "reset_optimizer"),
    ],
)
def test_config_names_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CCEConfig(**kwargs)


def test_cce_tables_rejects_other_plans() -> None:
    with pytest.raises(ValueError, match="not a cce plan"):
        cce_tables(make_plan("qr", {"t": 10}, fraction=0.7))


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    x = centers.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=g)
    c = kmeans(x, 3, iters=50, generator=g)
    # each true center has exactly one centroid at its points' mean
    for k in range(3):
        mean = x[20 * k : 20 * (k + 1)].mean(0)
        assert torch.cdist(mean[None], c).min() < 1e-5
    # fewer points than centroids: the points, then random rows
    few = kmeans(x[:2], 3, iters=5, generator=g)
    assert torch.equal(few[:2], x[:2]) and few.shape == (3, 2)


def _tiny() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six ids: clustered rows 0,0,0,1,1,1 of two far-apart rows, hashed rows 0,1,0,1,0,1 of
    two small ones. Their embeddings (sum) form two clear groups."""
    w0 = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    w1 = torch.tensor([[0.3, 0.0], [0.0, 0.6]])
    return w0, w1, torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_recluster_step_by_hand(combine: str) -> None:
    w0, w1, rows0, rows1 = _tiny()
    emb = [
        (w0[rows0[i]] + w1[rows1[i]])
        if combine == "sum"
        else torch.cat([w0[rows0[i]], w1[rows1[i]]])
        for i in range(6)
    ]
    seed = 12345
    out = recluster_table(
        w0,
        w1,
        rows0,
        rows1,
        combine=combine,
        tail_seed=seed,
        config=CCEConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    # assignments: ids 0-2 share a cluster, ids 3-5 the other
    a = out.clustered_N.tolist()
    assert a[0] == a[1] == a[2] != a[3] == a[4] == a[5]
    # centroids: each cluster's row is the mean embedding of its ids (its D0 columns)
    for ids in ([0, 1, 2], [3, 4, 5]):
        centroid = torch.stack([emb[i] for i in ids]).mean(0)
        torch.testing.assert_close(out.weight0[a[ids[0]]], centroid[:2])
    # the hashed table: a fresh hash, each row the mean residual of the ids now hashed to it
    new1 = tail_hash(torch.arange(6), seed, 2).tolist()
    assert out.tail_seed == seed
    for r in range(2):
        ids = [i for i in range(6) if new1[i] == r]
        if combine == "sum":
            resid = [
                emb[i] - torch.stack([emb[j] for j in range(6) if a[j] == a[i]]).mean(0)
                for i in ids
            ]
        else:
            resid = [emb[i][2:] for i in ids]
        expected = torch.stack(resid).mean(0) if ids else torch.zeros(2)
        torch.testing.assert_close(out.weight1[r], expected)


def test_recluster_is_deterministic_and_chunking_does_not_change_it(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    w0, w1 = torch.randn(8, 4, generator=g), torch.randn(5, 4, generator=g)
    rows0, rows1 = (
        torch.randint(0, 8, (300,), generator=g),
        torch.randint(0, 5, (300,), generator=g),
    )

    def run():
        return recluster_table(
            w0,
            w1,
            rows0,
            rows1,
            combine="sum",
            tail_seed=7,
            config=CCEConfig(sample_factor=10),
            generator=torch.Generator().manual_seed(3),
        )

    first = run()
    monkeypatch.setattr(cce, "_CHUNK_ELEMENTS", 37)  # many chunks of ids and of points
    second = run()
    assert torch.equal(first.clustered_N, second.clustered_N)
    torch.testing.assert_close(first.weight0, second.weight0)
    torch.testing.assert_close(first.weight1, second.weight1)
    # the embeddings the model gives each id after the phase: centroid plus hashed row
    assert first.weight0.shape == (8, 4) and first.weight1.shape == (5, 4)
    assert int(first.clustered_N.max()) < 8


def test_reclustered_table_takes_each_columns_index_and_seed() -> None:
    t = make_plan("cce", {"t": 6}, fraction=1.0, seed=0, columns=2)["t"]
    results = [
        Reclustered(torch.tensor([2, 2, 1, 1, 0, 0]), torch.zeros(3, 4), torch.zeros(3, 4), 11),
        Reclustered(torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(3, 4), torch.zeros(3, 4), 12),
    ]
    new = reclustered_table(t, results)
    assert new.dense_mapping(0).tolist() == [2, 2, 1, 1, 0, 0]
    assert new.dense_mapping(2).tolist() == [0, 1, 2, 0, 1, 2]
    assert [new.mappings[h].tail_seed for h in (1, 3)] == [11, 12]
    assert (new.heights, new.combine, new.num_columns) == (t.heights, "sum_concat", 2)
    with pytest.raises(ValueError, match="2 columns, 1 results"):
        reclustered_table(t, results[:1])
