"""Shared by the export and serve tests: train the DLRM app, then export it, with no tensor
going from one rank to another during the export."""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from apps.dlrm.export import export_model
from apps.dlrm.loop import Session, build_session, fit, load_data
from apps.dlrm.runtime import distributed
from apps.dlrm.train import parse_args, resolve_plan

OBJECT_OPS = ("gather_object", "all_gather_object", "broadcast_object_list", "scatter_object_list")
"""What DCP coordinates its plans with (pickled objects, sent as byte tensors)."""
TENSOR_OPS = (
    "send", "recv", "isend", "irecv", "batch_isend_irecv", "send_object_list",
    "recv_object_list", "broadcast", "all_reduce", "reduce", "all_gather",
    "all_gather_into_tensor", "gather", "scatter", "reduce_scatter", "reduce_scatter_tensor",
    "all_to_all", "all_to_all_single",
)  # fmt: skip


def _tensors_in(obj: Any) -> list[str]:
    """The types of the tensors inside ``obj`` (found by pickling it)."""
    found: list[str] = []

    class _Finder(pickle.Pickler):
        def reducer_override(self, o: Any) -> Any:
            if isinstance(o, torch.Tensor):
                found.append(type(o).__name__)
                return (type(None), ())  # not pickled: only looked for
            return NotImplemented

    _Finder(io.BytesIO()).dump(obj)
    return found


@contextlib.contextmanager
def no_tensors_between_ranks() -> Iterator[list[str]]:
    """Within, raise AssertionError on a tensor sent between ranks: an object collective
    whose objects hold a tensor, or a tensor collective or point-to-point op outside an
    object collective (which sends its pickled bytes as tensors). Barriers are allowed.

    Yields:
        The names of the object collectives called (to show the guard saw traffic).
    """
    calls: list[str] = []
    depth = [0]

    def object_op(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if found := _tensors_in((args, kwargs)):
                raise AssertionError(f"dist.{name} sends tensors {found} between ranks")
            calls.append(name)
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1

        return checked

    def tensor_op(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                raise AssertionError(f"dist.{name} sends a tensor between ranks")
            return fn(*args, **kwargs)

        return checked

    with contextlib.ExitStack() as stack:
        for names, wrap in ((OBJECT_OPS, object_op), (TENSOR_OPS, tensor_op)):
            for name in names:
                wrapped = wrap(name, getattr(c10d, name))
                for module in (dist, c10d):  # c10d's own object ops call its tensor ops
                    stack.enter_context(mock.patch.object(module, name, wrapped))
        yield calls


@contextlib.contextmanager
def trained_and_exported(
    argv: list[str], path: str | Path, traffic: list[str] | None = None
) -> Iterator[Session]:
    """Train the app on ``argv``, export it to ``path``; yield the session, in eval mode.

    The export runs under :func:`no_tensors_between_ranks`; the object collectives it made
    are appended to ``traffic`` if given. The process group (one rank, or this rank under
    ``run_multiprocess``) stays up while the caller uses the session.
    """
    config = parse_args(argv)
    with distributed() as env:
        dataset = load_data(config)
        plan = resolve_plan(config, dataset, dataset.num_embeddings)
        session = build_session(config, env, dataset, plan)
        fit(session)
        with no_tensors_between_ranks() as calls:
            export_model(session, path, num_dense=len(dataset.dense_names))
        if traffic is not None:
            traffic.extend(calls)
        session.pipeline.detach()
        session.model.eval()
        yield session
