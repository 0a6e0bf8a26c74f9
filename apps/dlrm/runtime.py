"""Process group, device and logging for the apps: torchrun, torchx, or one bare process."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DistEnv:
    """Where this process runs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def distributed(backend: str | None = None) -> Iterator[DistEnv]:
    """Use the existing process group, or create one, and yield this rank's :class:`DistEnv`.

    Under torchrun / torchx (``RANK`` and ``WORLD_SIZE`` set) the group is initialized from
    the environment; in a bare process a 1-rank group on a free local port. A group created
    here is destroyed on exit; one that already existed (tests, notebooks) is left alone.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default nccl with CUDA, gloo otherwise.
    """
    created = False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(
                backend=backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
        created = True
    backend = dist.get_backend()
    local_rank = int(
        os.environ.get("LOCAL_RANK", dist.get_rank() % max(1, torch.cuda.device_count() or 1))
    )
    if backend == "nccl":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    env = DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
    )
    try:
        yield env
    finally:
        if created:
            dist.destroy_process_group()


def setup_logging(rank: int) -> None:
    """INFO logs on rank 0 and warnings elsewhere, unless the caller configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=f"[rank{rank}] %(asctime)s %(name)s %(levelname)s: %(message)s")
    if root.level == logging.WARNING or root.level == logging.NOTSET:
        for name in ("apps", "torchrec_lhf", "__main__"):
            logging.getLogger(name).setLevel(logging.INFO if rank == 0 else logging.WARNING)
