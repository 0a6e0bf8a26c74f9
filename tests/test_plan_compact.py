"""Compact (head/tail) hash functions in a HashPlan: lookup by hand, validation, equality,
bytes, save/load (format 3, version-2 and version-1 files), ranked heads and
choose_encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchrec_lhf import HashPlan, TableHash, plan_compact
from torchrec_lhf._io import save_tensors
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan_compact import CompactMapping, choose_encoding

# table of N=10 ids and M=7 rows: head ids 2, 5, 7 -> rows 0, 1, 2; tail -> rows 3..6
N, M = 10, 7


def _compact(ids=(2, 5, 7), rows=(0, 1, 2), *, seed=3, offset=3, tail=4) -> CompactMapping:
    return CompactMapping(
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(rows, dtype=torch.int16),
        tail_seed=seed,
        tail_offset=offset,
        tail_rows=tail,
    )


def _tail(i: int) -> int:
    return 3 + int(tail_hash(torch.tensor([i]), 3, 4)[0])


def test_rows_by_hand_in_head_in_tail_and_at_the_boundaries() -> None:
    m = _compact()
    # below the first head id, the first, between, the last, above the last
    ids = [0, 2, 3, 5, 6, 7, 9]
    expected = [_tail(0), 0, _tail(3), 1, _tail(6), 2, _tail(9)]
    assert m.rows(torch.tensor(ids)).tolist() == expected
    assert all(3 <= r < 7 for r in (_tail(i) for i in range(N)))
    assert m.dense(N).tolist() == [
        expected[ids.index(i)] if i in ids else _tail(i) for i in range(N)
    ]
    assert m.dense(N).dtype == torch.int32 and m.rows(torch.tensor([1])).dtype == torch.int64


def test_empty_head_is_all_tail() -> None:
    m = _compact((), ())
    assert m.num_head == 0 and m.nbytes(N) == 0
    assert m.rows(torch.arange(N)).tolist() == [_tail(i) for i in range(N)]
    TableHash("t", N, (m,), (M,))  # valid


def test_nbytes_counts_int32_ids_below_2_31_and_row_width() -> None:
    assert _compact().nbytes(N) == 3 * (4 + 2)  # (ranks as rows, but ranked would be 14)
    big = CompactMapping(
        torch.tensor([5, 2**31]), torch.tensor([0, 1], dtype=torch.int32),
        tail_seed=0, tail_offset=0, tail_rows=2,
    )  # fmt: skip
    assert big.nbytes(2**31 + 1) == 2 * (8 + 4)


def test_huge_table_needs_no_per_id_array() -> None:
    n = 2**31 - 1
    m = CompactMapping(
        torch.tensor([0, n - 1]), torch.tensor([5, 6], dtype=torch.int16),
        tail_seed=9, tail_offset=0, tail_rows=5,
    )  # fmt: skip
    plan = HashPlan([TableHash("big", n, (m,), (7,))])
    rows = m.rows(torch.tensor([0, n - 1, n - 2, 1]))
    assert rows[:2].tolist() == [5, 6] and all(0 <= r < 5 for r in rows[2:].tolist())
    assert plan.remap_bytes() == 2 * (4 + 2)
    assert plan.summary()[0]["encoding"] == "compact"
    assert plan == HashPlan([TableHash("big", n, (m,), (7,))])
    assert len(plan.fingerprint()) == 64  # by fields: nothing of size N is materialized


@pytest.mark.parametrize(
    ("ids", "rows", "tail", "message"),
    [
        ((2, 7, 5), (0, 1, 2), {}, r"head_ids\[2\]=5 after head_ids\[1\]=7: not sorted"),
        ((2, 5, 5), (0, 1, 2), {}, r"head_ids\[2\]=5 after head_ids\[1\]=5: duplicated"),
        ((2, 5, 10), (0, 1, 2), {}, r"head_ids\[2\]=10 is outside \[0, 10\)"),
        ((-1, 5, 7), (0, 1, 2), {}, r"head_ids\[0\]=-1 is outside \[0, 10\)"),
        ((2, 5, 7), (0, 7, 9), {}, r"head_rows\[1\]=7 \(head id 5\) is outside .*\[0, 7\)"),
        ((2, 5, 7), (0, 1, 2), {"offset": 4}, r"tail region \[4, 8\) is outside .*\[0, 7\)"),
    ],
)
def test_bad_compact_mapping_names_table_hash_and_first_bad_entry(
    ids: tuple, rows: tuple, tail: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=rf"table 'users' hash 1: {message}"):
        TableHash(
            "users", N, (torch.zeros(N, dtype=torch.int32), _compact(ids, rows, **tail)), (M, M)
        )


def test_bad_fields_are_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="head_rows must be an int16 or int32"):
        CompactMapping(
            torch.tensor([1]), torch.tensor([1]), tail_seed=0, tail_offset=0, tail_rows=1
        )
    with pytest.raises(ValueError, match="tail_rows must be an int in"):
        _compact(tail=0)
    with pytest.raises(ValueError, match="tail_seed must be an int in"):
        _compact(seed=-(2**62) - 1)  # (-d divides by d: -2**62 is the least)
    with pytest.raises(TypeError):
        CompactMapping(torch.tensor([1]), torch.tensor([1], dtype=torch.int16), 0, 0, 1)


def _mixed_plan() -> HashPlan:
    return HashPlan(
        [
            TableHash("t0", N, (_compact(),), (M,)),
            TableHash("t1", N, (_compact(seed=4), torch.arange(N, dtype=torch.int32) % 3), (M, 3)),
            TableHash("t2", 4, (torch.tensor([0, 1, 1, 0], dtype=torch.int32),), (2,)),
        ],
        metadata={"method": "test"},
    )


def test_compact_equals_its_dense_form_and_fingerprints_alike(monkeypatch) -> None:  # noqa: ANN001
    compact = _mixed_plan()
    dense = HashPlan(
        [
            TableHash(
                t.name,
                t.num_embeddings,
                tuple(t.dense_mapping(h) for h in range(t.num_hashes)),
                t.heights,
            )
            for t in compact
        ]
    )
    assert compact == dense and compact.fingerprint() == dense.fingerprint()
    assert compact != HashPlan(
        [
            *_mixed_plan().tables[:2],
            TableHash("t2", 4, (_compact((1,), (1,), offset=0, tail=2),), (2,)),
        ]
    )
    other = HashPlan(
        [TableHash("t0", N, (_compact(rows=(0, 1, 3)),), (M,)), *_mixed_plan().tables[1:]]
    )
    assert compact != other and compact.fingerprint() != other.fingerprint()
    # above DENSE_COMPARE_MAX ids, compact and dense never compare equal
    monkeypatch.setattr(plan_compact, "DENSE_COMPARE_MAX", 5)
    assert compact != dense and compact.fingerprint() != dense.fingerprint()
    assert compact == _mixed_plan() and compact.fingerprint() == _mixed_plan().fingerprint()


def test_summary_and_bytes_count_each_encoding() -> None:
    plan = _mixed_plan()
    rows = {r["table"]: r for r in plan.summary(4)}
    assert [rows[t]["encoding"] for t in ("t0", "t1", "t2")] == ["compact", "mixed", "dense"]
    # compact: 3 ids * (int32 + int16); dense: uint8 per id (largest dense height 3)
    assert rows["t0"]["remap_bytes"] == 18 and rows["t1"]["remap_bytes"] == 18 + N
    assert plan.remap_bytes() == 18 + 18 + N + 4
    assert "encoding" in plan.format_summary().splitlines()[0]
    assert "mixed" in plan.format_summary()


def test_save_load_round_trip(tmp_path: Path) -> None:
    plan = _mixed_plan()
    plan.save(tmp_path / "p.plan")
    loaded = HashPlan.load(tmp_path / "p.plan")
    assert loaded == plan and loaded.metadata == plan.metadata
    m = loaded["t1"].mappings[0]
    assert isinstance(m, CompactMapping) and m.tail_params() == _compact(seed=4).tail_params()
    assert m.head_rows.dtype == torch.int16 and loaded["t1"].encodings == ("compact", "dense")


def _v1_manifest(tables: list[dict]) -> dict:
    return {"kind": "hash_plan", "format_version": 1, "tables": tables, "metadata": {"old": 1}}


def test_version_1_files_load(tmp_path: Path) -> None:
    """A file as format version 1 wrote it: tensors ``name/h``, no encodings."""
    path = tmp_path / "v1.plan"
    spec = {"name": "t", "num_embeddings": 4, "heights": [3, 2], "combine": "sum"}
    tensors = {
        "t/0": torch.tensor([0, 2, 1, 2], dtype=torch.int32),
        "t/1": torch.tensor([1, 0, 0, 1], dtype=torch.int32),
    }
    save_tensors(path, tensors, _v1_manifest([spec]))
    plan = HashPlan.load(path)
    assert plan == HashPlan.from_multi_mappings({"t": list(tensors.values())})
    assert plan.metadata["old"] == 1


def test_corrupt_compact_file_names_path_table_hash_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.plan"
    spec = {
        "name": "t",
        "num_embeddings": N,
        "heights": [M],
        "combine": "sum",
        "encodings": [{"encoding": "compact", "tail_seed": 1, "tail_offset": 0, "tail_rows": 2}],
    }
    tensors = {
        "t/0/head_ids": torch.tensor([1, 4, 4]),
        "t/0/head_rows": torch.tensor([0, 1, 2], dtype=torch.int16),
    }
    manifest = _v1_manifest([spec]) | {"format_version": 2}
    save_tensors(path, tensors, manifest)
    with pytest.raises(
        ValueError,
        match=r"bad.plan: invalid hash plan: table 't' hash 0: head_ids\[2\]=4 .*duplicated",
    ):
        HashPlan.load(path)
    save_tensors(path, {"t/0/head_ids": torch.tensor([1])}, manifest)
    with pytest.raises(ValueError, match="manifest and tensors disagree"):
        HashPlan.load(path)
    save_tensors(path, tensors, _v1_manifest([spec]) | {"format_version": 4})
    with pytest.raises(ValueError, match=r"format version 4, this build reads \[1, 2, 3\]"):
        HashPlan.load(path)


def test_dense_mapping_and_warm_start_view() -> None:
    t = _mixed_plan()["t1"]
    assert torch.equal(t.dense_mapping(0), _compact(seed=4).dense(N))
    assert t.dense_mapping(1) is t.mappings[1]


def test_choose_encoding_picks_the_smaller_of_the_same_mapping() -> None:
    n, height = 1000, 50
    few = torch.tensor([3, 10, 500])
    mapping = CompactMapping(
        few, torch.tensor([7, 8, 9], dtype=torch.int16), tail_seed=2, tail_offset=10, tail_rows=40
    ).dense(n)
    chosen = choose_encoding(mapping, few, 2, 10, 40, height)
    assert isinstance(chosen, CompactMapping) and chosen.head_rows.dtype == torch.int16
    assert torch.equal(chosen.dense(n), mapping) and chosen.nbytes(n) == 18
    many = torch.arange(0, n, 2)  # 500 ids * 6 bytes > 1000 ids * 2 bytes
    mapping = CompactMapping(
        many, torch.ones(500, dtype=torch.int16), tail_seed=2, tail_offset=10, tail_rows=40
    ).dense(n)
    dense = choose_encoding(mapping, many, 2, 10, 40, height)
    assert isinstance(dense, torch.Tensor) and dense.dtype == torch.int32
    assert torch.equal(dense, mapping.int())
    bad = mapping.clone()
    bad[1] = (bad[1] + 1) % height  # id 1 is in the tail
    with pytest.raises(ValueError, match=r"mapping_N\[1\]=.* id 1 is in the tail"):
        choose_encoding(bad, many, 2, 10, 40, height)
    with pytest.raises(ValueError, match=r"head_ids\[1\]=3 after head_ids\[0\]=10: not sorted"):
        choose_encoding(mapping, torch.tensor([10, 3]), 2, 10, 40, height)


# ------------------------------------------------------------------ ranked heads
# a table over three blocks of 2**16 ids and a bit: ids at block edges, offsets >= 2**15
BLOCKS_N = 3 * 2**16 + 5
RANKED_IDS = tuple(
    sorted((0, 40_000, 65_535, 65_536, 70_000, 196_607, 196_610, 196_612, *range(100, 120)))
)


def _ranked(ids=RANKED_IDS) -> CompactMapping:
    return CompactMapping(
        torch.tensor(ids), torch.arange(len(ids), dtype=torch.int16),
        tail_seed=5, tail_offset=len(ids), tail_rows=3,
    )  # fmt: skip


def test_a_head_at_its_ranks_is_held_ranked_in_2_bytes_an_id() -> None:
    m = _ranked()
    assert m.rows_are_ranks and m.ranked(BLOCKS_N)
    # 28 ids x 2 bytes + (4 blocks + the end) x 4 bytes
    assert m.nbytes(BLOCKS_N) == plan_compact.ranked_bytes(28, BLOCKS_N) == 28 * 2 + 5 * 4
    blocks, offsets = plan_compact.rank_index(m.head_ids, BLOCKS_N)
    assert blocks.tolist() == [0, 23, 25, 26, 28] and offsets.dtype == torch.int16
    assert offsets.tolist()[20:25] == [119, 40_000 - 2**16, -1, 0, 70_000 - 2**16]
    back = plan_compact.ids_of_rank_index(blocks, offsets, "here")
    assert back.tolist() == list(RANKED_IDS)
    # not ranked: rows that are not the ranks, or a head too sparse for its blocks
    assert not _compact(rows=(1, 0, 2)).rows_are_ranks
    sparse = _ranked((5, 200_000))  # 2 ids over 4 blocks: 4 + 20 bytes > 8
    assert sparse.rows_are_ranks and not sparse.ranked(BLOCKS_N)
    assert sparse.nbytes(BLOCKS_N) == 2 * (4 + 2)


def test_ranked_plan_round_trips_and_its_file_holds_no_rows(tmp_path: Path) -> None:
    m = _ranked()
    plan = HashPlan([TableHash("t", BLOCKS_N, (m, _compact()), (40, 40), "concat")])
    path = tmp_path / "p.plan"
    plan.save(path)
    loaded = HashPlan.load(path)
    assert loaded == plan and loaded.fingerprint() == plan.fingerprint()
    got = loaded["t"].mappings[0]
    assert torch.equal(got.head_ids, m.head_ids) and got.head_rows.tolist() == list(range(28))
    ids = torch.tensor([*RANKED_IDS, 1, 65_537, BLOCKS_N - 1])
    assert torch.equal(got.rows(ids), m.rows(ids))
    from torchrec_lhf._io import load_tensors

    tensors, manifest = load_tensors(path, "hash_plan")
    assert manifest["format_version"] == 3
    assert manifest["tables"][0]["encodings"][0]["rows"] == "rank"
    assert "t/0/head_rows" not in tensors and tensors["t/0/head_offsets"].numel() == 28
    assert "rows" not in manifest["tables"][0]["encodings"][1]  # (3 ids: not ranked)
    assert loaded.remap_bytes() == m.nbytes(BLOCKS_N) + _compact().nbytes(BLOCKS_N)
    assert loaded.summary()[0]["encoding"] == "mixed"
    only = HashPlan([TableHash("t", BLOCKS_N, (m,), (40,))])
    assert only.summary()[0]["encoding"] == "ranked" and "ranked" in only.format_summary()


_SWAPPED = plan_compact.rank_index(torch.tensor(RANKED_IDS), BLOCKS_N)[1][[0, 2, 1, *range(3, 28)]]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"t/0/head_blocks": torch.tensor([0, 23, 25, 26, 27], dtype=torch.int32)},
         r"table 't' hash 0: head_blocks must run from 0 to the 28 head ids, got 0 to 27"),
        ({"t/0/head_blocks": torch.tensor([0, 26, 25, 26, 28], dtype=torch.int32)},
         r"table 't' hash 0: head_blocks\[2\]=25 < head_blocks\[1\]=26"),
        ({"t/0/head_offsets": torch.zeros(28, dtype=torch.int32)},
         r"head_offsets must be 1-D int16, got torch.int32"),
        ({"t/0/head_offsets": _SWAPPED},  # ids 100 and 101 swapped
         r"table 't' hash 0: head_ids\[2\]=100 after head_ids\[1\]=101: not sorted"),
    ],
)  # fmt: skip
def test_a_corrupt_ranked_plan_is_named(tmp_path: Path, change: dict, match: str) -> None:
    from torchrec_lhf._io import load_tensors

    path = tmp_path / "p.plan"
    HashPlan([TableHash("t", BLOCKS_N, (_ranked(),), (40,))]).save(path)
    tensors, manifest = load_tensors(path, "hash_plan")
    save_tensors(path, {**tensors, **change}, manifest)
    with pytest.raises(ValueError, match=match):
        HashPlan.load(path)
