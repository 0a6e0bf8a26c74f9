"""The remap's fast paths (int32 mappings and rows): FBGEMM's ``pruned_array_lookup`` for
dense plans, the packed cuckoo table for compact ones, and the one-reduction range guard.
Each equals the general path and a lookup by hand, traces, scripts and reads nothing on
the host."""

from __future__ import annotations

import copy

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.fx import symbolic_trace as torchrec_trace

from tests._int32_plans import TABLES, batch, compact, dense, mappings
from tests.modules._host_reads import host_reads
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.modules import head_table
from torchrec_lhf.modules.remap_lookup import (
    array_offsets,
    compact_runs,
    length_guard,
    range_guard,
)
from torchrec_lhf.plan_compact import CompactMapping


def _by_hand(ebc: LearnedHashEmbeddingBagCollection, kjt: KeyedJaggedTensor) -> dict:
    """Each feature's rows from the plan's mappings (the id itself where uncompressed)."""
    maps = mappings(shared=True)
    owner = {f: t for t, (fs, _, _) in dict(TABLES, shared=(["d", "e"], 0, 0)).items() for f in fs}
    return {
        f: (maps[owner[f]][0].long()[jt.values()] if owner[f] in maps else jt.values())
        for f, jt in kjt.to_dict().items()
    }


def _general(ebc: LearnedHashEmbeddingBagCollection) -> LearnedHashEmbeddingBagCollection:
    """A copy that takes the general (torch-only) dense path."""
    twin = copy.deepcopy(ebc)
    twin.remap.has_array_offsets = False
    return twin


def test_array_offsets_by_hand() -> None:
    # compressed features at 0 and 10, an uncompressed one between them: an empty region
    def regions(offsets: list[int], n: int, dtype: torch.dtype = torch.int32) -> list | None:
        out = array_offsets(offsets, torch.zeros(n, dtype=dtype))
        return None if out is None else out.tolist()

    assert regions([0, -1, 10], 15) == [0, 10, 10, 15]
    assert regions([-1, 0], 5) == [0, 0, 5]
    assert regions([0, 0], 10) is None  # two features of one table share a region
    assert regions([10, 0], 15) is None  # offsets must increase with the feature
    assert regions([0, 10], 15, torch.int16) is None  # the op takes int32 mappings only


@pytest.mark.parametrize("keys", [["a", "b", "c"], ["c", "a", "b"]])
@pytest.mark.parametrize("out_of_range", ["error", "modulo"])
def test_fbgemm_dense_lookup_equals_general_path_and_hand(
    keys: list[str], out_of_range: str
) -> None:
    ebc = dense(out_of_range=out_of_range)
    assert ebc.remap.mapping.dtype == torch.int32 and ebc.remap.has_array_offsets
    general = _general(ebc)
    for seed in range(3):
        kjt = batch(keys, seed)
        fast, slow = ebc.remap(kjt), general.remap(kjt)
        assert torch.equal(fast.values(), slow.values()) and fast.values().dtype == torch.long
        expected = _by_hand(ebc, kjt)
        for f, jt in fast.to_dict().items():
            assert jt.values().tolist() == expected[f].tolist(), f
        torch.testing.assert_close(ebc(kjt).values(), general(kjt).values(), rtol=0, atol=0)


def test_table_of_two_features_takes_the_general_path() -> None:
    ebc = dense(shared=True)
    assert ebc.remap.mapping.dtype == torch.int32 and not ebc.remap.has_array_offsets
    kjt = batch(["e", "a", "d", "b", "c"])
    expected = _by_hand(ebc, kjt)
    for f, jt in ebc.remap(kjt).to_dict().items():
        assert jt.values().tolist() == expected[f].tolist(), f


def test_huge_and_negative_ids_fold_under_modulo() -> None:
    ebc = dense(out_of_range="modulo")
    raw = torch.tensor([2**63 - 1, -1, -(2**63), 40_000, 39_999, 0, 7, -51, 12, -1])
    kjt = KeyedJaggedTensor(["a", "b", "c"], raw, lengths=torch.tensor([5, 3, 2]))
    rows = ebc.remap(kjt).values()
    assert torch.equal(rows, _general(ebc).remap(kjt).values())
    wide = mappings()["wide"][0].long()
    folded = torch.remainder(raw[:5], 40_000)
    assert rows[:5].tolist() == wide[folded].tolist()
    assert rows[8:].tolist() == [0, 11]  # uncompressed: 12 % 12, -1 % 12


@pytest.mark.parametrize("make", [dense, compact])
@pytest.mark.parametrize("bad", [40_000, -1, 2**63 - 1, -(2**63)])
def test_out_of_range_id_is_named_eager_and_fails_scripted(make, bad: int) -> None:  # noqa: ANN001
    ebc = make()
    kjt = batch(["a", "b", "c"], 1)
    values = kjt.values().clone()
    values[0] = bad  # the first id of feature "a" (table wide, 40_000 ids)
    kjt = KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=kjt.lengths())
    with pytest.raises(ValueError, match=rf"feature 'a': id {bad} is out of range \[0, 40000\)"):
        ebc.remap(kjt)
    # scripted on CPU: the kernel's operator, given the features' names (before, it named
    # "internal feature 0"; where the kernel cannot be built, its fallback names it too)
    message = rf"feature 'a': id {bad} is out of range \[0, 40000\)"
    with pytest.raises((RuntimeError, ValueError), match=message):
        torch.jit.script(torchrec_trace(ebc))(kjt)


