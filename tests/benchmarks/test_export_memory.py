"""benchmarks.export_memory: a tiny run measures both copies and both dtypes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from benchmarks import export_memory as bench

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("model", ["full", "lhf"])
def test_tiny_run_reports_every_dtype_and_copy(model: str) -> None:
    argv = ["--rows", "2000", "--tables", "2", "--dim", "4", "--model", model, "--repeats", "1"]
    args = bench.parse_args(argv)
    result = bench.run(args)
    assert set(result["results"]) == {f"{d}/{c}" for d in bench.DTYPES for c in bench.COPIES}
    for key, r in result["results"].items():
        assert f"{r['dtype']}/{r['copy']}" == key
        assert r["table_gb"] > 0 and r["seconds"] > 0 and r["peak_above_start_gb"] >= 0
        assert r["peaks_gb"] == [r["peak_above_start_gb"]]
    assert set(result["shared_over_full_peak"]) == set(bench.DTYPES)


def test_repeats_report_the_median_run(monkeypatch) -> None:  # noqa: ANN001
    # the processes report 3, 1, 2, 3, 1, 2, ... GB (twice that for a full copy) in the order
    # they run: each case gets 1, 2 and 3 once over its three repeats, so its median is 2
    peaks = iter([3.0, 1.0, 2.0] * 4)
    order = []

    def fake_run(cmd, **kwargs):  # noqa: ANN001, ANN202
        dtype, copy = cmd[cmd.index("--dtype") + 1], cmd[cmd.index("--copy") + 1]
        order.append(f"{dtype}/{copy}")
        peak = next(peaks) * (2 if copy == "full" else 1)
        line = json.dumps({"dtype": dtype, "copy": copy, "peak_above_start_gb": peak})
        return subprocess.CompletedProcess(cmd, 0, stdout=line + "\n")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    result = bench.run(bench.parse_args(["--repeats", "3"]))
    assert order[:4] == [f"{d}/{c}" for d in bench.DTYPES for c in bench.COPIES]  # interleaved
    assert len(order) == 12 and result["config"]["repeats"] == 3
    for key, r in result["results"].items():
        assert r["peak_above_start_gb"] == (4.0 if key.endswith("full") else 2.0)
    fp32 = result["results"]["fp32/shared"]
    assert sorted(fp32["peaks_gb"]) == [1.0, 2.0, 3.0]
    assert result["shared_over_full_peak"] == {"fp32": 0.5, "int8": 0.5}


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--rows", "0"], "--rows must be >= 1, got 0"),
        (["--fraction", "2"], r"\(0, 1\], got 2"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    ],
)
def test_bad_flags_are_named(flags: list[str], match: str, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        bench.parse_args(flags)
    assert re.search(match, capsys.readouterr().err)
