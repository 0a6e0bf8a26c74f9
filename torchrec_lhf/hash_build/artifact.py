"""The teacher artifact: per table the teacher's (N, D) embeddings and (N,) access counts.

On disk, a directory with ``teacher.safetensors`` (tensors ``{table}/embeddings`` float32
``(N, D)`` and ``{table}/counts`` int64 ``(N,)``, the manifest and a checksum in its header,
written atomically) and ``manifest.json`` (the same manifest, for people).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchrec_lhf._io import atomic_write_json, load_tensors, save_tensors

_KIND = "teacher"
TENSORS_FILE = "teacher.safetensors"


@dataclass(kw_only=True)
class TeacherArtifact:
    """What the hash build needs from a trained teacher.

    Args:
        embeddings: table name -> float32 ``(N, D)`` learned values.
        counts: table name -> int64 ``(N,)`` accesses per id during teacher training.
        manifest: JSON-serializable description (dataset, samples seen, config, ...).

    Raises:
        ValueError: tables, shapes or dtypes disagree.
    """

    embeddings: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.embeddings) != set(self.counts):
            raise ValueError(
                f"embeddings and counts name different tables: {sorted(self.embeddings)} vs {sorted(self.counts)}"
            )
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

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``teacher.safetensors`` and ``manifest.json`` under ``directory``, atomically each."""
        directory = Path(directory)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.embeddings:
            tensors[f"{name}/embeddings"] = self.embeddings[name].float()
            tensors[f"{name}/counts"] = self.counts[name].long()
        manifest = dict(self.manifest, kind=_KIND, tables=self.table_names)
        save_tensors(directory / TENSORS_FILE, tensors, manifest)
        atomic_write_json(directory / "manifest.json", manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TeacherArtifact:
        """Load an artifact written by :meth:`save` (checksum verified, never unpickled).

        Raises:
            FileNotFoundError: ``directory`` has no ``teacher.safetensors``.
            ValueError: the file is damaged or not a teacher artifact.
        """
        path = Path(directory) / TENSORS_FILE
        tensors, manifest = load_tensors(path, _KIND)
        try:
            names = manifest["tables"]
            embeddings = {n: tensors[f"{n}/embeddings"] for n in names}
            counts = {n: tensors[f"{n}/counts"] for n in names}
        except KeyError as e:
            raise ValueError(f"{path}: manifest and tensors disagree: {e} missing") from e
        return cls(embeddings=embeddings, counts=counts, manifest=manifest)
