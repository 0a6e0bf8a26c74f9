"""Full tensors from sharded state and back: the checkpoint's and the teacher's helpers.

A state-dict leaf is a plain tensor (replicated: DDP parameters, remap buffers), a
``ShardedTensor`` or a ``DTensor``. A rank may hold *some* leaves only: TorchRec's fused
optimizer keeps the state of a table-wise table on its owner rank alone. So gathering is
not a collective per leaf; each rank sends rank 0 its local pieces (offsets + data, one
buffer per dtype, point to point), and rank 0 assembles the full tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor, Replicate

Piece = tuple[tuple[int, ...], torch.Tensor]
"""``(global offsets, local data)`` of one shard."""


def _dtensor_pieces(t: DTensor) -> list[Piece]:
    local = t.to_local()
    if hasattr(local, "local_shards"):  # torchrec's LocalShardsWrapper
        return [(tuple(o), s) for s, o in zip(local.local_shards(), local.local_offsets())]
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return [(tuple(offsets), local)]


def local_pieces(t: torch.Tensor, rank: int) -> list[Piece]:
    """This rank's pieces of ``t``; replicated data is taken from rank 0 only."""
    if isinstance(t, ShardedTensor):
        return [(tuple(s.metadata.shard_offsets), s.tensor) for s in t.local_shards()]
    if isinstance(t, DTensor):
        if all(isinstance(p, Replicate) for p in t.placements) and rank != 0:
            return []
        return _dtensor_pieces(t)
    return [((0,) * t.dim(), t)] if rank == 0 else []


def _index(offsets: Sequence[int], sizes: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(o, o + s) for o, s in zip(offsets, sizes))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def gather_to_rank0(
    leaves: dict[str, torch.Tensor], *, device: torch.device
) -> dict[str, torch.Tensor] | None:
    """Assemble the full (unsharded) CPU tensors of ``leaves`` on rank 0. Collective.

    Args:
        leaves: this rank's leaves by key; ranks may hold different keys.
        device: the process group's device (CUDA for nccl) for the transfers.

    Returns:
        On rank 0, key -> full tensor for the keys of any rank; ``None`` elsewhere.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    meta, buffers = [], {}
    for key in sorted(leaves):
        t = leaves[key]
        pieces = local_pieces(t, rank)
        dtype = str(t.dtype)
        meta.append((key, tuple(t.shape), dtype, [(off, tuple(p.shape)) for off, p in pieces]))
        buffers.setdefault(dtype, []).extend(p.detach().reshape(-1) for _, p in pieces)
    metas: list | None = [None] * world_size if rank == 0 else None
    dist.gather_object(meta, metas, dst=0)
    if rank != 0:
        for dtype in sorted(buffers):
            if buffers[dtype]:
                dist.send(torch.cat(buffers[dtype]).to(device), dst=0)
        return None
    out: dict[str, torch.Tensor] = {}
    for src_meta in metas:
        for key, shape, dtype, _ in src_meta:
            out.setdefault(key, torch.zeros(shape, dtype=_dtype(dtype)))
    for key in sorted(leaves):
        for off, p in local_pieces(leaves[key], rank):
            out[key][_index(off, p.shape)] = p.detach().cpu()
    for src in range(1, world_size):
        for key, off, sizes, data in _receive(metas[src], src, device):
            out[key][_index(off, sizes)] = data.reshape(sizes)
    return out


def _receive(meta: list, src: int, device: torch.device) -> Iterator[tuple]:
    """Receive ``src``'s buffers (one per dtype, in sorted dtype order): ``(key, offsets, sizes, data)``."""
    by_dtype: dict[str, list] = {}
    for key, _, dtype, pieces in meta:
        for off, sizes in pieces:
            by_dtype.setdefault(dtype, []).append((key, off, sizes))
    for dtype in sorted(by_dtype):
        numels = [math.prod(sizes) for _, _, sizes in by_dtype[dtype]]
        buffer = torch.empty(sum(numels), dtype=_dtype(dtype), device=device)
        dist.recv(buffer, src=src)
        parts = torch.split(buffer.cpu(), numels)
        for (key, off, sizes), part in zip(by_dtype[dtype], parts):
            yield key, off, sizes, part


def copy_into(key: str, t: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's part of ``full`` into ``t`` (plain, sharded or DTensor), in place.

    Raises:
        ValueError: ``full`` does not have ``t``'s global shape.
    """
    if t.dim() == 0 and tuple(full.shape) == (1,):
        full = full.reshape(())
    if tuple(full.shape) != tuple(t.shape):
        raise ValueError(
            f"checkpoint entry {key!r} has shape {tuple(full.shape)}, the model has {tuple(t.shape)}"
        )
    with torch.no_grad():
        if isinstance(t, (ShardedTensor, DTensor)):
            pieces = (
                [(tuple(s.metadata.shard_offsets), s.tensor) for s in t.local_shards()]
                if isinstance(t, ShardedTensor)
                else _dtensor_pieces(t)
            )
            for off, p in pieces:
                p.copy_(full[_index(off, p.shape)])
        else:
            t.copy_(full)
