"""The teacher artifact: streamed writing, lazy loading and the checksum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_lhf._io import load_tensors
from torchrec_lhf.hash_build.artifact import (
    TENSORS_FILE,
    LazyTables,
    TeacherArtifact,
    stream_order,
    write_teacher,
)


def _tables() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    heights = {"cat_1": 7, "cat_10": 3, "cat_2": 5, "a.b": 4}
    emb = {n: torch.randn(h, 4, generator=g) for n, h in heights.items()}
    cnt = {n: torch.randint(0, 9, (h,), generator=g) for n, h in heights.items()}
    return emb, cnt


def test_stream_order_follows_the_sorted_tensor_names() -> None:
    assert stream_order(["cat_10", "cat_1", "cat_2"]) == ["cat_1", "cat_10", "cat_2"]


def test_saved_artifact_loads_lazily_and_equals_the_tensors(tmp_path: Path) -> None:
    emb, cnt = _tables()
    TeacherArtifact(embeddings=emb, counts=cnt, manifest={"dataset": "x"}).save(tmp_path)
    art = TeacherArtifact.load(tmp_path)
    assert isinstance(art.embeddings, LazyTables)
    assert art.sizes() == {n: e.shape[0] for n, e in emb.items()}
    assert art.manifest["dataset"] == "x" and art.table_names == list(emb)
    for n in emb:
        assert torch.equal(art.embeddings[n], emb[n]) and torch.equal(art.counts[n], cnt[n])
    # the streamed file is a plain checksummed safetensors file of the project
    tensors, manifest = load_tensors(tmp_path / TENSORS_FILE, "teacher")
    assert manifest["sha256"] == art.manifest["sha256"]
    assert torch.equal(tensors["cat_2/embeddings"], emb["cat_2"])


@pytest.mark.parametrize(
    ("manifest", "warned"),
    [({"epochs": 3}, True), ({"epochs": 3, "count_epochs": 1}, False), ({"epochs": 1}, False)],
)
def test_counts_summed_over_epochs_are_named_on_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, manifest: dict, warned: bool
) -> None:
    # an artifact written before the teacher counted one pass: its counts add up its epochs
    emb, cnt = _tables()
    TeacherArtifact(embeddings=emb, counts=cnt, manifest=manifest).save(tmp_path)
    with caplog.at_level("WARNING", logger="torchrec_lhf.hash_build.artifact"):
        TeacherArtifact.load(tmp_path)
    assert ("counts add up 3 epochs" in caplog.text) == warned


def test_write_teacher_takes_one_table_at_a_time_in_order(tmp_path: Path) -> None:
    emb, cnt = _tables()
    shapes = {n: tuple(e.shape) for n, e in emb.items()}
    taken = []

    def source():
        for n in stream_order(list(shapes)):
            taken.append(n)
            yield None  # a non-writing rank's item: skipped
            yield n, emb[n], cnt[n]

    write_teacher(tmp_path, shapes, source(), {"dataset": "y"})
    assert taken == stream_order(list(shapes))
    art = TeacherArtifact.load(tmp_path)
    assert torch.equal(art.embeddings["a.b"], emb["a.b"])
    with pytest.raises(ValueError, match="out of order"):
        write_teacher(tmp_path / "bad", shapes, ((n, emb[n], cnt[n]) for n in shapes), {})
    with pytest.raises(ValueError, match="shapes"):
        bad = ((n, emb[n][:2], cnt[n]) for n in stream_order(list(shapes)))
        write_teacher(tmp_path / "bad2", shapes, bad, {})


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    emb, cnt = _tables()
    TeacherArtifact(embeddings=emb, counts=cnt).save(tmp_path)
    path = tmp_path / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        TeacherArtifact.load(tmp_path)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="not a readable teacher artifact"):
        TeacherArtifact.load(tmp_path)


def _edit_manifest(directory: Path, edit) -> None:  # noqa: ANN001
    """Rewrite the artifact's manifest (as by hand) with the tensors and their checksum
    unchanged: only the loader's checks can refuse it."""
    import json
    import struct

    from torchrec_lhf.hash_build.artifact import MANIFEST_KEY

    path = directory / TENSORS_FILE
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    header["__metadata__"][MANIFEST_KEY] = json.dumps(edit(manifest))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def _tables_to(value: object):  # noqa: ANN202
    return lambda manifest: {**manifest, "tables": value}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda manifest: [1], r"expected a torchrec_lhf teacher, found \[1\]"),
        (
            _tables_to(["cat_1", "cat_10", "cat_2"]),
            r"lists tables \['cat_1', 'cat_10', 'cat_2'\], the file holds \['a.b',",
        ),
        (
            _tables_to(["a.b", "cat_1", "cat_1", "cat_10", "cat_2"]),
            r"lists tables \['a.b', 'cat_1', 'cat_1'",
        ),
        (_tables_to(5), r"lists tables 5, the file holds"),
        (_tables_to("cat_1"), r"lists tables 'cat_1', the file holds"),
    ],
)
def test_a_hand_edited_manifest_is_named(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    """Before, a manifest listing fewer tables than the file holds loaded without them (the
    hash build saw only the listed ones), a repeated name loaded once, and a manifest that
    is not an object, or whose tables are not a list, failed with an AttributeError or a
    TypeError naming no file."""
    emb, cnt = _tables()
    TeacherArtifact(embeddings=emb, counts=cnt).save(tmp_path)
    assert TeacherArtifact.load(tmp_path).table_names  # (the edit, not the file, is bad)
    _edit_manifest(tmp_path, lambda manifest: manifest)
    TeacherArtifact.load(tmp_path)
    _edit_manifest(tmp_path, edit)
    with pytest.raises(ValueError, match=rf"teacher\.safetensors: .*{message}"):
        TeacherArtifact.load(tmp_path)


def test_a_manifest_of_numpy_numbers_is_written_as_numbers(tmp_path: Path) -> None:
    """Before: ``TypeError: Object of type int64 is not JSON serializable``."""
    emb = torch.randn(6, 4)
    artifact = TeacherArtifact(
        embeddings={"t": emb}, counts={"t": torch.arange(6)}, manifest={"epochs": np.int64(2)}
    )
    artifact.save(tmp_path)
    loaded = TeacherArtifact.load(tmp_path)
    assert loaded.manifest["epochs"] == 2 and torch.equal(loaded.embeddings["t"], emb)
