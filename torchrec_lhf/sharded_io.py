"""A model's state dict written shard by shard with ``torch.distributed.checkpoint`` (DCP),
read back in place on one process, and a directory replaced in one step.

:func:`save_state_dict` is collective: every rank writes its own shards (``__{rank}_0.distcp``)
and rank 0 DCP's index (``.metadata``); replicated tensors (plain tensors, the same on every
rank) are written once, by DCP's deduplication. No rank sends tensors to another.

:func:`load_state_dict_in_place` runs on one process: DCP reads, chunk by chunk, the pieces
overlapping each target tensor straight into it (a table saved row-wise over 2 ranks fills
one full table), so no second full copy of the model is made. The index is read by
:class:`~torchrec_lhf.checkpoint.SafeFileSystemReader` (a restricted unpickler; pickled
non-tensor entries refused), the tensor data by DCP with ``torch.load(weights_only=True)``.

:func:`replace_dir` moves a directory staged next to its destination over it, so a writer
killed before the move leaves the previous directory untouched.

Example::

    >>> import tempfile
    >>> model = torch.nn.Linear(3, 2)  # or a DistributedModelParallel, in a process group
    >>> path = Path(tempfile.mkdtemp()) / "weights"
    >>> save_state_dict(model.state_dict(), path)
    >>> copy = torch.nn.Linear(3, 2)
    >>> state = copy.state_dict()
    >>> load_state_dict_in_place(state, path)
    >>> _ = copy.load_state_dict(state)
    >>> torch.equal(copy.weight, model.weight)
    True
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from torchrec_lhf._io import fsync_dir
from torchrec_lhf.checkpoint import SafeFileSystemReader

logger = logging.getLogger(__name__)

__all__ = [
    "load_state_dict_in_place",
    "read_index",
    "replace_dir",
    "save_state_dict",
    "staging_dir",
]


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write this rank's shards of ``state_dict`` into the directory ``path``. Collective.

    Args:
        state_dict: key -> tensor (plain tensors are taken to be replicated; sharded
            tables are ``ShardedTensor`` / ``DTensor``), the same keys on every rank.
        path: the directory (created if missing; must be visible to every rank).

    Raises:
        ValueError: an entry that is not a tensor (DCP would pickle it).
    """
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    Path(path).mkdir(parents=True, exist_ok=True)
    dcp.save(dict(state_dict), storage_writer=FileSystemWriter(path))


def read_index(path: str | os.PathLike) -> Metadata:
    """DCP's index of the directory ``path``, read safely.

    Raises:
        ValueError: no index, or one that is not safe or not DCP's.
    """
    if not (Path(path) / ".metadata").is_file():
        raise ValueError(f"{path}: no DCP index (.metadata); not a saved state dict")
    return SafeFileSystemReader(path).read_metadata()


def load_state_dict_in_place(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """Fill the plain tensors of ``state_dict`` from the directory ``path``, on this process
    alone (no collective), reading each saved chunk into its target directly.

    Args:
        state_dict: key -> CPU tensor (e.g. ``module.state_dict()``, whose tensors share the
            module's storage); exactly the saved keys, shapes and dtypes.
        path: a directory written by :func:`save_state_dict` (any world size, any sharding).

    Raises:
        ValueError: the directory is not a safe DCP state dict, holds other keys, shapes or
            dtypes (named, with both values), or its data cannot be read.
    """
    reader = SafeFileSystemReader(path)
    _check_fits(read_index(path), state_dict, path)
    flat = dict(state_dict)
    try:
        with warnings.catch_warnings():
            # NOTE: DCP warns that it "assumes the intent is to load in a single process"
            # even when asked to with no_dist=True
            warnings.filterwarnings("ignore", message=".*load in a single process")
            dcp.load(flat, storage_reader=reader, no_dist=True)
    except (CheckpointException, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: the saved tensors cannot be read (damaged?): {e}") from e
    for key, value in flat.items():
        assert value is state_dict[key], f"{key}: DCP loaded out of place"


def _check_fits(metadata: Metadata, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    saved = metadata.state_dict_metadata
    unexpected, missing = sorted(set(saved) - set(state_dict)), sorted(set(state_dict) - set(saved))
    if unexpected or missing:
        raise ValueError(
            f"{path} holds another model: not in this model {unexpected[:5]}, "
            f"not saved {missing[:5]}"
        )
    for key, t in state_dict.items():
        md = saved[key]
        assert isinstance(md, TensorStorageMetadata)  # SafeFileSystemReader refuses bytes
        if tuple(md.size) != tuple(t.shape) or md.properties.dtype != t.dtype:
            raise ValueError(
                f"{path}: {key!r} was saved as {tuple(md.size)} {md.properties.dtype}, "
                f"the model has {tuple(t.shape)} {t.dtype}"
            )


# --------------------------------------------------------------- directories
def staging_dir(path: str | os.PathLike) -> Path:
    """Where a new version of the directory ``path`` is written before :func:`replace_dir`:
    the hidden sibling ``.{name}.partial`` (same file system, so the move is a rename)."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.partial"


def replace_dir(staged: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the directory ``staged`` to ``path``, replacing what ``path`` held.

    NOTE: POSIX cannot rename a directory over a non-empty one, so the old ``path`` is
    first renamed aside (``.{name}.old``), the new one renamed in, and the old deleted. A
    crash between the two renames (microseconds) leaves ``path`` missing and the previous
    version complete at ``.{name}.old``, which the next call puts back first; a crash at
    any other time leaves one complete version at ``path``.

    Args:
        staged: the complete new directory (e.g. :func:`staging_dir` of ``path``).
        path: the destination.
    """
    staged, path = Path(staged), Path(os.path.abspath(path))
    old = path.parent / f".{path.name}.old"
    if old.exists() and not path.exists():
        os.rename(old, path)  # what a crash between the renames below left
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.rename(path, old)
    os.rename(staged, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
