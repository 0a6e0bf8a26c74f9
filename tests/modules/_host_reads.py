"""A dispatch mode that fails on every op reading a tensor's value on the host (tests only).

On CUDA each such read is a host-device synchronization; on CPU the same ops run, so a
CPU test catches them. Also flagged: ops whose output size depends on tensor values
(``nonzero``, boolean masks, ``repeat_interleave`` without ``output_size``), which sync on
CUDA, and ``Tensor.tolist()``, which bypasses the dispatcher on CPU tensors.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator

import torch
import torchrec
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_READS = {
    aten._local_scalar_dense.default,  # .item(), int(t), bool(t), float(t)
    aten.is_nonzero.default,
    aten.equal.default,
    aten.item.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
}

# TorchRec's own host reads, which a plain EmbeddingBagCollection makes on every batch as
# well (tests compare the counts): computing a KJT's per-key lengths on the host, in
# ``KeyedJaggedTensor.length_per_key()`` / ``offset_per_key()``, called by
# ``EmbeddingBagCollection.forward`` (``to_dict``) and ``ShardedEmbeddingBagCollection
# .input_dist`` (``split``), and by our remap only where its output size needs them (the
# output then carries them, so TorchRec does not read again).
ALLOWED_TORCHREC_READS = {
    "_maybe_compute_length_per_key",
    "_maybe_compute_offset_per_key",
}

_TORCH_DIR = os.path.dirname(torch.__file__)
_TORCHREC_DIR = os.path.dirname(torchrec.__file__)


class HostReadError(AssertionError):
    pass


class HostReads(TorchDispatchMode):
    """Raise :class:`HostReadError` on a host read, unless TorchRec's allowed one.

    Attributes:
        allowed: stack summaries of the allowed (TorchRec) reads seen.
    """

    def __init__(self, *, allow_torchrec: bool) -> None:
        super().__init__()
        self.allow_torchrec = allow_torchrec
        self.allowed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if _is_read(func, args, kwargs):
            self.check(str(func))
        return func(*args, **kwargs)

    def check(self, what: str) -> None:
        stack = traceback.extract_stack()[:-2]
        torchrec_fns = {f.name for f in stack if f.filename.startswith(_TORCHREC_DIR)}
        if self.allow_torchrec and torchrec_fns & ALLOWED_TORCHREC_READS:
            self.allowed.append(what)
            return
        frames = [f for f in stack if not f.filename.startswith(_TORCH_DIR)][-8:]
        where = "".join(traceback.format_list(frames))
        raise HostReadError(f"host read of a tensor value: {what}\n{where}")


def _is_read(func, args, kwargs) -> bool:  # noqa: ANN001
    if func in _READS:
        return True
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return True
    if func is aten.index.Tensor:  # a boolean mask's output size is its number of Trues
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return False


@contextlib.contextmanager
def host_reads(*, allow_torchrec: bool = False) -> Iterator[HostReads]:
    """Fail on host reads inside the block (``Tensor.tolist`` included)."""
    mode = HostReads(allow_torchrec=allow_torchrec)
    tolist = torch.Tensor.tolist

    def checked_tolist(self: torch.Tensor):  # noqa: ANN202
        mode.check("Tensor.tolist")
        return tolist(self)

    torch.Tensor.tolist = checked_tolist
    try:
        with mode:
            yield mode
    finally:
        torch.Tensor.tolist = tolist
