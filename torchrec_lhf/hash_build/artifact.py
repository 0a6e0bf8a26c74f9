"""The teacher artifact: per table the teacher's (N, D) embeddings and (N,) access counts.

Shape legend: ``N`` ids of a table, ``D`` teacher embedding dim.

On disk, a directory with ``teacher.safetensors`` (tensors ``{table}/embeddings`` float32
``(N, D)`` and ``{table}/counts`` int64 ``(N,)``, the manifest and a checksum in its header,
written atomically) and ``manifest.json`` (the same manifest, for people).

Bounded memory at the MLPerf heights (204M ids: 3.3 GB of embeddings and 1.6 GB of counts
at ``D = 4``): :func:`write_teacher` streams the tables into the file one at a time (the
header, whose size does not depend on the data, is written first with a placeholder
checksum and rewritten in place at the end), and :meth:`TeacherArtifact.load` returns lazy
tables that read one table from the file when indexed, after a streaming checksum pass
that holds one tensor at a time. The checksum is :func:`torchrec_lhf._io.tensor_digest`'s,
so files written by ``save_tensors`` and by the stream are interchangeable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from torchrec_lhf._io import MANIFEST_KEY, atomic_path, atomic_write_json, json_default

logger = logging.getLogger(__name__)

_KIND = "teacher"
TENSORS_FILE = "teacher.safetensors"
_DTYPES = {torch.float32: "F32", torch.int64: "I64"}
_PLACEHOLDER = "0" * 64
TableSource = Iterable[tuple[str, torch.Tensor, torch.Tensor] | None]
"""``(name, embeddings_ND, counts_N)`` per table in :func:`stream_order` (``None`` items,
as a non-writing rank's collective loop yields them, are skipped)."""


class LazyTables(Mapping):
    """Table name -> one kind of tensor (``embeddings`` or ``counts``) of a teacher file,
    read from the file on every access (nothing is kept).

    Attributes:
        shapes: table name -> the tensor's shape, from the file header.
    """

    def __init__(self, path: Path, kind: str, shapes: dict[str, tuple[int, ...]]) -> None:
        self.path, self.kind, self.shapes = path, kind, shapes

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(f"{name}/{self.kind}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _shape(tensors: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    if isinstance(tensors, LazyTables):
        return tensors.shapes[name]
    return tuple(tensors[name].shape)


@dataclass(kw_only=True)
class TeacherArtifact:
    """What the hash build needs from a trained teacher.

    Args:
        embeddings: table name -> float32 ``(N, D)`` learned values (a dict, or the lazy
            tables of :meth:`load`).
        counts: table name -> int64 ``(N,)`` accesses per id during teacher training.
        manifest: JSON-serializable description (dataset, samples seen, config, ...).

    Raises:
        ValueError: tables, shapes or dtypes disagree.
    """

    embeddings: Mapping[str, torch.Tensor]
    counts: Mapping[str, torch.Tensor]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.embeddings) != set(self.counts):
            raise ValueError(
                f"embeddings and counts name different tables: {sorted(self.embeddings)} vs {sorted(self.counts)}"
            )
        if isinstance(self.embeddings, LazyTables):
            return  # NOTE: shapes and dtypes were checked by load
        for name, emb in self.embeddings.items():
            cnt = self.counts[name]
            if emb.dim() != 2 or not emb.is_floating_point():
                raise ValueError(
                    f"table {name!r}: embeddings must be a float (N, D) tensor, got {emb.dtype} {tuple(emb.shape)}"
                )
            if cnt.shape != (emb.shape[0],) or cnt.is_floating_point():
                raise ValueError(
                    f"table {name!r}: counts must be an integer ({emb.shape[0]},) tensor, got {cnt.dtype} {tuple(cnt.shape)}"
                )

    @property
    def table_names(self) -> list[str]:
        return list(self.embeddings)

    def sizes(self) -> dict[str, int]:
        """Table name -> ``N``, without reading any table."""
        return {name: _shape(self.embeddings, name)[0] for name in self.embeddings}

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``teacher.safetensors`` and ``manifest.json`` under ``directory``, atomically each."""
        shapes = {n: _shape(self.embeddings, n) for n in self.embeddings}
        tables = ((n, self.embeddings[n], self.counts[n]) for n in stream_order(list(shapes)))
        write_teacher(directory, shapes, tables, self.manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TeacherArtifact:
        """Open an artifact written by :meth:`save` or :func:`write_teacher`: lazy tables
        (read when indexed), the checksum verified first one tensor at a time; never
        unpickled.

        Raises:
            FileNotFoundError: ``directory`` has no ``teacher.safetensors``.
            ValueError: the file is damaged or not a teacher artifact.
        """
        path = Path(directory) / TENSORS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                keys = {
                    k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
                    for k in f.keys()
                }
            manifest = json.loads(header[MANIFEST_KEY])
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a readable teacher artifact ({e!r})") from e
        if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
            kind = manifest.get("kind") if isinstance(manifest, dict) else manifest
            raise ValueError(f"{path}: expected a torchrec_lhf {_KIND}, found {kind!r}")
        names = manifest.get("tables", [])
        held = sorted({k.rsplit("/", 1)[0] for k in keys})
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or sorted(names) != held
        ):
            raise ValueError(
                f"{path}: manifest and tensors disagree: the manifest lists tables {names!r}, "
                f"the file holds {held}"
            )
        for n in names:
            emb, cnt = keys.get(f"{n}/embeddings"), keys.get(f"{n}/counts")
            if emb is None or cnt is None:
                raise ValueError(f"{path}: manifest and tensors disagree: table {n!r} missing")
            if emb[0] != "F32" or len(emb[1]) != 2 or cnt[0] != "I64" or cnt[1] != emb[1][:1]:
                raise ValueError(f"{path}: table {n!r}: bad dtypes or shapes {emb}, {cnt}")
        digest = _file_digest(path, sorted(keys))
        if manifest.get("sha256") != digest:
            raise ValueError(
                f"{path}: checksum mismatch (manifest {manifest.get('sha256')}, data {digest}): "
                "the file was altered or damaged"
            )
        epochs = manifest.get("epochs", 1)
        if "count_epochs" not in manifest and isinstance(epochs, int) and epochs > 1:
            logger.warning(
                "%s: its counts add up %d epochs (written before the teacher counted one "
                "pass): a threshold such as head_min_count applies to those sums",
                path,
                epochs,
            )
        emb_shapes = {n: keys[f"{n}/embeddings"][1] for n in names}
        return cls(
            embeddings=LazyTables(path, "embeddings", emb_shapes),
            counts=LazyTables(path, "counts", {n: keys[f"{n}/counts"][1] for n in names}),
            manifest=manifest,
        )


def stream_order(names: list[str]) -> list[str]:
    """The tables in the order :func:`write_teacher` takes them (their tensors' sorted names)."""
    seen: dict[str, None] = {}
    for key in sorted(f"{n}/{k}" for n in names for k in ("counts", "embeddings")):
        seen.setdefault(key.rsplit("/", 1)[0], None)
    return list(seen)


def _file_digest(path: Path, keys: list[str]) -> str:
    """:func:`torchrec_lhf._io.tensor_digest` of the file's tensors, one tensor in memory."""
    h = hashlib.sha256()
    for key in keys:  # NOTE: the file is opened per tensor so that no mapping stays resident
        with safe_open(str(path), framework="pt") as f:
            t = f.get_tensor(key)
        _hash_tensor(h, key, t)
        del t
    return h.hexdigest()


def _hash_tensor(h: Any, key: str, t: torch.Tensor) -> memoryview:
    h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
    data = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
    h.update(data)
    return data


def _header(shapes: dict[str, tuple[int, ...]], manifest: dict[str, Any], sha: str) -> bytes:
    entries: dict[str, Any] = {}
    offset = 0
    for key in sorted(f"{n}/{k}" for n in shapes for k in ("counts", "embeddings")):
        name, kind = key.rsplit("/", 1)
        shape = list(shapes[name]) if kind == "embeddings" else [shapes[name][0]]
        itemsize = 4 if kind == "embeddings" else 8
        size = itemsize * math.prod(shape)
        dtype = "F32" if kind == "embeddings" else "I64"
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    meta = {
        MANIFEST_KEY: json.dumps(dict(manifest, sha256=sha), sort_keys=True, default=json_default)
    }
    raw = json.dumps({"__metadata__": meta, **entries}).encode()
    return raw + b" " * (-len(raw) % 8)


def write_teacher(
    directory: str | os.PathLike,
    shapes: dict[str, tuple[int, int]],
    tables: TableSource,
    manifest: dict[str, Any],
) -> None:
    """Stream a teacher artifact into ``directory`` (atomically), one table in memory.

    Args:
        directory: where ``teacher.safetensors`` and ``manifest.json`` go.
        shapes: table name -> ``(N, D)``.
        tables: ``(name, embeddings_ND, counts_N)`` for every table, in
            :func:`stream_order` of ``shapes``' names (``None`` items are skipped).
        manifest: JSON-serializable description; ``kind``, ``tables`` and ``sha256`` are added.

    Raises:
        ValueError: a table out of order, of another shape, or missing.
    """
    directory = Path(directory)
    names = list(shapes)
    manifest = dict(manifest, kind=_KIND, tables=names)
    order = sorted(f"{n}/{k}" for n in names for k in ("counts", "embeddings"))
    expected = iter(stream_order(names))
    h = hashlib.sha256()
    with atomic_path(directory / TENSORS_FILE) as tmp, open(tmp, "r+b") as f:
        header = _header(shapes, manifest, _PLACEHOLDER)
        f.write(struct.pack("<Q", len(header)) + header)
        pending: dict[str, torch.Tensor] = {}
        source = (t for t in tables if t is not None)
        for key in order:
            if key not in pending:
                name, emb_ND, counts_N = next(source, (None, None, None))
                if name != next(expected, None):
                    raise ValueError(f"teacher tables out of order: got {name!r} for {key!r}")
                if tuple(emb_ND.shape) != tuple(shapes[name]) or counts_N.shape != emb_ND.shape[:1]:
                    raise ValueError(
                        f"table {name!r}: shapes {tuple(emb_ND.shape)}, {tuple(counts_N.shape)}; "
                        f"expected {shapes[name]}"
                    )
                pending[f"{name}/embeddings"] = emb_ND.detach().float().contiguous().cpu()
                pending[f"{name}/counts"] = counts_N.detach().long().contiguous().cpu()
            f.write(_hash_tensor(h, key, pending.pop(key)))
        final = _header(shapes, manifest, h.hexdigest())
        assert len(final) == len(header), "the checksum changed the header's length"
        f.seek(8)
        f.write(final)
    atomic_write_json(directory / "manifest.json", dict(manifest, sha256=h.hexdigest()))
