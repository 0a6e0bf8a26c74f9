"""CCE, Clustered Compositional Embeddings (Tsang and Ahle, "Clustering the Sketch", NeurIPS 2023).

Legend:
    N   logical table height (raw ids ``0..N-1``)
    c   columns of a table (the reference's ``n_chunks``)
    M0  rows of a column's clustered internal table (hash function ``2i`` of column ``i``)
    M1  rows of a column's hashed internal table (hash function ``2i + 1``)
    D   the logical dim, ``D / c`` a column's; ``D0``, ``D1`` one column's internal tables'
        dims (the column's each for ``sum``, half of it each for ``concat``)
    S   ids sampled for k-means;  C  ids of one chunk

As the reference's ``CCEmbedding`` (``thomasahle/cce``, ``cce/cce.py``, ``n_chunks=4``),
a compressed table's dim is split into ``c`` columns, each with two internal tables of
``M0`` and ``M1`` rows of dim ``D / c``: a *clustered* one (a dense per-id index: its bytes
are the method's stored index, ``c`` per id) and a *hashed* one (a seeded hash that stores
nothing per id: a :class:`~torchrec_lhf.plan_compact.CompactMapping` with an empty head).
A column is their ``sum`` (the reference) or their ``concat``; the columns are
concatenated (``combine="sum_concat"`` of :class:`~torchrec_lhf.plan.TableHash`; ``"sum"``
with one column). Every hash starts random, each column's with its own seeds, so that ids
that share their rows in one column rarely share them in all: with ``c`` columns an id is
a combination of ``2c`` rows, ``(M0 * M1) ** c`` of them.

A *phase change* (:func:`recluster_table`, one column at a time; on a module
:mod:`torchrec_lhf.modules.cce`, on a sharded one :mod:`torchrec_lhf.distributed.cce`) does
what the reference's ``cluster`` does for each column: compute every id's current vector
in the column, k-means a sample of them into ``M0`` centroids, assign every id to its
nearest centroid (the column's new clustered index), set the clustered table to the
centroids, draw a fresh hash for the hashed table and set each of its rows to the mean
residual (vector minus its centroid) of the ids now hashed to it.
Training then goes on; phases happen at the end of each of the first ``phases`` of
``phases + 1`` equal slices of the training steps (:func:`phase_steps`; the reference
re-clusters after each of the first 75% of its epochs).

Example::

    >>> plan = cce_plan({"t": 100}, fraction=0.2, seed=0, columns=2)
    >>> plan["t"].heights, plan["t"].combine, plan["t"].num_columns, plan["t"].encodings
    ((10, 10, 10, 10), 'sum_concat', 2, ('dense', 'compact', 'dense', 'compact'))
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from torchrec_lhf.cli import checked_fields
from torchrec_lhf.compression.baselines import computed_mapping
from torchrec_lhf.compression.budget import split_rows
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping, encoding

logger = logging.getLogger(__name__)

CLUSTERED, HASHED = 0, 1
"""The hash functions of a CCE column ``i`` (``2i +``): the clustered index and the seeded hash."""
CCE_COMBINES = ("sum", "concat")
"""How a column combines its two internal tables."""
DEFAULT_COLUMNS = 4
"""Columns per table, as the reference's ``n_chunks`` (the app takes fewer when its
dim does not split into columns FBGEMM can fuse: :func:`fit_columns`)."""
_CHUNK_ELEMENTS = 2**22  # ids per chunk times columns, bounds the scratch memory


@dataclass(kw_only=True)
class CCEConfig:
    """How CCE re-clusters during training."""

    phases: int = 3
    """Re-clusterings, at the end of each of the first ``phases`` of ``phases + 1`` equal
    slices of the training steps (0: the two random hashes throughout)."""
    kmeans_iters: int = 50
    """Lloyd iterations of each k-means (it stops early when the centroids settle)."""
    sample_factor: int = 200
    """k-means runs on ``sample_factor * M0`` sampled ids (all when fewer): 200 per
    centroid, as the reference (after the Faiss manual)."""
    reset_optimizer: bool = True
    """Zero the optimizer state of the re-initialised tables at each phase."""

    @checked_fields
    def __post_init__(self) -> None:
        for name, low in (("phases", 0), ("kmeans_iters", 1), ("sample_factor", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"cce {name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.reset_optimizer, bool):
            raise ValueError(f"cce reset_optimizer must be a bool, got {self.reset_optimizer!r}")


def cce_plan(
    num_embeddings: Mapping[str, int],
    *,
    fraction: float,
    min_table_rows: int = 0,
    seed: int = 0,
    combine: str = "sum",
    columns: int = DEFAULT_COLUMNS,
) -> HashPlan:
    """CCE's starting plan: per table ``c`` columns of a clustered and a hashed internal
    table, all random.

    The row budget ``R = max(2, round(fraction * N))`` (rows of dim ``D``) is split evenly
    (``M0 >= M1``) and every column gets ``M0 + M1`` rows of dim ``D / c``, as the
    reference's two tables of ``num_params // dim // 2`` rows of ``n_chunks`` chunks: the
    tables hold ``R * D`` numbers whatever ``c``; the stored index grows with ``c``. Column
    ``i``'s clustered index (hash function ``2i``, re-written at each phase) is stored
    dense; its hash function ``2i + 1`` is a pure seeded hash (:func:`phase_seed` of
    phase 0).

    Args:
        combine: how a column combines its two internal tables: ``"sum"`` (the reference:
            both of the column's dim) or ``"concat"`` (the column's dim split over the two).
        columns: ``c``, the reference's ``n_chunks`` (the model's dim must split into them).
    """
    if combine not in CCE_COMBINES:
        raise ValueError(f"method 'cce': combine must be one of {CCE_COMBINES}, got {combine!r}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"method 'cce': columns must be an int >= 1, got {columns!r}")
    mode = combine if combine == "concat" or columns == 1 else "sum_concat"
    tables = []
    for name, n in num_embeddings.items():
        if n < min_table_rows:
            continue
        m0, m1 = (min(n, m) for m in split_rows(max(2, round(fraction * n)), 2))
        ids_N = torch.arange(n)
        mappings: list[torch.Tensor | CompactMapping] = []
        for i in range(columns):
            clustered_N = tail_hash(ids_N, phase_seed(seed, name, 0, "clustered", i), m0)
            mappings += [
                clustered_N.to(torch.int32),
                computed_mapping(m1, phase_seed(seed, name, 0, column=i)),
            ]
        tables.append(
            TableHash(
                name,
                n,
                tuple(mappings),
                (m0, m1) * columns,
                mode,
                columns if mode == "sum_concat" else 1,
            )
        )
    return HashPlan(tables, metadata={"combine": combine, "columns": columns})


def fit_columns(embedding_dim: int, columns: int) -> int:
    """The most columns, at most ``columns``, that split ``embedding_dim`` evenly into
    widths FBGEMM's fused tables take (multiples of 4) where ``embedding_dim`` is one.

    Example::

        >>> fit_columns(16, 4), fit_columns(8, 4), fit_columns(6, 4)
        (4, 2, 3)
    """
    step = 4 if embedding_dim % 4 == 0 else 1
    c = max(c for c in range(1, max(1, columns) + 1) if embedding_dim % (step * c) == 0)
    if c != columns:
        logger.warning(
            "cce: %d columns instead of %d for embedding_dim %d", c, columns, embedding_dim
        )
    return c


def phase_seed(seed: int, table: str, phase: int, role: str = "hashed", column: int = 0) -> int:
    """The seed of a table's hash at a phase (0: the starting plan), in ``[0, 2**62)``.

    Every rank derives the same seed from the run's ``seed``, the table, the phase, the
    hash's role and its column (column 0's seeds are those of a one-column plan).
    """
    role = role if column == 0 else f"{role}/c{column}"
    digest = hashlib.sha256(f"cce/{seed}/{table}/{phase}/{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**62


def phase_steps(total_steps: int, phases: int) -> list[int]:
    """The training steps after which the phases happen: the ends of the first ``phases`` of
    ``phases + 1`` equal slices of ``total_steps`` (steps that would repeat or fall at 0
    or at the end are dropped).

    Example::

        >>> phase_steps(100, 3)
        [25, 50, 75]
    """
    steps = {round(j * total_steps / (phases + 1)) for j in range(1, phases + 1)}
    return sorted(s for s in steps if 0 < s < total_steps)


@dataclass(frozen=True)
class Reclustered:
    """A table after a phase change.

    Args:
        clustered_N: the new clustered index, int64 ``(N,)`` in ``[0, M0)``.
        weight0: the clustered table, the centroids (their ``D0`` columns), ``(M0, D0)``.
        weight1: the hashed table, the mean residual per row, ``(M1, D1)``.
        tail_seed: the new seed of the hashed table's hash.
    """

    clustered_N: torch.Tensor
    weight0: torch.Tensor
    weight1: torch.Tensor
    tail_seed: int


def recluster_table(
    weight0: torch.Tensor,
    weight1: torch.Tensor,
    clustered_N: torch.Tensor,
    hashed_N: torch.Tensor,
    *,
    combine: str,
    tail_seed: int,
    config: CCEConfig,
    generator: torch.Generator,
) -> Reclustered:
    """One column's phase change (the reference's ``CCEmbedding.cluster`` for column ``i``).

    Args:
        weight0: the column's clustered table, ``(M0, D0)``.
        weight1: the column's hashed table, ``(M1, D1)``.
        clustered_N: the current clustered index, ``(N,)``.
        hashed_N: the current hashed rows, ``(N,)``.
        combine: ``"sum"`` or ``"concat"`` (:func:`column_combine`).
        tail_seed: the new seed of the hashed table's hash.
        config: k-means iterations and sample size.
        generator: a CPU generator (the sample and the k-means start).

    Returns:
        The new index, tables and seed; the tables keep ``weight0``'s dtype and device.
    """
    n, (m0, d0), (m1, d1) = clustered_N.numel(), weight0.shape, weight1.shape
    w0, w1 = weight0.detach().float(), weight1.detach().float()
    rows0_N, rows1_N = clustered_N.long().to(w0.device), hashed_N.long().to(w0.device)

    def embed(ids_C: torch.Tensor) -> torch.Tensor:  # the current embeddings, (C, D)
        parts = (w0[rows0_N[ids_C]], w1[rows1_N[ids_C]])
        return parts[0] + parts[1] if combine == "sum" else torch.cat(parts, dim=1)

    num_samples = config.sample_factor * m0
    sample_S = (
        torch.randperm(n, generator=generator)[:num_samples] if num_samples < n else torch.arange(n)
    )
    centroids = kmeans(
        embed(sample_S.to(w0.device)), m0, iters=config.kmeans_iters, generator=generator
    )
    new1_N = tail_hash(torch.arange(n, device=w0.device), tail_seed, m1)
    new0_N = torch.empty(n, dtype=torch.int64, device=w0.device)
    sums = torch.zeros(m1, d1, device=w0.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(m0, centroids.shape[1]))
    for start in range(0, n, chunk):  # NOTE: a loop over chunks of ids, for memory
        ids_C = torch.arange(start, min(n, start + chunk), device=w0.device)
        emb_CD = embed(ids_C)
        new0_N[ids_C] = nearest(emb_CD, centroids)
        # the residual left for the hashed table: what the centroid does not explain
        resid = emb_CD - centroids[new0_N[ids_C]] if combine == "sum" else emb_CD[:, d0:]
        sums.index_add_(0, new1_N[ids_C], resid)
    counts = torch.bincount(new1_N, minlength=m1).clamp(min=1).to(sums.dtype)
    # NOTE: the reference divides by zero for empty rows (NaN); they start at zero here
    return Reclustered(
        new0_N,
        centroids[:, :d0].to(weight0.dtype).contiguous(),
        (sums / counts[:, None]).to(weight1.dtype),
        tail_seed,
    )


def kmeans(x_SD: torch.Tensor, k: int, *, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of ``x_SD`` from ``k`` distinct sampled points; empty clusters
    restart at random points. With ``S <= k`` the points are the first centroids and the
    rest are random (``N(0, 1 / D)``), as the reference.

    Args:
        x_SD: points, shape ``(S, D)``.
        k: centroids.
        iters: at most this many iterations.
        generator: a CPU generator.

    Returns:
        centroids ``(k, D)`` (float32, on ``x_SD``'s device).
    """
    s, d = x_SD.shape
    x_SD = x_SD.float()
    if s <= k:
        c_KD = torch.randn(k, d, generator=generator).div_(math.sqrt(d)).to(x_SD.device)
        c_KD[:s] = x_SD
        return c_KD
    c_KD = x_SD[torch.randperm(s, generator=generator)[:k].to(x_SD.device)].clone()
    for _ in range(iters):
        a_S = nearest(x_SD, c_KD)
        counts_K = torch.bincount(a_S, minlength=k)
        new_KD = torch.zeros_like(c_KD).index_add_(0, a_S, x_SD)
        new_KD /= counts_K.clamp(min=1)[:, None].to(new_KD.dtype)
        empty_K = counts_K == 0
        num_empty = int(empty_K.sum())
        if num_empty:
            pick = torch.randint(s, (num_empty,), generator=generator).to(x_SD.device)
            new_KD[empty_K] = x_SD[pick]
        if torch.equal(new_KD, c_KD):
            break
        c_KD = new_KD
    return c_KD


