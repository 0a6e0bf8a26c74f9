"""The built-in baseline plans, checked by hand."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.compression.baselines import compressed_rows, modulo_plan
from torchrec_lhf.plan import HashPlan


def test_modulo_plan_by_hand() -> None:
    plan = modulo_plan({"a": 7, "b": 4}, fraction=0.5)
    # a: M = round(3.5) = 4 (Python rounds half to even), b: M = 2
    assert plan.table_names == ["a", "b"]
    assert plan["a"].heights == (4,) and plan["b"].heights == (2,)
    assert plan["a"].dense_mapping(0).tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert plan["b"].dense_mapping(0).tolist() == [0, 1, 0, 1]
    # computed from the id: nothing stored per id
    assert plan["a"].encodings == ("compact",) and plan["a"].mappings[0].num_head == 0
    assert plan.remap_bytes() == 0
    assert plan.metadata["method"] == "modulo" and plan.metadata["fraction"] == 0.5


def test_modulo_plan_keeps_small_tables_full_and_at_least_one_row() -> None:
    plan = modulo_plan({"big": 10, "small": 3}, fraction=0.01, min_table_rows=5)
    assert plan.table_names == ["big"]
    assert plan["big"].heights == (1,)
    assert plan["big"].dense_mapping(0).tolist() == [0] * 10


def test_modulo_plan_fraction_one_is_the_identity() -> None:
    plan = modulo_plan({"t": 5}, fraction=1.0)
    assert plan["t"].dense_mapping(0).tolist() == [0, 1, 2, 3, 4]


def test_modulo_plan_round_trips(tmp_path) -> None:
    plan = modulo_plan({"t": 9}, fraction=0.3)
    plan.save(tmp_path / "p.safetensors")
    assert HashPlan.load(tmp_path / "p.safetensors") == plan


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_is_named(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        modulo_plan({"t": 9}, fraction=fraction)


def test_bad_heights_are_named() -> None:
    with pytest.raises(ValueError, match="'t'.*got 0"):
        modulo_plan({"t": 0}, fraction=0.5)
    with pytest.raises(ValueError, match="min_table_rows"):
        modulo_plan({"t": 3}, fraction=0.5, min_table_rows=-1)
    assert compressed_rows(10, 0.25) == 2


def _modulo_module(heights: dict[str, int], fraction: float, **kwargs):
    from torchrec import EmbeddingBagConfig

    from torchrec_lhf import LearnedHashEmbeddingBagCollection

    tables = [
        EmbeddingBagConfig(name=t, embedding_dim=2, num_embeddings=n, feature_names=[f"f_{t}"])
        for t, n in heights.items()
    ]
    plan = modulo_plan(heights, fraction=fraction)
    return plan, LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, **kwargs)


@pytest.mark.parametrize("batch", [3, 300])  # few ids divide, many take the multiply
@pytest.mark.parametrize("read_lengths_on_cpu", [True, False])  # the kernel, the torch ops
def test_the_module_computes_id_mod_rows_on_every_path(
    batch: int, read_lengths_on_cpu: bool
) -> None:
    """Every remainder the kernel takes (rows a power of two: a mask; else a multiply for a
    feature of 64 ids or more, a division below), scripted too; nothing held per id."""
    from torchrec.fx import symbolic_trace

    heights = {"a": 1000, "b": 777, "c": 50, "d": 4096, "e": 3}
    plan, module = _modulo_module(heights, fraction=0.25)
    assert [plan[t].heights[0] for t in heights] == [250, 194, 12, 1024, 1]
    assert module.remap.mapping.numel() == 0 and module.remap.remap_bytes() < 200
    module.remap.read_lengths_on_cpu = read_lengths_on_cpu
    kjt, ids_T = _by_table(heights, batch)
    expected = torch.cat([ids % plan[t].heights[0] for t, ids in ids_T.items()])
    assert torch.equal(module.remap(kjt).values(), expected)
    scripted = torch.jit.script(symbolic_trace(module))
    torch.testing.assert_close(scripted(kjt).values(), module(kjt).values(), rtol=0, atol=0)


def test_out_of_range_ids_keep_their_policy() -> None:
    """``error`` names the id and ``N`` (not the rows); ``modulo`` folds into ``[0, N)``
    first (so the hashing trick of a folded id is ``(id mod N) mod M``)."""
    from torchrec import KeyedJaggedTensor

    raw = torch.tensor([2**63 - 1, -1, 1003, 5])
    kjt = KeyedJaggedTensor(["f_a"], raw, lengths=torch.ones(4, dtype=torch.long))
    plan, folding = _modulo_module({"a": 1000}, fraction=0.1, out_of_range="modulo")
    assert folding.remap(kjt).values().tolist() == (torch.remainder(raw, 1000) % 100).tolist()
    _, strict = _modulo_module({"a": 1000}, fraction=0.1)
    with pytest.raises(ValueError, match=r"id 9223372036854775807 is out of range \[0, 1000\)"):
        strict.remap(kjt)


def test_a_modulo_tail_behind_a_head_and_in_a_region() -> None:
    """A compact mapping's tail may be ``id mod rows`` with a head and an offset too."""
    from torchrec_lhf.hashing import MODULO_SEED
    from torchrec_lhf.plan_compact import CompactMapping

    m = CompactMapping(
        torch.tensor([2, 9]),
        torch.tensor([0, 1], dtype=torch.int16),
        tail_seed=MODULO_SEED,
        tail_offset=2,
        tail_rows=3,
    )
    assert m.dense(10).tolist() == [2, 3, 0, 2, 3, 4, 2, 3, 4, 1]
    assert m.rows(torch.tensor([9, 4, 2])).tolist() == [1, 3, 0]
    # in a module (heads probed by the mixed hash, the tail by the id): kernel and torch ops
    from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

    from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash

    plan = HashPlan([TableHash("t", 10, (m,), (5,))])
    table = EmbeddingBagConfig(name="t", embedding_dim=2, num_embeddings=10, feature_names=["f"])
    module = LearnedHashEmbeddingBagCollection(tables=[table], plan=plan)
    ids = torch.arange(10).repeat(8)  # 80 ids: the kernel's multiply
    kjt = KeyedJaggedTensor(["f"], ids, lengths=torch.ones(80, dtype=torch.long))
    for on_cpu in (True, False):
        module.remap.read_lengths_on_cpu = on_cpu
        assert module.remap(kjt).values().tolist() == m.dense(10)[ids].tolist()
    with pytest.raises(ValueError, match=r"tail_seed must be an int in \[-4611686018427387904, "):
        CompactMapping(
            torch.tensor([2]), torch.tensor([0], dtype=torch.int16), tail_seed=-(2**62) - 1,
            tail_offset=0, tail_rows=1,
        )  # fmt: skip


