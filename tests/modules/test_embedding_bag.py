"""The unsharded learned-hash EBC against hand-computed results."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.fx import symbolic_trace
from torchrec.models.dlrm import DLRM

from tests._compact import to_compact
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, apply_hash_plan


def _i32(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32)


def _table(name: str = "t0", n: int = 4, dim: int = 2, features=("f0",)) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=name, embedding_dim=dim, num_embeddings=n, feature_names=list(features)
    )


def _kjt(keys: list[str], bags: list[list[list[int]]]) -> KeyedJaggedTensor:
    """bags[feature][sample] -> ids."""
    values = [i for feat in bags for bag in feat for i in bag]
    lengths = [len(bag) for feat in bags for bag in feat]
    return KeyedJaggedTensor(keys=keys, values=torch.tensor(values), lengths=torch.tensor(lengths))


def _set(ebc: LearnedHashEmbeddingBagCollection, name: str, rows: list[list[float]]) -> None:
    with torch.no_grad():
        ebc.embedding_bags[name].weight.copy_(torch.tensor(rows))


def test_single_hash_by_hand() -> None:
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    ebc = LearnedHashEmbeddingBagCollection(tables=[_table()], plan=plan)
    assert [(c.name, c.num_embeddings) for c in ebc.embedding_bag_configs()] == [("t0", 4)]
    assert [(c.name, c.num_embeddings) for c in ebc.internal_embedding_bag_configs()] == [("t0", 3)]
    _set(ebc, "t0", [[1, 10], [2, 20], [3, 30]])
    out = ebc(_kjt(["f0"], [[[0, 3], [2]]]))
    assert out.keys() == ["f0"]
    torch.testing.assert_close(out.values(), torch.tensor([[5.0, 50.0], [2.0, 20.0]]))


def test_two_hashes_sum_by_hand() -> None:
    plan = HashPlan.from_multi_mappings({"t0": [_i32(0, 1, 1, 0), _i32(0, 0, 1, 2)]}, combine="sum")
    ebc = LearnedHashEmbeddingBagCollection(tables=[_table()], plan=plan)
    _set(ebc, "t0__h0", [[1, 0], [0, 1]])
    _set(ebc, "t0__h1", [[10, 0], [0, 10], [100, 100]])
    out = ebc(_kjt(["f0"], [[[3, 2], [1]]]))
    # id 3 -> h0 row 0 + h1 row 2 = [101, 100]; id 2 -> [0, 1] + [0, 10]; id 1 -> [0, 1] + [10, 0]
    torch.testing.assert_close(out.values(), torch.tensor([[101.0, 111.0], [10.0, 1.0]]))
    assert out.keys() == ["f0"] and out.length_per_key() == [2]


def test_two_hashes_concat_by_hand() -> None:
    plan = HashPlan.from_multi_mappings(
        {"t0": [_i32(0, 1, 1, 0), _i32(0, 0, 1, 2)]}, combine="concat"
    )
    tables = [_table(dim=4, features=("f0", "f1")), _table("t1", n=3, dim=4, features=("f2",))]
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    internal = ebc.internal_embedding_bag_configs()
    assert [(c.name, c.num_embeddings, c.embedding_dim) for c in internal] == [
        ("t0__h0", 2, 2),
        ("t0__h1", 3, 2),
        ("t1", 3, 4),
    ]
    _set(ebc, "t0__h0", [[1, 2], [3, 4]])
    _set(ebc, "t0__h1", [[10, 20], [30, 40], [50, 60]])
    _set(ebc, "t1", [[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]])
    # keys in another order than the tables, and f1's first bag empty
    out = ebc(_kjt(["f2", "f1", "f0"], [[[2], [0, 1]], [[], [3]], [[3], [1, 2]]]))
    assert out.keys() == ["f0", "f1", "f2"]
    expected = {
        "f0": [[1, 2, 50, 60], [3 + 3, 4 + 4, 10 + 30, 20 + 40]],
        "f1": [[0, 0, 0, 0], [1, 2, 50, 60]],
        "f2": [[0, 1, 0, 0], [0, 0, 1, 1]],
    }
    for key, rows in expected.items():
        torch.testing.assert_close(out[key], torch.tensor(rows, dtype=torch.float32))


def test_matches_plain_ebc_with_identity_plan() -> None:
    """A plan mapping every id to itself is the plain EBC (same weights, same output)."""
    tables = [_table(n=6, dim=3, features=("a", "b")), _table("t1", n=5, dim=3, features=("c",))]
    plan = HashPlan.from_mappings({"t0": torch.arange(6, dtype=torch.int32)})
    torch.manual_seed(0)
    plain = EmbeddingBagCollection(tables=tables)
    lhf = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    lhf.load_state_dict({**plain.state_dict(), "remap.mapping": lhf.remap.mapping})
    kjt = _kjt(["a", "b", "c"], [[[0, 5], [1]], [[2], []], [[4, 4], [0]]])
    torch.testing.assert_close(lhf(kjt).values(), plain(kjt).values())


@pytest.mark.parametrize("policy", ["error", "modulo"])
def test_out_of_range_and_negative_ids(policy: str) -> None:
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    ebc = LearnedHashEmbeddingBagCollection(tables=[_table()], plan=plan, out_of_range=policy)
    _set(ebc, "t0", [[1, 10], [2, 20], [3, 30]])
    for bad in (4, -1, 10**9):
        kjt = _kjt(["f0"], [[[0], [bad]]])
        if policy == "error":
            with pytest.raises(
                ValueError, match=rf"feature 'f0': id {bad} is out of range \[0, 4\)"
            ):
                ebc(kjt)
        else:
            folded = bad % 4  # Python's % folds negatives into [0, 4) like torch.remainder
            row = [1, 0, 1, 2][folded]
            torch.testing.assert_close(
                ebc(kjt).values()[1],
                torch.tensor([[1, 10], [2, 20], [3, 30]][row], dtype=torch.float32),
            )


def test_remap_state_dict_is_checked_on_load() -> None:
    tables = [_table()]
    a = LearnedHashEmbeddingBagCollection(
        tables=tables, plan=HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    )
    b = LearnedHashEmbeddingBagCollection(
        tables=tables, plan=HashPlan.from_mappings({"t0": _i32(2, 0, 1, 1)})
    )
    assert "remap.mapping" in a.state_dict()
    with pytest.raises(ValueError, match="another hash plan"):
        b.load_state_dict(a.state_dict())
    b2 = LearnedHashEmbeddingBagCollection(
        tables=tables, plan=HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    )
    b2.load_state_dict(a.state_dict())
    torch.testing.assert_close(b2.embedding_bags["t0"].weight, a.embedding_bags["t0"].weight)


def test_plan_height_mismatch_is_rejected() -> None:
    plan = HashPlan.from_mappings({"t0": _i32(0, 1, 0)})
    with pytest.raises(ValueError, match="num_embeddings=3.*has 4"):
        LearnedHashEmbeddingBagCollection(tables=[_table()], plan=plan)


def test_missing_feature_is_a_clear_error() -> None:
    ebc = LearnedHashEmbeddingBagCollection(
        tables=[_table(features=("f0", "f1"))],
        plan=HashPlan.from_mappings({"t0": _i32(0, 1, 0, 1)}),
    )
    with pytest.raises(ValueError, match=r"lack \['f1'\]"):
        ebc(_kjt(["f0"], [[[0]]]))


def test_caller_configs_are_not_mutated() -> None:
    tables = [_table()]
    before = repr(tables)
    LearnedHashEmbeddingBagCollection(
        tables=tables, plan=HashPlan.from_mappings({"t0": _i32(0, 1, 0, 1)})
    )
    assert repr(tables) == before


def test_apply_hash_plan_on_meta_dlrm() -> None:
    tables = [_table(n=40, dim=4, features=("f0",)), _table("t1", n=30, dim=4, features=("f1",))]
    plan = HashPlan.from_multi_mappings(
        {"t0": [torch.arange(40) % 7, torch.arange(40) // 7]}, combine="concat"
    )
    model = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
        dense_in_features=3,
        dense_arch_layer_sizes=[8, 4],
        over_arch_layer_sizes=[8, 1],
    )
    apply_hash_plan(model, plan)
    ebc = model.sparse_arch.embedding_bag_collection
    assert isinstance(ebc, LearnedHashEmbeddingBagCollection)
    assert ebc.embedding_bags["t0__h0"].weight.device.type == "meta"
    assert ebc.remap.mapping.device.type == "cpu"
    assert [c.num_embeddings for c in ebc.internal_embedding_bag_configs()] == [7, 6, 30]

    # materialised, the DLRM runs end to end with the compressed collection
    model = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables),
        dense_in_features=3,
        dense_arch_layer_sizes=[8, 4],
        over_arch_layer_sizes=[8, 1],
    )
    apply_hash_plan(model, plan)
    logits = model(torch.randn(2, 3), _kjt(["f0", "f1"], [[[39], [0, 1]], [[29], []]]))
    assert logits.shape == (2, 1)


def test_apply_hash_plan_rejects_unknown_tables() -> None:
    plan = HashPlan.from_mappings({"nope": _i32(0, 1)})
    with pytest.raises(ValueError, match=r"\['nope'\] match no EmbeddingBagCollection"):
        apply_hash_plan(EmbeddingBagCollection(tables=[_table()]), plan)


def test_a_plan_table_the_collection_lacks_is_named() -> None:
    # a misspelled table name would otherwise leave t0 uncompressed, silently
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2), "t_1": _i32(0, 1, 0, 1)})
    tables = [_table(), _table("t1", features=("f1",))]
    match = r"hash plan tables \['t_1'\] are not tables of the collection; .*\['t0', 't1'\]"
    with pytest.raises(ValueError, match=match):
        LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    with pytest.raises(ValueError, match=r"\['t_1'\] match no EmbeddingBagCollection"):
        apply_hash_plan(EmbeddingBagCollection(tables=tables), plan)
    # strict=False: a plan spanning several collections (apply_hash_plan's own use)
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, strict=False)
    heights = {c.name: c.num_embeddings for c in ebc.internal_embedding_bag_configs()}
    assert heights == {"t0": 3, "t1": 4}


def test_a_plan_spanning_two_collections_applies_to_each() -> None:
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2), "t1": _i32(0, 1, 0, 1)})
    model = torch.nn.ModuleDict(
        {
            "a": EmbeddingBagCollection(tables=[_table()]),
            "b": EmbeddingBagCollection(tables=[_table("t1", features=("f1",))]),
        }
    )
    apply_hash_plan(model, plan)
    assert [c.num_embeddings for c in model["a"].internal_embedding_bag_configs()] == [3]
    assert [c.num_embeddings for c in model["b"].internal_embedding_bag_configs()] == [2]


@pytest.mark.parametrize("bad", ["height", "unknown table"])
def test_apply_hash_plan_that_fails_leaves_the_model_as_it_was(bad: str) -> None:
    second = {"height": {"t1": _i32(0, 1, 0)}, "unknown table": {"t9": _i32(0, 1)}}[bad]
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2), **second})
    a = EmbeddingBagCollection(tables=[_table()])
    b = EmbeddingBagCollection(tables=[_table("t1", features=("f1",))])
    model = torch.nn.ModuleDict({"a": a, "b": b})
    with pytest.raises(ValueError, match=r"num_embeddings=3|\['t9'\] match no"):
        apply_hash_plan(model, plan)
    assert model["a"] is a and model["b"] is b  # "a" was not swapped before "b" failed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_ids_not_integers_are_named(dtype: torch.dtype) -> None:
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    ebc = LearnedHashEmbeddingBagCollection(
        tables=[_table(), _table("t1", features=("f1",))], plan=plan
    )
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1"], values=torch.tensor([0, 1, 1]).to(dtype), lengths=torch.tensor([2, 1])
    )
    match = rf"the ids of features \['f0', 'f1'\] are {dtype}; expected an integer dtype"
    with pytest.raises(ValueError, match=match):
        ebc(kjt)
    if dtype == torch.float32:  # traced and scripted, as served
        from torchrec.fx import symbolic_trace

        with pytest.raises(ValueError, match=match):
            symbolic_trace(ebc)(kjt)
        with pytest.raises(torch.jit.Error, match=r"features \[f0, f1\] are not integers"):
            torch.jit.script(symbolic_trace(ebc))(kjt)
    # integer ids of any width are taken
    for ok in (torch.int64, torch.int32, torch.int16, torch.uint8):
        good = KeyedJaggedTensor(
            keys=["f0", "f1"], values=torch.tensor([0, 3, 1]).to(ok), lengths=torch.tensor([2, 1])
        )
        assert ebc(good).values().shape == (1, 4)


@pytest.mark.parametrize(
    "combine, expected",
    [
        # id 2 -> rows (1, 1, 0) of the three internal tables; id 0 -> (0, 0, 1)
        ("mult", [[1 * 3 * 5, 2 * 4 * 6], [0 * 1 * 7, 1 * 2 * 8]]),
        ("scaled_sum", [[(1 + 3) * 5, (2 + 4) * 6], [(0 + 1) * 7, (1 + 2) * 8]]),
        ("sum", [[1 + 3 + 5, 2 + 4 + 6], [0 + 1 + 7, 1 + 2 + 8]]),
    ],
)
def test_three_hash_combines_by_hand(combine: str, expected: list[list[int]]) -> None:
    plan = HashPlan.from_multi_mappings(
        {"t0": [_i32(0, 0, 1, 1), _i32(0, 0, 1, 0), _i32(1, 1, 0, 0)]}, combine=combine
    )
    tables = [_table(), _table("t1", n=2, dim=2, features=("g",))]
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    _set(ebc, "t0__h0", [[0, 1], [1, 2]])
    _set(ebc, "t0__h1", [[1, 2], [3, 4]])
    _set(ebc, "t0__h2", [[5, 6], [7, 8]])
    _set(ebc, "t1", [[9, 9], [8, 8]])
    out = ebc(_kjt(["f0", "g"], [[[2], [0]], [[1], [0]]]))
    torch.testing.assert_close(out["f0"], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(out["g"], torch.tensor([[8.0, 8.0], [9.0, 9.0]]))


@pytest.mark.parametrize(
    ("height", "dtype"),
    [(2, torch.uint8), (256, torch.uint8), (257, torch.int16), (2**15, torch.int16),
     (2**15 + 1, torch.int32)],
)  # fmt: skip
def test_mapping_width_follows_largest_compressed_table(height: int, dtype: torch.dtype) -> None:
    plan = HashPlan.from_mappings({"t0": _i32(0, 1, 1, 0)}, heights={"t0": height})
    ebc = LearnedHashEmbeddingBagCollection(tables=[_table()], plan=plan)
    width = dtype.itemsize
    assert ebc.remap.mapping.dtype == dtype and ebc.remap.remap_bytes() == width * 4
    assert plan.tables[0].remap_bytes() == width * 4  # what byte budgets count
    kjt = _kjt(["f0"], [[[3, 1], [2]]])
    assert ebc.remap(kjt).values().tolist() == [0, 1, 1]
    # a checkpoint holding the mapping wider (int32; int16 before uint8 came) still loads
    for wider in (torch.int32, torch.int16):
        state = dict(ebc.state_dict(), **{"remap.mapping": ebc.remap.mapping.to(wider)})
        ebc.load_state_dict(state)
        assert ebc.remap.mapping.dtype == dtype


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_dlrm_on_two_hash_tables(combine: str) -> None:
    """DLRM reads the logical configs; forward and backward reach both internal tables."""
    tables = [
        _table(n=40, dim=4, features=("f0", "f1")),
        _table("t1", n=30, dim=4, features=("f2",)),
    ]
    plan = HashPlan.from_multi_mappings(
        {"t0": [torch.arange(40) % 7, torch.arange(40) // 7]}, combine=combine
    )
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    logical = [(c.name, c.num_embeddings, c.embedding_dim, c.feature_names) for c in tables]
    assert [
        (c.name, c.num_embeddings, c.embedding_dim, c.feature_names)
        for c in ebc.embedding_bag_configs()
    ] == logical
    internal_dims = [2, 2] if combine == "concat" else [4, 4]
    assert [
        (c.name, c.num_embeddings, c.embedding_dim) for c in ebc.internal_embedding_bag_configs()
    ] == [("t0__h0", 7, internal_dims[0]), ("t0__h1", 6, internal_dims[1]), ("t1", 30, 4)]
    model = DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=3,
        dense_arch_layer_sizes=[8, 4],
        over_arch_layer_sizes=[8, 1],
    )
    kjt = _kjt(["f0", "f1", "f2"], [[[39], [0, 1]], [[3], []], [[29], [5]]])
    assert model.sparse_arch(kjt).shape == (2, 3, 4)  # (B, F, D): the logical features
    logits = model(torch.randn(2, 3), kjt)
    assert logits.shape == (2, 1)
    logits.sum().backward()
    for name in ("t0__h0", "t0__h1", "t1"):
        grad = ebc.embedding_bags[name].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_internal_name_clash_is_a_clear_error() -> None:
    plan = HashPlan.from_multi_mappings({"t0": [_i32(0, 1, 1, 0), _i32(0, 0, 1, 2)]})
    with pytest.raises(
        ValueError,
        match=r"internal feature name 'f0__h1' clashes: hash 1 of feature 'f0' of table 't0' "
        r"and feature 'f0__h1' of table 't1'",
    ):
        LearnedHashEmbeddingBagCollection(
            tables=[_table(), _table("t1", features=("f0__h1",))], plan=plan
        )
    with pytest.raises(
        ValueError, match=r"internal table name 't0__h0' clashes: hash 0 of table 't0' and table"
    ):
        LearnedHashEmbeddingBagCollection(
            tables=[_table(), _table("t0__h0", features=("g",))], plan=plan
        )
    # a one-hash table reserves no suffixed names
    one = HashPlan.from_mappings({"t0": _i32(0, 1, 1, 0)})
    LearnedHashEmbeddingBagCollection(
        tables=[_table(), _table("t1", features=("f0__h0",))], plan=one
    )


@pytest.mark.parametrize("num_hashes", [1, 2])
@pytest.mark.parametrize("out_of_range", ["error", "modulo"])
@pytest.mark.parametrize("encoding", ["dense", "compact", "ranked"])
@pytest.mark.parametrize("lengths", [[2, 2, 0, 0], [1, 1, 0, 0]])
def test_lengths_that_disagree_with_the_ids_are_named(
    lengths: list[int], encoding: str, out_of_range: str, num_hashes: int
) -> None:
    # one hash: the kernel's layout (keys in order); two: the general path's (f0__h0, f0__h1)
    mappings = [_i32(1, 0, 1, 2), _i32(0, 1, 1, 0)][:num_hashes]
    plan = HashPlan.from_multi_mappings({"t0": mappings})
    if encoding != "dense":
        plan = to_compact(plan, ranked=encoding == "ranked")
    ebc = LearnedHashEmbeddingBagCollection(
        tables=[_table(), _table("t1", n=5, features=("f1",))],
        plan=plan,
        out_of_range=out_of_range,
    )
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1"], values=torch.tensor([0, 2, 3]), lengths=torch.tensor(lengths)
    )
    match = (
        rf"the lengths of features \['f0', 'f1'\] add up to {sum(lengths)} ids, but the "
        r"batch holds 3: the lengths and values disagree"
    )
    with pytest.raises(ValueError, match=match):
        ebc(kjt)


@pytest.mark.parametrize("num_hashes", [1, 2])
@pytest.mark.parametrize("encoding", ["dense", "compact", "ranked"])
@pytest.mark.parametrize("on_cpu", [True, False])
def test_a_negative_length_is_refused_before_the_lookup(
    on_cpu: bool, encoding: str, num_hashes: int
) -> None:
    """Before, a negative length whose feature's lengths still added up to its ids reached
    the lookup's offsets: an index error naming nothing, or a segmentation fault (TorchRec's
    own EBC crashes on it too). Eager on CPU a named ValueError; on the device path (no host
    read) the lengths' guard fails first."""
    mappings = [_i32(1, 0, 1, 2), _i32(0, 1, 1, 0)][:num_hashes]
    plan = HashPlan.from_multi_mappings({"t0": mappings})
    if encoding != "dense":
        plan = to_compact(plan, ranked=encoding == "ranked")
    ebc = LearnedHashEmbeddingBagCollection(
        tables=[_table(), _table("t1", n=5, features=("f1",))], plan=plan
    )
    ebc.remap.read_lengths_on_cpu = on_cpu
    # f1's lengths (1, -1, 2) add up to its 2 ids; the batch's to its 5
    kjt = KeyedJaggedTensor(
        keys=["f1", "f0"],
        values=torch.tensor([4, 0, 3, 1, 2]),
        lengths=torch.tensor([1, -1, 2, 1, 1, 1]),
    )
    if on_cpu:
        match = r"lengths\[1\] = -1 \(feature 'f1', sample 1\) is negative; expected ids"
        with pytest.raises(ValueError, match=match):
            ebc(kjt)
        # scripted: the kernel's operator names it, or (where it does not run: int16 ids)
        # the guard fails
        scripted = torch.jit.script(symbolic_trace(ebc.eval()))
        for dtype in (torch.int64, torch.int16):
            bad = KeyedJaggedTensor(kjt.keys(), kjt.values().to(dtype), lengths=kjt.lengths())
            with pytest.raises(
                RuntimeError,
                match=r"\(internal feature 0, sample 1\) is negative|index 1 is out of bounds",
            ):
                scripted(bad)
    else:
        with pytest.raises(RuntimeError, match="index 1 is out of bounds"):
            ebc.remap(kjt)
    good = KeyedJaggedTensor(
        keys=["f1", "f0"],
        values=torch.tensor([4, 0, 3, 1, 2]),
        lengths=torch.tensor([1, 0, 1, 1, 1, 1]),
    )
    assert ebc(good).values().shape == (3, 4)


