"""The remap module (torchrec_lhf/modules/remap.py): the combine of internal pooled embeddings
and the range check for lookups that remap raw ids themselves, by hand."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
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


def _two_table_remap(policy: str):  # t0 (40 ids) compressed, t1 (30 ids) not
    tables = [
        EmbeddingBagConfig(name=n, embedding_dim=2, num_embeddings=h, feature_names=[f])
        for n, h, f in (("t0", 40, "f0"), ("t1", 30, "f1"))
    ]
    plan = HashPlan.from_mappings({"t0": torch.arange(40) % 9})
    return LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, out_of_range=policy).remap


@pytest.mark.parametrize("kernel", [True, False])
def test_check_ids_passes_the_ids_on_checked(kernel: bool) -> None:
    """For a lookup that remaps raw ids itself (FBGEMM's, in the served dense model): the
    ids unchanged, keyed by the internal features (an extra key dropped), or the feature,
    the id and N of one out of range; ``modulo`` folds them. CPU kernel and torch ops."""
    remap = _two_table_remap("error")
    remap.read_lengths_on_cpu = kernel
    values = torch.tensor([0, 39, 7, 3, 29, 5, 5])
    lengths = torch.tensor([1, 2, 1, 2, 1, 0])  # f0: 2 samples, f1, then "extra"
    kjt = KeyedJaggedTensor(["f0", "f1", "extra"], values, lengths=lengths)
    out = remap.check_ids(kjt)
    assert out.keys() == ["f0", "f1"]
    assert out.values().tolist() == [0, 39, 7, 3, 29, 5]
    assert out.lengths().tolist() == [1, 2, 1, 2]
    for at, bad, feature, height in ((1, 40, "f0", 40), (4, 30, "f1", 30), (3, -1, "f1", 30)):
        wrong = values.clone()
        wrong[at] = bad
        with pytest.raises(
            ValueError, match=rf"feature '{feature}': id {bad} is out of range \[0, {height}\)"
        ):
            remap.check_ids(KeyedJaggedTensor(["f0", "f1", "extra"], wrong, lengths=lengths))
    folding = _two_table_remap("modulo")
    folding.read_lengths_on_cpu = kernel
    ids = torch.tensor([40, -1, 7, 30, 61])
    out = folding.check_ids(
        KeyedJaggedTensor(["f0", "f1"], ids, lengths=torch.tensor([1, 2, 1, 1]))
    )
    assert out.values().tolist() == [0, 39, 7, 0, 1]
