"""apps.build_hash's launch settings (the build itself: tests/hash_build/test_job.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apps.build_hash import MAX_TIMEOUT_MIN, LaunchConfig, main
from tests._fixtures import ROOT


@pytest.mark.parametrize("minutes", [float("inf"), float("nan"), 0.0, -5.0, 1.54e8])
def test_a_timeout_no_process_group_can_hold_is_refused(minutes: float) -> None:
    """Before, ``inf`` ended in timedelta's OverflowError where the process group was made,
    and 1.54e8 minutes overflowed torch's nanosecond clock (the store timed out at once)."""
    with pytest.raises(
        ValueError, match=f"timeout_min must be a number in \\(0, {MAX_TIMEOUT_MIN}\\]"
    ):
        LaunchConfig(timeout_min=minutes)
    with pytest.raises(ValueError, match="timeout_min"):
        main(["--teacher", "t", "--fraction", "0.1", "--out", "p", "--timeout_min", str(minutes)])


def test_the_longest_timeout_makes_a_working_process_group() -> None:
    assert LaunchConfig(timeout_min=MAX_TIMEOUT_MIN).timeout_min == MAX_TIMEOUT_MIN
    script = f"""
import datetime, torch, torch.distributed as dist
from torchrec.test_utils import get_free_port
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{get_free_port()}}", rank=0,
                        world_size=1, timeout=datetime.timedelta(minutes={MAX_TIMEOUT_MIN}))
t = torch.ones(1)
dist.all_reduce(t)
dist.barrier()
print("ok", int(t))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok 1", out.stderr[-2000:]
