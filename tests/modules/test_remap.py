"""The combine of internal pooled embeddings, by hand (torchrec_lhf/modules/remap.py)."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_lhf.modules.combine import KeyedTensorCombine


def _combine() -> KeyedTensorCombine:
    # logical "a" = a__h0 + a__h1 (dims 2), logical "b" = b (dim 1)
    return KeyedTensorCombine(
        ["a__h0", "a__h1", "b"],
        [2, 2, 1],
        ["a", "b"],
        [2, 1],
        [(["a__h0", "a__h1"], "sum"), (["b"], "sum")],
    )


def test_combine_by_hand() -> None:
    kt = KeyedTensor(["a__h0", "a__h1", "b"], [2, 2, 1], torch.tensor([[1.0, 2, 10, 20, 5]]))
    out = _combine()(kt)
    assert out.keys() == ["a", "b"] and out.values().tolist() == [[11.0, 22.0, 5.0]]


def test_combine_follows_another_input_order() -> None:
    # a sharded collection may return the internal embeddings grouped by rank
    reordered = _combine().for_input_order(["b", "a__h1", "a__h0"], [1, 2, 2])
    kt = KeyedTensor(["b", "a__h1", "a__h0"], [1, 2, 2], torch.tensor([[5.0, 10, 20, 1, 2]]))
    assert reordered(kt).values().tolist() == [[11.0, 22.0, 5.0]]
    with pytest.raises(ValueError, match="not a reordering"):
        _combine().for_input_order(["b", "a__h0"], [1, 2])
