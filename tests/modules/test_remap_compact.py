"""The remap with compact (head/tail) hash functions: equal to the dense remap of the same
mapping, mixed modules, range policies at extreme ids, trace + script, no host reads,
state dicts, bytes."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.fx import symbolic_trace as torchrec_trace

from tests._compact import compact_of, same_seed_plan, to_compact
from tests._fixtures import three_tables, two_hash_plan
from tests.modules._host_reads import host_reads
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.distributed.embedding_bag import remap_bytes
from torchrec_lhf.modules import compact_kernel, head_table
from torchrec_lhf.modules.quant import quantize_learned_hash
from torchrec_lhf.plan_compact import CompactMapping

# which hash functions are compact: all, none, or some (a mixed module); "ranked": every
# head's rows its ranks (held ranked: modules.head_rank); "ranked-mixed": one ranked, one
# in the cuckoo table, one dense
ENCODINGS = {
    "compact": None,
    "mixed": [("t0", 0), ("t1", 1)],
    "ranked": None,
    "ranked-mixed": [("t1", 1)],
}


def _compact_plan(encoding: str, combine: str = "sum") -> HashPlan:
    plan = to_compact(two_hash_plan(combine), ENCODINGS[encoding], ranked="ranked" in encoding)
    return to_compact(plan, [("t0", 0)]) if encoding == "ranked-mixed" else plan


def _dense_twin(plan: HashPlan) -> HashPlan:
    """The same mappings, every hash function dense."""
    return HashPlan(
        [
            TableHash(
                t.name,
                t.num_embeddings,
                tuple(t.dense_mapping(h) for h in range(t.num_hashes)),
                t.heights,
                t.combine,
            )
            for t in plan
        ]
    )


def _batch(seed: int = 0, *, weighted: bool = False) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    keys, heights = ["f3", "f0", "f2", "f1"], [12, 40, 30, 40]  # not the tables' order
    lengths = torch.randint(0, 4, (len(keys), 3), generator=g)
    values = torch.cat(
        [torch.randint(0, h, (int(lengths[i].sum()),), generator=g) for i, h in enumerate(heights)]
    )
    weights = torch.rand(values.shape, generator=g) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten(), weights=weights)


def _pair(
    encoding: str, combine: str = "sum", weighted: bool = False, out_of_range: str = "error"
) -> tuple[LearnedHashEmbeddingBagCollection, LearnedHashEmbeddingBagCollection]:
    """A module with a compact (or mixed) plan and one with its dense twin, same weights."""
    plan = _compact_plan(encoding, combine)
    torch.manual_seed(0)
    kwargs = {"tables": three_tables(), "is_weighted": weighted, "out_of_range": out_of_range}
    compact = LearnedHashEmbeddingBagCollection(plan=plan, **kwargs)
    dense = LearnedHashEmbeddingBagCollection(plan=_dense_twin(plan), **kwargs)
    weights = {k: v for k, v in compact.state_dict().items() if not k.startswith("remap.")}
    dense.load_state_dict(weights, strict=False)
    return compact, dense


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("combine", "weighted"), [("sum", False), ("concat", True)])
def test_compact_module_equals_dense_module_of_the_same_mapping(
    encoding: str, combine: str, weighted: bool
) -> None:
    compact, dense = _pair(encoding, combine, weighted)
    assert compact.remap.has_compact and not dense.remap.has_compact
    assert compact.remap.has_ranked == ("ranked" in encoding)
    for seed in range(3):
        kjt = _batch(seed, weighted=weighted)
        assert torch.equal(compact.remap(kjt).values(), dense.remap(kjt).values())
        torch.testing.assert_close(compact(kjt).values(), dense(kjt).values(), rtol=0, atol=0)


def test_all_compact_module_holds_no_dense_mapping() -> None:
    compact, dense = _pair("compact")
    assert compact.remap.mapping.numel() == 0
    keys = compact.remap.head_keys
    assert keys.dtype == torch.int32 and bool((keys[1:] > keys[:-1]).all())
    assert compact.remap.head_rows.dtype == torch.int16
    # heads: t0 20 ids, t1 15 ids per hash (every other id); tail parameters per feature
    # held in memory: the tail parameters and the heads' cuckoo table (int32 keys, int16
    # rows a slot); the state dict shows the heads sorted (the plan's form)
    slots = int(50 / head_table.LOAD) + 1
    assert compact.remap.slot_keys.numel() == slots
    assert compact.remap.remap_bytes() == 3 * 5 * 8 + slots * (4 + 2)
    state = compact.remap.state_dict()
    assert torch.equal(state["head_keys"], keys) and state["head_rows"].numel() == 50
    assert remap_bytes(compact) == compact.remap.remap_bytes()
    assert remap_bytes(dense) == 40 + 30 + 30  # uint8: every height under 256


def test_huge_and_negative_raw_ids_fold_under_modulo() -> None:
    n = 2**31 - 1  # a logical table of 2**31 - 1 ids stores only its head
    head = torch.tensor([0, 5, 2**31 - 2])
    m = CompactMapping(
        head, torch.tensor([1, 2, 3], dtype=torch.int16), tail_seed=7, tail_offset=4, tail_rows=9
    )
    plan = HashPlan([TableHash("big", n, (m,), (13,))])
    tables = [
        EmbeddingBagConfig(name="big", embedding_dim=2, num_embeddings=n, feature_names=["f"])
    ]
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, out_of_range="modulo")
    assert ebc.remap.head_keys.dtype == torch.int32
    raw = torch.tensor([2**63 - 1, -1, -(2**63), 2**31 + 4, 5, 2**31 - 2, 0, 3])
    kjt = KeyedJaggedTensor(["f"], raw, lengths=torch.ones(8, dtype=torch.long))
    rows = ebc.remap(kjt).values()
    assert rows.tolist() == m.rows(torch.remainder(raw, n)).tolist()
    # -1 folds to n - 1 = 2**31 - 2 (head row 3), 2**31 + 4 to 5 (head row 2)
    assert rows[[1, 3, 4, 5, 6]].tolist() == [3, 2, 2, 3, 1]
    assert all(4 <= r < 13 for r in rows[[0, 2, 7]].tolist())  # tail ids
    match = r"feature 'f': id 9223372036854775807 is out of range \[0, 2147483647\)"
    with pytest.raises(ValueError, match=match):
        LearnedHashEmbeddingBagCollection(tables=tables, plan=plan).remap(kjt)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_out_of_range_id_is_named(encoding: str) -> None:
    compact, _ = _pair(encoding)
    kjt = _batch(1)
    values = kjt.values().clone()
    values[-1] = 40  # an id of f1 (table t0, 40 ids)
    bad = KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=kjt.lengths())
    with pytest.raises(ValueError, match=r"feature 'f1': id 40 is out of range \[0, 40\)"):
        compact.remap(bad)
    with pytest.raises(RuntimeError):  # scripted: the poisoned lookup's own error
        torch.jit.script(torchrec_trace(compact))(bad)


@pytest.mark.parametrize("tracer", [torchrec_trace, torch.fx.symbolic_trace])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_traces_and_scripts_float_and_quantized(tracer, encoding: str) -> None:  # noqa: ANN001
    compact, _ = _pair(encoding, "concat", weighted=True)
    kjt = _batch(2, weighted=True)
    expected = compact(kjt).values()
    gm = tracer(compact)
    torch.testing.assert_close(torch.jit.script(gm)(kjt).values(), expected, rtol=0, atol=0)
    q = quantize_learned_hash(compact.eval(), dtype=torch.qint8)
    scripted = torch.jit.script(tracer(q))
    torch.testing.assert_close(scripted(kjt).values(), q(kjt).values(), rtol=0, atol=0)
    assert any(name.endswith("remap.slot_keys") for name, _ in scripted.named_buffers())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # the cuckoo table travels with the served model
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(kjt).values(), q(kjt).values(), rtol=0, atol=0)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_remap_reads_nothing_on_the_host(encoding: str) -> None:
    compact, _ = _pair(encoding, "concat")
    kjt = _batch(0)
    kjt.length_per_key()  # as TorchRec's own reads leave it
    with host_reads():
        compact.remap(kjt)


def test_state_dict_round_trip_and_another_plan_rejected() -> None:
    compact, dense = _pair("mixed")
    state = compact.state_dict()
    assert {"remap.mapping", "remap.head_keys", "remap.head_rows", "remap.tail_seed_J"} <= set(
        state
    )
    twin, _ = _pair("mixed")
    twin.load_state_dict(state)  # same plan: loads
    kjt = _batch(0)
    assert torch.equal(twin(kjt).values(), compact(kjt).values())
    other = to_compact(two_hash_plan("sum"), ENCODINGS["mixed"], every=3)
    foreign = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=other)
    with pytest.raises(ValueError, match=r"remap.head_keys: .* another hash plan"):
        foreign.load_state_dict(state)
    with pytest.raises(ValueError, match="another hash plan"):
        compact.load_state_dict(dense.state_dict())  # the dense twin stores other buffers
    # a dense module's state dict is as before (no compact keys)
    assert not any("head" in k or "tail" in k for k in dense.state_dict())


def test_compact_of_fixture_is_what_it_says() -> None:
    m = compact_of(torch.tensor([3, 1, 4, 1, 5]), 6, every=2, seed=2)
    assert m.head_ids.tolist() == [0, 2, 4] and m.head_rows.tolist() == [3, 4, 5]


def test_remap_state_round_trip_rebuilds_the_head_table() -> None:
    compact, _ = _pair("compact")
    remap = compact.remap
    original = remap.state_dict()
    kjt = _batch(0)
    expected = remap(kjt).values()
    changed = dict(original)
    changed["head_rows"] = torch.zeros_like(original["head_rows"])  # every head id at row 0
    other = copy.deepcopy(remap)
    other.load_state_dict(changed)
    assert torch.equal(other.head_rows, changed["head_rows"])
    assert not torch.equal(other(kjt).values(), expected)
    other.load_state_dict(original)
    assert torch.equal(other(kjt).values(), expected)
    with pytest.raises(RuntimeError, match="Missing key.*head_keys"):
        other.load_state_dict({k: v for k, v in original.items() if k != "head_keys"})


def test_hash_functions_sharing_a_seed_and_head_ids(monkeypatch) -> None:  # noqa: ANN001
    """Before, building the module failed ("no cuckoo table of ... slots holds these ...
    keys"); now every path maps every id as the plan does: the kernel, the torch ops (as on
    CUDA), the scripted and quantized models (the operators, with the salts), a saved and
    loaded served model, and a state dict loaded into a fresh module."""
    configs, plan = same_seed_plan()
    ebc = LearnedHashEmbeddingBagCollection(tables=configs, plan=plan)
    salts = ebc.remap.probe_salt_J
    assert salts.numel() == 9 and int((salts != 0).sum()) == 7  # the first of each seed: 0
    g = torch.Generator().manual_seed(1)
    keys = [f"f{i}" for i in range(6)]
    lengths = torch.randint(0, 5, (6 * 8,), generator=g)
    # half the ids in the shared head, half anywhere
    values = torch.where(
        torch.rand(int(lengths.sum()), generator=g) < 0.5,
        torch.randint(0, 600, (int(lengths.sum()),), generator=g),
        torch.randint(0, 5000, (int(lengths.sum()),), generator=g),
    )
    kjt = KeyedJaggedTensor(keys, values, lengths=lengths)
    feats = kjt.to_dict()
    expected = {
        (f"f{i}" if t.num_hashes == 1 else f"f{i}__h{h}"): t.mappings[h].rows(
            feats[f"f{i}"].values()
        )
        for i, t in enumerate(plan)
        for h in range(t.num_hashes)
    }

    def check(remapped: KeyedJaggedTensor) -> None:
        got = remapped.to_dict()
        assert sorted(got) == sorted(expected)
        for name, rows in expected.items():
            assert torch.equal(got[name].values().long(), rows), name

    check(ebc.remap(kjt))
    out = ebc(kjt).values()
    with monkeypatch.context() as patch:  # the torch ops (as on CUDA): no kernel
        patch.setattr(compact_kernel, "fused_rows", lambda *args: None)
        check(ebc.remap(kjt))
        torch.testing.assert_close(ebc(kjt).values(), out, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.jit.script(torchrec_trace(ebc))(kjt).values(), out, rtol=0, atol=0
    )
    q = quantize_learned_hash(copy.deepcopy(ebc).eval(), dtype=torch.qint8)
    check(q.remap(kjt))
    scripted = torch.jit.script(torchrec_trace(q))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(
        torch.jit.load(buffer)(kjt).values(), q(kjt).values(), rtol=0, atol=0
    )
    fresh = LearnedHashEmbeddingBagCollection(tables=configs, plan=plan)
    fresh.load_state_dict(ebc.state_dict())
    check(fresh.remap(kjt))


def test_distinct_seeds_probe_as_before() -> None:
    """Where no two compact hash functions share a seed the salts are empty and the table
    is the one built from the unsalted mix (what models scripted before the salts hold)."""
    ebc = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=_compact_plan("compact"))
    remap = ebc.remap
    assert remap.probe_salt_J.numel() == 0
    keys_K, rows_K = remap.head_keys, remap.head_rows
    offsets_T, seeds_T, salts_T = remap._probe_salts()
    assert salts_T.abs().sum() == 0
    rebuilt = remap._head_table(keys_K, rows_K, offsets_T, seeds_T, torch.zeros_like(salts_T))
    assert torch.equal(rebuilt[0], remap.slot_keys)
