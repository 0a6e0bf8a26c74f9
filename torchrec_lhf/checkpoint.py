"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP): each rank writes and reads
only its own shards, and a checkpoint loads at any world size and sharding.

Layout of ``directory``::

    latest              {"dir": "step_120", "step": 120, "previous": ["step_100"], ...}
    step_100/           an older checkpoint (``keep`` of them are kept)
    step_120/
        .metadata       DCP's index of every tensor chunk (pickled, read safely: below)
        __0_0.distcp    rank 0's shards, ...
        manifest.json   step, world size and the caller's ``meta`` (rank 0)

What DCP saves is one nested state dict: ``model`` (``model.state_dict()``: ShardedTensors /
DTensors of TorchRec's sharded tables, plain tensors of the replicated dense layers and
buffers such as the hash plan's ``remap.mapping``), ``optim`` (``optimizer.state_dict()``'s
``state``: the fused tables' row-wise momentum as ShardedTensors, the dense optimizer's
state as plain tensors), ``extra`` (the caller's tensors) and ``rng`` (each rank's CPU
generator, ``rng.cpu_by_rank.{rank}``: ranks draw apart, e.g. where ``mch`` re-initializes the
rows each rank evicts; and its CUDA device's, ``rng.cuda_by_rank.{rank}``, where it has used
CUDA). Other plain tensors are taken to be replicated: DCP writes one rank's
copy.

Atomicity: every rank writes into ``step_{N}``; after a barrier rank 0 flips ``latest``
(:func:`torchrec_lhf._io.atomic_write_json`) and only then deletes the step directories
beyond the last ``keep``. A save killed before the flip leaves ``latest`` on the previous
checkpoint, and the next save of step ``N`` clears the partial ``step_{N}`` first.
NOTE: with several hosts, ``directory`` must be on a shared file system.

Trust: loading never unpickles arbitrary objects. DCP's ``.metadata`` is a pickle, read
here by a restricted unpickler that admits only DCP's own metadata classes and torch's
sizes, dtypes, layouts and memory formats (anything else raises); checkpoints holding
pickled non-tensor values (DCP's "bytes" entries, which DCP would ``torch.load`` with
``weights_only=False``) are refused; the tensor data itself is read by DCP with
``torch.load(weights_only=True)``, and ``latest`` / ``manifest.json`` are JSON.

Example::

    >>> import tempfile
    >>> model = torch.nn.Linear(3, 2)  # or a DistributedModelParallel, in a process group
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> ckpt_dir = tempfile.mkdtemp()
    >>> _ = save(ckpt_dir, model=model, optimizer=optimizer, step=100, meta={"epoch": 1})
    >>> loaded = load(ckpt_dir, model=model, optimizer=optimizer, expect={"epoch": 1})
    >>> loaded.step, loaded.meta["epoch"]
    (100, 1)
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from torchrec_lhf._io import atomic_write_json, json_default

logger = logging.getLogger(__name__)

KIND = "torchrec_lhf_dcp_checkpoint"
LATEST = "latest"
"""The pointer file: JSON naming the newest complete step directory."""
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"step_(\d+)")


@dataclass(frozen=True, kw_only=True)
class Loaded:
    """What :func:`load` restored."""

    path: Path
    """The step directory read."""
    step: int
    """The ``step`` it was saved at."""
    world_size: int
    """The world size that wrote it."""
    meta: dict[str, Any]
    """The caller's ``meta`` (JSON)."""
    extra: dict[str, torch.Tensor]
    """The caller's ``extra`` tensors (CPU)."""