def test_quotient_mapping_by_hand() -> None:
    """``id // d`` over ``rows`` rows, nothing stored per id; a bad divisor is named."""
    from torchrec_lhf.compression.baselines import quotient_mapping

    m = quotient_mapping(3, 4)
    assert m.num_head == 0 and m.tail_seed == -3
    assert m.dense(10).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert m.rows(torch.tensor([9, 0, 5])).tolist() == [3, 0, 1]
    with pytest.raises(ValueError, match="divisor must be an int in"):
        quotient_mapping(0, 4)


def _qr_module(heights: dict[str, int], fraction: float, combine: str = "sum", **kwargs):
    from torchrec import EmbeddingBagConfig

    from torchrec_lhf import LearnedHashEmbeddingBagCollection
    from torchrec_lhf.compression.methods import qr_plan

    tables = [
        EmbeddingBagConfig(name=t, embedding_dim=2, num_embeddings=n, feature_names=[f"f_{t}"])
        for t, n in heights.items()
    ]
    plan = qr_plan(heights, fraction=fraction, combine=combine)
    return plan, LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, **kwargs)


def _by_table(heights: dict[str, int], batch: int):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(batch)
    lengths = torch.randint(0, 3, (len(heights) * batch,), generator=g)
    per_key = lengths.view(len(heights), batch).sum(1).tolist()
    values = torch.cat(
        [torch.randint(0, n, (k,), generator=g) for n, k in zip(heights.values(), per_key)]
    )
    kjt = KeyedJaggedTensor(keys=[f"f_{t}" for t in heights], values=values, lengths=lengths)
    return kjt, dict(zip(heights, torch.split(values, per_key)))