def test_range_guard_at_the_edges() -> None:
    heights = torch.tensor([3, 2**62])
    j = torch.tensor([0, 0, 1, 1])
    assert range_guard(torch.tensor([0, 2, 0, 2**62 - 1]), j, heights).tolist() == [0]
    for ids in ([3, 0, 0, 0], [-1, 0, 0, 0], [0, 0, 2**62, 0], [0, 0, 0, -(2**63)]):
        with pytest.raises(RuntimeError, match="out of bounds"):
            range_guard(torch.tensor(ids), j, heights)


def test_length_guard_fails_on_a_negative_length_only() -> None:
    for lengths in ([0, 3, 1], [], [2**62]):
        guard = length_guard(torch.tensor(lengths, dtype=torch.long))
        assert guard.tolist() == [0] and guard.dtype == torch.long
    assert length_guard(torch.tensor([1, 0], dtype=torch.int32)).dtype == torch.int32
    for lengths in ([-1], [3, 0, -(2**63)]):
        with pytest.raises(RuntimeError, match="out of bounds"):
            length_guard(torch.tensor(lengths))


@pytest.mark.parametrize("make", [dense, compact])
def test_fast_paths_trace_script_and_read_nothing(make) -> None:  # noqa: ANN001
    ebc = make()
    kjt = batch(["c", "a", "b"], 2)
    expected = ebc(kjt).values()
    scripted = torch.jit.script(torchrec_trace(ebc))  # the general path, compiled
    torch.testing.assert_close(scripted(kjt).values(), expected, rtol=0, atol=0)
    kjt.length_per_key()  # as TorchRec's own reads leave it
    with host_reads():
        ebc.remap(kjt)


def test_packed_head_table_equals_dense_twin_and_round_trips() -> None:
    packed, twin_dense = compact(), dense()
    remap = packed.remap
    assert remap.slot_keys.dtype == torch.int64 and remap.slot_rows.numel() == 0  # packed
    assert remap.head_rows.dtype == torch.int32
    for seed in range(3):
        kjt = batch(["b", "c", "a"], seed)
        rows = remap(kjt).to_dict()
        expected = _by_hand(twin_dense, kjt)
        # table i: tail seed i + 5, the tail in rows [i, height)
        for f, i, height in (("a", 0, 33_000), ("b", 1, 7)):
            ids = kjt.to_dict()[f].values()
            head = ids % 3 == 0
            assert rows[f].values()[head].tolist() == expected[f][head].tolist()
            tail = rows[f].values()[~head]
            assert bool(((tail >= i) & (tail < height)).all())
        assert rows["c"].values().tolist() == kjt.to_dict()["c"].values().tolist()
    # memory: the packed table has the bytes of int32 keys + int32 rows
    slots = remap.slot_keys.numel()
    assert remap.remap_bytes() == 3 * 3 * 8 + slots * 8
    state = remap.state_dict()
    keys = torch.cat([torch.arange(0, 40_000, 3), 40_000 + torch.arange(0, 50, 3)])
    assert torch.equal(state["head_keys"].long(), keys)
    twin = compact()
    changed = dict(state, head_rows=torch.zeros_like(state["head_rows"]))
    twin.remap.load_state_dict(changed)  # rebuilds (and packs) the table
    assert twin.remap.slot_rows.numel() == 0
    kjt = batch(["a", "b", "c"], 0)
    ids = kjt.to_dict()["a"].values()
    assert bool((twin.remap(kjt).to_dict()["a"].values()[ids % 3 == 0] == 0).all())


def test_pack_unpack_and_packed_lookup_equal_the_two_arrays() -> None:
    g = torch.Generator().manual_seed(0)
    keys_K = torch.randperm(100_000, generator=g)[:5000].int()
    rows_K = torch.randint(0, 2**31 - 1, (5000,), generator=g, dtype=torch.int32)
    x_K = torch.randint(-(2**63), 2**63 - 1, (5000,), generator=g)
    table = head_table.build(keys_K, rows_K, x_K)
    packed = head_table.pack(*table)
    assert packed is not None and packed.dtype == torch.int64
    slot_keys, slot_rows = head_table.unpack(packed)
    assert torch.equal(slot_keys, table[0]) and torch.equal(slot_rows, table[1])
    query = torch.cat([keys_K, torch.randint(0, 100_000, (5000,), generator=g).int()])
    x = torch.cat([x_K, torch.randint(-(2**63), 2**63 - 1, (5000,), generator=g)])
    default = torch.randint(0, 9, (10_000,), generator=g)
    two = head_table.lookup(query, x, *table, default)
    one = head_table.lookup(query, x, packed, table[1][:0], default)
    assert torch.equal(one, two) and torch.equal(two[:5000], rows_K.long())
    assert head_table.pack(table[0], table[1].short()) is None  # int16 rows stay unpacked


