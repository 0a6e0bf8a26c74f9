"""torchrec_lhf.plan_io: a plan's save/load round trip and corrupt or foreign files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from tests._compact import same_seed_plan
from tests.test_plan import _plan
from torchrec_lhf import HashPlan


def test_save_load_round_trip(tmp_path) -> None:
    plan = _plan()
    path = tmp_path / "sub" / "plan.safetensors"
    plan.save(path)
    loaded = HashPlan.load(path)
    assert loaded == plan
    assert loaded.metadata == plan.metadata
    assert loaded["t0"].combine == "concat" and loaded["t1"].heights == (5,)
    assert [p.name for p in path.parent.iterdir()] == ["plan.safetensors"]  # no temp files left


def test_truncated_file(tmp_path) -> None:
    path = tmp_path / "plan.safetensors"
    _plan().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(ValueError, match=r"plan.safetensors: not a readable safetensors file"):
        HashPlan.load(path)


def test_altered_file(tmp_path) -> None:
    path = tmp_path / "plan.safetensors"
    _plan().save(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last mapping value
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        HashPlan.load(path)


def test_foreign_files(tmp_path) -> None:
    foreign = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a torchrec_lhf hash_plan"):
        HashPlan.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not a readable safetensors"):
        HashPlan.load(text)
    with pytest.raises(
        FileNotFoundError, match="missing.safetensors: no such file; expected a hash plan file"
    ):
        HashPlan.load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match="is a directory; expected a hash plan file"):
        HashPlan.load(tmp_path)


def test_manifest_of_another_kind(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    save_file(
        {"t/0": torch.zeros(2, dtype=torch.int32)},
        str(path),
        metadata={"torchrec_lhf": json.dumps({"kind": "teacher"})},
    )
    with pytest.raises(ValueError, match="expected a torchrec_lhf hash_plan, found 'teacher'"):
        HashPlan.load(path)


def test_header_tampering_is_detected(tmp_path) -> None:
    """Changing a height in the manifest without the data is caught by validation."""
    path = tmp_path / "plan.safetensors"
    HashPlan.from_mappings({"t": torch.tensor([0, 1, 2])}).save(path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].decode().replace('\\"heights\\": [3]', '\\"heights\\": [2]')
    assert len(header) == n
    path.write_bytes(raw[:8] + header.encode() + raw[8 + n :])
    with pytest.raises(ValueError, match=r"values must be in \[0, 2\)"):
        HashPlan.load(path)


def _edited(tmp_path, edit) -> object:  # noqa: ANN001
    """A saved plan whose manifest ``edit(manifest)`` changed (as by hand), with a correct
    checksum of its tensors: only the plan's validation can refuse it."""
    from torchrec_lhf._io import load_tensors, save_tensors

    path = tmp_path / "plan.safetensors"
    HashPlan.from_mappings({"t": torch.tensor([0, 1, 2, 1])}).save(path)
    tensors, manifest = load_tensors(path, "hash_plan")
    manifest.pop("sha256")
    edit(manifest)
    save_tensors(path, tensors, manifest)
    return path


def _table(key: str, value: object):  # noqa: ANN202
    return lambda manifest: manifest["tables"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _table("num_embeddings", "4"),
            r"num_embeddings must be an int in \[1, 2\*\*63\), got '4'",
        ),
        (_table("num_embeddings", 4.5), r"num_embeddings must be an int .* got 4.5"),
        (_table("num_embeddings", True), r"num_embeddings must be an int .* got True"),
        (_table("num_embeddings", 2**70), r"num_embeddings must be an int .* got 1180591620"),
        (
            _table("heights", [2.5]),
            r"table 't' hash 0: height must be an int in \[1, 2\*\*31\), got 2.5",
        ),
        (_table("heights", ["3"]), r"table 't' hash 0: height must be an int .* got '3'"),
        (
            lambda m: m.__setitem__("metadata", [1]),
            "the plan's metadata must be a JSON object, got list",
        ),
        (
            lambda m: m.__setitem__("format_version", True),
            "hash plan format version True, this build",
        ),
    ],
)
def test_a_hand_edited_manifest_is_named(tmp_path, edit, message: str) -> None:  # noqa: ANN001
    """Before, a string or float height or size loaded as a plan of them (a float size cut
    to an int without a word), metadata that is not an object failed with a TypeError
    naming no file, and ``format_version: true`` read as version 1."""
    with pytest.raises(ValueError, match=rf"plan\.safetensors: .*{message}"):
        HashPlan.load(_edited(tmp_path, edit))


def test_sizes_of_any_integer_kind_are_python_ints() -> None:
    import numpy as np

    from torchrec_lhf import TableHash

    mapping = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    table = TableHash("t", np.int64(4), (mapping,), (torch.tensor(2),))
    assert table.num_embeddings == 4 and type(table.num_embeddings) is int
    assert table.heights == (2,) and type(table.heights[0]) is int


def test_a_plan_whose_hash_functions_share_tensors_round_trips(tmp_path) -> None:
    """Before, ``save`` failed in safetensors ("Some tensors share memory") for a plan whose
    compact hash functions hold one head tensor, or whose dense mapping was given twice."""
    _, plan = same_seed_plan()  # eight hash functions over one head tensor
    plan.save(tmp_path / "heads.safetensors")
    assert HashPlan.load(tmp_path / "heads.safetensors") == plan
    m = torch.tensor([0, 1, 2, 0], dtype=torch.int32)
    twice = HashPlan.from_multi_mappings({"t": [m, m]})
    twice.save(tmp_path / "twice.safetensors")
    assert HashPlan.load(tmp_path / "twice.safetensors") == twice
