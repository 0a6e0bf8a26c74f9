"""``torch.compile`` of the learned-hash collections: the remap traces through the kernel's
operators (their shape functions), with no Python cache and no host read where the batch
is in the module's layout, so it breaks the graph no more than TorchRec's own collection
does, and the compiled modules equal the eager ones."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from tests._compact import to_compact
from tests._fixtures import sequence_batch, sequence_tables, three_tables, two_hash_plan
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, LearnedHashEmbeddingCollection
from torchrec_lhf.compression.methods import memrec_plan, qr_plan


def _plan(encoding: str) -> HashPlan:
    if encoding == "memrec":
        return memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3)
    if encoding == "qr":  # divided tails
        return qr_plan({"t0": 40, "t1": 30}, fraction=0.4, combine="sum")
    plan = two_hash_plan("sum")
    return plan if encoding == "dense" else to_compact(plan, ranked=encoding == "ranked")


def _batch(seed: int, weighted: bool) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    keys, heights = ["f3", "f0", "f1", "f2"], [12, 40, 40, 30]
    lengths = torch.randint(0, 4, (4, 3), generator=g)
    values = torch.cat(
        [torch.randint(0, h, (int(lengths[i].sum()),), generator=g) for i, h in enumerate(heights)]
    )
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten(), weights=weights)


def _breaks(module: torch.nn.Module, kjt: KeyedJaggedTensor) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(module)(kjt).graph_break_count


@pytest.mark.parametrize("encoding", ["dense", "compact", "ranked", "memrec", "qr"])
def test_the_remap_compiles_and_equals_eager(encoding: str) -> None:
    torch.manual_seed(0)
    weighted = encoding == "compact"
    ebc = LearnedHashEmbeddingBagCollection(
        tables=three_tables(), plan=_plan(encoding), is_weighted=weighted
    )
    # no more breaks than TorchRec's own collection (its host read of the per-key lengths,
    # which a batch needs where a table has two hash functions or the keys are reordered);
    # before, the pybind kernel, its loader and the cached layouts broke it 4 to 5 times
    plain = EmbeddingBagCollection(tables=three_tables(), is_weighted=weighted)
    assert _breaks(ebc.remap, _batch(0, weighted)) <= _breaks(plain, _batch(0, weighted))
    compiled = torch.compile(ebc)
    for seed in (1, 2):  # a second batch of other lengths reuses or recompiles the graph
        kjt = _batch(seed, weighted)
        torch.testing.assert_close(compiled(kjt).values(), ebc(kjt).values(), rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("ranked", [False, True])
def test_a_batch_in_the_modules_layout_remaps_in_one_graph(ranked: bool) -> None:
    """One hash function a table and the batch's keys in the tables' order (DLRM's layout):
    the kernel's operator alone, no host read, no graph break."""
    ids = torch.arange(40)
    plan = HashPlan.from_mappings({"t0": ids % 7, "t1": ids[:30] % 5})
    ebc = LearnedHashEmbeddingBagCollection(
        tables=three_tables(), plan=to_compact(plan, ranked=True) if ranked else plan
    )
    kjt = _batch(0, False)
    in_order = KeyedJaggedTensor.from_jt_dict({k: kjt[k] for k in ("f0", "f1", "f2", "f3")})
    assert _breaks(ebc.remap, in_order) == 0
    torch._dynamo.reset()


def test_the_sequence_collection_compiles_and_equals_eager() -> None:
    torch.manual_seed(0)
    ec = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=_plan("ranked"))
    torch._dynamo.reset()
    compiled = torch.compile(ec)
    kjt = sequence_batch(4)
    expected = ec(kjt)
    got = compiled(kjt)
    assert list(got) == list(expected)
    for f, jt in expected.items():
        torch.testing.assert_close(got[f].values(), jt.values(), rtol=0, atol=0)
    torch._dynamo.reset()


def test_compiled_remap_refuses_an_id_out_of_range() -> None:
    ebc = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=_plan("ranked"))
    torch._dynamo.reset()
    compiled = torch.compile(ebc)
    kjt = _batch(0, False)
    values = kjt.values().clone()
    values[-1] = 30  # f2's table has 30 ids
    bad = KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=kjt.lengths())
    # the operator's error, as scripted (the eager remap's ValueError names the feature)
    with pytest.raises(RuntimeError, match=r"internal feature 2: id 30 is out of range \[0, 30\)"):
        compiled(bad)
    torch._dynamo.reset()
