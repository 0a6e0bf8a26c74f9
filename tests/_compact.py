"""Compact (head/tail) versions of the test plans."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torchrec import EmbeddingBagConfig

from torchrec_lhf import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping, row_dtype


def compact_of(
    mapping_N: torch.Tensor, height: int, *, every: int = 2, seed: int = 1, ranked: bool = False
) -> CompactMapping:
    """A compact mapping whose head is every ``every``-th id (with ``mapping_N``'s rows) and
    whose tail hashes into all ``height`` rows; ``ranked``: every ``every``-th id from 1,
    at most ``height`` of them, each at its rank (a filled head's rows, held ranked)."""
    head_K = torch.arange(0, mapping_N.numel(), every)
    rows_K = mapping_N[head_K]
    if ranked:
        head_K = torch.arange(1, mapping_N.numel(), every)[:height]
        rows_K = torch.arange(head_K.numel())
    return CompactMapping(
        head_K,
        rows_K.to(row_dtype(height)),
        tail_seed=seed,
        tail_offset=0,
        tail_rows=height,
    )


def to_compact(
    plan: HashPlan,
    hashes: Iterable[tuple[str, int]] | None = None,
    *,
    every: int = 2,
    ranked: bool = False,
) -> HashPlan:
    """``plan`` with hash functions ``(table, h)`` (default: all) made compact by
    :func:`compact_of` (seed ``10 * h + table index + 1``; ``ranked`` as it says; other
    hash functions are kept as they are)."""
    chosen = None if hashes is None else set(hashes)
    tables = []
    for i, t in enumerate(plan):
        ms = tuple(
            compact_of(m, height, every=every, seed=10 * h + i + 1, ranked=ranked)
            if chosen is None or (t.name, h) in chosen
            else m
            for h, (m, height) in enumerate(zip(t.mappings, t.heights))
        )
        tables.append(TableHash(t.name, t.num_embeddings, ms, t.heights, t.combine))
    return HashPlan(tables, metadata=plan.metadata)


def same_seed_plan(n: int = 5000) -> tuple[list[EmbeddingBagConfig], HashPlan]:
    """Five tables whose heads are the same ids (their most frequent, 0 to 599) with the
    hashing trick's tail (``MODULO_SEED``), and a sixth of four hash functions of one hashed
    seed, one held ranked: a hand-made plan the cuckoo table could not hold before (the
    same id of one seed had the same slots in every hash function)."""
    g = torch.Generator().manual_seed(7)
    head = torch.arange(600)

    def mapping(seed: int, ranked: bool = False) -> CompactMapping:
        rows = torch.arange(600) if ranked else torch.randint(0, 700, (600,), generator=g)
        return CompactMapping(head, rows.int(), tail_seed=seed, tail_offset=700, tail_rows=300)

    tables = [TableHash(f"t{i}", n, (mapping(-1),), (1000,)) for i in range(5)]
    four = tuple(mapping(11, ranked=h == 3) for h in range(4))
    tables.append(TableHash("t5", n, four, (1000,) * 4))
    configs = [
        EmbeddingBagConfig(name=t.name, embedding_dim=4, num_embeddings=n, feature_names=[f"f{i}"])
        for i, t in enumerate(tables)
    ]
    return configs, HashPlan(tables)
