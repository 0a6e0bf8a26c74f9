"""Run a function on ``world_size`` local processes with gloo (tests only)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torchrec.test_utils import get_free_port


def _worker(
    fn: Callable[..., Any], rank: int, world_size: int, port: int, kwargs: dict, queue: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        GLOO_DEVICE_TRANSPORT="TCP",
    )
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank=rank, world_size=world_size, **kwargs)
        # NOTE: plain pickle bytes, not the queue's tensor sharing: shared-memory tensors
        # need this process alive until the parent reads them, and it exits right away.
        queue.put((rank, "ok", pickle.dumps(result)))
    except BaseException:  # report everything to the parent, which raises
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_multiprocess(
    fn: Callable[..., Any], world_size: int = 2, timeout: float = 300, **kwargs: Any
) -> list[Any]:
    """Call ``fn(rank=, world_size=, **kwargs)`` in ``world_size`` processes.

    ``fn`` must be a module-level function. Returns the per-rank results (picklable);
    raises AssertionError with the worker's traceback if any rank fails.
    """
    ctx = multiprocessing.get_context("forkserver")
    queue = ctx.Queue()
    port = get_free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, rank, world_size, port, kwargs, queue))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, status, payload = queue.get(timeout=timeout)
            if status == "ok":
                results[rank] = pickle.loads(payload)  # our own child's bytes (tests only)
            else:
                errors.append(f"rank {rank}:\n{payload}")
                break
    finally:
        for p in procs:
            p.join(timeout=5 if errors else timeout)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]