# ------------------------------------------------------------------------------ save
def save(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Save a checkpoint of ``step`` to ``directory/step_{step}`` (collective).

    Args:
        directory: the checkpoint directory (created if missing).
        model: the (DistributedModelParallel) model.
        optimizer: its (keyed / combined) optimizer.
        step: the training step, naming the step directory.
        meta: small JSON-serializable state (epoch, data position, fingerprints; rank 0's).
        extra: more tensors, equal on every rank (one rank's copy is written).
        keep: how many complete checkpoints to keep (the newest ``keep``), at least 1.

    Returns:
        The step directory, now named by ``latest``.

    Raises:
        ValueError: bad ``step`` / ``keep``, or a state entry that is not a tensor.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    directory = Path(directory)
    name = f"step_{step}"
    path = directory / name
    pointer = read_latest(directory)
    if pointer is not None and pointer["dir"] == name and _same_meta(path, meta):
        # the same run saving the same step twice (a periodic save, then the epoch's)
        logger.info("checkpoint of step %d already at %s", step, path)
        return path
    if _rank() == 0:
        shutil.rmtree(path, ignore_errors=True)  # a killed save of this step, never `latest`
        path.mkdir(parents=True)
    _barrier()
    optim_sd = optimizer.state_dict()
    state = _state(model.state_dict(), optim_sd["state"], dict(extra or {}))
    dcp.save(state, storage_writer=FileSystemWriter(path))
    if _rank() == 0:
        manifest = {
            "kind": KIND,
            "step": step,
            "world_size": _world_size(),
            "meta": dict(meta or {}),
            "extra": sorted(extra or {}),
        }
        atomic_write_json(path / MANIFEST, manifest)
    _barrier()  # every rank's shards are on disk
    if _rank() == 0:
        previous = [] if pointer is None else [pointer["dir"], *pointer.get("previous", [])]
        kept = previous[: keep - 1]
        atomic_write_json(
            directory / LATEST, {"kind": KIND, "dir": name, "step": step, "previous": kept}
        )
        _delete_others(directory, {name, *kept})
        logger.info("checkpoint: step %d -> %s", step, path)
    _barrier()  # nobody reads `latest` before it is flipped
    return path


def _same_meta(path: Path, meta: Mapping[str, Any] | None) -> bool:
    """Whether the checkpoint at ``path`` was written with ``meta`` (else another run's
    checkpoint of the same step, e.g. of another plan, which must be replaced)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    expected = json.loads(json.dumps(dict(meta or {}), default=json_default))
    return isinstance(manifest, dict) and manifest.get("meta") == expected


RNG_BY_RANK = "cpu_by_rank"
"""``rng.{RNG_BY_RANK}.{rank}``: a rank's CPU generator state in the checkpoint."""
RNG_CUDA_BY_RANK = "cuda_by_rank"
"""``rng.{RNG_CUDA_BY_RANK}.{rank}``: a rank's generator of its current CUDA device, saved
where the rank has used CUDA (e.g. rows re-initialized on the GPU)."""


def _rng_now() -> dict[str, torch.Tensor]:
    """This rank's generator states as a save writes them, by dotted key: the CPU one, and
    the current CUDA device's where this process has initialized CUDA."""
    states = {f"rng.{RNG_BY_RANK}.{_rank()}": torch.get_rng_state()}
    if _cuda(used=True):
        states[f"rng.{RNG_CUDA_BY_RANK}.{_rank()}"] = torch.cuda.get_rng_state()
    return states


def _cuda(*, used: bool) -> bool:
    """Whether CUDA is available (and, with ``used``, initialized by this process)."""
    return torch.cuda.is_available() and (not used or torch.cuda.is_initialized())


def _state(
    model_sd: Mapping[str, Any],
    optim_state: Mapping[str, Any],
    extra: dict[str, torch.Tensor],
    rng: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The nested dict DCP saves and loads in place; every leaf must be a tensor.

    ``rng``: the generator states by dotted key (``rng.cpu_by_rank.0``); None: this rank's
    own (:func:`_rng_now`, what a save writes); a load passes tensors to load into
    (:func:`_rng_to_load`).

    NOTE: no ``extra`` entry without extra tensors: DCP flattens an empty dict to a
    non-tensor leaf, which a load at world size 2 then failed to find ("Missing key in
    checkpoint state_dict: extra")."""
    nested: dict[str, Any] = {}
    for key, tensor in (_rng_now() if rng is None else rng).items():
        node = nested
        *parents, leaf = key.split(".")[1:]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tensor
    state = {
        "model": dict(model_sd),
        "optim": dict(optim_state),
        **({"extra": extra} if extra else {}),
        "rng": nested,
    }
    _check_leaves(state, "")
    return state


def _check_leaves(nested: Mapping[str, Any], prefix: str) -> None:
    for key, value in nested.items():
        if isinstance(value, Mapping):
            _check_leaves(value, f"{prefix}{key}.")
        elif not isinstance(value, torch.Tensor):
            # NOTE: DCP would pickle it, and unpickling is what loading must never do
            raise ValueError(
                f"checkpoint state {prefix}{key} is a {type(value).__name__}, not a tensor; "
                "pass small values through `meta` (JSON)"
            )


def _delete_others(directory: Path, kept: set[str]) -> None:
    for child in directory.iterdir():
        if child.is_dir() and _STEP_DIR.fullmatch(child.name) and child.name not in kept:
            shutil.rmtree(child, ignore_errors=True)


# ------------------------------------------------------------------------------ load
def read_latest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``latest`` pointer of ``directory``, or None if it has no checkpoint yet.

    Raises:
        ValueError: the pointer is not one of ours, or ``directory`` holds a checkpoint of
            the format before DCP (``checkpoint.safetensors``), which cannot be resumed.
    """
    directory = Path(directory)
    path = directory / LATEST
    if not path.is_file():
        if (directory / "checkpoint.safetensors").is_file():
            raise ValueError(
                f"{directory} holds a checkpoint of the old single-file format "
                "(checkpoint.safetensors, before DCP), which cannot be resumed: "
                "start a new checkpoint directory"
            )
        return None
    try:
        pointer = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # (JSON and UTF-8 errors are ValueErrors)
        raise ValueError(f"{path} cannot be read as a checkpoint pointer of {KIND}: {e}") from None
    if (
        not isinstance(pointer, dict)
        or pointer.get("kind") != KIND
        or not _STEP_DIR.fullmatch(str(pointer.get("dir")))
    ):
        raise ValueError(f"{path} is not a checkpoint pointer of {KIND}: {pointer!r}")
    return pointer


def _rng_key(path: Path, saved: set[str], by_rank: str = RNG_BY_RANK) -> str | None:
    """The generator state this rank resumes with: its own where the checkpoint has it (the
    same or a larger world size wrote it), else rank 0's; for the CPU generator,
    ``rng.cpu`` in checkpoints written before the states were kept per rank (one state,
    rank 0's, for every rank).

    Returns:
        The dotted key, or None for a CUDA generator the checkpoint does not hold (a run
        that never used CUDA wrote it).

    Raises:
        ValueError: the checkpoint holds no CPU generator state.
    """
    old = ("rng.cpu",) if by_rank == RNG_BY_RANK else ()
    for key in (f"rng.{by_rank}.{_rank()}", f"rng.{by_rank}.0", *old):
        if key in saved:
            return key
    if by_rank != RNG_BY_RANK:
        return None
    raise ValueError(f"{path} holds no generator state (rng.{RNG_BY_RANK}.0 or rng.cpu)")


def _rng_to_load(path: Path, metadata: Metadata) -> tuple[str, str | None, dict[str, Any]]:
    """The CPU and (where this process can use CUDA and the checkpoint has one) CUDA
    generator keys this rank loads (:func:`_rng_key`), and tensors to load them into."""
    saved = metadata.state_dict_metadata
    cpu = _rng_key(path, set(saved))
    cuda = _rng_key(path, set(saved), RNG_CUDA_BY_RANK) if _cuda(used=False) else None
    tensors = {
        key: torch.empty(saved[key].size, dtype=saved[key].properties.dtype)
        for key in (cpu, cuda)
        if key is not None
    }
    return cpu, cuda, tensors


def load(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    expect: Mapping[str, Any] | None = None,
) -> Loaded | None:
    """Load the latest checkpoint of ``directory`` into this rank's shards (collective).

    The checkpoint may come from another world size or sharding: DCP reads the chunks that
    overlap this rank's shards. Each rank's CPU generator is restored too, and its CUDA
    device's where the checkpoint holds one and CUDA is available (:func:`_rng_key`).

    Args:
        directory: as given to :func:`save`.
        model: the model, sharded as this run shards it.
        optimizer: its optimizer.
        expect: ``meta`` entries that must equal the checkpoint's (e.g. a plan fingerprint);
            checked before anything is loaded.

    Returns:
        What was loaded, or None if ``directory`` holds no checkpoint yet.

    Raises:
        ValueError: an ``expect`` entry differs (both values named), the model has other
            entries than the checkpoint, or the checkpoint is damaged or unsafe.
    """
    pointer = read_latest(directory)
    if pointer is None:
        return None
    path = Path(directory) / pointer["dir"]
    manifest = _read_manifest(path)
    _check_expected(path, manifest.get("meta", {}), expect or {})
    reader = SafeFileSystemReader(path)
    metadata = reader.read_metadata()
    _init_optimizer_state(optimizer)
    model_sd, optim_sd = model.state_dict(), optimizer.state_dict()
    saved = set(metadata.state_dict_metadata)
    unexpected = sorted(k for k in saved if k.startswith("model.") and k[6:] not in model_sd)
    missing = sorted(k for k in model_sd if f"model.{k}" not in saved)
    if unexpected or missing:
        raise ValueError(
            f"{path} holds another model: not in this model {unexpected[:5]}, "
            f"not in the checkpoint {missing[:5]}"
        )
    extra = {
        key[len("extra.") :]: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if key.startswith("extra.")
    }
    cpu_key, cuda_key, rng = _rng_to_load(path, metadata)
    state = _state(model_sd, optim_sd["state"], extra, rng)
    try:
        dcp.load(state, storage_reader=reader)
    except CheckpointException as e:  # (a BaseException: callers' `except Exception` miss it)
        raise ValueError(f"{path}: the saved tensors cannot be read (damaged?): {e}") from None
    model.load_state_dict(model_sd)
    optimizer.load_state_dict(optim_sd)
    torch.set_rng_state(rng[cpu_key])
    if cuda_key is not None:
        torch.cuda.set_rng_state(rng[cuda_key])
    logger.info("resumed from %s (step %d)", path, manifest["step"])
    return Loaded(
        path=path,
        step=int(manifest["step"]),
        world_size=int(manifest["world_size"]),
        meta=manifest.get("meta", {}),
        extra=extra,
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the step directory ``path``, checked: ``kind``, an int ``step`` and
    ``world_size``, a ``meta`` mapping.

    Raises:
        ValueError: a manifest that is not JSON or not one of ours (a damaged file).
    """
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:  # (JSON and UTF-8 errors are ValueErrors)
        raise ValueError(f"{file} cannot be read as a manifest of {KIND}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ValueError(f"{file} is not a manifest of {KIND}")
    for key in ("step", "world_size"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{file}: {key} must be an int >= 0, got {value!r} (damaged?)")
    if not isinstance(manifest.get("meta", {}), dict):
        raise ValueError(f"{file}: meta must be a mapping, got {manifest['meta']!r} (damaged?)")
    return manifest


def _check_expected(path: Path, meta: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    for key, ours in expect.items():
        theirs = meta.get(key)
        if theirs == ours:
            continue
        if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
            diffs = [
                f"{k}: checkpoint {theirs.get(k)!r}, now {ours.get(k)!r}"
                for k in sorted({*ours, *theirs})
                if theirs.get(k) != ours.get(k)
            ]
            raise ValueError(f"{path} was written with another {key} ({'; '.join(diffs)})")
        raise ValueError(
            f"{path} was written with {key} {theirs!r}, but this run has {ours!r}: "
            "resume with the same settings, or start a new checkpoint directory"
        )


def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create lazily made optimizer state (Adam's before its first step) so that DCP can
    load into it in place."""
    for _, opt in getattr(optimizer, "optimizers", [("", optimizer)]):
        if not opt.state and getattr(opt, "params", None) and hasattr(opt, "init_state"):
            opt.init_state()
            for p in opt.params.values():
                p.grad = None


# ----------------------------------------------------------------------- safe reading
_TORCH_TYPES = (torch.dtype, torch.layout, torch.memory_format)
_DCP_MODULES = ("torch.distributed.checkpoint.metadata",)
_DCP_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a lookup of torch's layouts by name
}
_BUILTINS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pathlib", "PosixPath"),  # the checkpoint_id DCP records
    ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata classes and torch's dtypes / layouts / memory formats only."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES or (module, name) in _DCP_NAMES | _BUILTINS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_TYPES):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"checkpoint metadata refers to {module}.{name}, which a DCP index never holds"
        )


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for ``.metadata`` (see the module
    docstring), refusing pickled non-tensor entries."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except (
            pickle.UnpicklingError,
            EOFError,
            AttributeError,
            TypeError,
            ValueError,
            KeyError,
            IndexError,
            OverflowError,
            MemoryError,  # (a damaged length: the unpickler sizes a buffer by it)
        ) as error:
            raise ValueError(f"{path}: not a safe DCP checkpoint index ({error})") from error
        if not isinstance(metadata, Metadata):
            raise ValueError(f"{path}: not a DCP checkpoint index ({type(metadata).__name__})")
        pickled = sorted(
            k
            for k, md in metadata.state_dict_metadata.items()
            if isinstance(md, BytesStorageMetadata)
        )
        if pickled:
            raise ValueError(f"{path}: entries {pickled[:5]} are pickled objects; refused")
        # NOTE: what FileSystemReader.read_metadata does after unpickling
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


# ---------------------------------------------------------------------------- helpers
def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
