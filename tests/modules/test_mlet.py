"""MLET: the two-layer collection against hand-computed results and its collapse."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.models.dlrm import DLRM

from tests._fixtures import three_tables, two_hash_plan
from tests._vbe import vbe_batch
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.mlet import (
    MultiLayerEmbeddingBagCollection,
    apply_mlet,
    collapse_mlet,
    mlet_dim,
)


def _table(
    name: str, n: int, dim: int, features: tuple[str, ...], pooling=PoolingType.SUM
) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=name,
        embedding_dim=dim,
        num_embeddings=n,
        feature_names=list(features),
        pooling=pooling,
    )


def _kjt(
    keys: list[str], batch: int, n: int, seed: int = 0, weighted: bool = False
) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys) * batch,), generator=g)
    values = torch.randint(0, n, (int(lengths.sum()),), generator=g)
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights)


def test_mlet_dim() -> None:
    assert [mlet_dim(16, f) for f in (0.5, 0.01, 2.0, 0.1)] == [8, 1, 32, 2]
    with pytest.raises(ValueError, match="finite number > 0, got 0"):
        mlet_dim(16, 0)
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        mlet_dim(0, 0.5)


def test_two_layers_by_hand() -> None:
    mlet = MultiLayerEmbeddingBagCollection(
        tables=[_table("t", 3, 2, ("f",))], inner_dim_fraction=0.5
    )
    assert mlet.inner.embedding_bag_configs()[0].embedding_dim == 1
    assert mlet.embedding_bag_configs()[0].embedding_dim == 2
    with torch.no_grad():
        mlet.inner.embedding_bags["t"].weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
        mlet.projection("t").copy_(torch.tensor([[1.0, 10.0]]))
    out = mlet(KeyedJaggedTensor(["f"], torch.tensor([0, 2, 1]), lengths=torch.tensor([2, 1])))
    assert out.keys() == ["f"] and out.length_per_key() == [2]
    torch.testing.assert_close(out.values(), torch.tensor([[4.0, 40.0], [2.0, 20.0]]))
    collapsed = mlet.collapse()
    assert type(collapsed) is EmbeddingBagCollection
    torch.testing.assert_close(
        collapsed.embedding_bags["t"].weight, torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    )


MIXED = [  # two (k, D) groups, interleaved, one table with two features, a mean pooling
    _table("a", 20, 4, ("fa", "fa2")),
    _table("b", 10, 2, ("fb",), pooling=PoolingType.MEAN),
    _table("c", 15, 4, ("fc",)),
]
KEYS = ["fa", "fa2", "fb", "fc"]


@pytest.mark.parametrize("fraction", [0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_collapse_equals_two_layers(fraction: float, weighted: bool) -> None:
    torch.manual_seed(0)
    # torch's embedding_bag takes per-id weights only with sum pooling
    tables = [dataclasses.replace(t, pooling=PoolingType.SUM) for t in MIXED] if weighted else MIXED
    mlet = MultiLayerEmbeddingBagCollection(
        tables=tables, inner_dim_fraction=fraction, is_weighted=weighted
    )
    kjt = _kjt(KEYS, batch=5, n=10, weighted=weighted)
    out = mlet(kjt)
    ref = EmbeddingBagCollection(tables=tables, is_weighted=weighted)
    assert out.keys() == ref(kjt).keys() and out.length_per_key() == [4, 4, 2, 4]
    # per-feature reference: inner pooled embedding times the table's projection
    inner = mlet.inner(kjt).to_dict()
    table_of = {"fa": "a", "fa2": "a", "fb": "b", "fc": "c"}
    for key in KEYS:
        torch.testing.assert_close(out.to_dict()[key], inner[key] @ mlet.projection(table_of[key]))
    collapsed = mlet.collapse()
    torch.testing.assert_close(collapsed(kjt).values(), out.values(), rtol=1e-5, atol=1e-6)


def test_gradient_reaches_both_layers() -> None:
    mlet = MultiLayerEmbeddingBagCollection(tables=MIXED, inner_dim_fraction=0.5)
    mlet(_kjt(KEYS, batch=4, n=10, seed=1)).values().square().sum().backward()
    for name in ("a", "b", "c"):
        assert mlet.inner.embedding_bags[name].weight.grad.abs().sum() > 0
    for name, param in mlet.named_parameters():
        if name.startswith("proj_"):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert sorted(n for n, _ in mlet.named_parameters() if n.startswith("proj_")) == [
        "proj_1x2",
        "proj_2x4",
    ]


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_with_a_hash_plan_collapses_exactly(combine: str) -> None:
    torch.manual_seed(0)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    plan = HashPlan.from_multi_mappings(
        {
            "a": [torch.arange(20, dtype=torch.int32) % 3, torch.arange(20, dtype=torch.int32) % 4],
            "b": [i32(*[0, 1] * 5)],
        },
        combine=combine,
    )
    mlet = MultiLayerEmbeddingBagCollection(tables=MIXED, inner_dim_fraction=1.0, plan=plan)
    assert isinstance(mlet.inner, LearnedHashEmbeddingBagCollection)
    heights = {c.name: c.num_embeddings for c in mlet.inner.internal_embedding_bag_configs()}
    assert heights == {"a__h0": 3, "a__h1": 4, "b": 2, "c": 15}
    kjt = _kjt(KEYS, batch=6, n=10, seed=2)
    collapsed = mlet.collapse()
    assert isinstance(collapsed, LearnedHashEmbeddingBagCollection)
    assert {c.name: c.embedding_dim for c in collapsed.internal_embedding_bag_configs()}[
        "a__h0"
    ] == 4
    torch.testing.assert_close(collapsed(kjt).values(), mlet(kjt).values(), rtol=1e-5, atol=1e-6)


def test_mult_plan_trains_but_does_not_collapse() -> None:
    ids = torch.arange(20, dtype=torch.int32)
    plan = HashPlan.from_multi_mappings({"a": [ids % 3, ids // 3]}, combine="mult")
    mlet = MultiLayerEmbeddingBagCollection(tables=MIXED, inner_dim_fraction=0.5, plan=plan)
    assert mlet(_kjt(KEYS, batch=2, n=10)).values().shape == (2, 14)
    with pytest.raises(ValueError, match=r"tables \['a'\] combine by mult/scaled_sum"):
        mlet.collapse()


def test_apply_mlet_on_a_dlrm_and_collapse() -> None:
    torch.manual_seed(0)
    tables = [_table("t0", 10, 4, ("f0",)), _table("t1", 8, 4, ("f1",))]
    dlrm = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables),
        dense_in_features=3,
        dense_arch_layer_sizes=[5, 4],
        over_arch_layer_sizes=[3, 1],
    )
    assert apply_mlet(dlrm, 0.5) is dlrm
    mlet = dlrm.sparse_arch.embedding_bag_collection
    assert isinstance(mlet, MultiLayerEmbeddingBagCollection)
    assert [c.embedding_dim for c in mlet.inner.embedding_bag_configs()] == [2, 2]
    dense, kjt = torch.randn(3, 3), _kjt(["f0", "f1"], batch=3, n=8, seed=4)
    logits = dlrm(dense, kjt)
    assert logits.shape == (3, 1)
    logits.sum().backward()
    assert (
        mlet.proj_2x4.grad is not None and mlet.inner.embedding_bags["t0"].weight.grad is not None
    )
    assert (
        apply_mlet(dlrm, 0.5) is dlrm and dlrm.sparse_arch.embedding_bag_collection is mlet
    )  # idempotent
    collapse_mlet(dlrm)
    assert type(dlrm.sparse_arch.embedding_bag_collection) is EmbeddingBagCollection
    torch.testing.assert_close(dlrm(dense, kjt), logits, rtol=1e-5, atol=1e-6)


def test_apply_mlet_on_meta_then_materialize() -> None:
    ebc = EmbeddingBagCollection(tables=[_table("t0", 10, 4, ("f0",))], device=torch.device("meta"))
    mlet = apply_mlet(ebc, 2.0)
    assert mlet.proj_8x4.device.type == "meta" and mlet.device.type == "meta"
    mlet.to_empty(device="cpu")
    mlet.reset_parameters()
    bound = (3.0 / 8) ** 0.5
    assert mlet.proj_8x4.abs().max() <= bound and mlet.proj_8x4.std() > 0.1


def test_apply_mlet_rejects_bad_fraction_and_skips_learned_hash() -> None:
    with pytest.raises(ValueError, match="finite number > 0, got -1"):
        apply_mlet(EmbeddingBagCollection(tables=[_table("t0", 10, 4, ("f0",))]), -1)
    lh = LearnedHashEmbeddingBagCollection(
        tables=[_table("t0", 4, 2, ("f0",))],
        plan=HashPlan.from_mappings({"t0": torch.tensor([0, 1, 0, 1])}),
    )
    assert apply_mlet(lh, 0.5) is lh


def test_a_plan_table_no_collection_has_is_named() -> None:
    plan = HashPlan.from_mappings({"t_0": torch.tensor([0, 1, 0, 1], dtype=torch.int32)})
    tables = [_table("t0", 4, 2, ("f0",))]
    with pytest.raises(ValueError, match=r"hash plan tables \['t_0'\] are not tables"):
        MultiLayerEmbeddingBagCollection(tables=tables, inner_dim_fraction=0.5, plan=plan)
    model = torch.nn.ModuleDict({"a": EmbeddingBagCollection(tables=tables)})
    with pytest.raises(ValueError, match=r"\['t_0'\] match no EmbeddingBagCollection"):
        apply_mlet(model, 0.5, plan=plan)
    assert type(model["a"]) is EmbeddingBagCollection  # the model is left as it was
    # a plan spanning two collections: each takes its own table
    both = HashPlan.from_mappings(
        {
            "t0": torch.tensor([0, 1, 0, 1], dtype=torch.int32),
            "t1": torch.zeros(6, dtype=torch.int32),
        }
    )
    model = torch.nn.ModuleDict(
        {
            "a": EmbeddingBagCollection(tables=tables),
            "b": EmbeddingBagCollection(tables=[_table("t1", 6, 2, ("f1",))]),
        }
    )
    apply_mlet(model, 0.5, plan=both)
    assert apply_mlet(model, 0.5, plan=both) is model  # idempotent
    heights = [
        c.num_embeddings
        for k in ("a", "b")
        for c in model[k].inner.internal_embedding_bag_configs()
    ]
    assert heights == [2, 1]


def _sharded_vs_unsharded(rank: int, world_size: int) -> None:
    import torch.distributed as dist
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder

    torch.manual_seed(0)
    plan = HashPlan.from_mappings({"a": torch.arange(20) % 7})
    reference = MultiLayerEmbeddingBagCollection(tables=MIXED, inner_dim_fraction=2.0, plan=plan)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    module = MultiLayerEmbeddingBagCollection(
        tables=MIXED, inner_dim_fraction=2.0, plan=plan, device=torch.device("meta")
    )
    model = DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        sharders=[LearnedHashEmbeddingBagCollectionSharder()],
        device=torch.device("cpu"),
    )
    assert type(model.module.inner).__name__ == "ShardedLearnedHashEmbeddingBagCollection"
    model.load_state_dict(state)
    batches = [_kjt(KEYS, batch=3, n=10, seed=s) for s in range(world_size)]
    out = model(batches[rank])
    ref_rank = reference(batches[rank])  # pooling is per sample: the rank's own slice
    torch.testing.assert_close(out.values(), ref_rank.values())
    out.values().sum().backward()
    assert model.module.proj_4x2.grad is not None


@pytest.mark.distributed
def test_sharded_equals_unsharded() -> None:
    from tests._multiprocess import run_multiprocess

    run_multiprocess(_sharded_vs_unsharded, world_size=2)


@pytest.mark.parametrize("with_plan", [False, True])
def test_a_variable_batch_per_feature_equals_the_written_out_batch(with_plan: bool) -> None:
    """VBE (``stride_per_key_per_rank`` with ``inverse_indices``): the inner collection
    expands each feature's bags to the batch, then the projections, as for any batch."""
    torch.manual_seed(0)
    mlet = MultiLayerEmbeddingBagCollection(
        three_tables(), inner_dim_fraction=0.5, plan=two_hash_plan("sum") if with_plan else None
    )
    vbe, full = vbe_batch(seed=2, batch=4)
    torch.testing.assert_close(mlet(vbe).values(), mlet(full).values())
