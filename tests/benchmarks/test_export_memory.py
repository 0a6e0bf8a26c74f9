"""benchmarks.export_memory: a tiny run measures both copies and both dtypes."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks import export_memory as bench

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("model", ["full", "lhf"])
def test_tiny_run_reports_every_dtype_and_copy(model: str) -> None:
    args = bench.parse_args(["--rows", "2000", "--tables", "2", "--dim", "4", "--model", model])
    result = bench.run(args)
    assert set(result["results"]) == {f"{d}/{c}" for d in bench.DTYPES for c in bench.COPIES}
    for key, r in result["results"].items():
        assert f"{r['dtype']}/{r['copy']}" == key
        assert r["table_gb"] > 0 and r["seconds"] > 0 and r["peak_above_start_gb"] >= 0
    assert set(result["shared_over_full_peak"]) == set(bench.DTYPES)


@pytest.mark.parametrize(
    "flags, match",
    [(["--rows", "0"], "--rows must be >= 1, got 0"), (["--fraction", "2"], r"\(0, 1\], got 2")],
)
def test_bad_flags_are_named(flags: list[str], match: str, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        bench.parse_args(flags)
    assert re.search(match, capsys.readouterr().err)
