"""The paper's frequency-aware 1-D agglomerative clustering, vectorized in torch.

Same algorithm and same tie-breaking as :func:`agglomerative_1d_reference` (identical
assignments), but each step is a handful of ``O(M)`` tensor ops on the current clusters
and the number of steps is logarithmic in ``N / C`` (``K'`` is a fraction of ``M``).
Runs on the device of ``values_N`` (CPU or CUDA).

Shapes:
    ``N`` ids, ``C`` clusters asked for, ``M`` current clusters, ``P = M - 1`` neighbouring
    pairs (pair ``i`` joins clusters ``i`` and ``i + 1``), ``S`` selected pairs of a step,
    ``R`` runs of consecutive selected pairs (groups of clusters merged into one).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from torchrec_lhf.clustering.config import (
    AgglomerativeConfig,
    ClusteringResult,
    check_inputs,
    count_scale,
    stage_size,
)

logger = logging.getLogger(__name__)


def agglomerative_1d(
    values_N: torch.Tensor,
    counts_N: torch.Tensor | None,
    num_clusters: int,
    **options: Any,
) -> ClusteringResult:
    """Cluster ids on 1-D values into exactly ``num_clusters`` contiguous clusters.

    Args:
        values_N: floating tensor of shape ``(N,)`` (CPU or CUDA): each id's learned value.
        counts_N: access counts of shape ``(N,)`` (``None``: all ones).
        num_clusters: ``C`` in ``[1, N]``.
        **options: fields of :class:`AgglomerativeConfig`.

    Returns:
        :class:`ClusteringResult`; ``cluster_of_id`` is int64 of shape ``(N,)`` on the
        values' device, clusters numbered in value order.

    Raises:
        ValueError: bad inputs or options.

    Example::

        >>> import torch
        >>> from torchrec_lhf.clustering import agglomerative_1d
        >>> r = agglomerative_1d(torch.tensor([0.0, 5.0, 0.1, 5.2]), None, 2)
        >>> r.cluster_of_id.tolist()
        [0, 1, 0, 1]
    """
    cfg = AgglomerativeConfig.from_options(options)
    values_N, counts_N = check_inputs(values_N, counts_N, num_clusters)
    n = values_N.numel()
    limit = cfg.resolve_max_cluster_size(n, num_clusters)

    sorted_N, order_N = torch.sort(values_N, stable=True)  # equal values keep id order
    value_M = sorted_N.to(torch.float64)
    count_M = counts_N.index_select(0, order_N)
    del sorted_N
    size_M = torch.ones(n, dtype=torch.int64, device=values_N.device)

    steps = fallback_merges = 0
    while value_M.numel() > num_clusters:
        before = value_M.numel()
        pairs_S, used_fallback = _select_pairs(value_M, count_M, size_M, num_clusters, cfg, limit)
        value_M, count_M, size_M = _merge_chains(
            value_M, count_M, size_M, pairs_S, limit, cfg.weighted_values
        )
        steps += 1
        if used_fallback:
            fallback_merges += before - value_M.numel()
    logger.debug("agglomerative_1d: %d ids -> %d clusters in %d steps", n, num_clusters, steps)

    cluster_of_sorted_N = torch.repeat_interleave(
        torch.arange(num_clusters, device=values_N.device), size_M, output_size=n
    )
    cluster_of_id_N = torch.empty_like(cluster_of_sorted_N).scatter_(
        0, order_N, cluster_of_sorted_N
    )
    return ClusteringResult(cluster_of_id_N, num_clusters, fallback_merges, steps, limit)


def _select_pairs(
    value_M: torch.Tensor,
    count_M: torch.Tensor,
    size_M: torch.Tensor,
    num_clusters: int,
    cfg: AgglomerativeConfig,
    limit: int | None,
) -> tuple[torch.Tensor, bool]:
    """One step's selected pair indices (sorted, shape ``(S,)``) and whether the fallback ran."""
    m = value_M.numel()
    excess = m - num_clusters
    k = cfg.merges_for_step(m, excess)
    pairs_S: torch.Tensor | None = None  # None: all P pairs, not materialized
    last_key_S: torch.Tensor | None = None
    rank = 0
    used_fallback = False
    for name in cfg.filters:
        if name == "size":
            if limit is None:
                continue
            merged_S = _gather_pairs(size_M, pairs_S, "sum")
            within_S = merged_S <= limit
            num_within = int(within_S.sum())
            if num_within == merged_S.numel():
                keep_S = None
            elif num_within > 0:
                keep_S = within_S
            else:  # the paper's fallback: the K' pairs of smallest merged size
                keep_S = _smallest_mask(merged_S, k)
                used_fallback = True
        else:
            if name == "frequency":
                key_S = _frequency_key(count_M, pairs_S)
            else:
                key_S = _gather_pairs(value_M, pairs_S, "diff")
            keep_S = _smallest_mask(key_S, stage_size(rank, k))
            last_key_S = key_S
            rank += 1
        pairs_S, last_key_S = _apply(keep_S, pairs_S, last_key_S)
    assert last_key_S is not None  # config guarantees a ranking filter
    if pairs_S is None:
        pairs_S = torch.arange(m - 1, device=value_M.device)
    if pairs_S.numel() > k:  # at most K' merges, so never below the target
        keep_S = _smallest_mask(last_key_S, k)
        pairs_S = pairs_S[keep_S]
    return pairs_S, used_fallback


