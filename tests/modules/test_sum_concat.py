"""The ``sum_concat`` combine (columns of summed internal tables, concatenated): the plan's
validation and dims, the combine by hand, and a collection built with it."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import KeyedTensor

from tests._fixtures import three_tables
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.modules.combine import KeyedTensorCombine


def _mappings(n: int, heights: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, m, (n,), generator=g, dtype=torch.int32) for m in heights)


def test_table_hash_checks_and_splits_the_columns() -> None:
    heights = (3, 2, 4, 2)
    t = TableHash("t", 6, _mappings(6, heights), heights, "sum_concat", 2)
    assert t.internal_dims(8) == [4, 4, 4, 4]
    assert t.internal_dims(10) == [5, 5, 5, 5]
    eight = TableHash("t", 6, _mappings(6, heights * 2), heights * 2, "sum_concat", 4)
    assert eight.internal_dims(10) == [3, 3, 3, 3, 2, 2, 2, 2]  # columns of 3, 3, 2, 2
    with pytest.raises(ValueError, match="num_columns=3 needs combine 'sum_concat'"):
        TableHash("t", 6, _mappings(6, heights), heights, "sum_concat", 3)
    with pytest.raises(ValueError, match="num_columns=2 needs combine 'sum_concat'"):
        TableHash("t", 6, _mappings(6, heights), heights, "sum", 2)
    with pytest.raises(ValueError, match="num_columns must be an int >= 1, got 0"):
        TableHash("t", 6, _mappings(6, heights), heights, "sum_concat", 0)
    with pytest.raises(ValueError, match="sum_concat of 4 parts needs embedding_dim >= 4"):
        eight.internal_dims(3)


def test_plan_round_trip_keeps_the_columns(tmp_path) -> None:
    heights = (3, 2, 4, 2)
    two = TableHash("t", 6, _mappings(6, heights), heights, "sum_concat", 2)
    plan = HashPlan([two, TableHash("u", 5, _mappings(5, (2,)), (2,))])
    plan.save(tmp_path / "p.safetensors")
    loaded = HashPlan.load(tmp_path / "p.safetensors")
    assert loaded == plan and loaded["t"].num_columns == 2 and loaded["u"].num_columns == 1
    four = HashPlan([TableHash("t", 6, two.mappings, heights, "sum_concat", 4), plan["u"]])
    assert four != plan and four.fingerprint() != plan.fingerprint()


def test_combine_by_hand() -> None:
    # a: columns (a0 + a1 | a2 + a3) of dims 2 and 1; b: plain sum of b0 + b1 (dim 1)
    keys = ["a__h0", "a__h1", "a__h2", "a__h3", "b__h0", "b__h1"]
    dims = [2, 2, 1, 1, 1, 1]
    sources = [(keys[:4], "sum_concat"), (keys[4:], "sum")]
    combine = KeyedTensorCombine(keys, dims, ["a", "b"], [3, 1], sources)
    values = torch.tensor([[1.0, 2, 10, 20, 100, 1000, 7, 70]])
    out = combine(KeyedTensor(keys, dims, values))
    assert out.values().tolist() == [[11.0, 22.0, 1100.0, 77.0]]
    # the same with the internal embeddings in another order (a sharded collection's)
    order = [5, 2, 0, 4, 3, 1]
    shuffled = combine.for_input_order([keys[i] for i in order], [dims[i] for i in order])
    kt = KeyedTensor(
        [keys[i] for i in order], [dims[i] for i in order], _reorder(values, dims, order)
    )
    assert shuffled(kt).values().tolist() == [[11.0, 22.0, 1100.0, 77.0]]
    with pytest.raises(ValueError, match="does not form columns"):
        KeyedTensorCombine(keys[:4], [2, 1, 1, 1], ["a"], [3], [(keys[:4], "sum_concat")])


def _reorder(values: torch.Tensor, dims: list[int], order: list[int]) -> torch.Tensor:
    starts = [sum(dims[:i]) for i in range(len(dims))]
    return torch.cat([values[:, starts[i] : starts[i] + dims[i]] for i in order], dim=1)


def test_collection_with_sum_concat_by_hand() -> None:
    torch.manual_seed(0)
    heights = (5, 3, 4, 2)
    plan = HashPlan([TableHash("t0", 40, _mappings(40, heights, 1), heights, "sum_concat", 2)])
    ebc = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan)
    assert [ebc.embedding_bags[f"t0__h{h}"].weight.shape for h in range(4)] == [
        (m, 4) for m in heights
    ]
    ids = torch.arange(40)
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1", "f2", "f3"],
        values=torch.cat([ids, ids, torch.zeros(40, dtype=torch.long), ids % 12]),
        lengths=torch.ones(160, dtype=torch.long),
    )
    out = ebc(kjt).to_dict()["f0"]
    w = [ebc.embedding_bags[f"t0__h{h}"].weight.detach() for h in range(4)]
    m = [plan["t0"].dense_mapping(h).long() for h in range(4)]
    expected = torch.cat([w[0][m[0]] + w[1][m[1]], w[2][m[2]] + w[3][m[3]]], dim=1)
    torch.testing.assert_close(out.detach(), expected)
