"""The learned-hash EmbeddingCollection (torchrec_lhf/modules/embedding.py), by hand."""

from __future__ import annotations

import pytest
import torch
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    KeyedJaggedTensor,
)
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.fx import symbolic_trace as torchrec_trace

from tests._compact import to_compact
from tests._fixtures import sequence_batch, sequence_tables, two_hash_plan
from torchrec_lhf import (
    HashPlan,
    LearnedHashEmbeddingBagCollection,
    LearnedHashEmbeddingCollection,
    LearnedHashEmbeddingCollectionSharder,
    apply_hash_plan,
)
from torchrec_lhf.compression.methods import memrec_plan
from torchrec_lhf.distributed.embedding_bag import remap_bytes
from torchrec_lhf.distributed.planner import make_planner
from torchrec_lhf.modules.embedding import JaggedCombine
from torchrec_lhf.plan_compact import dense_mapping


def _by_hand(ec: LearnedHashEmbeddingCollection, plan: HashPlan, kjt: KeyedJaggedTensor) -> dict:
    """Each feature's per-id embeddings from the plan's dense rows and the internal tables."""
    table_of = {"f0": "t0", "f1": "t0", "f2": "t1", "f3": "t2"}
    out = {}
    for f, jt in kjt.to_dict().items():
        t, ids = table_of[f], jt.values()
        if t not in plan:
            out[f] = ec.embeddings[t].weight[ids]
            continue
        th = plan[t]
        names = [t] if th.num_hashes == 1 else [f"{t}__h{h}" for h in range(th.num_hashes)]
        terms = [
            ec.embeddings[name].weight[dense_mapping(m, th.num_embeddings).long()[ids]]
            for name, m in zip(names, th.mappings)
        ]
        if th.num_hashes == 1:
            out[f] = terms[0]
        elif th.combine == "sum":
            out[f] = sum(terms)
        elif th.combine == "mult":
            out[f] = terms[0] * terms[1]
        else:  # scaled_sum
            out[f] = sum(terms[:-1]) * terms[-1]
    return out


@pytest.mark.parametrize("case", ["one", "sum", "mult", "compact", "memrec"])
def test_per_id_embeddings_by_hand(case: str) -> None:
    torch.manual_seed(0)
    if case == "one":
        g = torch.Generator().manual_seed(1)
        plan = HashPlan.from_mappings({"t0": torch.randint(0, 7, (40,), generator=g)})
    elif case == "memrec":
        plan = memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3)
    elif case == "compact":
        plan = to_compact(two_hash_plan("sum"), ranked=True)
    else:
        plan = two_hash_plan(case)
    ec = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan)
    kjt = sequence_batch()
    out = ec(kjt)
    assert list(out) == ["f0", "f1", "f2", "f3"]  # a plain collection's order
    expected = _by_hand(ec, plan, kjt)
    for f, jt in kjt.to_dict().items():
        torch.testing.assert_close(out[f].values(), expected[f], rtol=0, atol=0)
        assert torch.equal(out[f].lengths(), jt.lengths())
    # the logical view a model reads, the internal one a sharding plan names
    assert [c.name for c in ec.embedding_configs()] == ["t0", "t1", "t2"]
    assert ec.embedding_names_by_table() == [["f0", "f1"], ["f2"], ["f3"]]
    internal = {c.name: c.num_embeddings for c in ec.internal_embedding_configs()}
    assert internal["t2"] == 12 and sum(internal.values()) < 40 + 30 + 12
    assert remap_bytes(ec) == ec.remap.remap_bytes() > 0


def test_traces_equal_to_eager() -> None:
    torch.manual_seed(0)
    ec = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=two_hash_plan("sum"))
    kjt = sequence_batch(3)
    eager = ec(kjt)
    for tracer in (torchrec_trace, torch.fx.symbolic_trace):
        traced = tracer(ec)(kjt)
        for f in eager:
            assert torch.equal(traced[f].values(), eager[f].values())
            assert torch.equal(traced[f].lengths(), eager[f].lengths())


