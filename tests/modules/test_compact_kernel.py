"""The fused compact lookup (torchrec_lhf.modules.compact_kernel): equal to the torch ops
on every id, used by the remap in eager CPU mode, and off when asked."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from torchrec_lhf.hashing import mix_keyed, seed_keys
from torchrec_lhf.modules import compact_kernel, head_table, remap_lookup

# where a C++ compiler and ninja exist, the kernel must build (no silent fallback)
CAN_BUILD = shutil.which("c++") is not None and importlib.util.find_spec("ninja") is not None


def _packed_table(
    seed: int = 0, packed: bool = True
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three compact features (heights 5,000 / 70,000 / 40) and their head table: packed,
    or int32 keys beside int16 rows."""
    g = torch.Generator().manual_seed(seed)
    heights = torch.tensor([5_000, 70_000, 40])
    offsets = torch.cumsum(heights, 0) - heights
    seeds = torch.tensor([11, 2**61 + 5, 0])
    rows = torch.tensor([600, 40_000, 7])
    keys, head_rows = [], []
    for t in range(3):
        head = torch.randperm(int(heights[t]), generator=g)[: int(heights[t]) // 4]
        keys.append(offsets[t] + head)
        head_rows.append(torch.randint(0, int(rows[t]) // 2, head.shape, generator=g))
    keys_K, rows_K = torch.cat(keys), torch.cat(head_rows)
    t_K = torch.searchsorted(offsets, keys_K, right=True) - 1
    x_K = mix_keyed(keys_K - offsets[t_K], seed_keys(seeds)[t_K])
    rows_dtype = torch.int32 if packed else torch.int16
    slot_keys, slot_rows = head_table.build(keys_K.int(), rows_K.to(rows_dtype), x_K)
    if packed:
        slot_keys, slot_rows = head_table.pack(slot_keys, slot_rows), slot_rows[:0]
    tail_offset = rows // 2
    compact = [
        slot_keys,
        slot_rows,
        seeds,
        tail_offset,
        rows - tail_offset,
        torch.ones(3, dtype=torch.bool),
    ]
    return compact, offsets, heights


def _ids(heights: torch.Tensor, per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    j = torch.randint(0, 3, (per,), generator=g)
    ids = (torch.rand(per, generator=g) * heights[j]).long()
    ids[:3] = 0  # the edges of each table
    ids[3:6] = heights[j[3:6]] - 1
    return ids, j


def _torch_ops(ids, j, offsets, compact):  # noqa: ANN001, ANN202
    key = ids + offsets.index_select(0, j)
    with _fused_off():
        return remap_lookup._compact_rows(ids, key, j, offsets, compact)


class _fused_off:
    def __enter__(self) -> None:
        self.saved = compact_kernel.compact_lookup
        remap_lookup.compact_kernel.compact_lookup = lambda *args: None

    def __exit__(self, *exc: object) -> None:
        remap_lookup.compact_kernel.compact_lookup = self.saved


@pytest.mark.skipif(not CAN_BUILD, reason="needs a C++ compiler and ninja to build the kernel")
@pytest.mark.parametrize("j_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("num", [0, 1, 31, 33, 20_000])  # below, at and across blocks of 32
def test_fused_lookup_equals_the_torch_ops(j_dtype: torch.dtype, num: int) -> None:
    assert compact_kernel.available()
    compact, offsets, heights = _packed_table()
    ids, j = _ids(heights, num, seed=num)
    fused = compact_kernel.compact_lookup(ids, j.to(j_dtype), offsets.int(), compact)
    assert fused is not None and fused.dtype == torch.int64
    expected = _torch_ops(ids, j, offsets, compact)
    assert torch.equal(fused, expected)
    # heads and tails both occur: head rows below each tail region, tails inside it
    if num == 20_000:
        in_tail = fused >= compact[3].index_select(0, j)
        assert bool(in_tail.any()) and bool((~in_tail).any())


@pytest.mark.skipif(not CAN_BUILD, reason="needs a C++ compiler and ninja to build the kernel")
def test_remap_uses_it_in_eager_cpu_mode_and_scripting_does_not() -> None:
    compact, offsets, heights = _packed_table(1)
    ids, j = _ids(heights, 1000, seed=3)
    calls = []
    saved = compact_kernel.compact_lookup

    def counting(*args):  # noqa: ANN002, ANN202
        calls.append(1)
        return saved(*args)

    remap_lookup.compact_kernel.compact_lookup = counting
    try:
        eager = remap_lookup._compact_rows(ids, None, j, offsets, compact)
    finally:
        remap_lookup.compact_kernel.compact_lookup = saved
    assert calls == [1]
    scripted = torch.jit.script(remap_lookup._compact_rows)
    assert torch.equal(scripted(ids, None, j, offsets, compact), eager)


def test_int64_rows_and_the_off_switch_take_the_torch_ops(monkeypatch) -> None:  # noqa: ANN001
    compact, offsets, heights = _packed_table()
    ids, j = _ids(heights, 100, seed=0)
    keys, rows = head_table.unpack(compact[0])
    unpacked = [keys, rows.long(), *compact[2:]]  # int64 rows: no kernel
    assert compact_kernel.compact_lookup(ids, j, offsets, unpacked) is None
    monkeypatch.setenv(compact_kernel.ENV_FLAG, "0")
    compact_kernel._module.cache_clear()
    try:
        assert not compact_kernel.available()
        assert compact_kernel.compact_lookup(ids, j, offsets, compact) is None
        assert torch.equal(
            remap_lookup._compact_rows(ids, None, j, offsets, compact),
            _torch_ops(ids, j, offsets, compact),
        )
    finally:
        compact_kernel._module.cache_clear()