def nearest(x_CD: torch.Tensor, c_KD: torch.Tensor) -> torch.Tensor:
    """The nearest centroid (Euclidean; ties to the lower index) of each point, in chunks.

    Returns:
        int64 ``(C,)``.
    """
    out_C = torch.empty(x_CD.shape[0], dtype=torch.int64, device=x_CD.device)
    c_sq_K = (c_KD * c_KD).sum(1)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, c_KD.shape[0]))
    for start in range(0, x_CD.shape[0], chunk):  # NOTE: chunks of points, for memory
        x = x_CD[start : start + chunk]
        dist_CK = c_sq_K[None, :] - 2 * (x @ c_KD.T)  # |x|^2 is the same for every centroid
        out_C[start : start + chunk] = dist_CK.argmin(1)
    return out_C


def cce_tables(plan: HashPlan) -> list[TableHash]:
    """The CCE tables of a plan made by ``cce`` (all of its tables).

    Raises:
        ValueError: the plan is not a ``cce`` plan, or a table is not shaped as one.
    """
    if plan.metadata.get("method") != "cce":
        raise ValueError(f"not a cce plan: its method is {plan.metadata.get('method')!r}")
    for t in plan:
        c, odd = divmod(t.num_hashes, 2)
        pure = all(m.num_head == 0 for m in t.mappings[HASHED::2] if encoding(m) == "compact")
        combine_ok = (
            t.combine == "concat"
            or (t.combine == "sum" and c == 1)
            or (t.combine == "sum_concat" and t.num_columns == c)
        )
        if odd or t.encodings != ("dense", "compact") * c or not pure or not combine_ok:
            raise ValueError(
                f"table {t.name!r} is not a cce table (columns of a dense clustered index and a "
                f"pure seeded hash, combined by 'sum', 'sum_concat' or 'concat'): encodings "
                f"{t.encodings}, combine {t.combine!r}, {t.num_columns} columns"
            )
    return list(plan)