@pytest.mark.parametrize("make", [dense, compact, lambda: _general(dense())])
def test_int32_ids_give_int32_rows_equal_to_int64_ones(make) -> None:  # noqa: ANN001
    ebc = make()
    kjt = batch(["c", "a", "b"], 3)
    narrow = KeyedJaggedTensor(kjt.keys(), kjt.values().int(), lengths=kjt.lengths().int())
    rows, rows32 = ebc.remap(kjt).values(), ebc.remap(narrow).values()
    assert rows.dtype == torch.long and rows32.dtype == torch.int32
    assert torch.equal(rows32.long(), rows)


def test_compact_runs_by_hand() -> None:
    assert compact_runs([True, False, True, True, False]) == [(0, 1), (2, 4)]
    assert compact_runs([False, True]) == [(1, 2)]
    assert compact_runs([True, True]) is None  # every id is compact: no split
    assert compact_runs([False, False]) is None


def _interleaved(out_of_range: str, wide: bool = False) -> LearnedHashEmbeddingBagCollection:
    """Compact tables between uncompressed ones: compact runs [(1, 2), (3, 5)]. ``wide``:
    table ``a`` has 40,000 rows, so rows are int32 and the head table packed (the fused
    kernel's case, where it is built)."""
    a = (50_000, 40_000) if wide else (900, 60)
    spec = {"p": (12, None), "a": a, "q": (7, None), "b": (500, 40), "c": (64, 9)}
    hashes = []
    for i, (t, (n, m)) in enumerate(spec.items()):
        if m is not None:
            head = torch.arange(1, n, 4)
            rows = (head * 7 % m).to(torch.int32 if wide else torch.int16)
            mapping = CompactMapping(
                head, rows, tail_seed=i, tail_offset=m // 3, tail_rows=m - m // 3
            )
            hashes.append(TableHash(t, n, (mapping,), (m,)))
    tables = [
        EmbeddingBagConfig(name=t, embedding_dim=4, num_embeddings=n, feature_names=[t])
        for t, (n, _) in spec.items()
    ]
    return LearnedHashEmbeddingBagCollection(
        tables=tables, plan=HashPlan(hashes), out_of_range=out_of_range
    )


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("out_of_range", ["error", "modulo"])
@pytest.mark.parametrize("keys", [["p", "a", "q", "b", "c"], ["c", "q", "a", "p", "b"]])
def test_compact_lookup_of_the_compact_runs_alone_equals_the_lookup_of_every_id(
    out_of_range: str, keys: list[str], wide: bool
) -> None:
    ebc = _interleaved(out_of_range, wide)
    assert ebc.remap.compact_runs == [(1, 2), (3, 5)]
    assert (ebc.remap.slot_rows.numel() == 0) == wide  # packed where wide
    every_id = copy.deepcopy(ebc)
    every_id.remap.compact_runs = None  # the compact lookup over every id, then selected
    heights = {"p": 12, "a": 50_000 if wide else 900, "q": 7, "b": 500, "c": 64}
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 3, (len(keys), 5), generator=g)
        lengths[seed % len(keys)] = 0  # a feature without ids
        values = torch.cat(
            [
                torch.randint(0, heights[k], (int(lengths[i].sum()),), generator=g)
                for i, k in enumerate(keys)
            ]
        )
        if out_of_range == "modulo":
            values = values + 1000 * torch.randint(-3, 3, values.shape, generator=g)
        kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten())
        split, whole = ebc.remap(kjt), every_id.remap(kjt)
        assert torch.equal(split.values(), whole.values())
        assert split.length_per_key() == whole.length_per_key()
        got = split.to_dict()
        for k, jt in kjt.to_dict().items():  # the uncompressed features' ids pass through
            if k in ("p", "q"):  # (folded under modulo)
                assert torch.equal(got[k].values(), torch.remainder(jt.values(), heights[k]))
        torch.testing.assert_close(ebc(kjt).values(), every_id(kjt).values(), rtol=0, atol=0)
    scripted = torch.jit.script(torchrec_trace(ebc))
    torch.testing.assert_close(scripted(kjt).values(), ebc(kjt).values(), rtol=0, atol=0)
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten())
    kjt.length_per_key()  # as TorchRec's own reads leave it
    with host_reads():
        ebc.remap(kjt)


def test_compact_runs_out_of_range_id_is_named() -> None:
    ebc = _interleaved("error")
    kjt = KeyedJaggedTensor(
        keys=["p", "a", "q", "b", "c"],
        values=torch.tensor([3, 5, 7, 2, 1]),  # q has 7 ids: 7 is out of range
        lengths=torch.ones(5, dtype=torch.int32),
    )
    with pytest.raises(ValueError, match=r"feature 'q': id 7 is out of range \[0, 7\)"):
        ebc.remap(kjt)
