"""The teacher artifact: streamed writing, lazy loading and the checksum."""

from __future__ import annotations

from pathlib import Path

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
