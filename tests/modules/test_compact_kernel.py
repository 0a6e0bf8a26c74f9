"""The remap's CPU kernel (torchrec_lhf.modules.compact_kernel): the shared fixture of its
tests (tests/modules/test_fused_remap.py has the rest), and off where asked."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from torchrec_lhf.hashing import mix_keyed, seed_keys
from torchrec_lhf.modules import compact_kernel, head_table, remap_lookup

# where a C++ compiler and ninja exist, the kernel must build (no silent fallback)
CAN_BUILD = shutil.which("c++") is not None and importlib.util.find_spec("ninja") is not None


def _packed_table(
    seed: int = 0, packed: bool = True
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three compact features (heights 5,000 / 70,000 / 40) and their head table: packed,
    or int32 keys beside int16 rows."""
    g = torch.Generator().manual_seed(seed)
    heights = torch.tensor([5_000, 70_000, 40])
    offsets = torch.cumsum(heights, 0) - heights
    seeds = torch.tensor([11, 2**61 + 5, 0])
    rows = torch.tensor([600, 40_000, 7])
    keys, head_rows = [], []
    for t in range(3):
        head = torch.randperm(int(heights[t]), generator=g)[: int(heights[t]) // 4]
        keys.append(offsets[t] + head)
        head_rows.append(torch.randint(0, int(rows[t]) // 2, head.shape, generator=g))
    keys_K, rows_K = torch.cat(keys), torch.cat(head_rows)
    t_K = torch.searchsorted(offsets, keys_K, right=True) - 1
    x_K = mix_keyed(keys_K - offsets[t_K], seed_keys(seeds)[t_K])
    rows_dtype = torch.int32 if packed else torch.int16
    slot_keys, slot_rows = head_table.build(keys_K.int(), rows_K.to(rows_dtype), x_K)
    if packed:
        slot_keys, slot_rows = head_table.pack(slot_keys, slot_rows), slot_rows[:0]
    tail_offset = rows // 2
    compact = [
        slot_keys,
        slot_rows,
        seeds,
        tail_offset,
        rows - tail_offset,
        torch.ones(3, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),  # no divided tail
        torch.zeros(0, dtype=torch.long),  # no probe salts (the seeds differ)
    ]
    return compact, offsets, heights


def test_int64_rows_and_the_off_switch_take_the_torch_ops(monkeypatch) -> None:  # noqa: ANN001
    """The kernel declines what it does not read (int64 head rows) and everything when
    turned off (``TORCHREC_LHF_FUSED_REMAP=0``): ``map_ids`` then runs the torch ops, with
    the same rows."""
    compact, offsets, heights = _packed_table()
    length_J = [40, 40, 40]
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([(torch.rand(40, generator=g) * h).long() for h in heights.tolist()])
    keys, rows = head_table.unpack(compact[0])
    unpacked = [keys, rows.long(), *compact[2:]]  # int64 rows: no kernel
    args = (torch.zeros(0, dtype=torch.int16), offsets.int(), heights, False)
    assert compact_kernel.fused_remap(ids, length_J, *args, unpacked) is None
    segments = (None, torch.tensor(length_J), None)
    torch_ops = remap_lookup.map_ids(ids, segments, *args, False, unpacked)  # no lengths
    assert torch.equal(
        remap_lookup.map_ids(ids, segments, *args, False, unpacked, None, length_J), torch_ops
    )
    monkeypatch.setenv(compact_kernel.ENV_FLAG, "0")
    compact_kernel._module.cache_clear()
    try:
        assert not compact_kernel.available()
        assert compact_kernel.fused_remap(ids, length_J, *args, compact) is None
        with_lengths = remap_lookup.map_ids(ids, segments, *args, False, compact, None, length_J)
        assert torch.equal(with_lengths, torch_ops)
    finally:
        compact_kernel._module.cache_clear()


def test_a_lock_left_by_an_interrupted_build_is_removed(tmp_path, monkeypatch, caplog):  # noqa: ANN001
    """Before, a build killed mid-way (a timeout, SIGKILL) left torch's lock file, and every
    later process on the machine waited for it forever on its first remap."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(compact_kernel.ENV_FLAG, raising=False)
    built = []
    monkeypatch.setattr(
        torch.utils.cpp_extension, "load_inline", lambda **kw: built.append(kw["name"]) or "ext"
    )
    compact_kernel._module.cache_clear()
    try:
        lock = compact_kernel._build_lock(compact_kernel._extension_name())
        assert lock.parent.parent == tmp_path
        lock.touch()
        old = time.time() - compact_kernel.STALE_LOCK_SECONDS - 60
        os.utime(lock, (old, old))
        with caplog.at_level(logging.WARNING, logger=compact_kernel.__name__):
            assert compact_kernel._module() == "ext"
        assert not lock.exists() and built == [lock.parent.name]
        assert "did not finish" in caplog.text and str(lock) in caplog.text
    finally:
        compact_kernel._module.cache_clear()


def test_a_build_in_progress_is_waited_for_and_its_lock_left_alone(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    compact_kernel.wait_for_build_lock(lock)  # no lock: returns at once
    lock.touch()
    released = threading.Event()

    def builder() -> None:  # the other process: builds, then removes its lock
        time.sleep(0.3)
        released.set()
        lock.unlink()

    thread = threading.Thread(target=builder)
    thread.start()
    compact_kernel.wait_for_build_lock(lock, poll=0.01)
    thread.join()
    assert released.is_set()  # it returned only once the builder had let go


_KILLED_BUILDER = """
import sys, time
from pathlib import Path
from torchrec_lhf.modules import compact_kernel
lock = Path(sys.argv[1])
with compact_kernel.build_guard(lock):
    lock.touch()  # torch's lock, as its build takes it
    print("building", flush=True)
    time.sleep(120)
"""


def test_a_lock_of_a_killed_build_is_removed_at_once(tmp_path, monkeypatch, caplog):  # noqa: ANN001
    """A build killed by a timeout or SIGKILL leaves torch's lock behind. Before, the next
    process waited until the lock was 10 minutes old; the guard says its owner stopped, so
    the next build starts at once, through ``_module`` as a user's first remap does."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(compact_kernel.ENV_FLAG, raising=False)
    lock = compact_kernel._build_lock(compact_kernel._extension_name())
    builder = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BUILDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert builder.stdout.readline().strip() == "building"
    finally:
        builder.kill()
        builder.wait()
    assert lock.exists() and lock.with_name(compact_kernel.GUARD_NAME).read_text() == str(
        builder.pid
    )
    built = []
    monkeypatch.setattr(
        torch.utils.cpp_extension, "load_inline", lambda **kw: built.append(lock.exists()) or "ext"
    )

    def no_age_rule(held: Path, **kw) -> None:  # noqa: ANN003 (it waited up to 600 s here)
        assert not held.exists(), "the killed build's lock was left to the age rule"

    monkeypatch.setattr(compact_kernel, "wait_for_build_lock", no_age_rule)
    compact_kernel._module.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=compact_kernel.__name__):
            assert compact_kernel._module() == "ext"
    finally:
        compact_kernel._module.cache_clear()
    assert built == [False]  # the lock was gone when the build started
    assert f"process {builder.pid} stopped" in caplog.text and str(lock) in caplog.text
    assert lock.with_name(compact_kernel.GUARD_NAME).read_text() == ""  # this build finished


@pytest.mark.parametrize(("quiet", "warned"), [(0.05, True), (5.0, False)])
def test_a_guarded_build_is_waited_for_however_old_its_lock(
    tmp_path, monkeypatch, caplog, quiet: float, warned: bool
) -> None:  # noqa: ANN001
    """A second process waits on the guard for as long as the first builds: its lock is not
    taken as stale, even past ``stale_after`` (the age rule broke into builds slower than
    10 minutes). It says so only past ``QUIET_WAIT_SECONDS`` (a job's ranks all load the
    built kernel at once)."""
    monkeypatch.setattr(compact_kernel, "QUIET_WAIT_SECONDS", quiet)
    caplog.set_level(logging.WARNING, logger=compact_kernel.__name__)
    lock = tmp_path / "ext" / "lock"
    inside, events = threading.Event(), []

    def builder() -> None:  # holds the guard on its own open file, as another process would
        with compact_kernel.build_guard(lock, stale_after=0.0):
            lock.touch()
            inside.set()
            time.sleep(0.3)
            lock.unlink()  # raises if the other had removed it
            events.append("built")

    thread = threading.Thread(target=builder)
    thread.start()
    inside.wait(10)
    with compact_kernel.build_guard(lock, stale_after=0.0):
        events.append("second")
    thread.join()
    assert events == ["built", "second"]
    assert ("another process is building" in caplog.text) == warned


def test_the_guard_is_cleared_when_the_body_raises_and_unguarded_locks_keep_the_age_rule(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "ext" / "lock"
    with pytest.raises(RuntimeError, match="no compiler"):
        with compact_kernel.build_guard(lock):
            raise RuntimeError("no compiler")
    assert lock.with_name(compact_kernel.GUARD_NAME).read_text() == ""
    lock.touch()  # a young lock of a builder without the guard: waited for, not removed
    released = threading.Event()

    def other() -> None:
        time.sleep(0.3)
        released.set()
        lock.unlink()

    thread = threading.Thread(target=other)
    thread.start()
    with compact_kernel.build_guard(lock):
        assert released.is_set()
    thread.join()


def test_the_build_runs_this_environments_ninja_whatever_is_first_on_path(
    tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """Before, the build ran the first ``ninja`` on ``PATH``: the system's for a plain
    ``.venv/bin/python``, the environment's under ``torchrun`` or ``torchx``. The two
    versions hash the build's command differently, so each switch rebuilt the kernel
    (45 s, in the first batch)."""
    import ninja

    other = tmp_path / "bin"
    other.mkdir()
    (other / "ninja").write_text("#!/bin/sh\nexit 1\n")
    (other / "ninja").chmod(0o755)
    path = f"{other}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    assert shutil.which("ninja") == str(other / "ninja")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv(compact_kernel.ENV_FLAG, raising=False)
    found = []
    monkeypatch.setattr(
        torch.utils.cpp_extension,
        "load_inline",
        lambda **kw: found.append(shutil.which("ninja")) or "ext",
    )
    compact_kernel._module.cache_clear()
    try:
        assert compact_kernel._module() == "ext"
    finally:
        compact_kernel._module.cache_clear()
    assert found == [os.path.join(ninja.BIN_DIR, "ninja")]
    assert os.environ["PATH"] == path  # put back


def test_the_build_is_named_for_this_torch(monkeypatch) -> None:  # noqa: ANN001
    """Before, environments with different torch versions, or the same version installed in
    two places (two checkouts' environments), shared a build (the extension cache's folder
    names only Python's version): each rebuilt over the other's."""
    name = compact_kernel._extension_name()
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    assert compact_kernel._extension_name() != name
    monkeypatch.undo()
    monkeypatch.setattr(compact_kernel, "CFLAGS", ("-O2",))
    assert compact_kernel._extension_name() != name
    monkeypatch.undo()  # another environment's torch, of the same version
    monkeypatch.setattr(torch, "__file__", "/elsewhere/torch/__init__.py")
    assert compact_kernel._extension_name() != name
