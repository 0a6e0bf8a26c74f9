"""The remap's layout (torchrec_lhf.modules.remap_layout): buffer widths, packing, names."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.modules.remap_layout import (
    MappingPacker,
    check_internal_names,
    hashed_name,
    mapping_dtype,
)
from torchrec_lhf.plan_compact import CompactMapping, dense_width


@pytest.mark.parametrize(
    ("height", "dtype"),
    [(1, torch.uint8), (256, torch.uint8), (257, torch.int16), (2**15, torch.int16),
     (2**15 + 1, torch.int32)],
)  # fmt: skip
def test_mapping_dtype_is_the_narrowest_for_the_rows(height: int, dtype: torch.dtype) -> None:
    assert mapping_dtype(height) == dtype
    assert dense_width(height) == dtype.itemsize  # what the byte budgets count


def test_packer_gives_offsets_and_one_buffer_per_encoding() -> None:
    packer = MappingPacker()
    assert packer.add(torch.tensor([2, 0, 1], dtype=torch.int32), 3, 3) == (0, None)
    head = CompactMapping(
        torch.tensor([1, 4]), torch.tensor([0, 1], dtype=torch.int16),
        tail_seed=7, tail_offset=2, tail_rows=3,
    )  # fmt: skip
    assert packer.add(head, 6, 5) == (0, (7, 2, 3))  # compact: its key offset, its tail
    assert packer.add(torch.tensor([0, 1], dtype=torch.int32), 2, 300) == (3, None)
    mapping, (keys, rows) = packer.buffers()
    # dense: one buffer, its width set by the largest dense height (300 rows: int16)
    assert mapping.dtype == torch.int16 and mapping.tolist() == [2, 0, 1, 0, 1]
    assert keys.dtype == torch.int32 and keys.tolist() == [1, 4]
    assert rows.dtype == torch.int16 and rows.tolist() == [0, 1]
    only_small = MappingPacker()
    only_small.add(torch.tensor([5, 9], dtype=torch.int32), 2, 10)
    small, none = only_small.buffers()
    assert small.dtype == torch.uint8 and small.tolist() == [5, 9] and none is None


def test_internal_names_that_would_clash_are_named() -> None:
    assert hashed_name("t", 1, 2) == "t__h1" and hashed_name("t", 0, 1) == "t"
    check_internal_names([("t", ["f"], 2), ("u", ["g"], 1)])  # no clash
    with pytest.raises(ValueError, match=r"internal table name 't__h0' clashes: hash 0 of"):
        check_internal_names([("t", ["f"], 2), ("t__h0", ["g"], 1)])
    with pytest.raises(ValueError, match=r"internal feature name 'f__h1' clashes"):
        check_internal_names([("t", ["f"], 2), ("u", ["f__h1"], 1)])
