"""Registry of 1-D clustering methods (a dict plus a register function).

A method is called as ``fn(values_N, counts_N, num_clusters, **options)`` and returns a
:class:`~torchrec_lhf.clustering.config.ClusteringResult` (``N`` ids, ``C`` clusters
numbered in value order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchrec_lhf.clustering.agglomerative import agglomerative_1d
from torchrec_lhf.clustering.config import ClusteringResult
from torchrec_lhf.clustering.quantile import frequency_quantile_1d, quantile_1d

ClusteringFn = Callable[..., ClusteringResult]

_CLUSTERINGS: dict[str, ClusteringFn] = {}


def register_clustering(name: str, fn: ClusteringFn) -> None:
    """Add a clustering method under ``name``.

    Args:
        name: a new, non-empty name.
        fn: ``fn(values_N, counts_N, num_clusters, **options) -> ClusteringResult``.

    Raises:
        ValueError: ``name`` is empty or already registered, or ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"clustering name must be a non-empty string, got {name!r}")
    if name in _CLUSTERINGS:
        raise ValueError(f"clustering {name!r} is already registered (to {_CLUSTERINGS[name]!r})")
    if not callable(fn):
        raise ValueError(f"clustering {name!r}: fn must be callable, got {type(fn).__name__}")
    _CLUSTERINGS[name] = fn


def get_clustering(name: str) -> ClusteringFn:
    """The method registered as ``name``.

    Raises:
        ValueError: no such method (the message lists the registered ones).
    """
    try:
        return _CLUSTERINGS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown clustering {name!r}; registered: {list_clusterings()}") from None


def check_clustering_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Raises ValueError where the clustering ``name`` refuses ``options`` (an unknown
    option, a value out of range), before any work: it is run once on a single id with
    them. A clustering is only run on a table's head, so a build whose heads are empty
    (or whose tables are all small) would otherwise accept any options without a word."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"clustering options must be a mapping of names, got {options!r}")
    get_clustering(name)(torch.zeros(1), None, 1, **dict(options or {}))


def list_clusterings() -> list[str]:
    """Registered names, sorted."""
    return sorted(_CLUSTERINGS)


register_clustering("agglomerative", agglomerative_1d)
register_clustering("quantile", quantile_1d)
register_clustering("frequency_quantile", frequency_quantile_1d)
