"""The scale benchmark at a tiny scale: every stage runs and the JSON has its fields."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from benchmarks import scale


def test_loglog_slope_recovers_a_power_law() -> None:
    xs = [1 / 64, 1 / 16, 1 / 4, 1.0]
    assert scale.loglog_slope(xs, [3.0 * x**0.8 for x in xs]) == pytest.approx(0.8)
    assert scale.loglog_slope(xs, [5.0] * 4) == pytest.approx(0.0)
    assert scale.loglog_slope([1.0, 1.0], [1.0, 2.0]) is None


def test_runs_respect_the_world_size_caps() -> None:
    config = scale.ScaleConfig(
        scales=[1.0, 0.25, 1 / 16], world_sizes=[1, 2], max_scale_by_world_size={"2": 0.25}
    )
    assert config.runs() == [(1 / 16, 1), (0.25, 1), (1.0, 1), (1 / 16, 2), (0.25, 2)]
    with pytest.raises(ValueError, match="scales"):
        scale.ScaleConfig(scales=[0.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scales": [0.25, 0.25]}, r"scales must name each value once, got \[0.25, 0.25\]"),
        ({"world_sizes": [2, 2]}, "world_sizes must name each value once"),
        ({"scales": [float("inf")]}, "scales must be a non-empty list of values > 0"),
        ({"max_scale_by_world_size": {"two": 1.0}}, "got 'two': 1.0"),
        ({"max_scale_by_world_size": {"2": -1}}, "got '2': -1"),
        ({"sharding_types": ["bogus"]}, "sharding type must be one of .* got 'bogus'"),
        ({"sharding_types": []}, "sharding_types must name at least one type"),
        ({"limit_eval_batches": 0}, "limit_eval_batches must be an int >= 1, got 0"),
        ({"min_table_rows": -1}, "min_table_rows must be an int >= 0, got -1"),
        ({"embedding_dim": 0}, "embedding_dim must be an int >= 1, got 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a number > 0, got nan"),
        ({"threads": True}, "threads must be an int >= 1, got True"),
    ],
)
def test_settings_no_stage_could_run_are_refused_before_the_first(kwargs: dict, message: str):
    """Before, the config took each of these: repeats ran (and were reported) twice, and the
    others reached the stages' processes."""
    with pytest.raises(ValueError, match=message):
        scale.ScaleConfig(**kwargs)
    # a cap for a world size the run does not use is harmless (the default names 2)
    assert scale.ScaleConfig(world_sizes=[1], max_scale_by_world_size={"4": 1.0}).runs()


@pytest.mark.distributed
def test_tiny_benchmark_runs_every_stage_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = [
        "--scales", "0.0001,0.0002",
        "--world_sizes", "1,2",
        "--max_scale_by_world_size", '{"2": 0.0001}',
        "--rows_at_scale_1", "40000000",
        "--batch_size", "128",
        "--paired_block", "4",
        "--work_dir", str(tmp_path / "work"),
        "--out_json", str(out),
    ]  # fmt: skip
    result = scale.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    runs = result["runs"]
    assert [(r["scale"], r["world_size"]) for r in runs] == [(1e-4, 1), (2e-4, 1), (1e-4, 2)]
    for r in runs:
        want = set(scale.STAGES) - ({"generate"} if r["world_size"] == 2 else set())
        assert set(r["stages"]) == want
        for st in r["stages"].values():
            assert st["seconds"] > 0 and st["peak_rss_bytes"] > 50 * 2**20
        assert len(r["stages"]["train"]["peak_rss_bytes_by_rank"]) == r["world_size"]
        # 10 training days of 400 rows (4000 at 1e-4), heights scaled from the MLPerf ones
        assert (
            r["train_rows"] == round(r["scale"] * 4e7) and r["rows"] == r["train_rows"] * 11 // 10
        )
        assert r["ids"] == 20430 if r["scale"] == 1e-4 else r["ids"] > 20430
        assert 0 < r["compressed_rows"] < r["ids"] / 5  # 10% of the big tables, small ones full
        assert r["embedding_bytes"] == r["compressed_rows"] * 16 * 4 and r["remap_bytes"] > 0
        assert r["stages"]["train"]["index_bytes"] > 0  # the learned plan stores its head
        paired = r["stages"]["paired"]
        # full blocks of 4 steps in an epoch of 128-row batches per rank, the first pair out
        steps = r["train_rows"] // (128 * r["world_size"])
        assert paired["pairs"] == steps // 4 - 1
        ratios = [p["base"] / p["lhf"] for p in paired["block_seconds"]]
        assert r["train_vs_baseline"] == pytest.approx(statistics.median(ratios))
        q1, q3 = r["train_vs_baseline_quartiles"]
        assert q1 <= r["train_vs_baseline"] <= q3
        assert r["train_vs_baseline_total"] == pytest.approx(
            r["paired_samples_per_s"] / r["baseline_samples_per_s"]
        )
        assert 0.5 < r["stages"]["eval"]["auc"] < 1
        assert r["stages"]["checkpoint"]["checkpoint_load_seconds"] > 0
    assert set(result["exponents"]) == set(scale.STAGES)
    for e in result["exponents"].values():
        assert all(math.isfinite(v) for v in e.values())
    assert result["exponents_by_world_size"]["2"]["train"]["time"] is None  # one scale only
