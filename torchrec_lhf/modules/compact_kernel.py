"""The compact lookup as one fused CPU kernel: hash, tail row and cuckoo probes in one pass.

The torch ops of :func:`~torchrec_lhf.modules.remap_lookup._compact_rows` make about 25
passes over a batch's ids (the SplitMix64 finalizer, the tail's remainder, three probe
windows, the packed table's reads, the select): on CPU most of the compact remap's time is
memory traffic between them. This kernel does the same integer arithmetic per id in one
loop (``at::parallel_for`` over the ids), so each id is read once and its row written once.
Every result equals the torch ops' (``tests/modules/test_compact_kernel.py``).

It is built once per machine from the source below with the C++ compiler torch's
``cpp_extension`` uses (``torch.utils.cpp_extension.load_inline``, cached under
``TORCH_EXTENSIONS_DIR``), on first use, and used in eager CPU mode only, for packed head
tables (int32 keys and rows). Where it cannot be built (no compiler, no ninja) or does not
apply (CUDA, TorchScript, an unpacked table), the torch ops run: nothing else changes. Set
``TORCHREC_LHF_FUSED_REMAP=0`` to turn it off.

Legend:
    C   ids looked up;  J internal features;  S slots of the packed cuckoo table
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from torchrec_lhf.hashing import seed_keys

logger = logging.getLogger(__name__)

ENV_FLAG = "TORCHREC_LHF_FUSED_REMAP"

# NOTE: the arithmetic is the torch ops' exactly: int64 values that wrap modulo 2**64
# (done in uint64), logical right shifts where torchrec_lhf.hashing masks them, arithmetic
# ones where head_table shifts a signed value.
_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>

// ids are taken in blocks: the first pass hashes a block and prefetches its probes' slots
// (three random reads per id into a table that a training step has evicted from the
// caches), the second reads them: the reads of a block overlap instead of stalling in turn.
constexpr int64_t kBlock = 32;

template <typename J>
static void lookup_loop(
    const int64_t* ids, const J* feature, const int64_t* seed_key, const int64_t* tail_rows,
    const int64_t* tail_offset, const int64_t* key_offset, const int64_t* entries,
    int64_t num_slots, int64_t* out, int64_t n) {
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    uint64_t xs[kBlock];
    uint64_t slots[3 * kBlock];
    const uint64_t s = static_cast<uint64_t>(num_slots);
    for (int64_t start = begin; start < end; start += kBlock) {
      const int64_t count = end - start < kBlock ? end - start : kBlock;
      for (int64_t b = 0; b < count; ++b) {
        const int64_t i = start + b;
        uint64_t x = static_cast<uint64_t>(ids[i]) +
            static_cast<uint64_t>(seed_key[static_cast<int64_t>(feature[i])]);
        x ^= x >> 30;
        x *= 0xBF58476D1CE4E5B9ULL;
        x ^= x >> 27;
        x *= 0x94D049BB133111EBULL;
        x ^= x >> 31;
        xs[b] = x;
        slots[3 * b] = ((x & 0xFFFFFFFFULL) * s) >> 32;
        slots[3 * b + 1] = (((x >> 32) & 0xFFFFFFFFULL) * s) >> 32;
        slots[3 * b + 2] = (((x >> 16) & 0xFFFFFFFFULL) * s) >> 32;
        __builtin_prefetch(entries + slots[3 * b]);
        __builtin_prefetch(entries + slots[3 * b + 1]);
        __builtin_prefetch(entries + slots[3 * b + 2]);
      }
      for (int64_t b = 0; b < count; ++b) {
        const int64_t i = start + b;
        const int64_t j = static_cast<int64_t>(feature[i]);
        const uint64_t x = xs[b];
        const int64_t tail = static_cast<int64_t>(x >> 2) % tail_rows[j] + tail_offset[j];
        const uint64_t probe_key =
            (static_cast<uint64_t>(ids[i]) + static_cast<uint64_t>(key_offset[j])) << 32;
        const int64_t d0 = static_cast<int64_t>(static_cast<uint64_t>(entries[slots[3 * b]]) ^ probe_key);
        const int64_t d1 = static_cast<int64_t>(static_cast<uint64_t>(entries[slots[3 * b + 1]]) ^ probe_key);
        const int64_t d2 = static_cast<int64_t>(static_cast<uint64_t>(entries[slots[3 * b + 2]]) ^ probe_key);
        int64_t m = d0 < d1 ? d0 : d1;
        m = m < d2 ? m : d2;
        const int64_t mask = ((m >> 32) - 1) >> 63;
        out[i] = ((m ^ tail) & mask) ^ tail;
      }
    }
  });
}

torch::Tensor compact_lookup(
    torch::Tensor ids, torch::Tensor feature, torch::Tensor seed_key, torch::Tensor tail_rows,
    torch::Tensor tail_offset, torch::Tensor key_offset, torch::Tensor entries) {
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == torch::kInt64 && ids.is_contiguous());
  TORCH_CHECK(feature.numel() == ids.numel() && feature.is_contiguous());
  TORCH_CHECK(entries.scalar_type() == torch::kInt64 && entries.numel() > 0);
  for (const auto& t : {seed_key, tail_rows, tail_offset, key_offset}) {
    TORCH_CHECK(t.scalar_type() == torch::kInt64 && t.is_contiguous());
  }
  auto out = torch::empty_like(ids);
  const int64_t n = ids.numel();
  if (feature.scalar_type() == torch::kInt32) {
    lookup_loop<int32_t>(ids.data_ptr<int64_t>(), feature.data_ptr<int32_t>(),
        seed_key.data_ptr<int64_t>(), tail_rows.data_ptr<int64_t>(),
        tail_offset.data_ptr<int64_t>(), key_offset.data_ptr<int64_t>(),
        entries.data_ptr<int64_t>(), entries.numel(), out.data_ptr<int64_t>(), n);
  } else {
    TORCH_CHECK(feature.scalar_type() == torch::kInt64);
    lookup_loop<int64_t>(ids.data_ptr<int64_t>(), feature.data_ptr<int64_t>(),
        seed_key.data_ptr<int64_t>(), tail_rows.data_ptr<int64_t>(),
        tail_offset.data_ptr<int64_t>(), key_offset.data_ptr<int64_t>(),
        entries.data_ptr<int64_t>(), entries.numel(), out.data_ptr<int64_t>(), n);
  }
  return out;
}
"""


