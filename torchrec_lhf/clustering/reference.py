"""The paper's frequency-aware 1-D agglomerative clustering, written for reading.

Plain Python over a list of clusters, one step of the paper's pseudocode at a time. It is
``O(N^2)``-ish and meant for tests on small inputs; :func:`agglomerative_1d` is the fast
version and must return identical assignments.

Shapes: ``N`` ids, ``C`` clusters asked for, ``M`` current clusters.

Arithmetic is float64 throughout, in a fixed order (left to right), and the count norm comes
from :func:`count_scale`, so that the vectorized version can reproduce every bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from torchrec_lhf.clustering.config import (
    AgglomerativeConfig,
    ClusteringResult,
    check_inputs,
    count_scale,
    stage_size,
)


@dataclass
class _Cluster:
    value: float
    count: float
    size: int


def agglomerative_1d_reference(
    values_N: torch.Tensor,
    counts_N: torch.Tensor | None,
    num_clusters: int,
    **options: Any,
) -> ClusteringResult:
    """Cluster ids on 1-D values into exactly ``num_clusters`` contiguous clusters.

    Args:
        values_N: floating tensor of shape ``(N,)``: each id's learned value.
        counts_N: access counts of shape ``(N,)`` (``None``: all ones).
        num_clusters: ``C`` in ``[1, N]``.
        **options: fields of :class:`AgglomerativeConfig` (``merges_per_step``,
            ``merge_fraction``, ``max_cluster_size``, ``size_factor``, ``filters``,
            ``weighted_values``).

    Returns:
        :class:`ClusteringResult` with ``cluster_of_id`` of shape ``(N,)`` (int64, CPU).

    Raises:
        ValueError: bad inputs or options.

    Example::

        >>> import torch
        >>> from torchrec_lhf.clustering import agglomerative_1d_reference
        >>> r = agglomerative_1d_reference(torch.tensor([0.0, 5.0, 0.1, 5.2]), None, 2)
        >>> r.cluster_of_id.tolist()
        [0, 1, 0, 1]
    """
    cfg = AgglomerativeConfig.from_options(options)
    values_N, counts_N = check_inputs(values_N, counts_N, num_clusters)
    n = values_N.numel()
    limit = cfg.resolve_max_cluster_size(n, num_clusters)

    # Clusters sorted by value; equal values keep id order (stable sort).
    order_N = torch.argsort(values_N.cpu(), stable=True)
    values, counts = values_N.cpu().double().tolist(), counts_N.cpu().tolist()
    clusters = [_Cluster(values[i], counts[i], 1) for i in order_N.tolist()]

    steps = fallback_merges = 0
    while len(clusters) > num_clusters:
        before = len(clusters)
        pairs, used_fallback = _select_pairs(clusters, num_clusters, cfg, limit)
        clusters = _merge_chains(clusters, pairs, limit, cfg.weighted_values)
        steps += 1
        if used_fallback:
            fallback_merges += before - len(clusters)

    cluster_of_sorted = [c for c, cl in enumerate(clusters) for _ in range(cl.size)]
    cluster_of_id_N = torch.empty(n, dtype=torch.int64)
    cluster_of_id_N[order_N] = torch.tensor(cluster_of_sorted, dtype=torch.int64)
    return ClusteringResult(cluster_of_id_N, num_clusters, fallback_merges, steps, limit)


def _select_pairs(
    clusters: list[_Cluster], num_clusters: int, cfg: AgglomerativeConfig, limit: int | None
) -> tuple[list[int], bool]:
    """One step's selected pairs (pair ``i`` joins clusters ``i`` and ``i + 1``), sorted."""
    m = len(clusters)
    # NOTE: the paper's `num_to_merge = min(2K, 2 * (target - |clusters|))` has the sign
    # reversed; K' = min(K, M - C) keeps the count from ever dropping below the target.
    excess = m - num_clusters
    k = cfg.merges_for_step(m, excess)
    scale = count_scale(torch.tensor([c.count for c in clusters], dtype=torch.float64))

    def norm_count(c: _Cluster) -> float:
        return c.count / scale + 1.0 if scale > 0 else 1.0

    keys: dict[str, Callable[[int], float]] = {
        "frequency": lambda i: norm_count(clusters[i]) * norm_count(clusters[i + 1]),
        "distance": lambda i: clusters[i + 1].value - clusters[i].value,
    }

    def merged_size(i: int) -> int:
        return clusters[i].size + clusters[i + 1].size

    pairs = list(range(m - 1))
    last_key = keys["distance"]
    rank = 0
    used_fallback = False
    for name in cfg.filters:
        if name == "size":
            within = [i for i in pairs if limit is None or merged_size(i) <= limit]
            if within:
                pairs = within
            else:  # the paper's fallback: the K' pairs of smallest merged size
                pairs = _smallest(pairs, merged_size, k)
                used_fallback = True
        else:
            pairs = _smallest(pairs, keys[name], stage_size(rank, k))
            last_key = keys[name]
            rank += 1
    # At most K' merges (so never below the target): the best by the last ranking filter.
    if len(pairs) > k:
        pairs = _smallest(pairs, last_key, k)
    return pairs, used_fallback


def _smallest(pairs: list[int], key: Callable[[int], float | int], k: int) -> list[int]:
    """The ``k`` pairs of smallest key, ties to the lower position, back in position order."""
    return sorted(sorted(pairs, key=lambda i: (key(i), i))[:k])


def _merge_chains(
    clusters: list[_Cluster], pairs: list[int], limit: int | None, weighted: bool
) -> list[_Cluster]:
    """Merge the selected pairs; overlapping pairs form chains (AB, BC -> ABC).

    A chain whose total size exceeds ``limit`` is broken into pairs from the left
    (ABCDE -> AB, CD, E).
    """
    selected = set(pairs)
    merged: list[_Cluster] = []
    i = 0
    while i < len(clusters):
        j = i
        while j in selected:
            j += 1
        chain = clusters[i : j + 1]
        if limit is None or sum(c.size for c in chain) <= limit:
            merged.append(_merge(chain, weighted))
        else:
            merged.extend(_merge(chain[a : a + 2], weighted) for a in range(0, len(chain), 2))
        i = j + 1
    return merged


def _merge(group: list[_Cluster], weighted: bool) -> _Cluster:
    """One cluster from consecutive ones: sums left to right, value clamped to the group's range."""
    if len(group) == 1:
        return group[0]
    value_sum, count, size = group[0].value, group[0].count, group[0].size
    weighted_sum = group[0].count * group[0].value
    for c in group[1:]:
        value_sum += c.value
        count += c.count
        size += c.size
        weighted_sum += c.count * c.value
    value = value_sum / len(group)
    if weighted and count > 0:
        value = weighted_sum / count
    # NOTE: rounding can put a mean a hair outside [first, last]; clamping keeps the
    # clusters sorted by value, so distances stay >= 0.
    value = min(max(value, group[0].value), group[-1].value)
    return _Cluster(value, count, size)
