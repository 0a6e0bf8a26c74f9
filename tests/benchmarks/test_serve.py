"""benchmarks.serve: a tiny run of the scripted quantized models, each encoding."""

from __future__ import annotations

import pytest

from benchmarks import serve as bench


@pytest.mark.parametrize("encoding", ["dense", "ranked"])
def test_tiny_run_reports_qps_of_both_models_at_each_batch_size(encoding: str) -> None:
    argv = ["--batch_sizes", "1,4", "--max_rows", "2000", "--iters", "3", "--warmup", "1"]
    result = bench.main([*argv, "--encoding", encoding, "--threads", "1", "--json"])
    assert set(result["results"]) == {"1", "4"}
    for r in result["results"].values():
        assert r["qps"]["plain"] > 0 and r["qps"]["lhf"] > 0
        assert r["ratio"] == r["qps"]["lhf"] / r["qps"]["plain"]
        lo, hi = r["ratio_paired_ci95"]  # the seconds' interval, inverted
        seconds = r["seconds_per_call"]
        assert lo <= r["ratio_paired"] <= hi
        assert (lo, hi) == (
            1 / seconds["ratio_paired_ci95"][1],
            1 / seconds["ratio_paired_ci95"][0],
        )
        assert r["max_score_diff"] < 1e-4  # the same rows, tables and MLPs
        # the plain model over its twin that does not read the request's lengths or ids,
        # timed in a loop of their own (the pair above is timed as before)
        assert set(seconds) == {"plain", "lhf", "ratio_paired", "ratio_paired_ci95"}
        assert r["request_check_cost"] > 0 and r["seconds_per_call_unchecked"] > 0
        chained = r["ratio_paired"] / r["request_check_cost"]
        assert r["ratio_vs_plain_unchecked"] == pytest.approx(chained)
    ratios = [r["ratio_vs_plain_unchecked"] for r in result["results"].values()]
    assert result["goal_met"] == all(x >= bench.GOAL for x in ratios)