@pytest.mark.parametrize("fraction, m", [(0.25, 4), (0.15, 7)])  # m: a shift, else not
@pytest.mark.parametrize("batch", [3, 300])  # few ids divide, many take the multiply
@pytest.mark.parametrize("read_lengths_on_cpu", [True, False])  # the kernel, the torch ops
def test_qr_computes_remainder_and_quotient_on_every_path(
    fraction: float, m: int, batch: int, read_lengths_on_cpu: bool
) -> None:
    """QR's two hash functions, ``id mod m`` and ``id // m``, computed from the id: the
    kernel's every quotient (``m`` a power of two: a shift; else a multiply for a feature of
    64 ids or more, a division below) and the torch ops, scripted too; nothing per id."""
    from torchrec.fx import symbolic_trace

    heights = {"a": 1000, "b": 777, "c": 4096, "d": 2000}
    plan, module = _qr_module(heights, fraction=fraction)
    m_T = [plan[t].heights[0] for t in heights]
    assert m_T == [m] * 4  # (rows m + ceil(N / m) nearest the budget)
    assert [plan[t].heights[1] for t in heights] == [
        -(-n // m) for n, m in zip(heights.values(), m_T)
    ]
    assert plan.remap_bytes() == 0
    assert module.remap.mapping.numel() == 0 and module.remap.remap_bytes() < 400
    module.remap.read_lengths_on_cpu = read_lengths_on_cpu
    kjt, ids_T = _by_table(heights, batch)
    out = module.remap(kjt).to_dict()
    for (t, ids), m in zip(ids_T.items(), m_T):
        assert torch.equal(out[f"f_{t}__h0"].values(), ids % m)
        assert torch.equal(out[f"f_{t}__h1"].values(), ids // m)
    scripted = torch.jit.script(symbolic_trace(module))
    torch.testing.assert_close(scripted(kjt).values(), module(kjt).values(), rtol=0, atol=0)


def test_qr_quotient_keeps_the_out_of_range_policy() -> None:
    """``modulo`` folds into ``[0, N)`` before the quotient; ``error`` names the id."""
    from torchrec import KeyedJaggedTensor

    raw = torch.tensor([2**63 - 1, -1, 1003, 5])
    kjt = KeyedJaggedTensor(["f_a"], raw, lengths=torch.ones(4, dtype=torch.long))
    plan, folding = _qr_module({"a": 1000}, fraction=0.1, out_of_range="modulo")
    m = plan["a"].heights[0]
    out = folding.remap(kjt).to_dict()
    assert out["f_a__h1"].values().tolist() == (torch.remainder(raw, 1000) // m).tolist()
    _, strict = _qr_module({"a": 1000}, fraction=0.1)
    with pytest.raises(ValueError, match=r"id 9223372036854775807 is out of range \[0, 1000\)"):
        strict.remap(kjt)


def test_divided_tails_beside_every_other_kind() -> None:
    """One module with a divided tail behind a cuckoo head, one behind a ranked head, a
    hashed tail, a dense table and a full one: the kernel, the torch ops and a state
    dict of other seeds (its divisors follow) give every mapping's rows."""
    from torchrec import EmbeddingBagConfig

    from tests.test_plan_compact import _compact
    from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash

    def compact(head: list[int], rows: list[int], seed: int, offset: int, tail: int):
        return _compact(head, rows, seed=seed, offset=offset, tail=tail)

    n = 70_000  # (a ranked head pays from a block's worth of ids)
    ranked = list(range(0, 60_000, 2))
    tables = {
        "cuckoo": TableHash("cuckoo", 1000, (compact([5, 17], [0, 1], -7, 2, 60),), (62,)),
        "ranked": TableHash(
            "ranked",
            n,
            (compact(ranked, list(range(len(ranked))), -11, 30_000, 4000),),
            (34_000,),
        ),  # fmt: skip
        "hashed": TableHash("hashed", 500, (compact([1], [0], 3, 1, 40),), (41,)),
        "dense": TableHash("dense", 300, (torch.arange(300, dtype=torch.int32) % 7,), (7,)),
    }
    heights = {"cuckoo": 1000, "ranked": n, "hashed": 500, "dense": 300, "full": 20}
    plan = HashPlan(list(tables.values()))
    configs = [
        EmbeddingBagConfig(name=t, embedding_dim=2, num_embeddings=h, feature_names=[f"f_{t}"])
        for t, h in heights.items()
    ]
    module = LearnedHashEmbeddingBagCollection(tables=configs, plan=plan)
    assert module.remap.has_ranked and module.remap.tail_divisor_J.numel() == 5
    kjt, ids_T = _by_table(heights, 200)

    def expected(p: HashPlan) -> dict[str, list[int]]:
        out = {f"f_{t}": ids_T[t].tolist() for t in heights if t not in p.table_names}
        for t in p.table_names:
            out[f"f_{t}"] = p[t].dense_mapping(0)[ids_T[t]].tolist()
        return out

    def got() -> dict[str, list[int]]:
        return {k: v.values().tolist() for k, v in module.remap(kjt).to_dict().items()}

    for on_cpu in (True, False):
        module.remap.read_lengths_on_cpu = on_cpu
        assert got() == expected(plan)
    # other seeds in a state dict (the same heads): the divided tails follow them
    state = module.remap.state_dict()
    state["tail_seed_J"] = torch.tensor([-3, 9, -2, 0, 0])
    module.remap.load_state_dict(state)
    assert module.remap.tail_divisor_J.tolist() == [3, 0, 2, 0, 0]
    other = dict(tables)
    for t, seed in (("cuckoo", -3), ("ranked", 9), ("hashed", -2)):
        c = tables[t].mappings[0]
        other[t] = TableHash(
            t, tables[t].num_embeddings,
            (compact(c.head_ids.tolist(), c.head_rows.tolist(), seed, c.tail_offset, c.tail_rows),),
            tables[t].heights,
        )  # fmt: skip
    for on_cpu in (True, False):
        module.remap.read_lengths_on_cpu = on_cpu
        assert got() == expected(HashPlan(list(other.values())))
