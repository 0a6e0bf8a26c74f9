"""The static cuckoo table of the compact heads, against a sorted search by hand."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.hashing import mix64
from torchrec_lhf.modules import head_table


def _table(keys: list[int], rows: list[int], seed: int = 3):
    keys_K = torch.tensor(keys, dtype=torch.int32)
    rows_K = torch.tensor(rows, dtype=torch.int16)
    return keys_K, rows_K, head_table.build(keys_K, rows_K, mix64(keys_K, seed))


def _lookup(query: list[int], table, seed: int = 3, default: int = -7) -> list[int]:
    q = torch.tensor(query, dtype=torch.int32)
    d = torch.full((len(query),), default, dtype=torch.long)
    return head_table.lookup(q, mix64(q, seed), *table, d).tolist()


def test_hand_table_finds_its_keys_and_only_them() -> None:
    _, _, table = _table([2, 9, 40, 41, 1000], [5, 0, 7, 1, 3])
    slot_keys, slot_rows = table
    assert slot_keys.numel() == int(5 / head_table.LOAD) + 1
    assert sorted(slot_keys[slot_keys >= 0].tolist()) == [2, 9, 40, 41, 1000]  # once each
    assert _lookup([41, 2, 3, 1000, 9, 0, 40, 999], table) == [1, 5, -7, 3, 0, -7, 7, -7]


def test_every_key_sits_in_one_of_its_choices() -> None:
    keys_K, _, (slot_keys, _) = _table(list(range(0, 3000, 3)), [1] * 1000)
    x_K = mix64(keys_K, 3)
    where_K = torch.stack(head_table.slots_of(x_K, slot_keys.numel()))  # (3, K)
    assert bool((slot_keys[where_K] == keys_K).any(0).all())


@pytest.mark.parametrize("k", [1, 2, 3, 50, 20000])
def test_lookup_equals_sorted_search(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    keys_K = torch.randperm(20 * k, generator=g)[:k].sort().values.to(torch.int32)
    rows_K = torch.randint(0, 2**15, (k,), generator=g, dtype=torch.int16)
    table = head_table.build(keys_K, rows_K, mix64(keys_K, 11))
    q_P = torch.randint(0, 20 * k, (5000,), generator=g, dtype=torch.int32)
    pos_P = torch.searchsorted(keys_K, q_P).clamp_(max=k - 1)
    want = torch.where(keys_K[pos_P] == q_P, rows_K[pos_P].long(), -1)
    got = head_table.lookup(q_P, mix64(q_P, 11), *table, torch.full((5000,), -1))
    assert torch.equal(got, want)


def test_build_is_deterministic() -> None:
    a = _table(list(range(0, 5000, 7)), list(range(715)))[2]
    b = _table(list(range(0, 5000, 7)), list(range(715)))[2]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_empty_head() -> None:
    _, _, table = _table([], [])
    assert _lookup([0, 5], table) == [-7, -7]


@pytest.mark.parametrize(
    ("keys", "message"), [([4, 3, 3], "got key 3 more than once"), ([-1, 2], "got key -1")]
)
def test_bad_keys_raise_naming_the_key(keys: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=f"distinct and >= 0, {message}"):
        _table(keys, [0] * len(keys))


def test_insertion_fails_cleanly_when_the_slots_cannot_hold_the_keys() -> None:
    x_K = mix64(torch.arange(10), 0)
    assert head_table._insert(x_K, 5) is None  # 10 keys, 5 slots
    assert head_table._insert(x_K, 13) is not None


def test_probe_salts_by_hand() -> None:
    """0 for the first hash function of each seed (by key offset, whatever the order given),
    a distinct nonzero mix for the later ones; none at all where the seeds differ."""
    offsets = torch.tensor([30, 0, 20, 10, 40])
    seeds = torch.tensor([5, 5, -1, 5, -1])
    salts = head_table.probe_salts(offsets, seeds).tolist()
    assert salts[1] == 0 and salts[2] == 0  # offsets 0 (seed 5) and 20 (seed -1) come first
    later = [salts[0], salts[3], salts[4]]
    assert all(s != 0 for s in later) and len(set(later)) == 3
    assert salts[3] == head_table.probe_salts(torch.tensor([10, 0]), torch.tensor([5, 5]))[0]
    distinct = head_table.probe_salts(torch.tensor([0, 7, 9]), torch.tensor([1, 2, -3]))
    assert distinct.tolist() == [0, 0, 0]
    assert head_table.probe_salts(torch.zeros(0, dtype=torch.long), torch.zeros(0)).numel() == 0


def test_the_same_keys_of_one_mix_fit_once_salted() -> None:
    """Entries whose mixed hashes are equal (one id in the heads of hash functions of one
    seed) share their three slots, so four of them could not be placed; salted, they are."""
    ids = torch.arange(50)
    keys = torch.cat([ids + 100 * t for t in range(5)]).int()  # five hash functions' keys
    x = mix64(ids, 3).repeat(5)
    rows = torch.arange(250, dtype=torch.int16)
    with pytest.raises(RuntimeError, match="no cuckoo table"):
        head_table.build(keys, rows, x)
    salt_T = head_table.probe_salts(torch.arange(5) * 100, torch.full((5,), 3))
    probe = x ^ salt_T.repeat_interleave(50)
    table = head_table.build(keys, rows, probe)
    d = torch.full((250,), -1, dtype=torch.long)
    assert head_table.lookup(keys, probe, *table, d).tolist() == list(range(250))
