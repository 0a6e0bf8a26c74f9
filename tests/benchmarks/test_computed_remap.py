"""benchmarks.computed_remap on small tables: both remaps give the same rows, the computed
one holds nothing per id, and the report carries the paired ratio."""

from __future__ import annotations

import json

import pytest

from benchmarks import computed_remap
from tests._fixtures import run_module


@pytest.mark.parametrize(("method", "dense_hashes"), [("modulo", 1), ("qr", 1), ("memrec", 3)])
def test_small_run_gives_the_same_rows_both_ways(method: str, dense_hashes: int) -> None:
    argv = ["--json", "--method", method, "--heights", "kaggle", "--max_rows", "2000"]
    argv += ["--fraction", "0.1", "--samples", "32", "--pooling", "2", "--iters", "3"]
    done = run_module("benchmarks.computed_remap", argv + ["--warmup", "1"])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["same_rows"] is True and out["config"]["ids"] == 26 * 32 * 2
    computed, dense = out["results"]["computed"], out["results"]["dense"]
    heights = computed_remap.table_heights("kaggle", 2000)
    # the dense baseline: a row per id of each dense hash function (uint8 to int32)
    assert dense_hashes * sum(heights.values()) <= dense["remap_bytes"]
    assert computed["remap_bytes"] < 26 * 3 * 3 * 8 + 1  # at most three 3-int64 tails a table
    low, high = out["ratio_paired_ci95"]
    assert 0 < low <= out["ratio_paired"] <= high


def test_heights() -> None:
    kaggle = computed_remap.table_heights("kaggle", 1000)
    assert len(kaggle) == 26 and max(kaggle.values()) == 1000 and kaggle["t8"] == 3
    mlperf = computed_remap.table_heights("mlperf", 1000)
    assert sum(mlperf.values()) == 204_184_588


def test_bad_method_is_refused() -> None:
    done = run_module("benchmarks.computed_remap", ["--method", "lhf"])
    assert done.returncode != 0 and "invalid choice: 'lhf'" in done.stderr
