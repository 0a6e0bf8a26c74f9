"""benchmarks/gpu_check: its CPU dry run, and a clean skip without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import main
from tests.modules.test_compact_kernel import CAN_BUILD

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_dry_run_passes_every_step() -> None:
    result = main(["--device", "cpu", "--batch_sizes", "64", "--clustering_ids", "2000"])
    assert result["sync"]["ok"], result["sync"]
    assert set(result["sync"]["cases"]) >= {"one_hot", "multi_hot", "weighted", "two_hash"}
    assert result["sync"]["cases"]["compact_multi_hot"] == "ok"
    assert result["sync"]["cases"]["divided_multi_hot"] == "ok"
    assert result["operator"]["ok"], result["operator"]
    assert result["operator"]["divided"]["equal"] and result["operator"]["divided"]["ids"] > 0
    remap = result["remap_batch_64"]
    assert remap["dense_pooling_4"]["ids"] == remap["compact_pooling_4"]["ids"] == 26 * 64 * 4
    for encoding in ("dense", "compact"):
        assert result["remap_profile"][encoding]["events_per_call"] > 0
        compiled = result["remap_compiled"][encoding]
        # (torch.compile on CPU needs a C++ compiler, as the remap's kernel does)
        assert compiled["equal"] if CAN_BUILD else "error" in compiled or compiled["equal"]
    assert result["kth_select"]["ok"] and result["kth_select"]["keys"] == 2000
    assert result["clustering_2000"]["ok"], result["clustering_2000"]
    assert result["tests"]["ok"], result["tests"]
    assert result["ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_script_skips_cleanly_without_cuda() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gpu_check"] == "skipped"
