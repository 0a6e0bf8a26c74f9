"""Vectorized helpers shared by the loaders: jagged gathers, frequency encoding, splits.

Shape legend: ``N`` samples, ``F`` sparse features, ``S`` segments (one per
(sample, feature) pair that is gathered), ``V`` ids in total, ``U`` distinct
(feature, raw value) pairs.
"""

from __future__ import annotations

import torch

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""Every loader splits 80 / 10 / 10 (train / val / test) along a deterministic order."""

EMPTY = -1
"""Raw value that marks an empty field in :func:`frequency_encode` input."""


def exclusive_cumsum(x_S: torch.Tensor) -> torch.Tensor:
    """Offsets of segments of lengths ``x_S``: shape ``(S,)`` int64, starting at 0."""
    out_S = torch.zeros_like(x_S, dtype=torch.int64)
    if x_S.numel() > 1:
        torch.cumsum(x_S[:-1].to(torch.int64), dim=0, out=out_S[1:])
    return out_S


def gather_segments(
    values_V: torch.Tensor, starts_S: torch.Tensor, lengths_S: torch.Tensor
) -> torch.Tensor:
    """Concatenate ``values_V[starts_S[s] : starts_S[s] + lengths_S[s]]`` for every ``s``.

    Args:
        values_V: the source, shape ``(V,)``.
        starts_S: segment starts into ``values_V``, shape ``(S,)``.
        lengths_S: segment lengths, shape ``(S,)``, non-negative.

    Returns:
        Shape ``(lengths_S.sum(),)``, same dtype as ``values_V``.
    """
    lengths_S = lengths_S.to(torch.int64)
    total = int(lengths_S.sum())
    if total == 0:
        return values_V.new_empty((0,))
    if total == lengths_S.numel() and bool((lengths_S == 1).all()):
        return values_V[starts_S]  # NOTE: one-hot fast path, the common case
    seg_V = torch.repeat_interleave(torch.arange(lengths_S.numel()), lengths_S, output_size=total)
    within_V = torch.arange(total) - exclusive_cumsum(lengths_S)[seg_V]
    return values_V[starts_S.to(torch.int64)[seg_V] + within_V]


def feature_major_to_sample_major(values_V: torch.Tensor, lengths_NF: torch.Tensor) -> torch.Tensor:
    """Reorder ids listed feature by feature into the sample-major layout of ``RecDataset``.

    Args:
        values_V: ids ordered feature 0's (sample 0, sample 1, ...), then feature 1's, ...
        lengths_NF: ids per sample per feature, shape ``(N, F)``.

    Returns:
        The same ids ordered sample 0's (feature 0, feature 1, ...), sample 1's, ...
    """
    lengths_FN = lengths_NF.t().reshape(-1).to(torch.int64)
    total = int(lengths_FN.sum())
    if values_V.numel() != total:
        raise ValueError(f"{values_V.numel()} values but lengths sum to {total}")
    starts_NF = exclusive_cumsum(lengths_NF.reshape(-1)).view(lengths_NF.shape)
    starts_FN = starts_NF.t().reshape(-1)
    seg_V = torch.repeat_interleave(torch.arange(lengths_FN.numel()), lengths_FN, output_size=total)
    dest_V = starts_FN[seg_V] + torch.arange(total) - exclusive_cumsum(lengths_FN)[seg_V]
    out_V = torch.empty_like(values_V)
    out_V[dest_V] = values_V
    return out_V


def frequency_encode(
    raw_NF: torch.Tensor, *, min_count: int = 1, reserve: bool = True
) -> tuple[torch.Tensor, list[int]]:
    """Map raw values of each column to contiguous ids by descending frequency.

    With ``reserve=True``, id ``0`` of every column is reserved for empty fields
    (raw value :data:`EMPTY`) and for values seen fewer than ``min_count`` times;
    the kept values get ids ``1, 2, ...`` from most to least frequent (ties broken by
    raw value, so the mapping is deterministic). With ``reserve=False`` there is no
    reserved id: every value is kept and ids start at 0 (no empties allowed).

    Args:
        raw_NF: int64 raw values, shape ``(N, F)``; one column per feature.
        min_count: values seen fewer times than this in their column map to id 0.
        reserve: whether id 0 is the reserved "empty or rare" id.

    Returns:
        ``(ids_NF, num_embeddings)``: int64 ids of shape ``(N, F)`` and the height of each
        column's table (``1 + kept values`` with ``reserve``).

    Raises:
        ValueError: ``min_count < 1``, or empties / ``min_count > 1`` without ``reserve``.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if not reserve and min_count != 1:
        raise ValueError(f"min_count={min_count} needs a reserved id (reserve=True)")
    num_rows, num_cols = raw_NF.shape
    if num_rows == 0:
        return raw_NF.clone(), [1 if reserve else 0] * num_cols
    empty_NF = raw_NF == EMPTY
    if not reserve and bool(empty_NF.any()):
        raise ValueError("empty fields need a reserved id (reserve=True)")
    # One int64 key per (column, value): direct when the value range allows, else after
    # compressing the raw values to their ranks (an extra sort).
    low, high = int(raw_NF.min()), int(raw_NF.max())
    if num_cols * (high - low + 1) < 2**62:
        span, key_NF = high - low + 1, raw_NF - low
        raw_of = lambda r: r + low  # noqa: E731
    else:
        uniq_U, key_NF = torch.unique(raw_NF, return_inverse=True)
        span, raw_of = uniq_U.numel(), lambda r: uniq_U[r]  # noqa: E731
    key_NF = key_NF + torch.arange(num_cols).view(1, -1) * span
    ukey_U, kinv_NF, count_U = torch.unique(key_NF, return_inverse=True, return_counts=True)
    col_U = ukey_U // span
    # Order: column ascending, count descending, raw value ascending (ukey order is raw order).
    order_U = torch.sort(-count_U, stable=True).indices
    order_U = order_U[torch.sort(col_U[order_U], stable=True).indices]
    keep_U = (count_U >= min_count) & (raw_of(ukey_U % span) != EMPTY)
    kept_sorted_U = keep_U[order_U].to(torch.int64)
    col_sorted_U = col_U[order_U]
    # Rank among kept values of the same column.
    cum_U = torch.cumsum(kept_sorted_U, 0)
    kept_per_col = torch.bincount(col_sorted_U, weights=kept_sorted_U.double(), minlength=num_cols)
    kept_per_col = kept_per_col.to(torch.int64)
    col_base = exclusive_cumsum(kept_per_col)
    rank_sorted_U = cum_U - 1 - col_base[col_sorted_U]
    first = 1 if reserve else 0
    id_sorted_U = torch.where(kept_sorted_U.bool(), rank_sorted_U + first, torch.zeros_like(cum_U))
    id_U = torch.empty_like(id_sorted_U)
    id_U[order_U] = id_sorted_U
    ids_NF = id_U[kinv_NF]
    return ids_NF, [int(k) + first for k in kept_per_col.tolist()]


def split_by_order(order_N: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cut an ordering of the rows into train / val / test by :data:`SPLIT_FRACTIONS`.

    Args:
        order_N: row indices in split order (time order, file order or a seeded
            permutation), shape ``(N,)``.

    Returns:
        ``{"train", "val", "test"}`` -> int64 row indices; the first 80 % of ``order_N``
        (rounded down) is train, the next 10 % (rounded down) val, the rest test.
    """
    order_N = order_N.to(torch.int64)
    n = order_N.numel()
    n_train = int(n * SPLIT_FRACTIONS[0])
    n_val = int(n * SPLIT_FRACTIONS[1])
    return {
        "train": order_N[:n_train].clone(),
        "val": order_N[n_train : n_train + n_val].clone(),
        "test": order_N[n_train + n_val :].clone(),
    }


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on ``(n, seed)``: shape ``(n,)`` int64."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)
