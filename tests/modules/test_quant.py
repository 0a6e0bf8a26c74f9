"""Quantized learned-hash EBC: same remap, output close to the float module's."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.fx import symbolic_trace
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import MODULE_ATTR_REGISTER_TBES_BOOL

from tests._fixtures import sequence_batch, sequence_tables, three_tables, two_hash_plan
from tests._vbe import vbe_batch
from torchrec_lhf import (
    HashPlan,
    LearnedHashEmbeddingBagCollection,
    LearnedHashEmbeddingCollection,
    apply_hash_plan,
)
from torchrec_lhf.compression.methods import memrec_plan
from torchrec_lhf.modules.quant import (
    QuantLearnedHashEmbeddingBagCollection,
    QuantLearnedHashEmbeddingCollection,
    quantize_learned_hash,
)


def _setup(combine: str) -> tuple[LearnedHashEmbeddingBagCollection, KeyedJaggedTensor]:
    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(
            name="t0", embedding_dim=8, num_embeddings=50, feature_names=["f0", "f1"]
        ),
        EmbeddingBagConfig(name="t1", embedding_dim=8, num_embeddings=20, feature_names=["f2"]),
    ]
    plan = HashPlan.from_multi_mappings(
        {"t0": [torch.arange(50) % 9, (torch.arange(50) * 7) % 5]}, combine=combine
    )
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1", "f2"],
        values=torch.randint(0, 20, (30,)),
        lengths=torch.tensor([3, 2, 5, 4, 6, 0, 1, 5, 4]),
    )
    return ebc, kjt


def test_quantized_output_close_to_float() -> None:
    for combine in ("sum", "concat"):
        ebc, kjt = _setup(combine)
        q = quantize_learned_hash(ebc, dtype=torch.qint8)
        assert isinstance(q, QuantLearnedHashEmbeddingBagCollection)
        assert torch.equal(q.remap.mapping, ebc.remap.mapping)
        expected, got = ebc(kjt), q(kjt)
        assert got.keys() == expected.keys()
        # int8 rowwise quantization: error bounded by a fraction of the weight range
        err = (got.values() - expected.values()).abs().max().item()
        assert err < 0.02, err
        assert not torch.equal(got.values(), expected.values())  # it really is quantized


def test_quantize_inside_dlrm() -> None:
    tables = [
        EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=30, feature_names=["f0"])
    ]
    model = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables),
        dense_in_features=2,
        dense_arch_layer_sizes=[4],
        over_arch_layer_sizes=[4, 1],
    )
    apply_hash_plan(model, HashPlan.from_mappings({"t0": torch.arange(30) % 6}))
    q = quantize_learned_hash(model)
    assert isinstance(
        q.sparse_arch.embedding_bag_collection, QuantLearnedHashEmbeddingBagCollection
    )
    kjt = KeyedJaggedTensor(
        keys=["f0"], values=torch.tensor([1, 29, 7]), lengths=torch.tensor([2, 1])
    )
    dense = torch.randn(2, 2)
    torch.testing.assert_close(q(dense, kjt), model(dense, kjt), atol=0.02, rtol=0)


def test_quantized_two_hash_keeps_both_config_views() -> None:
    ebc, kjt = _setup("concat")
    # a from_float option set on the float module reaches TorchRec's from_float
    setattr(ebc, MODULE_ATTR_REGISTER_TBES_BOOL, True)
    q = quantize_learned_hash(ebc, dtype=torch.qint8)
    assert "tbes" in dict(q.named_modules())
    assert [c.name for c in q.embedding_bag_configs()] == ["t0", "t1"]
    assert [(c.name, c.embedding_dim) for c in q.internal_embedding_bag_configs()] == [
        ("t0__h0", 4),
        ("t0__h1", 4),
        ("t1", 8),
    ]
    assert q(kjt).keys() == ["f0", "f1", "f2"]


def test_quantized_refuses_a_variable_batch_per_feature() -> None:
    """TorchRec's quantized collection reads a VBE batch's offsets as garbage (FBGEMM's
    ``offsets size 14 is not equal to B (2) * T (5) + 1``): refused by name, eager and
    traced + scripted as served; the written-out batch is looked up as before."""
    float_module = LearnedHashEmbeddingBagCollection(
        tables=three_tables(), plan=two_hash_plan("sum")
    )
    quantized = quantize_learned_hash(torch.nn.Sequential(float_module))[0]
    vbe, full = vbe_batch(seed=2, batch=4)
    scripted = torch.jit.script(symbolic_trace(quantized))
    match = r"variable batch per feature \(VBE\), which TorchRec's quantized"
    with pytest.raises(ValueError, match=match):
        quantized(vbe)
    with pytest.raises(torch.jit.Error, match=match):
        scripted(vbe)
    torch.testing.assert_close(scripted(full).values(), quantized(full).values())


@pytest.mark.parametrize("encoding", ["sum", "memrec"])
def test_quantized_sequence_collection(encoding: str) -> None:
    """The learned-hash EmbeddingCollection quantizes to its twin (int8 close to float,
    fp16 closer), keeps both config views, traces and scripts equal to eager, and refuses
    a variable batch per feature by name."""
    torch.manual_seed(0)
    plan = (
        two_hash_plan("sum")
        if encoding == "sum"
        else memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3)
    )
    float_module = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan)
    kjt = sequence_batch(2)
    expected = float_module(kjt)
    for dtype, atol in ((torch.qint8, 0.01), (torch.float16, 0.001)):
        quantized = quantize_learned_hash(float_module, dtype=dtype)
        assert type(quantized) is QuantLearnedHashEmbeddingCollection
        got = quantized(kjt)
        assert sorted(got) == sorted(expected)
        for f, jt in expected.items():
            torch.testing.assert_close(got[f].values(), jt.values(), atol=atol, rtol=0)
            assert torch.equal(got[f].lengths(), jt.lengths())
    assert [c.name for c in quantized.embedding_configs()] == ["t0", "t1", "t2"]
    assert quantized.embedding_names_by_table() == [["f0", "f1"], ["f2"], ["f3"]]
    internal = [c.name for c in quantized.internal_embedding_configs()]
    assert internal == [c.name for c in float_module.internal_embedding_configs()]
    scripted = torch.jit.script(symbolic_trace(quantized))
    for f, jt in quantized(kjt).items():
        assert torch.equal(scripted(kjt)[f].values(), jt.values())
    vbe, _ = vbe_batch(seed=2, batch=4)
    with pytest.raises(ValueError, match=r"variable batch per feature \(VBE\), which TorchRec's"):
        quantized(vbe)


@pytest.mark.parametrize(
    ("combine", "weighted"), [("sum", False), ("concat", False), ("sum", True)]
)
def test_quantized_with_sum_and_mean_tables_interleaved(combine: str, weighted: bool) -> None:
    """TorchRec's quantized EBC groups its tables by pooling type, so with a SUM, a MEAN and
    a SUM table its output keys come out of the configs' order. The combine read them in
    that order before: every feature after the MEAN table got another's columns (fp32
    rows: off by up to 0.71 here). Now each feature equals the float module's, eager and
    scripted."""
    import dataclasses

    from torchrec.modules.embedding_configs import PoolingType

    torch.manual_seed(0)
    # (PyTorch's float bags take per-id weights with SUM only: the weighted case reads the
    # quantized EBC's order of weighted tables, all SUM)
    mean = PoolingType.SUM if weighted else PoolingType.MEAN
    pooling = (PoolingType.SUM, mean, PoolingType.SUM)
    tables = [dataclasses.replace(t, pooling=p) for t, p in zip(three_tables(), pooling)]
    plan = two_hash_plan(combine)
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, is_weighted=weighted).eval()
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 4, (4 * 5,), generator=g)
    heights = torch.tensor([40, 40, 30, 12]).repeat_interleave(5)
    values = torch.cat(
        [torch.randint(0, int(h), (int(n),), generator=g) for h, n in zip(heights, lengths)]
    )
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1", "f2", "f3"], values=values, lengths=lengths, weights=weights
    )
    expected = ebc(kjt).to_dict()
    quantized = quantize_learned_hash(ebc, dtype=torch.float32)
    keys, _ = quantized.internal_output_order()
    # the MEAN table's features last
    assert keys == [
        "f0",
        "f1",
        *(["f2__h0", "f2__h1", "f3"] if weighted else ["f3", "f2__h0", "f2__h1"]),
    ]
    got = quantized(kjt)
    assert got.keys() == ["f0", "f1", "f2", "f3"]  # the float module's order
    for f, pooled in got.to_dict().items():
        torch.testing.assert_close(pooled, expected[f], rtol=1e-6, atol=1e-6)
    scripted = torch.jit.script(symbolic_trace(quantized))
    torch.testing.assert_close(scripted(kjt).values(), got.values(), rtol=0, atol=0)


def test_a_dim_the_quantized_rows_cannot_have_is_named() -> None:
    """FBGEMM's n-bit rows need ``dim * n / 8`` bytes to be even: a concat plan splits a
    dim-6 table into two of dim 3, which int8 rows cannot hold. Before, FBGEMM failed with
    "ncols needs to be multiple of 2 Bytes"; now the table is named, internal and logical."""
    tables = [EmbeddingBagConfig(name="t", embedding_dim=6, num_embeddings=10, feature_names=["a"])]
    plan = HashPlan.from_multi_mappings(
        {"t": [torch.arange(10) % 3, torch.arange(10) % 4]}, combine="concat"
    )
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    match = r"table 't__h0' \(an internal table of 't'.*has dim 3, but FBGEMM's torch.qint8 rows need a dim that is a multiple of 2"
    with pytest.raises(ValueError, match=match):
        quantize_learned_hash(ebc, dtype=torch.qint8)
    quantize_learned_hash(ebc, dtype=torch.float16)  # float rows take any dim
    plain = EmbeddingBagCollection(tables=tables)
    quantize_learned_hash(plain, dtype=torch.qint8)  # dim 6: even
    with pytest.raises(
        ValueError, match=r"table 't' has dim 6, .*torch.quint4x2 rows need .* multiple of 4"
    ):
        quantize_learned_hash(plain, dtype=torch.quint4x2)
