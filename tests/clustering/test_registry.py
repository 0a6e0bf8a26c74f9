import pytest
import torch

from torchrec_lhf.clustering import registry
from torchrec_lhf.clustering.registry import get_clustering, list_clusterings, register_clustering


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
