"""Compact (head/tail) versions of the test plans."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from torchrec_lhf import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping, row_dtype


def compact_of(
    mapping_N: torch.Tensor, height: int, *, every: int = 2, seed: int = 1
) -> CompactMapping:
    """A compact mapping whose head is every ``every``-th id (with ``mapping_N``'s rows) and
    whose tail hashes into all ``height`` rows."""
    head_K = torch.arange(0, mapping_N.numel(), every)
    return CompactMapping(
        head_K,
        mapping_N[head_K].to(row_dtype(height)),
        tail_seed=seed,
        tail_offset=0,
        tail_rows=height,
    )


def to_compact(
    plan: HashPlan, hashes: Iterable[tuple[str, int]] | None = None, *, every: int = 2
) -> HashPlan:
    """``plan`` with hash functions ``(table, h)`` (default: all) made compact by
    :func:`compact_of` (seed ``10 * h + table index + 1``)."""
    chosen = None if hashes is None else set(hashes)
    tables = []
    for i, t in enumerate(plan):
        ms = tuple(
            compact_of(m, height, every=every, seed=10 * h + i + 1)
            if chosen is None or (t.name, h) in chosen
            else m
            for h, (m, height) in enumerate(zip(t.mappings, t.heights))
        )
        tables.append(TableHash(t.name, t.num_embeddings, ms, t.heights, t.combine))
    return HashPlan(tables, metadata=plan.metadata)
