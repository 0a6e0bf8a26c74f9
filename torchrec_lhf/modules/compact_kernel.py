"""The remap's CPU kernels: the whole lookup of a batch in one pass over its ids.

The torch ops of :func:`~torchrec_lhf.modules.remap_lookup.map_ids` make a pass over the
batch's ids per step: the range check, the SplitMix64 finalizer, the tail's remainder, three
probe windows, the head table's reads, the selects (about 25 for a compact remap). On CPU
most of their time is memory traffic between the passes. Two kernels do the same integer
arithmetic per id in one loop (``csrc/remap_kernel.cpp``):

* :func:`fused_remap`: every internal feature's ids (identity, dense or compact lookup),
  with the range check (or the ``modulo`` fold), where the host knows each feature's ids
  (TorchRec's per-key lengths, which the remap reads on CPU anyway). Per-feature constants
  are taken once per feature; the tail's remainder multiplies by a precomputed reciprocal
  instead of dividing. Dense-only modules keep FBGEMM's ``pruned_array_lookup``.
* :func:`compact_lookup`: the compact lookup of ids whose feature is given per id (where the
  lengths are not read).

Both are built once per machine from the C++ source with the compiler torch's
``cpp_extension`` uses (``load_inline``, cached under ``TORCH_EXTENSIONS_DIR``, named after
the CPU: the code is compiled for it), on first use, and run in eager CPU mode only. Where
they cannot be built (no compiler, no ninja) or do not apply (CUDA, TorchScript), the torch
ops run: nothing else changes. Every result equals the torch ops'
(``tests/modules/test_compact_kernel.py``, ``tests/modules/test_fused_remap.py``). Set
``TORCHREC_LHF_FUSED_REMAP=0`` to turn them off.

Legend:
    C   ids looked up;  J internal features;  P ids of a batch;  S slots of the head table
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

from torchrec_lhf.hashing import seed_keys

logger = logging.getLogger(__name__)

ENV_FLAG = "TORCHREC_LHF_FUSED_REMAP"

SOURCE = Path(__file__).with_name("csrc") / "remap_kernel.cpp"
"""The kernels' C++ source (package data)."""


@functools.lru_cache(maxsize=1)
def _module():  # noqa: ANN202
    """The built extension, or None where it cannot be built or is turned off."""
    if os.environ.get(ENV_FLAG, "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        # NOTE: built for this machine's CPU (-march=native: the hash's 64-bit multiplies
        # vectorize), so the build's name carries the CPU's identity: an extension cache
        # shared with another kind of machine builds its own instead of loading this one
        return load_inline(
            name=f"torchrec_lhf_remap_kernel_v3_{_cpu_tag()}",
            cpp_sources=SOURCE.read_text(),
            functions=["compact_lookup", "fused_remap"],
            extra_cflags=["-O3", "-march=native"],
            verbose=False,
        )
    except Exception as error:  # noqa: BLE001 (no compiler, no ninja, a failed build)
        logger.warning("fused compact remap not built (%s); the torch ops run instead", error)
        return None


def _cpu_tag() -> str:
    """A short digest of this CPU's model and instruction-set flags (``/proc/cpuinfo``;
    the machine name where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "vendor_id"))]
        text = "".join(sorted(set(lines)))
    except OSError:
        text = platform.machine() + platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def available() -> bool:
    """Whether the fused kernel is built (building it on first call)."""
    return _module() is not None


@torch.jit.unused
def compact_lookup(
    ids_C: torch.Tensor,
    j_C: torch.Tensor,
    key_offset_J: torch.Tensor,
    compact: list[torch.Tensor],
) -> torch.Tensor | None:
    """Head row or tail row of every id, as int64 ``(C,)``, or None where the kernel does
    not apply (not built, not CPU, ids not int64, head rows neither int16 nor int32).

    Args:
        ids_C: int64 raw ids (in range), shape ``(C,)``.
        j_C: the internal feature of each id, int32 or int64 ``(C,)``.
        key_offset_J: each internal feature's key offset (guarded), shape ``(J,)``.
        compact: the remap's compact buffers (see
            :func:`~torchrec_lhf.modules.remap_ops.remap_values`).
    """
    slot_keys_S, slot_rows_S, seed_J, tail_offset_J, tail_rows_J = compact[:5]
    if ids_C.device.type != "cpu" or ids_C.dtype != torch.int64:
        return None
    if slot_rows_S.numel() > 0 and slot_rows_S.dtype not in (torch.int16, torch.int32):
        return None
    module = _module()
    if module is None:
        return None
    return module.compact_lookup(
        ids_C.contiguous(),
        j_C.contiguous(),
        seed_keys(seed_J),
        tail_rows_J.long().contiguous(),
        tail_offset_J.long().contiguous(),
        key_offset_J.long().contiguous(),
        slot_keys_S,
        slot_rows_S,
    )


@torch.jit.unused
def fused_remap(
    ids_P: torch.Tensor,
    length_J: list[int],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    compact: list[torch.Tensor],
) -> torch.Tensor | None:
    """Every id's row in one pass (range check or fold, then its feature's identity, dense
    or compact lookup), in the ids' dtype; None where the kernel does not apply (not built,
    not CPU, ids neither int32 nor int64, head rows neither int16 nor int32).

    Args:
        ids_P: raw ids laid out per internal feature, shape ``(P,)``.
        length_J: the ids of each internal feature (host ints, summing to ``P``).
        mapping, offset_J, height_J, modulo, compact: as for
            :func:`~torchrec_lhf.modules.remap_ops.remap_values`.

    Raises:
        RuntimeError: an id outside ``[0, N)`` (not ``modulo``), naming the internal
            feature's index and the id.
    """
    if ids_P.device.type != "cpu" or ids_P.dtype not in (torch.int32, torch.int64):
        return None
    empty = mapping.new_zeros(0, dtype=torch.long)
    tables: list[torch.Tensor] = [empty] * 6
    if len(compact) > 0:
        slot_keys_S, slot_rows_S, seed_J, tail_offset_J, tail_rows_J, compact_J = compact[:6]
        if slot_rows_S.numel() > 0 and slot_rows_S.dtype not in (torch.int16, torch.int32):
            return None
        tables = [slot_keys_S, slot_rows_S, seed_keys(seed_J), tail_offset_J, tail_rows_J]
        tables.append(compact_J)
    module = _module()
    if module is None:
        return None
    return module.fused_remap(
        ids_P.contiguous(), length_J, offset_J, height_J, mapping, *tables, modulo
    )
