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
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MANIFEST_KEY = "torchrec_lhf"


def _create_temp(directory: Path, name: str) -> str:
    """Create an empty, new file ``.{name}.<random>.tmp`` in ``directory``; return its path.

    NOTE: ``os.open(..., 0o666)`` lets the kernel apply the umask, so the file gets the mode
    ``open(path, "w")`` would give it without reading the process umask: ``os.umask`` can only
    be read by setting it, which races with other threads creating files.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(directory / f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{directory}: no free temporary name for {name!r} after 100 tries")


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` so that a rename in it survives a crash; no-op where unsupported.

    Opening a directory fails on Windows, and some file systems reject fsync on one: the
    rename has happened either way, only its durability is then up to the OS.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def not_a_file(path: Path, expected: str) -> OSError:
    """The error for reading ``path`` where no file is: IsADirectoryError for a directory,
    FileNotFoundError otherwise; each names the path and ``expected``."""
    if path.is_dir():
        return IsADirectoryError(f"{path}: is a directory; expected {expected}")
    return FileNotFoundError(f"{path}: no such file; expected {expected}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    The temporary file is fsynced before the move and the directory after it, so a crash
    leaves either the old or the new content at ``path``, never a partial file. The new
    file's mode is what ``open(path, "w")`` would give (``0o666`` less the umask). Safe to
    call from several threads at once.

    Args:
        path: the destination. Its parent directory is created if missing.

    Yields:
        The temporary path (an empty file). If the body raises, it is removed and ``path``
        is left untouched.

    Raises:
        IsADirectoryError: ``path`` is a directory (before anything is written).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; expected the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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


def json_default(obj: Any) -> Any:
    """``json.dump``'s ``default``: a NumPy scalar or a one-element tensor as its Python
    number (a config or plan metadata may hold them: before, ``TypeError: Object of type
    int64 is not JSON serializable``).

    Raises:
        ValueError: any other value JSON cannot hold, naming its type.
    """
    if isinstance(obj, np.generic) or (isinstance(obj, torch.Tensor) and obj.numel() == 1):
        return obj.item()
    raise ValueError(
        f"a value of type {type(obj).__name__} ({obj!r:.60}) cannot be written as JSON; "
        "expected numbers, strings, bools, None, lists and dicts"
    )


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`json_default`)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=json_default)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of the bytes of the file ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order.

    A contiguous CPU tensor is hashed in place (hashlib reads its buffer); others are
    copied, one at a time.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        t = t if t.is_contiguous() and t.device.type == "cpu" else t.contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors``, each after the first of a shared storage copied: safetensors refuses
    tensors that share memory ("Some tensors share memory"), as a plan's hash functions
    holding one head tensor, or one mapping given twice, do. A copy only where shared."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        out[name] = t.clone() if ptr and ptr in seen else t
        seen.add(ptr)
    return out


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
) -> None:
    """Save ``tensors`` to a safetensors file with ``manifest`` (JSON) and a checksum.

    Args:
        path: destination file; written atomically.
        tensors: name -> tensor (moved to CPU, made contiguous).
        manifest: JSON-serializable description stored in the file header.
    """
    tensors = _own_storage({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    manifest = dict(manifest, sha256=tensor_digest(tensors))
    text = json.dumps(manifest, sort_keys=True, default=json_default)  # (before any file)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={MANIFEST_KEY: text})


def load_tensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by :func:`save_tensors` and verify its checksum.

    Args:
        path: the file.
        kind: the manifest ``kind`` expected (e.g. ``"hash_plan"``).

    Returns:
        ``(tensors, manifest)``.

    Raises:
        FileNotFoundError: ``path`` does not exist (IsADirectoryError: it is a directory).
        ValueError: the file is truncated, altered, or not a torchrec_lhf ``kind`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, f"a {kind.replace('_', ' ')} file that torchrec_lhf wrote")
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
