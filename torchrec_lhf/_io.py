"""Atomic file writes and safe (pickle-free) tensor files.

Everything the project writes goes through :func:`atomic_write` so that a crash
never leaves a half-written file at the destination, and every tensor file is
safetensors with a JSON manifest in its header, so loading never unpickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MANIFEST_KEY = "torchrec_lhf"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    If the body raises, the temporary file is removed and ``path`` is left untouched. The
    parent directory is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path`` and move it over ``path`` on success.

    Args:
        path: the destination. Its parent directory is created if missing.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open temporary file; ``path`` is untouched if the body raises.
    """
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
) -> None:
    """Save ``tensors`` to a safetensors file with ``manifest`` (JSON) and a checksum.

    Args:
        path: destination file; written atomically.
        tensors: name -> tensor (moved to CPU, made contiguous).
        manifest: JSON-serializable description stored in the file header.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    manifest = dict(manifest, sha256=tensor_digest(tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})


def load_tensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by :func:`save_tensors` and verify its checksum.

    Args:
        path: the file.
        kind: the manifest ``kind`` expected (e.g. ``"hash_plan"``).

    Returns:
        ``(tensors, manifest)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, altered, or not a torchrec_lhf ``kind`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
    if MANIFEST_KEY not in header:
        raise ValueError(f"{path}: a safetensors file, but not a torchrec_lhf {kind} (no manifest)")
    try:
        manifest = json.loads(header[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: manifest is not valid JSON: {e}") from e
    if manifest.get("kind") != kind:
        raise ValueError(f"{path}: expected a torchrec_lhf {kind}, found {manifest.get('kind')!r}")
    digest = tensor_digest(tensors)
    if manifest.get("sha256") != digest:
        raise ValueError(
            f"{path}: checksum mismatch (manifest {manifest.get('sha256')}, data {digest}): "
            "the file was altered or damaged"
        )
    return tensors, manifest
