"""Non-iterative 1-D clusterings: cuts in value order (ablations and fallbacks).

Shapes: ``N`` ids, ``C`` clusters, ``C - 1`` cuts (a cut at sorted position ``p`` starts a
new cluster at ``p``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from torchrec_lhf.clustering.config import ClusteringResult, check_inputs

logger = logging.getLogger(__name__)


def quantile_1d(
    values_N: torch.Tensor, counts_N: torch.Tensor | None, num_clusters: int, **options: Any
) -> ClusteringResult:
    """Equal-size clusters in value order: sorted position ``i`` goes to ``floor(i * C / N)``.

    Args:
        values_N: floating tensor of shape ``(N,)``.
        counts_N: ignored (validated only); shape ``(N,)`` or ``None``.
        num_clusters: ``C`` in ``[1, N]``.
        **options: none accepted.

    Returns:
        :class:`ClusteringResult` with int64 ``cluster_of_id`` of shape ``(N,)``; sizes
        differ by at most one.

    Raises:
        ValueError: bad inputs or any option.

    Example::

        >>> import torch
        >>> from torchrec_lhf.clustering import quantile_1d
        >>> quantile_1d(torch.tensor([3.0, 0.0, 2.0, 1.0]), None, 2).cluster_of_id.tolist()
        [1, 0, 1, 0]
    """
    _no_options("quantile", options)
    values_N, _ = check_inputs(values_N, counts_N, num_clusters)
    n = values_N.numel()
    _, order_N = torch.sort(values_N, stable=True)
    positions_N = torch.arange(n, device=values_N.device)
    cluster_of_sorted_N = positions_N * num_clusters // n
    return ClusteringResult(_unsort(cluster_of_sorted_N, order_N), num_clusters)


def frequency_quantile_1d(
    values_N: torch.Tensor, counts_N: torch.Tensor | None, num_clusters: int, **options: Any
) -> ClusteringResult:
    """Clusters of (nearly) equal access mass in value order.

    Cut ``j`` (``j = 1..C-1``) goes where the cumulative count first reaches ``j * T / C``;
    cuts are then pushed apart (to the right, at most to ``N - C + j``) so that every
    cluster holds at least one id. A very hot id thus sits alone and the following ids
    become singletons until the mass cuts catch up. With zero total count this is
    :func:`quantile_1d`.

    Args:
        values_N: floating tensor of shape ``(N,)``.
        counts_N: access counts of shape ``(N,)`` (``None``: all ones).
        num_clusters: ``C`` in ``[1, N]``.
        **options: none accepted.

    Returns:
        :class:`ClusteringResult` with int64 ``cluster_of_id`` of shape ``(N,)``.

    Raises:
        ValueError: bad inputs or any option.

    Example::

        >>> import torch
        >>> from torchrec_lhf.clustering import frequency_quantile_1d
        >>> values = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> frequency_quantile_1d(values, torch.tensor([6, 1, 1, 4]), 2).cluster_of_id.tolist()
        [0, 1, 1, 1]
    """
    _no_options("frequency_quantile", options)
    values_N, counts_N = check_inputs(values_N, counts_N, num_clusters)
    n = values_N.numel()
    total = float(counts_N.sum())
    if total <= 0:
        logger.info("frequency_quantile: all counts are zero, using equal-size cuts")
        return quantile_1d(values_N, None, num_clusters)
    _, order_N = torch.sort(values_N, stable=True)
    mass_before_N = torch.cumsum(counts_N.index_select(0, order_N), 0)
    mass_before_N = mass_before_N - counts_N.index_select(0, order_N)  # exclusive cumsum
    device = values_N.device
    j_J = torch.arange(1, num_clusters, device=device)
    targets_J = j_J.to(torch.float64) * (total / num_clusters)
    cuts_J = torch.searchsorted(mass_before_N, targets_J)  # first position with mass >= target
    # Strictly increasing cuts in [j, N - C + j]: cuts - j must be nondecreasing in [0, N - C].
    slack_J = (cuts_J - j_J).clamp(min=0)
    if slack_J.numel():
        slack_J = torch.cummax(slack_J, 0).values.clamp(max=n - num_clusters)
    cuts_J = slack_J + j_J
    starts_N = torch.zeros(n, dtype=torch.int64, device=device)
    starts_N[cuts_J] = 1
    cluster_of_sorted_N = torch.cumsum(starts_N, 0)
    return ClusteringResult(_unsort(cluster_of_sorted_N, order_N), num_clusters)


def _unsort(cluster_of_sorted_N: torch.Tensor, order_N: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(cluster_of_sorted_N).scatter_(0, order_N, cluster_of_sorted_N)


def _no_options(method: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"clustering {method!r} takes no options, got {sorted(options)}")
