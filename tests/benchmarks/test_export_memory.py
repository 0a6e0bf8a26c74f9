"""benchmarks.export_memory: a tiny run measures every flow and both dtypes."""

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
        assert r["seconds_runs"] == [r["seconds"]]
    ratios = ("spill_over_remap_copies_peak", "spill_over_shared_peak", "spill_over_full_peak")
    for ratio in (*ratios, "shared_over_full_peak"):
        assert set(result[ratio]) == set(bench.DTYPES)


def test_repeats_report_the_median_run(monkeypatch) -> None:  # noqa: ANN001
    # each case's processes report 3, 1 and 2 GB over its three repeats (times 2 for the whole
    # copy, times 0.5 for the spilled flow), so its median is 2 (4, 1)
    scale = {"spill": 0.5, "remap-copies": 0.625, "shared": 1.0, "full": 2.0}
    runs_of: dict[str, int] = {}
    order = []

    def fake_run(cmd, **kwargs):  # noqa: ANN001, ANN202
        dtype, copy = cmd[cmd.index("--dtype") + 1], cmd[cmd.index("--copy") + 1]
        key = f"{dtype}/{copy}"
        order.append(key)
        runs_of[key] = runs_of.get(key, 0) + 1
        peak = [3.0, 1.0, 2.0][runs_of[key] - 1] * scale[copy]
        line = json.dumps({"dtype": dtype, "copy": copy, "peak_above_start_gb": peak})
        return subprocess.CompletedProcess(cmd, 0, stdout=line + "\n")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    result = bench.run(bench.parse_args(["--repeats", "3"]))
    cases = [f"{d}/{c}" for d in bench.DTYPES for c in bench.COPIES]
    assert order == cases * 3  # interleaved
    assert result["config"]["repeats"] == 3
    for key, r in result["results"].items():
        assert r["peak_above_start_gb"] == 2.0 * scale[key.split("/")[1]]
    fp32 = result["results"]["fp32/shared"]
    assert fp32["peaks_gb"] == [3.0, 1.0, 2.0]
    assert result["shared_over_full_peak"] == {"fp32": 0.5, "int8": 0.5}
    assert result["spill_over_shared_peak"] == {"fp32": 0.5, "int8": 0.5}
    assert result["spill_over_full_peak"] == {"fp32": 0.25, "int8": 0.25}
    assert result["spill_over_remap_copies_peak"] == {"fp32": 0.8, "int8": 0.8}


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--rows", "0"], "argument --rows: expected an int >= 1, got '0'"),
        (["--fraction", "2"], r"argument --fraction: expected a fraction in \(0, 1\], got '2'"),
        (["--repeats", "0"], "argument --repeats: expected an int >= 1, got '0'"),
    ],
)
def test_bad_flags_are_named(flags: list[str], match: str, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        bench.parse_args(flags)
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize("copy", bench.COPIES)
def test_each_flow_reaches_the_export_as_it_says(copy: str, monkeypatch) -> None:  # noqa: ANN001
    # the current flow and the remap copies' spill; the whole copy quantizes a copy of the
    # float tables; the remap copies' flow shares no mapping
    from torchrec_lhf import LearnedHashEmbeddingBagCollection, inference
    from torchrec_lhf.modules import logical_view

    seen = {}

    def fake_script(model, features, *, num_dense, dtype, spill):  # noqa: ANN001, ANN202
        (lhf,) = [m for m in model.modules() if isinstance(m, LearnedHashEmbeddingBagCollection)]
        seen.update(
            spill=spill,
            shares=bool(inference.embedding_tables(model)),
            shares_remap=bool(logical_view.remap_tensors(lhf)),
        )

    monkeypatch.setattr(inference, "script_serving_model", fake_script)
    monkeypatch.setattr(inference, "embedding_tables", inference.embedding_tables)
    monkeypatch.setattr(logical_view, "remap_tensors", logical_view.remap_tensors)
    argv = ["--rows", "100", "--tables", "2", "--dim", "4", "--model", "lhf", "--copy", copy]
    bench.measure_one(bench.parse_args(argv))
    assert seen == {
        "spill": copy in ("spill", "remap-copies"),
        "shares": copy != "full",
        "shares_remap": copy != "remap-copies",
    }
