"""``cce`` in the quality sweep: fitted to a byte budget with its stored indices counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import quality
from tests.benchmarks.test_quality import TINY

LAYERS = '{"dense_arch_layer_sizes": [16, 8], "over_arch_layer_sizes": [8, 1]}'


def test_byte_sweep_counts_cces_clustered_indices(tmp_path: Path) -> None:
    # dim 8: cce takes 2 columns of width 4 (4 would be width 2, which FBGEMM cannot fuse)
    argv = [*TINY, "--embedding_dim", "8", "--train_options", LAYERS]
    argv += ["--methods", "none,cce,cce-c1,modulo"]
    rows = quality.main([*argv, "--bytes", "0.5", "--seeds", "1", "--out", str(tmp_path)])
    by = {r["method"]: r for r in rows}
    full = 200 * 8 * 4  # 200 ids at dim 8
    assert by["none"]["total_bytes"] == full
    # one uint8 clustered index a column, per id (under 256 rows): 2 columns, 1, none for modulo
    assert by["cce"]["index_bytes"] == 2 * 200
    assert by["cce-c1"]["index_bytes"] == 200
    assert by["modulo"]["index_bytes"] == 0
    for method in ("cce", "cce-c1"):
        r = by[method]
        assert r["budget"] == "bytes" and r["remap_computable"] is False
        assert r["total_bytes"] == r["table_bytes"] + r["index_bytes"] <= 0.5 * full
        assert r["total_bytes"] > 0.5 * full - 3 * 8 * 4  # within a few rows of the budget
    # the index bought with the second column leaves fewer table bytes
    assert by["cce"]["table_bytes"] < by["cce-c1"]["table_bytes"]


def test_cce_variants_set_the_columns(tmp_path: Path) -> None:
    sweep = quality.parse_args(["--out", str(tmp_path), "--methods", "cce,cce-c1,cce-c2"])
    configs = {m: quality.run_config(sweep, m, 0.1, 0) for m in sweep.methods}
    assert {c.compression for c in configs.values()} == {"cce"}
    assert [configs[m].cce_columns for m in sweep.methods] == [4, 1, 2]
    assert "cce" in quality.DEFAULT_METHODS
    with pytest.raises(ValueError, match="cce-c9"):
        quality.parse_args(["--out", str(tmp_path), "--methods", "cce-c9"])