def _apply(
    keep_S: torch.Tensor | None,
    pairs_S: torch.Tensor | None,
    key_S: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Filter the pair indices (and the aligned key) by a keep mask (``None``: keep all)."""
    if keep_S is None:
        return pairs_S, key_S
    idx = keep_S.nonzero().squeeze(1)
    pairs_S = idx if pairs_S is None else _take(pairs_S, idx)
    return pairs_S, (None if key_S is None else _take(key_S, idx))


def _gather_pairs(x_M: torch.Tensor, pairs_S: torch.Tensor | None, op: str) -> torch.Tensor:
    """``x[i] + x[i + 1]`` (``op="sum"``) or ``x[i + 1] - x[i]`` (``"diff"``) per pair ``i``."""
    if pairs_S is None:
        left, right = x_M[:-1], x_M[1:]
    else:
        left, right = _take(x_M, pairs_S), _take(x_M, pairs_S + 1)
    return left + right if op == "sum" else right - left


def _frequency_key(count_M: torch.Tensor, pairs_S: torch.Tensor | None) -> torch.Tensor:
    """Product of normalized counts, ``(n_i / ||C||_2 + 1) * (n_j / ||C||_2 + 1)``, float64."""
    scale = count_scale(count_M)
    if scale > 0:
        norm_M = count_M / scale + 1.0
    else:
        norm_M = torch.ones_like(count_M)
    if pairs_S is None:
        return norm_M[:-1] * norm_M[1:]
    return _take(norm_M, pairs_S) * _take(norm_M, pairs_S + 1)


def _smallest_mask(key_S: torch.Tensor, k: int) -> torch.Tensor | None:
    """Mask of the ``k`` smallest keys, ties to the lower position; ``None`` if all are kept."""
    if k >= key_S.numel():
        return None
    kth = kth_smallest(key_S, k)
    mask_S = key_S <= kth
    extra = int(mask_S.sum()) - k
    if extra > 0:  # too many ties at the k-th value: drop those at the highest positions
        ties = (key_S == kth).nonzero().squeeze(1)
        mask_S[ties[ties.numel() - extra :]] = False
    return mask_S


def kth_smallest(key_S: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest key (1-based), a 0-d tensor on the keys' device.

    On CPU ``kthvalue``'s O(P) selection. On CUDA a sort instead: ``kthvalue`` selects
    with one thread block per slice, so one slice of millions of keys runs on a single
    multiprocessor: 149 ms for 10M float64 keys on an H200, against 1.1 ms for the sort
    (``benchmarks/gpu_check.sh``, step ``kth_select``), and a step selects up to three
    times. Both give the same value.
    """
    if key_S.is_cuda:
        return torch.sort(key_S).values[k - 1]
    return key_S.kthvalue(k).values  # O(P) selection, no full sort


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for a 1-D index (``index_select`` is the fastest gather on CPU)."""
    return x.index_select(0, idx)


def _runs(pairs_S: torch.Tensor) -> torch.Tensor:
    """Bool mask of the pairs that start a run of consecutive pair indices."""
    first_S = torch.ones_like(pairs_S, dtype=torch.bool)
    first_S[1:] = pairs_S[1:] != pairs_S[:-1] + 1
    return first_S


def _merge_chains(
    value_M: torch.Tensor,
    count_M: torch.Tensor,
    size_M: torch.Tensor,
    pairs_S: torch.Tensor,
    limit: int | None,
    weighted: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge selected pairs; chains over ``limit`` break into pairs from the left."""
    if limit is not None and pairs_S.numel() > 1:
        # A chain of r pairs joins r + 1 clusters; if their total size is over the limit,
        # keep only its pairs at even offsets (ABCDE -> AB, CD, E).
        first_S = _runs(pairs_S)
        chain_S = torch.cumsum(first_S, 0) - 1
        start_pos_R = first_S.nonzero().squeeze(1)
        total_R = torch.zeros(start_pos_R.numel(), dtype=size_M.dtype, device=size_M.device)
        total_R.index_add_(0, chain_S, _take(size_M, pairs_S))
        last_S = torch.ones_like(first_S)
        last_S[:-1] = first_S[1:]
        total_R += _take(size_M, pairs_S[last_S] + 1)
        offset_S = torch.arange(pairs_S.numel(), device=pairs_S.device) - _take(
            start_pos_R, chain_S
        )
        drop_S = _take(total_R > limit, chain_S) & (offset_S % 2 == 1)
        pairs_S = pairs_S[~drop_S]

    # Runs of the remaining pairs are the groups of clusters that become one.
    first_S = _runs(pairs_S)
    run_pos_R = first_S.nonzero().squeeze(1)
    start_R = _take(pairs_S, run_pos_R)
    length_R = torch.diff(run_pos_R, append=run_pos_R.new_tensor([pairs_S.numel()])) + 1
    new_index_R = start_R - run_pos_R

    keep_M = torch.ones_like(value_M, dtype=torch.bool)
    keep_M[pairs_S + 1] = False
    kept = keep_M.nonzero().squeeze(1)
    value_out, count_out, size_out = _take(value_M, kept), _take(count_M, kept), _take(size_M, kept)

    # Sums left to right, one offset at a time over all groups (bit-identical to the
    # reference). Every group has a second member; few have a third, so offset 1 runs on
    # whole tensors and later offsets on the shrinking set of longer groups.
    value_sum_R, count_R, size_R = (
        _take(value_M, start_R),
        _take(count_M, start_R),
        _take(size_M, start_R),
    )
    weighted_R = count_R * value_sum_R if weighted else None
    pos_R = start_R + 1
    value_2, count_2 = _take(value_M, pos_R), _take(count_M, pos_R)
    value_sum_R += value_2
    count_R += count_2
    size_R += _take(size_M, pos_R)
    if weighted_R is not None:
        weighted_R += count_2 * value_2
    active = (length_R > 2).nonzero().squeeze(1)
    j = 2
    while active.numel() > 0:
        pos = _take(start_R, active) + j
        value_j, count_j = _take(value_M, pos), _take(count_M, pos)
        value_sum_R.index_put_((active,), _take(value_sum_R, active) + value_j)
        count_R.index_put_((active,), _take(count_R, active) + count_j)
        size_R.index_put_((active,), _take(size_R, active) + _take(size_M, pos))
        if weighted_R is not None:
            weighted_R.index_put_((active,), _take(weighted_R, active) + count_j * value_j)
        j += 1
        active = active[_take(length_R, active) > j]
    merged_R = value_sum_R / length_R
    if weighted_R is not None:
        merged_R = torch.where(count_R > 0, weighted_R / count_R, merged_R)
    merged_R = torch.clamp(
        merged_R, min=_take(value_M, start_R), max=_take(value_M, start_R + length_R - 1)
    )

    value_out[new_index_R] = merged_R
    count_out[new_index_R] = count_R
    size_out[new_index_R] = size_R
    return value_out, count_out, size_out
