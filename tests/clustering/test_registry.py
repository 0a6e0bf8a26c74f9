import pytest
import torch

from torchrec_lhf.clustering import registry
from torchrec_lhf.clustering.registry import (
    check_clustering_options,
    get_clustering,
    list_clusterings,
    register_clustering,
)


def test_builtin_methods_are_registered():
    assert {"agglomerative", "quantile", "frequency_quantile"} <= set(list_clusterings())
    r = get_clustering("quantile")(torch.tensor([2.0, 1.0]), None, 2)
    assert r.cluster_of_id.tolist() == [1, 0]


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="unknown clustering 'kmeans'.*agglomerative"):
        get_clustering("kmeans")


def test_register_rejects_duplicates_and_bad_entries(monkeypatch):
    monkeypatch.setattr(registry, "_CLUSTERINGS", dict(registry._CLUSTERINGS))
    with pytest.raises(ValueError, match="'quantile' is already registered"):
        register_clustering("quantile", lambda *a, **k: None)
    with pytest.raises(ValueError, match="non-empty"):
        register_clustering("", lambda *a, **k: None)
    with pytest.raises(ValueError, match="callable"):
        register_clustering("mine", 3)
    register_clustering("mine", registry.get_clustering("quantile"))
    assert "mine" in list_clusterings()
    with pytest.raises(ValueError, match="'mine' is already registered"):
        register_clustering("mine", registry.get_clustering("quantile"))


def test_options_are_checked_by_the_clustering_itself(monkeypatch):
    """``check_clustering_options`` runs the clustering on one id: it refuses what the
    clustering refuses, a registered one's own options included."""
    check_clustering_options("agglomerative", {"max_cluster_size": "auto", "filters": ["distance"]})
    check_clustering_options("quantile", None)
    with pytest.raises(ValueError, match=r"unknown agglomerative option\(s\) \['colour'\]"):
        check_clustering_options("agglomerative", {"colour": 1})
    with pytest.raises(ValueError, match="takes no options"):
        check_clustering_options("frequency_quantile", {"colour": 1})
    monkeypatch.setattr(registry, "_CLUSTERINGS", dict(registry._CLUSTERINGS))
    quantile = get_clustering("quantile")

    def mine(values, counts, num_clusters, *, k=1):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return quantile(values, counts, num_clusters)

    register_clustering("mine", mine)
    check_clustering_options("mine", {"k": 2})
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        check_clustering_options("mine", {"k": 0})
