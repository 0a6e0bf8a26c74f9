"""A learned plan under a byte budget: its remap's bytes before any clustering.

Shapes: ``N`` ids of a table, ``K`` head ids, ``M_h`` rows of internal table ``h``.

A learned plan's remap bytes depend on its head (which ids are stored) and its encoding
(dense: a row per id; compact: head ids and rows), not on the clustering, so
``budget="bytes"`` (:mod:`torchrec_lhf.compression.budget`) is fitted once, before the
build clusters anything: a smaller remap buys rows.

Example::

    >>> import torch
    >>> from torchrec_lhf.hash_build.head_tail import HeadTail
    >>> counts = {"t": torch.tensor([50, 0, 30, 1] * 250)}  # 1,000 ids, a head of 500
    >>> rows, at = learned_rows_for_bytes({"t": 1000}, counts, fraction=0.5,
    ...     embedding_dim=4, head_tail=HeadTail(min_count=10, encoding="compact"))
    >>> at.index["t"], rows["t"]  # 500 ids x (4 + 2) bytes; (8,000 - 3,000) / 16
    (3000, 312)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchrec_lhf.compression.budget import BudgetTooSmall, ModelBytes, byte_budget, rows_for_bytes
from torchrec_lhf.hash_build.head_tail import HeadTail, head_region
from torchrec_lhf.plan_compact import dense_width, ranked_bytes, ranks_pay, row_dtype

logger = logging.getLogger(__name__)


def learned_index_bytes(
    sizes: Mapping[str, int],
    heads: Mapping[str, tuple[int, int] | None],
    heights: Mapping[str, list[int]],
    encoding: str,
    fill: tuple[float, Mapping[str, tuple[int, int]]] | None = None,
    tail_fraction: float | None = None,
) -> dict[str, int]:
    """The remap bytes a learned plan will store, from its heads and heights alone.

    The encoding of each hash follows :func:`~torchrec_lhf.hash_build.head_tail.cluster_hashes`
    (no head: dense; ``encoding`` ``"dense"``/``"compact"``; ``"auto"``: compact when
    smaller than dense at the hash's row width), and the bytes
    :meth:`~torchrec_lhf.plan.HashPlan.remap_bytes` (dense width set by the module's
    largest dense height; a head of no more ids than its region's rows gets a row each in
    id order, so it is held ranked where that pays:
    :func:`~torchrec_lhf.plan_compact.ranked_bytes`), so that a byte budget is fitted
    before any clustering.

    Args:
        sizes: table name -> ``N``.
        heads: compressed table name -> ``(K, largest head id)``, or ``None``: every id
            clustered.
        heights: compressed table name -> its ``H`` internal heights.
        encoding: ``"auto"``, ``"dense"`` or ``"compact"``.
        fill: for ``tail_region="fill"``, ``(tail_fraction, seen)``: table -> ``(ids seen
            in training, largest of them)``; a head smaller than its region at a height
            then grows to the region's rows, up to the ids seen
            (:func:`~torchrec_lhf.hash_build.head_tail.fill_head`).
        tail_fraction: the tail's share of the rows where the head region's rows are known
            before the build (every tail region but ``"mass"``; ``fill``'s when given):
            a head no larger is predicted ranked. ``None``: never predicted ranked (the
            plan may then store less than predicted, never more).

    Returns:
        Compressed table name -> remap bytes.
    """
    if fill is not None:
        tail_fraction = fill[0]
    compact: dict[str, list[int | None]] = {}  # per hash: compact bytes, or None (dense)
    for name, hs in heights.items():
        head = heads.get(name)
        compact[name] = []
        for m in hs:
            if head is None or encoding == "dense":
                compact[name].append(None)
                continue
            k, top = head
            if fill is not None and name in fill[1]:
                seen, top_seen = fill[1][name]
                grown = max(k, min(seen, head_region(m, fill[0])))
                k, top = grown, (top_seen if grown > k else top)
            n = sizes[name]
            if tail_fraction is not None and k <= head_region(m, tail_fraction) and ranks_pay(k, n):
                nbytes = ranked_bytes(k, n)
            else:
                nbytes = k * ((4 if top < 2**31 else 8) + row_dtype(m).itemsize)
            dense = n * dense_width(m)
            compact[name].append(nbytes if encoding == "compact" or nbytes < dense else None)
    dense_heights = [m for t, hs in heights.items() for m, c in zip(hs, compact[t]) if c is None]
    width = dense_width(max(dense_heights, default=1))
    return {t: sum(sizes[t] * width if c is None else c for c in compact[t]) for t in heights}


def learned_rows_for_bytes(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor] | None,
    *,
    fraction: float,
    embedding_dim: int,
    min_table_rows: int = 0,
    num_hashes: int = 1,
    combine: str = "sum",
    head_tail: HeadTail | None = None,
) -> tuple[dict[str, int], ModelBytes]:
    """Rows per table of a learned plan at ``fraction`` of the full fp32 table bytes.

    The remap's bytes depend on the head and the encoding, not on the clustering
    (:func:`learned_index_bytes`), so the fit (:func:`~torchrec_lhf.compression.budget.
    rows_for_bytes`) runs before any clustering.

    With ``head_tail.row_allocation="counts"`` the rows follow :func:`rows_by_counts`
    instead of the tables' sizes.

    Returns:
        ``(rows, bytes)``: compressed table -> total rows, and the model's bytes.

    Raises:
        ValueError: a head by counts without counts, or a budget below the bytes at the
            fewest rows (naming the table).
    """
    spec = head_tail or HeadTail()
    heads: dict[str, tuple[int, int] | None] = {}
    seen: dict[str, tuple[int, int]] = {}
    for name, n in sizes.items():
        if n < min_table_rows:
            continue
        counts_N = None if counts is None else counts.get(name)
        head_N = spec.head(counts_N, name)
        if head_N is None:
            heads[name] = None
        else:
            heads[name] = _size_and_top(head_N)
            if spec.tail_region == "fill" and counts_N is not None:
                seen[name] = _size_and_top(counts_N >= spec.fill_min_count)  # int counts
    fill = (spec.tail_fraction, seen) if spec.tail_region == "fill" else None
    known_region = None if spec.tail_region == "mass" else spec.tail_fraction
    rows_at = None
    if spec.row_allocation == "counts":
        if counts is None:
            raise ValueError("row_allocation 'counts' needs the ids' access counts, got None")
        rows_at = rows_by_counts(
            {t: sizes[t] for t in heads}, counts, spec.tail_fraction, num_hashes
        )
    return rows_for_bytes(
        sizes,
        fraction,
        embedding_dim=embedding_dim,
        min_table_rows=min_table_rows,
        num_hashes=num_hashes,
        combine=combine,
        index_bytes=lambda hs: learned_index_bytes(
            sizes, heads, hs, spec.encoding, fill, known_region
        ),
        rows_at=rows_at,
        what=f"the learned hash at {fraction} of the full table bytes",
    )


def fit_head_to_bytes(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor] | None,
    spec: HeadTail,
    **fit: Any,
) -> HeadTail:
    """The head/tail settings whose stored remap takes at most ``index_share`` (and, with
    ``fill_share``, ``fill_share``: :func:`fit_fill_to_bytes`) of the budget.

    A head by ``min_count`` stores its ids (compact) or every id of its table (dense), so a
    small budget over many frequent ids is spent on the remap (or cannot hold it at all).
    With ``spec.index_share`` set, the head's count threshold (one for every
    compressed table, so that the ids kept are the most frequent ones wherever they are) is
    raised to the smallest count, found by bisection over the counts seen, at which the
    fitted model (:func:`learned_rows_for_bytes`) stores at most ``index_share`` of the
    budget in its remap; at worst to an empty head (the ``fill`` region's ids only). The
    threshold is not lowered: a head that fits is kept as it is. A head by ``mass``, or none
    (the paper's build), is kept as it is.

    Args:
        sizes: table name -> ``N``.
        counts: table name -> training access counts ``(N,)``, or ``None`` (nothing raised).
        spec: the head/tail settings.
        **fit: the budget, as :func:`learned_rows_for_bytes` takes it (``fraction``,
            ``embedding_dim``, ``min_table_rows``, ``num_hashes``, ``combine``).

    Returns:
        ``spec`` itself, or a copy with ``min_count`` (or ``fill_min_count``) raised.

    Example::

        >>> counts = {"t": torch.arange(1000) % 100}  # 10 ids of each count 0..99
        >>> spec = HeadTail(min_count=1, tail_fraction=0.5, encoding="compact",
        ...                 index_share=0.25)
        >>> # at most 1,000 bytes: 160 ids of 6 bytes (170 at 83)
        >>> fit_head_to_bytes({"t": 1000}, counts, spec, fraction=0.25, embedding_dim=4).min_count
        84
    """
    return fit_fill_to_bytes(sizes, counts, _fit_head_threshold(sizes, counts, spec, **fit), **fit)


def _fit_head_threshold(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor] | None,
    spec: HeadTail,
    **fit: Any,
) -> HeadTail:
    """:func:`fit_head_to_bytes`' ``index_share`` part: the head's threshold."""
    if spec.index_share is None or not spec.min_count or counts is None:
        return spec  # no cap, or no count threshold to raise
    budget = byte_budget(sizes, fit["fraction"], fit["embedding_dim"])
    cap = spec.index_share * budget

    def fits(c: int) -> bool:
        got = _stored(sizes, counts, dataclasses.replace(spec, min_count=c), fit)
        return got is not None and got <= cap

    if fits(spec.min_count):
        return spec
    above_C = _counts_between(sizes, counts, spec.min_count, None, fit)
    # the candidates: every count above the threshold, then one above all (an empty head)
    top = int(above_C[-1]) + 1 if above_C.numel() else spec.min_count + 1
    candidates = above_C.tolist() + [top]
    lo = _first_fitting(candidates, fits)  # the last if none fits
    fitted = dataclasses.replace(spec, min_count=int(candidates[lo]))
    logger.info(
        "head threshold raised from %d to %d accesses so that the stored remap takes at most "
        "%g of the %d-byte budget (index_share)",
        spec.min_count,
        fitted.min_count,
        spec.index_share,
        budget,
    )
    return fitted


def fit_fill_to_bytes(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor] | None,
    spec: HeadTail,
    **fit: Any,
) -> HeadTail:
    """The fill extension limited so that the stored remap takes at most ``fill_share`` of
    the budget.

    ``tail_region="fill"`` gives the next most frequent ids after the clustered head a row
    each until the head region is full, and stores each of them (an id and a row): at a
    half-width plan's rows that is most of the remap. With ``spec.fill_share`` set, the
    extension's count threshold ``fill_min_count`` (one for every compressed table) is
    raised to the smallest count, found by bisection over the counts seen below the head's
    threshold, at which the fitted model (:func:`learned_rows_for_bytes`) stores at most
    ``fill_share`` of the budget; the rows it no longer fills go to the tail, and the bytes
    saved buy rows. The clustered head is never touched. Where even no extension stores
    more (a head that alone exceeds the share), the extension is dropped if that stores
    less, else (dense remaps, whose bytes do not depend on the head) kept.

    Args:
        sizes: table name -> ``N``.
        counts: table name -> training access counts ``(N,)``, or ``None`` (nothing raised).
        spec: the head/tail settings (after :func:`fit_head_to_bytes`' head threshold).
        **fit: the budget, as :func:`learned_rows_for_bytes` takes it.

    Returns:
        ``spec`` itself, or a copy with ``fill_min_count`` raised.

    Example::

        >>> counts = {"t": torch.arange(1000) % 100}  # 10 ids of each count 0..99
        >>> spec = HeadTail(min_count=90, tail_fraction=0.05, tail_region="fill",
        ...                 encoding="compact", fill_share=0.08)
        >>> # at most 320 bytes: 150 ids held ranked, 2 bytes each (the head's 100 and 50
        >>> # filled), and 8 for its block's start and end
        >>> fit_fill_to_bytes({"t": 1000}, counts, spec, fraction=0.25,
        ...                   embedding_dim=4).fill_min_count
        85
    """
    if (
        spec.fill_share is None
        or spec.tail_region != "fill"
        or not spec.min_count
        or counts is None
        or spec.min_count <= spec.fill_min_count
    ):
        return spec  # no cap, no extension, or nothing left to raise
    budget = byte_budget(sizes, fit["fraction"], fit["embedding_dim"])
    cap = spec.fill_share * budget

    @functools.cache
    def stored(c: int) -> int | None:
        return _stored(sizes, counts, dataclasses.replace(spec, fill_min_count=c), fit)

    def fits(c: int) -> bool:
        got = stored(c)
        return got is not None and got <= cap

    if fits(spec.fill_min_count):
        return spec
    if not fits(spec.min_count):  # even no extension stores more than the share
        at_one, at_none = stored(spec.fill_min_count), stored(spec.min_count)
        if at_none is None or (at_one is not None and at_none >= at_one):
            return spec  # dropping the extension would not store less
        threshold = spec.min_count
    else:  # the first of the counts between, then the head's threshold, that fits
        between_C = _counts_between(sizes, counts, spec.fill_min_count, spec.min_count, fit)
        candidates = [*between_C.tolist(), spec.min_count]
        threshold = candidates[_first_fitting(candidates, fits)]
    fitted = dataclasses.replace(spec, fill_min_count=threshold)
    logger.info(
        "fill limited to ids seen at least %d times so that the stored remap takes at most "
        "%g of the %d-byte budget (fill_share)",
        fitted.fill_min_count,
        spec.fill_share,
        budget,
    )
    return fitted


def _stored(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor],
    spec: HeadTail,
    fit: dict[str, Any],
) -> int | None:
    """The fitted model's stored remap bytes with ``spec``, or None where it cannot fit."""
    try:
        _, at = learned_rows_for_bytes(sizes, counts, **fit, head_tail=spec)
    except BudgetTooSmall:
        return None
    return sum(at.index.values())


def _counts_between(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor],
    low: int,
    high: int | None,
    fit: dict[str, Any],
) -> torch.Tensor:
    """The distinct access counts in ``(low, high)`` (``high`` None: no bound) of the
    compressed tables' ids, sorted, int64."""
    found = [torch.zeros(0, dtype=torch.int64)]
    for t, n in sizes.items():
        if n >= fit.get("min_table_rows", 0) and t in counts:
            c = counts[t].reshape(-1)
            keep = (c > low) & (c < high) if high is not None else c > low
            found.append(c[keep].to(torch.int64))
    return torch.unique(torch.cat(found))


def _first_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int:
    """The index of the first of ``candidates`` that ``fits``, by bisection (``fits`` is
    monotone: false, then true); the last index if none does."""
    lo, hi = 0, len(candidates) - 1  # the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def rows_by_counts(
    sizes: Mapping[str, int],
    counts: Mapping[str, torch.Tensor],
    tail_fraction: float,
    num_hashes: int = 1,
) -> Callable[[float], dict[str, int]]:
    """``row_allocation="counts"``: rows where the most frequent ids of all tables are.

    For ``f`` in ``[0, 1/2]``, the ``K = round(2 f S)`` most frequent of the ``S`` ids seen
    in training over all ``sizes``' tables (ties shared in proportion to each table's tied
    ids) get a row each: table ``t`` holding ``K_t`` of them gets the fewest rows whose
    ``fill`` head region (:func:`~torchrec_lhf.hash_build.head_tail.head_region`, in each
    of its ``H`` internal tables) holds ``K_t`` ids, at least ``H`` and at most ``N_t``. So
    a row goes to the id seen most often wherever it is, instead of to every table in
    proportion to its size. From ``f = 1/2`` every seen id has a row, and the rest is
    shared by size: ``max(rows at 1/2, round((2 f - 1) N_t))``. Non-decreasing in ``f``.

    Args:
        sizes: compressed table name -> ``N_t``.
        counts: table name -> training access counts ``(N_t,)``.
        tail_fraction: of each internal table's rows, for the hashed tail.
        num_hashes: ``H``.

    Returns:
        ``f`` -> compressed table name -> total rows.

    Example::

        >>> sizes = {"a": 100, "b": 100}  # a's ids are seen more often than b's
        >>> counts = {"a": torch.tensor([9] * 10 + [0] * 90), "b": torch.tensor([1] * 100)}
        >>> rule = rows_by_counts(sizes, counts, 0.5)
        >>> rule(10 / 220)  # the 10 ids seen most: a's, in a head region of 10 of 20 rows
        {'a': 20, 'b': 1}
    """
    names = list(sizes)
    seen = {t: torch.sort(counts[t][counts[t] > 0].to(torch.int64)).values for t in names}
    everyone = torch.sort(
        torch.cat([seen[t] for t in names] + [torch.zeros(0, dtype=torch.int64)]), descending=True
    ).values
    total = everyone.numel()

    def region_rows(k: int, n: int) -> int:
        """The fewest total rows whose region holds ``k`` ids, in ``[H, N_t]``."""
        m = max(1, math.ceil(k / (1 - tail_fraction)) if k else 1)
        while head_region(m, tail_fraction) < k:
            m += 1
        while m > 1 and head_region(m - 1, tail_fraction) >= k:
            m -= 1
        return min(max(num_hashes, num_hashes * m), n)

    def top(k_all: int) -> dict[str, int]:
        """Of the ``k_all`` most frequent seen ids, how many each table holds."""
        if k_all <= 0:
            return dict.fromkeys(names, 0)
        v = int(everyone[k_all - 1])  # the smallest count that gets rows
        above = {t: s.numel() - int(torch.searchsorted(s, v, right=True)) for t, s in seen.items()}
        tied = {
            t: int(torch.searchsorted(s, v, right=True) - torch.searchsorted(s, v))
            for t, s in seen.items()
        }
        left, all_tied = k_all - sum(above.values()), sum(tied.values())
        return {t: above[t] + (left * tied[t]) // all_tied for t in names}

    full = {t: region_rows(seen[t].numel(), sizes[t]) for t in names}

    def rule(f: float) -> dict[str, int]:
        if f <= 0.5:
            k = top(round(2 * f * total))
            return {t: region_rows(k[t], sizes[t]) for t in names}
        g = 2 * f - 1
        return {t: max(full[t], min(sizes[t], max(num_hashes, round(g * sizes[t])))) for t in names}

    return rule


def _size_and_top(ids_N: torch.Tensor) -> tuple[int, int]:
    """How many ids a bool ``(N,)`` selects, and the largest (0 for none)."""
    ids_K = ids_N.nonzero().squeeze(1)
    return ids_K.numel(), int(ids_K.max()) if ids_K.numel() else 0
