"""The remap's layout (torchrec_lhf.modules.remap_layout): buffer widths, packing, names."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig, EmbeddingConfig

from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.embedding import LearnedHashEmbeddingCollection
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


@pytest.mark.parametrize("name", ["", "a.b"])
def test_a_table_name_that_cannot_name_a_module_is_named(name: str) -> None:
    """Before, the learned-hash collections failed in ``nn.ModuleDict`` with a KeyError
    ("module name can't contain '.'") for an uncompressed table of such a name."""
    match = rf"table name must be a non-empty string without '\.' .*, got '{name}'"
    with pytest.raises(ValueError, match=match):
        check_internal_names([("t", ["f"], 1), (name, ["g"], 1)])
    plan = HashPlan.from_mappings({"t": torch.tensor([0, 1, 0])})
    bag = [EmbeddingBagConfig(name=n, embedding_dim=4, num_embeddings=3, feature_names=[f])
           for n, f in (("t", "f"), (name, "g"))]  # fmt: skip
    with pytest.raises(ValueError, match=match):
        LearnedHashEmbeddingBagCollection(tables=bag, plan=plan)
    seq = [EmbeddingConfig(name=c.name, embedding_dim=4, num_embeddings=3,
                           feature_names=c.feature_names) for c in bag]  # fmt: skip
    with pytest.raises(ValueError, match=match):
        LearnedHashEmbeddingCollection(tables=seq, plan=plan)