@functools.lru_cache(maxsize=1)
def _module():  # noqa: ANN202
    """The built extension, or None where it cannot be built or is turned off."""
    if os.environ.get(ENV_FLAG, "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(
            name="torchrec_lhf_compact_lookup_v2",
            cpp_sources=_SOURCE,
            functions=["compact_lookup"],
            extra_cflags=["-O3"],
            verbose=False,
        )
    except Exception as error:  # noqa: BLE001 (no compiler, no ninja, a failed build)
        logger.warning("fused compact remap not built (%s); the torch ops run instead", error)
        return None


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
    not apply (not built, not CPU, a table that is not packed).

    Args:
        ids_C: int64 raw ids (in range), shape ``(C,)``.
        j_C: the internal feature of each id, int32 or int64 ``(C,)``.
        key_offset_J: each internal feature's key offset (guarded), shape ``(J,)``.
        compact: the remap's compact buffers (see
            :func:`~torchrec_lhf.modules.remap_ops.remap_values`).
    """
    slot_keys_S, slot_rows_S, seed_J, tail_offset_J, tail_rows_J = compact[:5]
    packed = slot_rows_S.numel() == 0 and slot_keys_S.numel() > 0
    if not packed or ids_C.device.type != "cpu" or ids_C.dtype != torch.int64:
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
    )
