"""Built-in (not learned) hash plans, the baselines learned hashing is compared against.

Shape legend: ``N`` logical table height (raw ids ``0..N-1``), ``M`` compressed height.

Every baseline is a function returning a :class:`HashPlan`, so it trains through the
same :class:`LearnedHashEmbeddingBagCollection` and sharder as the learned plans and
its bytes are counted the same way.

Example::

    >>> from torchrec_lhf.compression.baselines import modulo_plan
    >>> plan = modulo_plan({"user": 10, "gender": 2}, fraction=0.3, min_table_rows=5)
    >>> plan.table_names, plan["user"].heights, plan["user"].dense_mapping(0).tolist()
    (['user'], (3,), [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    >>> plan.remap_bytes()  # computed from the id: nothing stored per id
    0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from torchrec_lhf.hashing import MODULO_SEED, quotient_seed
from torchrec_lhf.plan import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping, row_dtype


def compressed_rows(num_embeddings: int, fraction: float) -> int:
    """``M = max(1, round(fraction * N))``, the height a table of ``N`` rows shrinks to.

    Raises:
        ValueError: ``num_embeddings < 1`` or ``fraction`` not in ``(0, 1]``.
    """
    if num_embeddings < 1:
        raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings}")
    _check_fraction(fraction)
    return max(1, round(fraction * num_embeddings))


def modulo_plan(
    num_embeddings: Mapping[str, int], *, fraction: float, min_table_rows: int = 0
) -> HashPlan:
    """The hashing trick: raw id ``i`` of a table goes to row ``i mod M``.

    Args:
        num_embeddings: table name -> logical height ``N``.
        fraction: ``M = max(1, round(fraction * N))``, in ``(0, 1]``.
        min_table_rows: tables with ``N < min_table_rows`` stay full (left out of the
            plan), as for the learned plans.

    Returns:
        A plan with one hash function per compressed table (:func:`modulo_mapping`: no
        rows stored per id) and metadata ``method="modulo"``, ``fraction``, ``min_table_rows``.

    Raises:
        ValueError: a bad fraction, height or ``min_table_rows``.
    """
    _check_fraction(fraction)
    if min_table_rows < 0:
        raise ValueError(f"min_table_rows must be >= 0, got {min_table_rows}")
    tables = []
    for name, n in num_embeddings.items():
        if int(n) != n or n < 1:
            raise ValueError(f"table {name!r}: num_embeddings must be an int >= 1, got {n!r}")
        if n < min_table_rows:
            continue
        rows = compressed_rows(int(n), fraction)
        tables.append(TableHash(name, int(n), (modulo_mapping(rows),), (rows,)))
    return HashPlan(
        tables,
        metadata={"method": "modulo", "fraction": fraction, "min_table_rows": min_table_rows},
    )


def computed_mapping(rows: int, tail_seed: int) -> CompactMapping:
    """A hash function computed from the id, stored as nothing per id: an empty head and a
    tail over all ``rows`` rows of seed ``tail_seed``
    (:func:`~torchrec_lhf.hashing.tail_hash`: a seeded mixed hash for a seed in
    ``[0, 2**62)``, a divided or modulo tail for a negative one)."""
    return CompactMapping(
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=row_dtype(rows)),
        tail_seed=tail_seed,
        tail_offset=0,
        tail_rows=rows,
    )


def modulo_mapping(rows: int) -> CompactMapping:
    """``id mod rows`` as a mapping that stores nothing per id: an empty head and a
    :data:`~torchrec_lhf.hashing.MODULO_SEED` tail over all ``rows`` (the module computes
    it from the id, where a dense mapping held ``N`` rows on every rank: 816 MB at the
    Criteo 1TB heights)."""
    return computed_mapping(rows, MODULO_SEED)


def quotient_mapping(divisor: int, rows: int) -> CompactMapping:
    """``id // divisor`` over ``rows`` rows (QR's quotient: ``rows = ceil(N / divisor)``)
    as a mapping that stores nothing per id: an empty head and a divided tail
    (:func:`~torchrec_lhf.hashing.quotient_seed`), ``(id // divisor) mod rows``."""
    return computed_mapping(rows, quotient_seed(divisor))


def _check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
