"""A hash plan on disk: one safetensors file, its JSON manifest in the header.

The manifest names each table (height, internal heights, combine, columns) and the
encoding of each hash function (dense or compact; :mod:`~torchrec_lhf.plan_compact`);
the tensors hold the mappings. Written atomically; loading reads tensors and JSON only
(nothing is unpickled) and validates the plan as :class:`~torchrec_lhf.plan.TableHash`
does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from torchrec_lhf._io import load_tensors, save_tensors
from torchrec_lhf.plan import _KIND, FORMAT_VERSION, READABLE_VERSIONS, TableHash
from torchrec_lhf.plan_compact import decode, encode

if TYPE_CHECKING:
    from torchrec_lhf.plan import HashPlan


def save_plan(plan: HashPlan, path: str | os.PathLike) -> None:
    """Write ``plan`` to ``path`` atomically (format :data:`~torchrec_lhf.plan.FORMAT_VERSION`)."""
    tensors: dict[str, torch.Tensor] = {}
    encodings: dict[str, list[dict[str, Any]]] = {}
    for t in plan.tables:
        encodings[t.name] = []
        for h, m in enumerate(t.mappings):
            parts, spec = encode(t.name, h, m, t.num_embeddings)
            tensors.update(parts)
            encodings[t.name].append(spec)
    manifest = {
        "kind": _KIND,
        "format_version": FORMAT_VERSION,
        "tables": [
            {
                "name": t.name,
                "num_embeddings": t.num_embeddings,
                "heights": list(t.heights),
                "combine": t.combine,
                "encodings": encodings[t.name],
                **({"num_columns": t.num_columns} if t.num_columns != 1 else {}),
            }
            for t in plan.tables
        ],
        "metadata": plan.metadata,
    }
    save_tensors(path, tensors, manifest)


def load_plan(path: str | os.PathLike, cls: type[HashPlan]) -> HashPlan:
    """The plan in ``path``, as ``cls`` (:class:`~torchrec_lhf.plan.HashPlan`).

    Plans of every version in :data:`~torchrec_lhf.plan.READABLE_VERSIONS` load (version 1:
    dense mappings only, no ``encodings`` entry).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, altered, of another kind or of a newer format,
            or holds an invalid plan (naming the table, hash and first bad entry).
    """
    tensors, manifest = load_tensors(path, _KIND)
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: hash plan format version {version}, this build reads "
            f"{list(READABLE_VERSIONS)}"
        )
    tables = []
    try:
        for spec in manifest["tables"]:
            name = spec["name"]
            specs = spec.get("encodings") or [None] * len(spec["heights"])
            ms = tuple(decode(name, h, tensors, s) for h, s in enumerate(specs))
            tables.append(
                TableHash(
                    name,
                    spec["num_embeddings"],
                    ms,
                    tuple(spec["heights"]),
                    spec["combine"],
                    spec.get("num_columns", 1),
                )
            )
    except (KeyError, TypeError, OverflowError) as e:
        raise ValueError(
            f"{path}: manifest and tensors disagree ({e!r} missing or malformed)"
        ) from e
    except ValueError as e:
        raise ValueError(f"{path}: invalid hash plan: {e}") from e
    metadata = manifest.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{path}: the plan's metadata must be a JSON object, got {type(metadata).__name__}"
        )
    try:
        return cls(tables, metadata=metadata)
    except ValueError as e:
        raise ValueError(f"{path}: invalid hash plan: {e}") from e
