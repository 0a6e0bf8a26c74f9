"""Ranked heads in the remap (modules.head_rank): the lookup by hand at block edges and in a
full block, beside cuckoo and dense tables, the bytes held, the state dict round trip, and
the lookup's literals against the plan's constants."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

from torchrec_lhf.modules import head_rank
from torchrec_lhf.modules.remap import FeatureRemap
from torchrec_lhf.modules.remap_layout import InternalFeature, MappingPacker
from torchrec_lhf.plan_compact import RANK_BLOCK, RANK_BLOCK_BITS, CompactMapping, ranked_bytes

BIG = 3 * RANK_BLOCK + 5  # ids over four blocks


def _ranked(ids: torch.Tensor, seed: int) -> CompactMapping:
    k = ids.numel()
    return CompactMapping(
        ids, torch.arange(k, dtype=torch.int32), tail_seed=seed, tail_offset=k, tail_rows=7
    )


def _tables() -> list[tuple[str, int, object]]:
    """Four tables: ranked across blocks (edges, offsets >= 2**15, an empty block), a
    cuckoo head (rows not ranks), a dense mapping, ranked with one full block of 2**16."""
    edges = torch.tensor(
        sorted({0, 1, 40_000, 65_535, 65_536, 70_000, 196_607, 196_610, *range(100, 140)})
    )
    cuckoo = CompactMapping(
        torch.arange(3, 300, 7), torch.arange(43, dtype=torch.int32).flip(0) % 11,
        tail_seed=4, tail_offset=11, tail_rows=5,
    )  # fmt: skip
    full = torch.cat([torch.arange(RANK_BLOCK), torch.tensor([RANK_BLOCK + 3])])
    return [
        ("edges", BIG, _ranked(edges, 1)),
        ("cuckoo", 300, cuckoo),
        ("dense", 50, torch.arange(50, dtype=torch.int32) % 9),
        ("full", 2 * RANK_BLOCK, _ranked(full, 2)),
    ]


def _remap(tables: list[tuple[str, int, object]]) -> FeatureRemap:
    packer = MappingPacker()
    features = []
    for name, n, m in tables:
        height = (m.num_head + 7) if isinstance(m, CompactMapping) and m.rows_are_ranks else 16
        offset, tail = packer.add(m, n, height)
        features.append(InternalFeature(name, name, offset, n, tail))
    dense, compact = packer.buffers()
    return FeatureRemap(features, dense, compact=compact)


def _rows(m: object, ids: torch.Tensor) -> torch.Tensor:
    return m.rows(ids) if isinstance(m, CompactMapping) else m[ids].long()


def _batch(tables: list[tuple[str, int, object]]) -> tuple[KeyedJaggedTensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    values, lengths, expected = [], [], []
    for _, n, m in tables:
        ids = torch.randint(0, n, (500,), generator=g)
        if isinstance(m, CompactMapping):  # every head id, and its neighbours
            ids = torch.cat([ids, m.head_ids, (m.head_ids + 1).clamp(max=n - 1), m.head_ids - 1])
            ids = torch.cat([ids.clamp(min=0), torch.tensor([n - 1, 0])])
        values.append(ids)
        lengths.append(ids.numel())
        expected.append(_rows(m, ids))
    kjt = KeyedJaggedTensor(
        [t[0] for t in tables], torch.cat(values), lengths=torch.tensor(lengths)
    )
    return kjt, torch.cat(expected)


@pytest.mark.parametrize("read_lengths", [True, False])
def test_ranked_lookup_by_hand_beside_cuckoo_and_dense(read_lengths: bool) -> None:
    tables = _tables()
    remap = _remap(tables)
    # the bisection's steps: a span of the full block, 2**12 ids (its block's: 17)
    assert remap.has_ranked and remap.rank_steps.numel() == 13
    remap.read_lengths_on_cpu = read_lengths  # (False: the device path's ops, on CPU)
    kjt, expected = _batch(tables)
    assert torch.equal(remap(kjt).values(), expected)
    # rows of the ranked tables are their ranks: the ids' positions in the head
    edges = tables[0][2]
    kjt = KeyedJaggedTensor(["edges"], edges.head_ids, lengths=torch.tensor([edges.num_head]))
    one = _remap(tables[:1])
    assert one(kjt).values().tolist() == list(range(edges.num_head))


def test_ranked_heads_hold_their_plan_bytes_and_the_cuckoo_the_rest() -> None:
    tables = _tables()
    remap = _remap(tables)
    ranked = [m for _, _, m in tables if isinstance(m, CompactMapping) and m.rows_are_ranks]
    assert all(m.ranked(n) for _, n, m in tables if m in ranked)
    # the ranked form: 2 bytes an id and 4 a block (and the end) per table, and one empty
    # entry of the features that are not ranked
    expected = sum(ranked_bytes(m.num_head, n) for _, n, m in tables if m in ranked) + 2 * 4
    assert remap.rank_block_starts.nbytes + remap.rank_offsets.nbytes == expected
    cuckoo = tables[1][2]
    packed = remap.slot_keys  # (int32 keys and rows: one int64 a slot)
    assert remap.slot_rows.numel() == 0 and packed.numel() >= cuckoo.num_head
    tails = 3 * len(tables) * 8
    # and in memory only, the kernel's fine directory: 16 int32 a directory entry
    fine = remap.rank_fine.nbytes
    assert fine == 16 * remap.rank_block_starts.nbytes
    assert remap.remap_bytes() == remap.mapping.nbytes + tails + packed.nbytes + expected + fine


def test_state_dict_shows_every_head_sorted_and_rebuilds_both_forms() -> None:
    tables = _tables()
    remap = _remap(tables)
    state = remap.state_dict()
    keys, rows = state["head_keys"], state["head_rows"]
    assert bool((keys[1:] > keys[:-1]).all())
    heads = sum(m.num_head for _, _, m in tables if isinstance(m, CompactMapping))
    assert keys.numel() == rows.numel() == heads
    twin = _remap(tables)
    twin.load_state_dict(state)
    kjt, expected = _batch(tables)
    assert torch.equal(twin(kjt).values(), expected)
    # heads whose rows are no longer ranks move to the cuckoo table, and back
    changed = dict(state)
    changed["head_rows"] = torch.zeros_like(rows)
    twin.load_state_dict(changed)
    assert not twin.has_ranked and twin.rank_offsets.numel() == 0
    assert torch.equal(twin.head_rows, torch.zeros_like(rows).to(twin.head_rows.dtype))
    twin.load_state_dict(state)
    assert twin.has_ranked and torch.equal(twin(kjt).values(), expected)


def test_lookup_literals_are_the_plans_constants() -> None:
    # head_rank.lookup spells them as literals (TorchScript compiles no global ints)
    assert (RANK_BLOCK_BITS, RANK_BLOCK - 1, head_rank._BIAS) == (16, 65535, 32768)
    assert RANK_BLOCK == 2**RANK_BLOCK_BITS
