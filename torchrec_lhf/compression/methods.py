"""Every height-compression method as a :class:`HashPlan`, behind one registry.

Legend:
    N   logical table height (raw ids ``0..N-1``)
    R   the table's row budget, ``round(fraction * N)`` (at least one row per internal table)
    M_h height of internal table ``h``
    K   ids that get a row of their own (``fbdh``)

A method is ``fn(num_embeddings, *, fraction, counts=None, min_table_rows=0, seed=0,
**options) -> HashPlan``. ``fraction`` is the fraction of each table's ROWS the method may
use: ``sum_h M_h`` stays within a row or two of ``R`` (``qr`` cannot go below about
``2 * sqrt(N)``), and the plan metadata records the real per-table fraction
(``rows_fraction``) so that a comparison at equal size is honest. Tables with
``N < min_table_rows`` are left out of the plan and stay full. Every plan trains through
the same :class:`~torchrec_lhf.LearnedHashEmbeddingBagCollection` and sharder. The
registry itself is :mod:`~torchrec_lhf.compression.registry`; this module registers the
built-ins and re-exports :func:`get_method`, :func:`make_plan`, :func:`list_methods` and
:func:`register_method`, so import them from here.

Built-in methods (see each function for how it splits ``R``):
    ``none``    empty plan: the uncompressed model (fraction recorded as 1.0).
    ``modulo``  the hashing trick (:func:`~torchrec_lhf.compression.baselines.modulo_plan`).
    ``qr``      quotient-remainder compositional embeddings (Shi et al. 2020).
    ``fbdh``    frequency-based double hashing (Zhang et al. 2020).
    ``memrec``  MEM-REC's Bloom-filter token tables scaled by a weight table (Jha et al. 2023).
    ``lhf``     learned hashing; needs ``teacher_embeddings=`` and calls
                :func:`~torchrec_lhf.hash_build.plan_builder.build_plan`.
    ``cce``     clustered compositional embeddings (Tsang and Ahle 2023), re-clustered
                during training (:mod:`~torchrec_lhf.compression.cce`).

``mlet`` (narrower tables, :mod:`torchrec_lhf.modules.mlet`) and ``mch`` (TorchRec's
managed collisions) change the model, not the plan, so they are not registered here.

Hashed methods (``fbdh``'s and ``memrec``'s) use a seeded hash computed from the id (a
compact mapping's tail, :func:`~torchrec_lhf.hashing.tail_hash`, its seed
:func:`hash_seed` of ``seed``, the table name and the hash's role), so two hashes of a
table are independent and nothing is stored per hashed id: a plan of ``memrec`` stores
nothing per id at all (:func:`~torchrec_lhf.compression.baselines.computed_mapping`, as
the ``modulo`` and ``qr`` plans), one of ``fbdh`` only its frequent ids (see
:func:`fbdh_plan`).

Example::

    >>> from torchrec_lhf.compression.methods import get_method
    >>> plan = get_method("qr")({"t": 10}, fraction=0.7)
    >>> plan["t"].heights, plan["t"].combine, plan["t"].dense_mapping(1).tolist()
    ((2, 5), 'mult', [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from typing import Any

import torch

from torchrec_lhf.compression.baselines import (
    computed_mapping,
    modulo_mapping,
    modulo_plan,
    quotient_mapping,
)
from torchrec_lhf.compression.budget import split_rows
from torchrec_lhf.compression.cce import cce_plan
from torchrec_lhf.compression.registry import (
    MethodFn,
    check_counts,
    computed_from_the_id,
    get_method,
    is_int,
    list_methods,
    make_plan,
    register_method,
)
from torchrec_lhf.plan import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping, row_dtype

__all__ = [
    "MethodFn",
    "fbdh_plan",
    "get_method",
    "hash_seed",
    "lhf_plan",
    "list_methods",
    "make_plan",
    "memrec_plan",
    "none_plan",
    "qr_plan",
    "register_method",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------- methods
def none_plan(num_embeddings: Mapping[str, int], *, fraction: float) -> HashPlan:
    """The uncompressed model: an empty plan (every table stays full)."""
    if fraction != 1.0:
        logger.warning("method 'none' keeps every table full; fraction=%s is ignored", fraction)
    return HashPlan([], metadata={"fraction": 1.0})


def _modulo(num_embeddings: Mapping[str, int], *, fraction: float, min_table_rows: int) -> HashPlan:
    """The hashing trick, ``i -> i mod R`` (one internal table of ``R`` rows)."""
    return modulo_plan(num_embeddings, fraction=fraction, min_table_rows=min_table_rows)


def qr_plan(
    num_embeddings: Mapping[str, int],
    *,
    fraction: float,
    min_table_rows: int = 0,
    combine: str = "mult",
) -> HashPlan:
    """Quotient-remainder embeddings: ``i -> (i mod m, i // m)``, a complementary partition.

    Internal table 0 (the remainder) has ``m`` rows, table 1 (the quotient) ``ceil(N / m)``;
    no two ids share both rows. ``m <= ceil(sqrt(N))`` is chosen so that ``m + ceil(N / m)``
    is closest to ``R`` (ties: fewer rows), as DLRM's ``QREmbeddingBag`` with
    ``num_collisions = m``. Since ``m + N / m >= 2 sqrt(N)``, budgets below that are clamped
    to the smallest total and logged; ``rows_fraction`` records what was used.

    Args:
        combine: ``"mult"`` (the paper's default), ``"sum"`` or ``"concat"``.
    """
    if combine not in ("mult", "sum", "concat"):
        raise ValueError(f"method 'qr': combine must be 'mult', 'sum' or 'concat', got {combine!r}")
    tables = []
    for name, n in _planned(num_embeddings, min_table_rows):
        target = fraction * n
        m_K = torch.arange(1, math.isqrt(n - 1) + 2 if n > 1 else 2, dtype=torch.int64)
        total_K = m_K + (n + m_K - 1) // m_K
        # |total - R| first, then prefer not exceeding R; argmin takes the smallest m on ties
        key_K = 2 * (total_K.double() - target).abs() + (total_K > target).double()
        m = int(m_K[int(torch.argmin(key_K))])
        q = -(-n // m)
        if target < int(total_K.min()) - 0.5:  # below QR's smallest size: clamped
            logger.warning(
                "qr: table %s (N=%d) cannot reach %d rows; uses %d (m=%d, q=%d)",
                name,
                n,
                round(target),
                m + q,
                m,
                q,
            )
        # both computed from the id: nothing stored per id
        mappings = (modulo_mapping(m), quotient_mapping(m, q))
        tables.append(TableHash(name, n, mappings, (m, q), combine))
    return HashPlan(tables, metadata={"combine": combine})


def fbdh_plan(
    num_embeddings: Mapping[str, int],
    *,
    fraction: float,
    counts: Mapping[str, torch.Tensor] | None = None,
    min_table_rows: int = 0,
    seed: int = 0,
    retain: float = 0.5,
) -> HashPlan:
    """Frequency-based double hashing: the most frequent ids get their own rows.

    Budget ``R`` split: ``K = round(retain * R)`` rows for the ``K`` most frequent ids
    (by ``counts``, ties to the lower id), in internal table 0 (rows ``0..K-1``, in id
    order); one bias row; and the remaining ``R - K - 1`` rows split evenly over two hashed
    parts. Every other id is hashed into rows ``K..K+M_0-1`` of table 0 and, independently,
    into rows ``0..M_1-1`` of table 1; the two are summed (``H = 2``, ``combine="sum"``). A
    frequent id's row in table 1 is the dedicated last row ``M_1``, which so acts as a bias
    shared by all frequent ids. ``K`` shrinks if needed to leave one row per hashed part;
    ``retain=0`` is plain double hashing (no counts needed).

    Both hash functions are compact mappings: the frequent ids are their head, the others
    a seeded tail hash (:func:`hash_seed`), so the plan stores the ``K`` ids twice (table 0's
    held ranked, 2 bytes an id; table 1's with their bias row) and nothing per other id.

    Args:
        counts: table name -> access counts, shape ``(N,)``; required when ``retain > 0``.
        retain: fraction of ``R`` given to frequent ids, in ``[0, 1]``.
    """
    if isinstance(retain, bool) or not (isinstance(retain, (int, float)) and 0.0 <= retain <= 1.0):
        raise ValueError(f"method 'fbdh': retain must be in [0, 1], got {retain!r}")
    check_counts("fbdh", num_embeddings, counts)  # (also when called without make_plan)
    tables = []
    for name, n in _planned(num_embeddings, min_table_rows):
        rows = max(2, round(fraction * n))
        if retain > 0:
            if counts is None or name not in counts:
                raise ValueError(
                    f"method 'fbdh': table {name!r} needs access counts (counts=...) to pick its "
                    f"frequent ids; got {'none' if counts is None else sorted(counts)}"
                )
            order_N = torch.argsort(-counts[name].to("cpu", torch.float64), stable=True)
        else:
            order_N = torch.arange(n)
        k = min(n, round(retain * rows))
        if k < n:
            k = min(k, max(0, rows - 3))  # room for one row per hashed part and the bias row
        bias = 1 if k > 0 else 0
        rest = n - k
        hashed = max(2, rows - k - bias) if rest else 0
        m0, m1 = min(rest, -(-hashed // 2)), min(rest, hashed // 2)
        heights = (k + m0, m1 + bias)
        top_K = order_N[:k].sort().values
        # all ids frequent (rest = 0): the tails are never read; any region in the table
        map0 = CompactMapping(
            top_K, torch.arange(k, dtype=row_dtype(heights[0])),
            tail_seed=hash_seed(seed, f"fbdh/{name}/0"),
            tail_offset=k if rest else 0, tail_rows=m0 if rest else k,
        )  # fmt: skip
        map1 = CompactMapping(
            top_K, torch.full((k,), m1, dtype=row_dtype(heights[1])),
            tail_seed=hash_seed(seed, f"fbdh/{name}/1"), tail_offset=0, tail_rows=max(m1, 1),
        )  # fmt: skip
        tables.append(TableHash(name, n, (map0, map1), heights, "sum"))
    return HashPlan(tables, metadata={"retain": retain})


def memrec_plan(
    num_embeddings: Mapping[str, int],
    *,
    fraction: float,
    min_table_rows: int = 0,
    seed: int = 0,
    num_token_hashes: int = 2,
    weight_fraction: float = 0.25,
) -> HashPlan:
    """MEM-REC: ``k`` hashed token lookups, summed, scaled by a hashed weight embedding.

    Budget ``R`` split: ``round(weight_fraction * R)`` rows (at least 1) for the weight
    table (the last internal table), the rest split evenly over ``k`` token tables, one per
    hash (a partitioned Bloom filter: internal tables are not shared across hashes). Each id
    is hashed independently into each table; ``combine="scaled_sum"`` gives
    ``(sum_j token_j[h_j(i)]) * weight[h_w(i)]`` element-wise (``H = k + 1``).

    Args:
        num_token_hashes: ``k >= 1``.
        weight_fraction: share of ``R`` for the weight table, in ``(0, 1)``.
    """
    if not is_int(num_token_hashes, 1):
        raise ValueError(
            f"method 'memrec': num_token_hashes must be an int >= 1, got {num_token_hashes!r}"
        )
    if isinstance(weight_fraction, bool) or not (
        isinstance(weight_fraction, (int, float)) and 0.0 < weight_fraction < 1.0
    ):
        raise ValueError(
            f"method 'memrec': weight_fraction must be in (0, 1), got {weight_fraction!r}"
        )
    tables = []
    for name, n in _planned(num_embeddings, min_table_rows):
        rows = max(num_token_hashes + 1, round(fraction * n))
        weight_rows = min(rows - num_token_hashes, max(1, round(weight_fraction * rows)))
        heights = [min(n, h) for h in split_rows(rows - weight_rows, num_token_hashes)] + [
            min(n, weight_rows)
        ]
        roles = [f"token{j}" for j in range(num_token_hashes)] + ["weight"]
        mappings = tuple(
            computed_mapping(m, hash_seed(seed, f"memrec/{name}/{role}"))
            for m, role in zip(heights, roles)
        )
        tables.append(TableHash(name, n, mappings, tuple(heights), "scaled_sum"))
    return HashPlan(
        tables, metadata={"num_token_hashes": num_token_hashes, "weight_fraction": weight_fraction}
    )


def lhf_plan(
    num_embeddings: Mapping[str, int],
    *,
    fraction: float,
    counts: Mapping[str, torch.Tensor] | None = None,
    min_table_rows: int = 0,
    teacher_embeddings: Mapping[str, torch.Tensor] | None = None,
    num_hashes: int = 1,
    combine: str = "sum",
    clustering: str = "agglomerative",
    projection: str = "pca",
    clustering_options: Mapping[str, Any] | None = None,
    budget: str = "table",
    embedding_dim: int | None = None,
) -> HashPlan:
    """Learned hashing: cluster a trained teacher's embeddings (``build_plan``).

    Learned plans need a teacher; without ``teacher_embeddings`` this raises and points to
    :func:`~torchrec_lhf.hash_build.plan_builder.build_plan` / ``python -m apps.build_hash``.
    ``R = max(H, round(fraction * N))`` split evenly over ``H`` internal tables.
    The seed is not used (the clustering is deterministic).

    Args:
        teacher_embeddings: table name -> ``(N, D_teacher)`` embeddings, for every planned table.
        num_hashes, combine, clustering, projection, clustering_options, budget,
            embedding_dim: as ``build_plan``'s (``budget="bytes"`` is fitted before any
            clustering).
    """
    if teacher_embeddings is None:
        raise ValueError(
            "method 'lhf' needs teacher_embeddings= (table name -> (N, D) tensors of a trained "
            "teacher); build learned plans with torchrec_lhf.hash_build.build_plan or "
            "`python -m apps.build_hash`, then train with the saved plan"
        )
    planned = dict(_planned(num_embeddings, min_table_rows))
    for name, n in planned.items():
        emb = teacher_embeddings.get(name)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != n:
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(
                f"method 'lhf': table {name!r} needs teacher embeddings of shape ({n}, D), got {got}"
            )
    from torchrec_lhf.hash_build.plan_builder import (
        build_plan,  # the clustering code, only when used
    )

    # every table, so that "total" and "bytes" count the ones left full (as the other
    # methods do): for those a zero-width stand-in, of which build_plan reads only the size
    # (before, a byte budget was spent on the planned tables alone: over it by their bytes)
    embeddings = {
        name: teacher_embeddings[name] if name in planned else torch.empty(n, 0)
        for name, n in num_embeddings.items()
    }
    plan = build_plan(
        embeddings,
        None if counts is None else {name: counts[name] for name in planned if name in counts},
        fraction=fraction,
        min_table_rows=min_table_rows,
        num_hashes=num_hashes,
        combine=combine,
        clustering=clustering,
        projection=projection,
        clustering_options=clustering_options,
        budget=budget,
        embedding_dim=embedding_dim,
    )
    return plan


# ------------------------------------------------------------------------- helpers
def hash_seed(seed: int, key: str) -> int:
    """The tail seed of a method's hash: ``crc32`` of ``"{seed}/{key}"``, in ``[0, 2**32)``
    (stable across runs and processes; independent for different keys)."""
    return zlib.crc32(f"{seed}/{key}".encode())


def _planned(num_embeddings: Mapping[str, int], min_table_rows: int) -> list[tuple[str, int]]:
    """``(name, N)`` of the tables to compress (a loop per table, not per id)."""
    kept = [(name, int(n)) for name, n in num_embeddings.items() if n >= min_table_rows]
    skipped = sorted(set(num_embeddings) - {name for name, _ in kept})
    if skipped:
        logger.info(
            "tables %s have fewer than min_table_rows=%d rows and stay full",
            skipped,
            min_table_rows,
        )
    return kept


register_method("none", none_plan)
register_method("modulo", _modulo, stored_index=computed_from_the_id)
register_method("qr", qr_plan, stored_index=computed_from_the_id)
register_method("fbdh", fbdh_plan)  # its stored heads: what the plan stores
register_method("memrec", memrec_plan, stored_index=computed_from_the_id)
register_method("lhf", lhf_plan)
register_method("cce", cce_plan)