@pytest.mark.parametrize("encoding", ["dense", "compact", "ranked"])
def test_a_strided_view_of_the_ids_is_read_as_its_values(encoding: str) -> None:
    """Scripted on CPU the kernel's operator reads the ids' memory: before, a strided view
    (a column of a request's tensor, say) failed its contiguity check naming nothing."""
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    if encoding != "dense":
        plan = to_compact(plan, ranked=encoding == "ranked")
    ebc = LearnedHashEmbeddingBagCollection(
        tables=[_table(), _table("t1", n=5, features=("f1",))], plan=plan
    ).eval()
    values = torch.tensor([0, 3, 2, 4, 1])
    strided = torch.stack([values, values + 7], 1)[:, 0]
    assert not strided.is_contiguous()
    lengths = torch.tensor([1, 1, 1, 2])  # keys in the remap's order: the operator's path
    expected = ebc(KeyedJaggedTensor(["f0", "f1"], values, lengths=lengths)).values()
    scripted = torch.jit.script(symbolic_trace(ebc))
    for model in (ebc, scripted):
        got = model(KeyedJaggedTensor(["f0", "f1"], strided, lengths=lengths)).values()
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_arguments_of_the_wrong_type_are_named() -> None:
    plan = HashPlan.from_mappings({"t0": _i32(1, 0, 1, 2)})
    with pytest.raises(TypeError, match=r"plan must be a HashPlan, got dict; HashPlan.from_mapp"):
        LearnedHashEmbeddingBagCollection(tables=[_table()], plan={"t0": _i32(1, 0, 1, 2)})
    with pytest.raises(TypeError, match=r"plan must be a HashPlan, got dict"):
        apply_hash_plan(EmbeddingBagCollection(tables=[_table()]), {"t0": _i32(1, 0, 1, 2)})
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got NoneType"):
        apply_hash_plan(None, plan)
    with pytest.raises(TypeError, match=r"got EmbeddingBagConfig\(num_embeddings=4"):
        LearnedHashEmbeddingBagCollection(tables=_table(), plan=plan)  # not in a list
    with pytest.raises(TypeError, match=r"got items of types \['str'\]"):
        LearnedHashEmbeddingBagCollection(tables=["t0"], plan=plan)
    # any iterable of configs is taken, a generator included
    ebc = LearnedHashEmbeddingBagCollection(tables=(c for c in [_table()]), plan=plan)
    assert [c.num_embeddings for c in ebc.internal_embedding_bag_configs()] == [3]