def test_bad_input_is_named() -> None:
    tables = sequence_tables()
    with pytest.raises(ValueError, match=r"table 't1': combine 'concat' splits the dim"):
        LearnedHashEmbeddingCollection(tables=tables, plan=two_hash_plan("concat"))
    with pytest.raises(ValueError, match=r"feature 'f': combine 'concat' splits the dim"):
        JaggedCombine([("f", ["f__h0", "f__h1"], "concat")])
    with pytest.raises(ValueError, match="need_indices=True is not supported"):
        LearnedHashEmbeddingCollection(tables=tables, plan=two_hash_plan("sum"), need_indices=True)
    with pytest.raises(TypeError, match="list of EmbeddingConfig, got items of types"):
        LearnedHashEmbeddingCollection(
            tables=[EmbeddingBagConfig(name="t0", embedding_dim=8, num_embeddings=40)],
            plan=two_hash_plan("sum"),
        )
    with pytest.raises(ValueError, match=r"hash plan tables \['t1'\] are not tables"):
        LearnedHashEmbeddingCollection(tables=tables[:1], plan=two_hash_plan("sum"))
    ec = LearnedHashEmbeddingCollection(tables=tables, plan=two_hash_plan("sum"))

    def four(first_id: int) -> KeyedJaggedTensor:
        ids = torch.tensor([first_id, 1, 2, 3])
        return KeyedJaggedTensor(
            keys=["f0", "f1", "f2", "f3"], values=ids, lengths=torch.ones(4, dtype=torch.long)
        )

    with pytest.raises(ValueError, match=r"feature 'f0': id 40 is out of range \[0, 40\)"):
        ec(four(40))
    folded = LearnedHashEmbeddingCollection(
        tables=tables, plan=two_hash_plan("sum"), out_of_range="modulo"
    )  # 40 folds to 0
    assert torch.equal(folded(four(40))["f0"].values(), folded(four(0))["f0"].values())
    # another plan's remap is refused on load, naming the key
    other = LearnedHashEmbeddingCollection(tables=tables, plan=two_hash_plan("mult"))
    ec.load_state_dict(other.state_dict())  # the same plan: loads
    wrong = HashPlan.from_mappings({"t0": torch.arange(40) % 3})
    with pytest.raises((RuntimeError, ValueError), match="remap"):
        LearnedHashEmbeddingCollection(tables=tables, plan=wrong).load_state_dict(ec.state_dict())


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    plan = to_compact(two_hash_plan("sum"), ranked=True)
    ec = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan)
    fresh = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan)
    fresh.load_state_dict(ec.state_dict())
    kjt = sequence_batch(5)
    for f, jt in ec(kjt).items():
        assert torch.equal(fresh(kjt)[f].values(), jt.values())


def test_apply_hash_plan_converts_sequence_and_pooled_collections() -> None:
    torch.manual_seed(0)
    seq = EmbeddingCollection(tables=sequence_tables())
    pooled = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="u", embedding_dim=4, num_embeddings=20, feature_names=["g"])
        ]
    )
    kept = seq.embeddings["t2"].weight.detach().clone()
    model = torch.nn.ModuleDict({"seq": seq, "pooled": pooled})
    ids = torch.arange(40)
    plan = HashPlan.from_mappings({"t0": ids % 9, "t1": ids[:30] % 4, "u": torch.arange(20) % 5})
    apply_hash_plan(model, plan)
    assert type(model["seq"]) is LearnedHashEmbeddingCollection
    assert type(model["pooled"]) is LearnedHashEmbeddingBagCollection
    assert torch.equal(model["seq"].embeddings["t2"].weight, kept)  # uncompressed: kept
    # TorchRec's options of the collection travel with it, to the view its sharder reads
    gathered = EmbeddingCollection(tables=sequence_tables(), use_gather_select=True)
    converted = apply_hash_plan(gathered, plan_of(["t0"]))
    assert converted.use_gather_select() and converted.internal_tables().use_gather_select()
    # a bare collection is converted and returned; a plan table in no collection is named
    bare = apply_hash_plan(EmbeddingCollection(tables=sequence_tables()), plan_of(["t0"]))
    assert type(bare) is LearnedHashEmbeddingCollection
    with pytest.raises(ValueError, match=r"\['nope'\] match no EmbeddingBagCollection or Embed"):
        apply_hash_plan(EmbeddingCollection(tables=sequence_tables()), plan_of(["t0", "nope"]))


def plan_of(names: list[str]) -> HashPlan:
    return HashPlan.from_mappings({n: torch.arange(40) % 6 for n in names})


def test_planner_plans_the_internal_tables_and_reserves_the_remap() -> None:
    model = torch.nn.ModuleDict(
        {"seq": EmbeddingCollection(tables=sequence_tables(), device=torch.device("meta"))}
    )
    apply_hash_plan(model, two_hash_plan("sum"))
    planner = make_planner(world_size=2, compute_device="cpu", batch_size=8)
    plan = planner.plan(model, [LearnedHashEmbeddingCollectionSharder()])
    assert sorted(plan.plan["seq"]) == ["t0", "t1__h0", "t1__h1", "t2"]
    assert {ps.sharding_type for ps in plan.plan["seq"].values()} <= {
        "table_wise",
        "row_wise",
        "column_wise",
    }
    with pytest.raises(ValueError, match=r"constrain \{'t1': \['t1__h0', 't1__h1'\]\}"):
        make_planner(
            world_size=2,
            compute_device="cpu",
            batch_size=8,
            constraints={"t1": ParameterConstraints(sharding_types=["row_wise"])},
        ).plan(model, [LearnedHashEmbeddingCollectionSharder()])