def num_columns(table: TableHash) -> int:
    """``c``, the columns of a CCE table (hash functions ``2i``, ``2i + 1`` are column ``i``'s)."""
    return table.num_hashes // 2


def column_combine(table: TableHash) -> str:
    """How each column of a CCE table combines its two internal tables (``CCE_COMBINES``)."""
    return "concat" if table.combine == "concat" else "sum"


def reclustered_table(table: TableHash, results: list[Reclustered]) -> TableHash:
    """``table`` with each column's new clustered index and hash seed (one result per column).

    Example::

        >>> plan = cce_plan({"t": 6}, fraction=1.0, columns=1)
        >>> r = Reclustered(torch.tensor([1, 1, 1, 0, 0, 0]), torch.zeros(3, 4),
        ...                 torch.zeros(3, 4), tail_seed=7)
        >>> t = reclustered_table(plan["t"], [r])
        >>> t.dense_mapping(0).tolist(), t.mappings[1].tail_seed
        ([1, 1, 1, 0, 0, 0], 7)
    """
    if len(results) != num_columns(table):
        raise ValueError(
            f"table {table.name!r}: {num_columns(table)} columns, {len(results)} results"
        )
    mappings: list[torch.Tensor | CompactMapping] = []
    for i, r in enumerate(results):
        mappings += [
            r.clustered_N.to("cpu", torch.int32),
            computed_mapping(table.heights[2 * i + HASHED], r.tail_seed),
        ]
    return dataclasses.replace(table, mappings=tuple(mappings))