@pytest.mark.parametrize("num_hashes", [1, 2])
@pytest.mark.parametrize("encoding", ["dense", "compact"])
def test_per_id_weights_other_than_a_float_per_id_are_named(encoding: str, num_hashes: int) -> None:
    """Before, a weight too few failed as an index out of bounds naming nothing (``index 4
    is out of bounds``), and integer weights as a mismatch of the tables' and the weights'
    types; eager and scripted alike."""
    mappings = [_i32(1, 0, 1, 2), _i32(0, 1, 1, 0)][:num_hashes]
    plan = HashPlan.from_multi_mappings({"t0": mappings})
    if encoding != "dense":
        plan = to_compact(plan)
    tables = [_table(), _table("t1", n=5, features=("f1",))]
    torch.manual_seed(0)
    ebc = apply_hash_plan(EmbeddingBagCollection(tables=tables, is_weighted=True), plan).eval()
    scripted = torch.jit.script(symbolic_trace(ebc))

    def kjt(weights: torch.Tensor) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(
            keys=["f0", "f1"],
            values=torch.tensor([0, 3, 1, 4, 2]),
            lengths=torch.tensor([2, 1, 1, 1]),
            weights=weights,
        )

    good = ebc(kjt(torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25]))).values()
    unweighted = ebc(kjt(torch.ones(5))).values()
    assert not torch.allclose(good, unweighted)
    for count in (4, 6):
        match = (
            rf"the weights of features \[.?f0.?, .?f1.?\] have shape \[{count}\], but the "
            "batch holds 5 ids: expected one weight per id"
        )
        with pytest.raises(ValueError, match=match):
            ebc(kjt(torch.ones(count)))
        with pytest.raises(Exception, match=match):
            scripted(kjt(torch.ones(count)))
    match = r"the weights of features \['f0', 'f1'\] are torch.int64; expected a float dtype"
    with pytest.raises(ValueError, match=match):
        ebc(kjt(torch.ones(5, dtype=torch.long)))
    with pytest.raises(Exception, match="are not floating point; expected a float dtype"):
        scripted(kjt(torch.ones(5, dtype=torch.long)))
    torch.testing.assert_close(ebc(kjt(torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25]))).values(), good)
