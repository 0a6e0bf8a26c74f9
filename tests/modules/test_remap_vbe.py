"""A variable batch per feature (VBE) through the remap and the learned-hash collection."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

from tests._compact import to_compact
from tests._fixtures import three_tables, two_hash_plan
from tests._vbe import KEYS, vbe_batch
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.remap_ops import gather_runs


def _module(combine: str, encoding: str, weighted: bool = False):
    torch.manual_seed(0)
    plan = two_hash_plan(combine)
    if encoding != "dense":
        plan = to_compact(plan, ranked=encoding == "ranked")
    return LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan, is_weighted=weighted)


@pytest.mark.parametrize("read_lengths_on_cpu", [True, False])
@pytest.mark.parametrize("encoding", ["dense", "compact", "ranked"])
@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_vbe_equals_the_expanded_batch(
    combine: str, encoding: str, read_lengths_on_cpu: bool
) -> None:
    """Pooled outputs and the tables' gradients of a VBE batch equal those of the batch
    with every sample's bags written out (``read_lengths_on_cpu=False``: the device path)."""
    module = _module(combine, encoding, weighted=True)
    module.remap.read_lengths_on_cpu = read_lengths_on_cpu
    vbe, full = vbe_batch(seed=3, batch=5, weighted=True)
    out, expected = module(vbe), module(full)
    assert out.keys() == expected.keys() == ["f0", "f1", "f2", "f3"]
    torch.testing.assert_close(out.values(), expected.values())

    w = torch.linspace(-1, 1, out.values().shape[1])
    grads = []
    for pooled in (out, expected):
        module.zero_grad()
        (pooled.values() * w).sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_internal_features_carry_each_sources_batch() -> None:
    """Each internal feature takes its source's batch size and inverse indices, keyed by
    the internal name (as TorchRec's EBC looks them up)."""
    module = _module("sum", "compact")
    vbe, _ = vbe_batch(seed=1, batch=4)
    internal = module.remap(vbe)
    sources = module.remap.sources
    strides = dict(zip(vbe.keys(), vbe.stride_per_key()))
    assert internal.variable_stride_per_key()
    assert internal.stride_per_key() == [strides[s] for s in sources]
    names, inverse = internal.inverse_indices()
    assert names == internal.keys() == module.remap.feature_names
    assert "f2__h1" in names  # t1 has two hash functions
    for j, source in enumerate(sources):
        torch.testing.assert_close(inverse[j], vbe.inverse_indices()[1][KEYS.index(source)])
    # each internal feature's bags are its source's
    source_lengths = vbe.to_dict()
    for name, source in zip(names, sources):
        torch.testing.assert_close(
            internal.to_dict()[name].lengths(), source_lengths[source].lengths()
        )


def test_gather_runs_by_hand() -> None:
    data = torch.tensor([10, 11, 12, 20, 30, 31])  # runs of 3, 1, 2
    src = [2, 0, 2, 1]
    got = gather_runs(data, [3, 1, 2], src, torch.tensor(src))
    assert got.tolist() == [30, 31, 10, 11, 12, 30, 31, 20]
    assert gather_runs(data, [3, 1, 2], [], torch.zeros(0, dtype=torch.long)).tolist() == []


def _vbe_like(vbe: KeyedJaggedTensor, **changes) -> KeyedJaggedTensor:
    """``vbe`` (a VBE batch without weights) with some of its fields changed."""
    fields = dict(
        keys=vbe.keys(),
        values=vbe.values(),
        lengths=vbe.lengths(),
        stride_per_key_per_rank=vbe.stride_per_key_per_rank(),
        inverse_indices=vbe.inverse_indices(),
    )
    return KeyedJaggedTensor(**{**fields, **changes})


def test_vbe_without_inverse_indices_is_refused() -> None:
    module = _module("sum", "dense")
    vbe, _ = vbe_batch(seed=0)
    bare = _vbe_like(vbe, inverse_indices=None)
    with pytest.raises(ValueError, match=r"variable batch per feature .* but no inverse_indices"):
        module(bare)


def test_vbe_inverse_indices_missing_a_feature_are_refused() -> None:
    module = _module("sum", "dense")
    vbe, _ = vbe_batch(seed=0)
    short = _vbe_like(vbe, inverse_indices=(["f3", "f0", "f1"], vbe.inverse_indices()[1][:3]))
    with pytest.raises(ValueError, match=r"not 'f2': expected every feature"):
        module(short)


def test_negative_length_in_a_vbe_batch_names_its_feature_and_sample() -> None:
    """The message counts samples in each feature's own batch (f3: 3 bags, f0: 2)."""
    module = _module("sum", "dense")
    vbe, _ = vbe_batch(seed=0, batch=3)
    lengths = vbe.lengths().clone()
    lengths[4], lengths[3] = -1, lengths[3] + lengths[4] + 1  # f0's second bag
    bad = _vbe_like(vbe, lengths=lengths)
    with pytest.raises(ValueError, match=r"lengths\[4\] = -1 \(feature 'f0', sample 1\)"):
        module(bad)


@pytest.mark.parametrize("encoding", ["dense", "compact"])
def test_vbe_traced_and_scripted(encoding: str) -> None:
    """As served: TorchRec's symbolic trace, then TorchScript, of a VBE batch."""
    from torchrec.fx import symbolic_trace

    module = _module("sum", encoding)
    vbe, full = vbe_batch(seed=2, batch=4)
    expected = module(full).values()
    traced = symbolic_trace(module)
    torch.testing.assert_close(traced(vbe).values(), expected)
    torch.testing.assert_close(torch.jit.script(traced)(vbe).values(), expected)
