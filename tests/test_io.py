"""torchrec_lhf._io: atomic writes (modes, threads, directory fsync), file and tensor digests."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_lhf import _io


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    """Run the test under umask 027, so the expected mode is 0o640 (not mkstemp's 0o600)."""
    old = os.umask(0o027)
    try:
        yield 0o640
    finally:
        os.umask(old)


def test_new_file_gets_open_mode(tmp_path, umask_027):
    _io.atomic_write_json(tmp_path / "a.json", {"x": 1})
    with open(tmp_path / "b.json", "w") as f:
        f.write("{}")
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.json") == umask_027
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_concurrent_writes_leave_valid_files_with_the_right_mode(tmp_path, umask_027):
    num_threads, num_writes = 8, 25
    start = threading.Barrier(num_threads)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(num_writes):
                _io.atomic_write_json(tmp_path / f"own_{t}.json", {"t": t, "i": i})
                _io.atomic_write_json(tmp_path / "shared.json", {"t": t, "i": i, "pad": "x" * i})
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(num_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    for t in range(num_threads):
        assert json.loads((tmp_path / f"own_{t}.json").read_text()) == {"t": t, "i": num_writes - 1}
    shared = json.loads((tmp_path / "shared.json").read_text())  # one whole write, not a mix
    assert shared["pad"] == "x" * shared["i"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([f"own_{t}.json" for t in range(num_threads)] + ["shared.json"])
    assert {_mode(p) for p in tmp_path.iterdir()} == {umask_027}


def test_containing_directory_is_fsynced_after_the_replace(tmp_path, monkeypatch):
    synced: list[tuple[bool, int, bool]] = []  # (is a directory, inode, destination exists)
    real_fsync = os.fsync
    dest = tmp_path / "sub" / "out.bin"

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino, dest.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with _io.atomic_write(dest) as f:
        f.write(b"payload")
    parent_inode = dest.parent.stat().st_ino
    assert synced[0][0] is False  # the file's data first
    assert (True, parent_inode, True) in synced  # then its directory, after the rename


def test_directory_fsync_failure_is_ignored(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def no_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    _io.atomic_write_json(tmp_path / "a.json", [1])
    assert json.loads((tmp_path / "a.json").read_text()) == [1]


def test_failed_write_leaves_destination_and_no_temp_file(tmp_path):
    dest = tmp_path / "a.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), _io.atomic_write(dest, "w") as f:
        f.write("new")
        raise RuntimeError("boom")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_directory_destination_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "out").mkdir()
    body_ran = []
    with pytest.raises(IsADirectoryError, match="out: is a directory; expected the path of"):
        with _io.atomic_write(tmp_path / "out") as f:
            body_ran.append(True)
            f.write(b"x")
    assert body_ran == [] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_file_sha256(tmp_path):
    blob = os.urandom(3 << 20)  # several 1 MiB chunks
    (tmp_path / "blob").write_bytes(blob)
    assert _io.file_sha256(tmp_path / "blob") == hashlib.sha256(blob).hexdigest()


def test_tensor_digest_hashes_the_values_not_the_layout():
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"b": t, "a": t.t(), "empty": torch.zeros(0, 3), "i": torch.arange(5)}
    copies = {k: v.contiguous().clone() for k, v in state.items()}
    assert _io.tensor_digest(state) == _io.tensor_digest(copies)  # a transposed view as its copy
    assert _io.tensor_digest(dict(state, i=torch.tensor([0, 1, 2, 3, 5]))) != _io.tensor_digest(
        state
    )
    assert _io.tensor_digest(dict(state, i=state["i"].int())) != _io.tensor_digest(
        state
    )  # the dtype


def test_tensors_that_share_memory_are_saved_each_with_its_values(tmp_path):
    """Before, safetensors refused them ("Some tensors share memory"): a plan whose hash
    functions hold one head tensor, or one mapping given twice, could not be saved."""
    base = torch.arange(10)
    tensors = {"a": base, "b": base, "c": base[2:5], "d": base.view(2, 5), "e": torch.ones(3)}
    path = tmp_path / "shared.safetensors"
    _io.save_tensors(path, tensors, {"kind": "test"})
    loaded, _ = _io.load_tensors(path, "test")
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name
    assert tensors["b"] is base  # (the caller's tensors are left as they were)


@pytest.mark.parametrize("write", ["tensors", "json"])
def test_numpy_and_one_element_tensor_values_are_written_as_numbers(tmp_path, write):
    """Before: ``TypeError: Object of type int64 is not JSON serializable`` (plan metadata, a
    manifest, metrics holding a NumPy scalar); other values are named, and nothing is written."""
    value = {"a": np.int64(3), "b": np.float32(0.5), "c": torch.tensor(2), "d": [np.bool_(True)]}
    path = tmp_path / "out"
    if write == "tensors":
        _io.save_tensors(path, {"t": torch.ones(2)}, {"kind": "test", "meta": value})
        got = _io.load_tensors(path, "test")[1]["meta"]
    else:
        _io.atomic_write_json(path, value)
        got = json.loads(path.read_text())
    assert got == {"a": 3, "b": 0.5, "c": 2, "d": [True]}
    bad = tmp_path / "bad"
    with pytest.raises(
        ValueError, match=r"a value of type Tensor \(tensor\(\[0, 1, 2\]\)\) cannot"
    ):
        if write == "tensors":
            _io.save_tensors(bad, {"t": torch.ones(2)}, {"kind": "test", "x": torch.arange(3)})
        else:
            _io.atomic_write_json(bad, {"x": torch.arange(3)})
    assert not bad.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
