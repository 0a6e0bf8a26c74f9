"""1-D clustering of a table's ids into a learned hash function (pure torch).

Example::

    >>> import torch
    >>> from torchrec_lhf.clustering import get_clustering
    >>> values = torch.tensor([0.0, 5.0, 0.1, 5.2, 9.0])
    >>> counts = torch.tensor([1, 1, 1, 1, 100])
    >>> get_clustering("agglomerative")(values, counts, 3).cluster_of_id.tolist()
    [0, 1, 0, 1, 2]
"""

from torchrec_lhf.clustering.agglomerative import agglomerative_1d
from torchrec_lhf.clustering.config import AgglomerativeConfig, ClusteringResult
from torchrec_lhf.clustering.projection import PROJECTIONS, check_projection, project
from torchrec_lhf.clustering.quantile import frequency_quantile_1d, quantile_1d
from torchrec_lhf.clustering.reference import agglomerative_1d_reference
from torchrec_lhf.clustering.registry import (
    ClusteringFn,
    check_clustering_options,
    get_clustering,
    list_clusterings,
    register_clustering,
)

__all__ = [
    "PROJECTIONS",
    "AgglomerativeConfig",
    "ClusteringFn",
    "ClusteringResult",
    "agglomerative_1d",
    "agglomerative_1d_reference",
    "check_clustering_options",
    "check_projection",
    "frequency_quantile_1d",
    "get_clustering",
    "list_clusterings",
    "project",
    "quantile_1d",
    "register_clustering",
]
