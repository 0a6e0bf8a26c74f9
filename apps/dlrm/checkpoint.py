"""Checkpoints of a sharded DLRM: full (unsharded) tensors in one safetensors file.

Layout: ``<checkpoint_dir>/checkpoint.safetensors`` holds ``model/<state key>`` (every
state-dict entry gathered to its full shape, whatever the sharding), ``optim/<param
key>/<state name>`` (the fused table optimizer's and the dense optimizer's state, also
full) and ``extra/<name>`` (whatever the caller adds, e.g. the teacher's counts); the
manifest in its header records epoch, step, the hash plan's fingerprint and the config.
Rank 0 writes it atomically (never pickle); every rank reads it and copies its own shards
in place, so a checkpoint also resumes at another world size or sharding. NOTE: with
several hosts, ``checkpoint_dir`` must be on a shared file system.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from apps.dlrm.config import MODEL_FIELDS
from torchrec_lhf._io import load_tensors, save_tensors
from torchrec_lhf.distributed.gather import copy_into, gather_to_rank0

logger = logging.getLogger(__name__)

_KIND = "dlrm_checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass(frozen=True, kw_only=True)
class Resumed:
    """What a loaded checkpoint says about the run."""

    epoch: int
    """Epochs finished."""
    step: int
    """Training steps finished."""
    extra: dict[str, torch.Tensor]
    """The ``extra`` tensors saved with it."""


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_FILE


def _leaves(nested: dict, prefix: str) -> Iterator[tuple[str, dict, str]]:
    """``(key, parent dict, name)`` of every non-dict leaf of ``nested``, in sorted order."""
    for name in sorted(nested, key=str):
        value = nested[name]
        key = f"{prefix}/{name}"
        if isinstance(value, dict):
            yield from _leaves(value, key)
        else:
            yield key, nested, name


def save_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    plan_fingerprint: str | None,
    config: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    device: torch.device | None = None,
) -> None:
    """Gather model and optimizer state to rank 0 and write the checkpoint there (collective).

    Args:
        checkpoint_dir: the directory; the file inside is replaced atomically.
        model: the DistributedModelParallel model.
        optimizer: the combined (keyed) optimizer.
        epoch: epochs finished.
        step: training steps finished.
        plan_fingerprint: the hash plan's fingerprint, or None without a plan.
        config: the run's config (JSON-serializable).
        extra: more tensors to save (taken from rank 0).
        device: the process group's device (default CPU; CUDA with nccl).
    """
    device = device or torch.device("cpu")
    rank = dist.get_rank()
    state = {"model": model.state_dict(), "optim": optimizer.state_dict()["state"]}
    leaves: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for key, parent, name in _leaves(state, ""):
        if isinstance(parent[name], torch.Tensor):
            leaves[key.lstrip("/")] = parent[name]
        else:
            values[key.lstrip("/")] = parent[name]
    gathered = gather_to_rank0(leaves, device=device)
    all_values: list | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(values, all_values, dst=0)
    tensors: dict[str, torch.Tensor] = {}
    if rank == 0:
        # NOTE: 0-dim tensors (optimizer step counts) are stored as shape (1,):
        # torchrec_lhf._io's checksum cannot view a 0-dim tensor as bytes.
        tensors = {k: v.reshape(1) if v.dim() == 0 else v for k, v in gathered.items()}
        values = {k: v for rank_values in all_values for k, v in rank_values.items()}
    if rank == 0:
        tensors.update({f"extra/{name}": t.detach().cpu() for name, t in (extra or {}).items()})
        manifest = {
            "kind": _KIND,
            "epoch": epoch,
            "step": step,
            "plan_fingerprint": plan_fingerprint,
            "config": config,
            "values": values,
            "extra": sorted(extra or {}),
            "world_size": dist.get_world_size(),
        }
        path = checkpoint_path(checkpoint_dir)
        save_tensors(path, tensors, manifest)
        logger.info("checkpoint: epoch %d, step %d -> %s", epoch, step, path)
    dist.barrier()


def load_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    plan_fingerprint: str | None,
    config: dict[str, Any],
) -> Resumed:
    """Load a checkpoint written by :func:`save_checkpoint` into this rank's shards.

    Raises:
        FileNotFoundError: no checkpoint in ``checkpoint_dir``.
        ValueError: it was trained with another hash plan (both fingerprints named) or
            another model configuration (the differing fields named), or it is damaged.
    """
    path = checkpoint_path(checkpoint_dir)
    tensors, manifest = load_tensors(path, _KIND)
    theirs = manifest.get("plan_fingerprint")
    if theirs != plan_fingerprint:
        raise ValueError(
            f"{path} was trained with hash plan {theirs or 'None (no plan)'}, but this run uses "
            f"{plan_fingerprint or 'None (no plan)'}: resume with the same --learned_hash / "
            "--compression, or start a new --checkpoint_dir"
        )
    old = manifest.get("config", {})
    diffs = [
        f"{k}: checkpoint {old.get(k)!r}, now {config.get(k)!r}"
        for k in MODEL_FIELDS
        if old.get(k) != config.get(k)
    ]
    if diffs:
        raise ValueError(
            f"{path} was trained with another model configuration ({'; '.join(diffs)})"
        )

    for _, opt in getattr(optimizer, "optimizers", [("", optimizer)]):
        if not opt.state and getattr(opt, "params", None):
            opt.init_state()  # NOTE: lazy state (Adam) must exist to be loaded in place
            for p in opt.params.values():
                p.grad = None
    model_sd = model.state_dict()
    optim_sd = optimizer.state_dict()
    state = {"model": model_sd, "optim": optim_sd["state"]}
    values = manifest.get("values", {})
    expected = set()
    for key, parent, name in _leaves(state, ""):
        key = key.lstrip("/")
        expected.add(key)
        leaf = parent[name]
        if isinstance(leaf, torch.Tensor):
            if key not in tensors:
                raise ValueError(
                    f"{path}: no entry {key!r} (the model or optimizer differs from the checkpoint's)"
                )
            copy_into(key, leaf, tensors[key])
        else:
            if key not in values:
                raise ValueError(
                    f"{path}: no value {key!r} (the optimizer differs from the checkpoint's)"
                )
            parent[name] = values[key]
    # NOTE: only model keys are checked both ways: a rank holds the optimizer state of its
    # own shards only (e.g. a table-wise table's on its owner rank).
    unexpected = sorted(k for k in tensors if k.startswith("model/") and k not in expected)
    if unexpected:
        raise ValueError(f"{path}: entries {unexpected[:5]} are not in this model")
    model.load_state_dict(model_sd)
    optimizer.load_state_dict(optim_sd)
    extra = {name: tensors[f"extra/{name}"] for name in manifest.get("extra", [])}
    logger.info("resumed from %s: epoch %d, step %d", path, manifest["epoch"], manifest["step"])
    return Resumed(epoch=int(manifest["epoch"]), step=int(manifest["step"]), extra=extra)
