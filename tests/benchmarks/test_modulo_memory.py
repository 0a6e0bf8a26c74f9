"""benchmarks.modulo_memory on a small share of the MLPerf heights: both flows run, give the
same rows, and the computed one holds nothing per id (the hashing trick, QR and MEM-REC)."""

from __future__ import annotations

import json

import pytest

from benchmarks import modulo_memory
from tests._fixtures import run_module


def test_small_run_reports_both_flows_and_their_ratios() -> None:
    done = run_module("benchmarks.modulo_memory", ["--json", "--scale", "0.001"])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    computed, dense = out["results"]["computed"], out["results"]["dense"]
    ids = out["config"]["ids"]
    assert out["same_rows"] is True
    assert computed["plan_remap_bytes"] == 0
    assert computed["module_remap_bytes"] == 26 * 3 * 8  # each table's tail: 3 int64
    # dense: a row per id, in the fewest bytes its heights allow (here int16 or uint8)
    assert ids <= dense["module_remap_bytes"] <= 2 * ids
    assert out["module_remap_ratio"] == pytest.approx(
        computed["module_remap_bytes"] / dense["module_remap_bytes"]
    )


def test_qr_reports_its_dense_quotient_as_the_baseline() -> None:
    """``--method qr``: the computed flow holds nothing per id (the quotient's divided
    tail), the baseline its quotient's row per id; both give the same rows."""
    done = run_module("benchmarks.modulo_memory", ["--json", "--method", "qr", "--scale", "0.001"])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    computed, dense = out["results"]["computed"], out["results"]["dense"]
    assert out["config"]["method"] == "qr" and out["same_rows"] is True
    assert computed["plan_remap_bytes"] == 0
    assert computed["module_remap_bytes"] == 26 * 2 * 3 * 8  # two tails a table: 3 int64 each
    ids = out["config"]["ids"]
    assert ids <= dense["plan_remap_bytes"] <= 2 * ids  # the quotient's rows, uint8 or int16


def test_memrec_reports_its_three_dense_hashes_as_the_baseline() -> None:
    """``--method memrec``: nothing per id computed; the baseline holds all three hashes'
    rows (two token tables and the weight table) per id."""
    argv = ["--json", "--method", "memrec", "--scale", "0.001"]
    done = run_module("benchmarks.modulo_memory", argv)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    computed, dense = out["results"]["computed"], out["results"]["dense"]
    assert out["config"]["method"] == "memrec" and out["same_rows"] is True
    assert computed["plan_remap_bytes"] == 0
    assert computed["module_remap_bytes"] == 26 * 3 * 3 * 8  # three tails a table
    ids = out["config"]["ids"]
    assert 3 * ids <= dense["plan_remap_bytes"] <= 3 * 2 * ids  # three rows an id


def test_heights_follow_the_scale() -> None:
    heights = modulo_memory._heights(0.5)
    assert len(heights) == 26 and heights["t0"] == 20_000_000 and heights["t5"] == 2
