"""Configuration, result type and input checks shared by the 1-D clusterings.

Shapes: ``N`` ids of one table, ``C`` clusters asked for, ``M`` current clusters of the
agglomerative loop (``C <= M <= N``), ``P = M - 1`` neighbouring pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from torchrec_lhf.cli import checked_fields, is_finite_number

FILTER_NAMES = ("frequency", "distance", "size")
RANKING_FILTERS = ("frequency", "distance")


@dataclass(frozen=True, eq=False)
class ClusteringResult:
    """The outcome of clustering ``N`` ids into ``C`` clusters.

    Args:
        cluster_of_id: int64 tensor of shape ``(N,)``, values ``0..C-1``, clusters
            numbered in value order (cluster 0 holds the smallest values).
        num_clusters: ``C``.
        fallback_merges: merges (cluster-count reductions) made in steps where no candidate
            pair was within the size limit and the paper's fallback (the ``K`` pairs of smallest
            merged size) was taken; only such merges can create clusters above the limit.
        steps: merge steps run (0 for the non-iterative methods).
        max_cluster_size: the size limit in force (``None``: no limit).
    """

    cluster_of_id: torch.Tensor
    num_clusters: int
    fallback_merges: int = 0
    steps: int = 0
    max_cluster_size: int | None = None


@dataclass(kw_only=True)
class AgglomerativeConfig:
    """Options of the frequency-aware agglomerative clustering (both implementations)."""

    merges_per_step: int | None = None
    """``K``, the nominal merges of one step. ``None``: ``ceil(merge_fraction * M)`` with ``M``
    the current cluster count, so the number of steps stays logarithmic."""

    merge_fraction: float = 0.25
    """Used when ``merges_per_step`` is ``None``; in ``(0, 1]``."""

    max_cluster_size: int | Literal["auto"] | None = "auto"
    """Size limit in ids (the paper's size target). ``"auto"``: ``ceil(size_factor * N / C)``;
    ``None``: no limit (chains always merge whole)."""

    size_factor: float = 4.0
    """Multiple of the mean cluster size ``N / C`` used by ``max_cluster_size="auto"``; ``>= 1``."""

    filters: tuple[str, ...] = ("frequency", "distance", "size")
    """Selection filters in order, each at most once, at least one of ``frequency`` /
    ``distance``. The first ranking filter keeps ``2K`` pairs, the second ``ceil(1.5K)``."""

    weighted_values: bool = True
    """Merged value = access-count-weighted mean (``True``) or plain mean of the merged
    clusters' values (``False``)."""

    @checked_fields
    def __post_init__(self) -> None:
        k = self.merges_per_step
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"merges_per_step must be an int >= 1 or None, got {k!r}")
        if not (is_finite_number(self.merge_fraction) and 0.0 < self.merge_fraction <= 1.0):
            raise ValueError(f"merge_fraction must be in (0, 1], got {self.merge_fraction!r}")
        limit = self.max_cluster_size
        if limit is not None and limit != "auto":
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(
                    f"max_cluster_size must be an int >= 1, 'auto' or None, got {limit!r}"
                )
        if not (is_finite_number(self.size_factor) and self.size_factor >= 1.0):
            raise ValueError(f"size_factor must be a finite number >= 1, got {self.size_factor!r}")
        filters = tuple(self.filters)
        bad = [f for f in filters if f not in FILTER_NAMES]
        if bad or len(set(filters)) != len(filters):
            raise ValueError(f"filters must be distinct names from {FILTER_NAMES}, got {filters!r}")
        if not any(f in RANKING_FILTERS for f in filters):
            raise ValueError(f"filters need at least one of {RANKING_FILTERS}, got {filters!r}")
        self.filters = filters

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> AgglomerativeConfig:
        """The config from keyword options; unknown names raise ``ValueError``."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown agglomerative option(s) {unknown}; valid: {[f.name for f in fields(cls)]}"
            )
        return cls(**options)

    def resolve_max_cluster_size(self, num_ids: int, num_clusters: int) -> int | None:
        """The size limit for ``N = num_ids`` ids and ``C = num_clusters`` clusters."""
        if self.max_cluster_size == "auto":
            return max(2, math.ceil(self.size_factor * num_ids / num_clusters))
        return self.max_cluster_size

    def merges_for_step(self, num_current: int, excess: int) -> int:
        """``K'`` of one step: ``K`` (or the fraction of ``M``), at most the excess ``M - C``."""
        k = self.merges_per_step or math.ceil(self.merge_fraction * num_current)
        return max(1, min(k, excess))


def stage_size(rank: int, k: int) -> int:
    """Pairs kept by the ``rank``-th ranking filter of a step with ``K' = k``: ``2k``, ``ceil(1.5k)``."""
    return 2 * k if rank == 0 else (3 * k + 1) // 2


def count_scale(counts_M: torch.Tensor) -> float:
    """``||C||_2`` of the current cluster counts, float64.

    Both implementations call this on a float64 CPU/CUDA tensor of the same values in
    the same order, so the normalized counts agree bit for bit.
    """
    return float(torch.linalg.vector_norm(counts_M.to(torch.float64)))


def check_inputs(
    values_N: torch.Tensor, counts_N: torch.Tensor | None, num_clusters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one table's values and counts.

    Args:
        values_N: floating tensor of shape ``(N,)``, finite.
        counts_N: access counts, shape ``(N,)``, finite and ``>= 0``; ``None`` means all ones.
        num_clusters: ``C`` in ``[1, N]``.

    Returns:
        ``(values_N, counts_N)``, counts as float64 on the values' device.

    Raises:
        ValueError: wrong shape, dtype, non-finite or negative entries, or ``C`` out of range.
    """
    if not isinstance(values_N, torch.Tensor) or values_N.dim() != 1:
        got = (
            tuple(values_N.shape) if isinstance(values_N, torch.Tensor) else type(values_N).__name__
        )
        raise ValueError(f"values must be a 1-D tensor, got {got}")
    if not values_N.is_floating_point():
        raise ValueError(f"values must be a floating tensor, got {values_N.dtype}")
    n = values_N.numel()
    if n < 1:
        raise ValueError("values must hold at least one id, got an empty tensor")
    if not bool(torch.isfinite(values_N).all()):
        raise ValueError(
            f"values must be finite, found {int((~torch.isfinite(values_N)).sum())} NaN/inf"
        )
    if counts_N is None:
        counts_N = torch.ones(n, dtype=torch.float64, device=values_N.device)
    if not isinstance(counts_N, torch.Tensor) or counts_N.shape != values_N.shape:
        got = (
            tuple(counts_N.shape) if isinstance(counts_N, torch.Tensor) else type(counts_N).__name__
        )
        raise ValueError(f"counts must be a tensor of shape ({n},) like values, got {got}")
    if counts_N.dtype == torch.bool or counts_N.is_complex():
        raise ValueError(f"counts must be an integer or floating tensor, got {counts_N.dtype}")
    counts_N = counts_N.to(device=values_N.device, dtype=torch.float64)
    if not bool(torch.isfinite(counts_N).all()) or bool((counts_N < 0).any()):
        raise ValueError(
            f"counts must be finite and >= 0, found range [{counts_N.min()}, {counts_N.max()}]"
        )
    if (
        isinstance(num_clusters, bool)
        or not isinstance(num_clusters, int)
        or not 1 <= num_clusters <= n
    ):
        raise ValueError(
            f"num_clusters must be an int in [1, {n}] (the number of ids), got {num_clusters!r}"
        )
    return values_N, counts_N
