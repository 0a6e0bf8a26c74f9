"""benchmarks.remap: the clocks it times with, and a tiny run of both encodings."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchrec.test_utils import get_free_port

from benchmarks import remap as bench
from torchrec_lhf import LearnedHashEmbeddingBagCollection


def test_paired_ratio_is_the_median_of_the_per_iteration_ratios() -> None:
    durations = iter([1.0, 2.0, 10.0, 10.0, 1.0, 3.0])  # plain, lhf of each iteration
    now = [0.0]

    def clock() -> float:
        return now[0]

    def step() -> None:
        now[0] += next(durations)

    times = bench.time_pair({"plain": step, "lhf": step}, iters=3, warmup=0, clock=clock)
    assert times["ratio_paired"] == 2.0  # the median of 2, 1 and 3
    assert times["lhf"] / times["plain"] == 3.0  # the ratio of the medians: 3 over 1


def test_time_pair_reads_the_given_clock_around_each_step() -> None:
    ticks = itertools.count()  # each clock read is one tick later
    calls: list[str] = []
    steps = {"plain": lambda: calls.append("plain"), "lhf": lambda: calls.append("lhf")}
    times = bench.time_pair(steps, iters=3, warmup=1, clock=lambda: float(next(ticks)))
    # start and end: consecutive reads; the paired ratio of equal times is 1
    assert times == {"plain": 1.0, "lhf": 1.0, "ratio_paired": 1.0, "ratio_paired_ci95": [1.0, 1.0]}
    assert calls == ["plain", "lhf"] * 4  # warmup and iterations, interleaved
    assert bench.CLOCKS["cpu"] is not bench.CLOCKS["wall"]


def test_the_median_interval_holds_the_median_and_narrows_with_more_iterations() -> None:
    few = [1.0, 1.2, 0.9, 1.5, 1.1, 1.05, 1.3]
    lo, hi = bench.median_interval(few)
    assert lo <= 1.1 <= hi and lo < hi  # (1.1: the median)
    assert bench.median_interval(few) == [lo, hi]  # seeded
    many_lo, many_hi = bench.median_interval(few * 20)  # the same spread, 20 times the values
    assert lo <= many_lo <= 1.1 <= many_hi <= hi and many_hi - many_lo < hi - lo
    assert bench.median_interval([1.02] * 5) == [1.02, 1.02]
    with pytest.raises(ValueError, match="at least one value"):
        bench.median_interval([])


@pytest.mark.parametrize(
    ("interval", "expected"),
    [([1.01, 1.05], "met"), ([1.051, 1.2], "not met"), ([1.03, 1.07], "undecided")],
)
def test_the_goal_verdict_reads_the_whole_interval(interval: list[float], expected: str) -> None:
    assert bench.verdict(interval) == expected


@pytest.mark.parametrize(
    ("encoding", "collection"),
    [("dense", "pooled"), ("compact", "pooled"), ("ranked", "pooled"), ("ranked", "sequence")],
)
def test_tiny_run_reports_both_collections(encoding: str, collection: str, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(get_free_port()))
    argv = ["--batch_size", "8", "--max_rows", "2000", "--iters", "2", "--warmup", "1"]
    argv += ["--collection", collection]
    result = bench.main([*argv, "--encoding", encoding, "--clock", "cpu", "--json"])
    assert result["config"]["clock"] == "cpu" and result["config"]["encoding"] == encoding
    assert result["config"]["collection"] == collection
    assert result["config"]["ids_per_batch"] == 26 * 8
    for mode in ("unsharded", "fused"):
        r = result["seconds_per_batch"][mode]
        assert r["plain"] > 0 and r["lhf"] > 0 and r["ratio"] == r["lhf"] / r["plain"]
        assert r["ratio_paired"] > 0
        lo, hi = r["ratio_paired_ci95"]
        assert lo <= r["ratio_paired"] <= hi
    assert result["goal_verdict"] == bench.verdict(
        result["seconds_per_batch"]["fused"]["ratio_paired_ci95"]
    )
    assert result["remap_only_seconds"] > 0 and result["remap_bytes"] > 0


@pytest.mark.parametrize("encoding", ["dense", "compact", "ranked"])
def test_tables_under_min_table_rows_stay_full_in_both_models(encoding: str) -> None:
    args = bench.parse_args(["--encoding", encoding, "--min_table_rows", "100"])
    heights, logical, small, plan = bench._tables(args)
    full = {i for i, h in enumerate(heights) if h < 100}
    assert len(full) == 7  # the Criteo tables of 3 to 27 ids
    for i, (big, kept) in enumerate(zip(logical, small)):
        assert (kept.num_embeddings == big.num_embeddings) == (i in full), i
        assert (f"t{i}" in plan) == (i not in full), i
    every = bench._tables(bench.parse_args(["--encoding", encoding]))[3]
    assert len(every) == len(heights)  # the default compresses every table
    # ranked: every table whose head of 10% of its ids takes 4 bytes an id or less so
    ranked = [t.mappings[0].ranked(t.num_embeddings) for t in every if t.encodings[0] != "dense"]
    assert (encoding == "ranked") == any(ranked)
    assert encoding != "ranked" or all(r for t, r in zip(every, ranked) if t.num_embeddings > 99)


def test_sequence_collections_are_timed_as_embedding_collections() -> None:
    args = bench.parse_args(["--collection", "sequence", "--max_rows", "2000"])
    _, logical, small, plan = bench._tables(args)
    assert all(type(c).__name__ == "EmbeddingConfig" for c in (*logical, *small))
    module = bench.LearnedHashEmbeddingCollection(tables=logical, plan=plan)
    kjt = bench._inputs([min(h, 2000) for h in bench.CRITEO_HEIGHTS], 4, 2, seed=1, order=None)
    out = module(kjt)
    assert len(out) == 26 and bench._total(out).shape == ()
    torch.testing.assert_close(bench._total(out), sum(jt.values().sum() for jt in out.values()))


def test_a_negative_min_table_rows_is_refused(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        bench.parse_args(["--min_table_rows", "-5"])
    assert "argument --min_table_rows: expected an int >= 0, got '-5'" in capsys.readouterr().err


def test_scattered_ids_spread_the_ranked_head_and_the_remap_finds_it() -> None:
    args = bench.parse_args(["--encoding", "ranked", "--scatter_ids", "--max_rows", "300000"])
    heights, logical, _, plan = bench._tables(args)
    big = heights.index(max(heights))
    mapping = plan[f"t{big}"].mappings[0]
    assert mapping.rows_are_ranks and mapping.ranked(heights[big])
    head = mapping.head_ids
    assert int(head[-1] - head[0]) + 1 > 2 * head.numel()  # spread, not contiguous
    raw = bench._inputs(heights, 64, 2, seed=1, order=bench._order(heights, True))
    rows = LearnedHashEmbeddingBagCollection(tables=logical, plan=plan).remap(raw).to_dict()
    ids = raw.to_dict()[f"f{big}"].values()
    expected = mapping.rows(ids)
    assert torch.equal(rows[f"f{big}"].values(), expected)
    assert bool((expected < head.numel()).any())  # frequent ids hit the head


def test_scatter_ids_needs_a_head() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--encoding", "dense", "--scatter_ids"])
