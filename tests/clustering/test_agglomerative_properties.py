"""Property tests: the vectorized clustering equals the reference, and both are valid."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrec_lhf.clustering import agglomerative_1d, agglomerative_1d_reference

FILTER_ORDERS = [
    ("frequency", "distance", "size"),
    ("distance", "frequency", "size"),
    ("size", "frequency", "distance"),
    ("frequency", "size", "distance"),
    ("distance", "size"),
    ("frequency", "size"),
    ("frequency", "distance"),
    ("distance",),
]


@st.composite
def problems(draw, max_ids=40):
    n = draw(st.integers(1, max_ids))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    value_kind = draw(st.sampled_from(["normal", "few_distinct", "all_equal"]))
    if value_kind == "normal":
        values = torch.randn(n, generator=g)
    elif value_kind == "few_distinct":  # many exact ties in values and distances
        values = torch.randint(0, 4, (n,), generator=g).float()
    else:
        values = torch.zeros(n)
    count_kind = draw(st.sampled_from(["small_int", "zero", "zipf", "float", "none"]))
    if count_kind == "small_int":  # many ties in the frequency products
        counts = torch.randint(0, 3, (n,), generator=g)
    elif count_kind == "zero":
        counts = torch.zeros(n, dtype=torch.int64)
    elif count_kind == "zipf":
        ranks = torch.randperm(n, generator=g).double() + 1
        counts = torch.floor(1000 * ranks.pow(-1.1))
    elif count_kind == "float":
        counts = torch.rand(n, generator=g) * 3
    else:
        counts = None
    c = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    options = dict(
        merges_per_step=draw(st.one_of(st.none(), st.integers(1, 6))),
        merge_fraction=draw(st.sampled_from([0.05, 0.25, 0.5, 1.0])),
        max_cluster_size=draw(st.one_of(st.just("auto"), st.none(), st.integers(1, 6))),
        size_factor=draw(st.sampled_from([1.0, 2.0, 4.0])),
        filters=draw(st.sampled_from(FILTER_ORDERS)),
        weighted_values=draw(st.booleans()),
    )
    return values, counts, c, options


def check_valid(result, values, c, options):
    cluster_of_id = result.cluster_of_id
    n = values.numel()
    assert cluster_of_id.dtype == torch.int64 and cluster_of_id.shape == (n,)
    assert result.num_clusters == c
    # Every id has a cluster, exactly c clusters, numbered 0..c-1.
    assert torch.equal(torch.unique(cluster_of_id), torch.arange(c))
    # Contiguous in value order (ties in id order), numbered in value order.
    order = torch.argsort(values, stable=True)
    steps = torch.diff(cluster_of_id[order])
    assert bool(((steps == 0) | (steps == 1)).all())
    # Sizes stay within the limit unless the paper's fallback was taken.
    limit = result.max_cluster_size
    if limit is not None and "size" in options["filters"] and result.fallback_merges == 0:
        assert int(torch.bincount(cluster_of_id).max()) <= limit
    assert (result.steps == 0) == (c == n)
    assert 0 <= result.fallback_merges <= n - c


@settings(max_examples=300, deadline=None)
@given(problems())
def test_vectorized_equals_reference(problem):
    values, counts, c, options = problem
    ref = agglomerative_1d_reference(values, counts, c, **options)
    vec = agglomerative_1d(values, counts, c, **options)
    assert torch.equal(ref.cluster_of_id, vec.cluster_of_id)
    assert (ref.fallback_merges, ref.steps, ref.max_cluster_size) == (
        vec.fallback_merges,
        vec.steps,
        vec.max_cluster_size,
    )
    check_valid(vec, values, c, options)


@settings(max_examples=15, deadline=None)
@given(problems(max_ids=600))
def test_vectorized_equals_reference_larger(problem):
    values, counts, c, options = problem
    ref = agglomerative_1d_reference(values, counts, c, **options)
    vec = agglomerative_1d(values, counts, c, **options)
    assert torch.equal(ref.cluster_of_id, vec.cluster_of_id)
    assert (ref.fallback_merges, ref.steps) == (vec.fallback_merges, vec.steps)
    check_valid(vec, values, c, options)


@pytest.mark.parametrize("seed", [0, 1])
def test_many_steps_with_zipf_counts(seed):
    # A few thousand ids, long runs of chains and fallbacks: defaults and a tight limit.
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(3000, generator=g)
    ranks = torch.randperm(3000, generator=g).double() + 1
    counts = torch.floor(30000 * ranks.pow(-1.1) / ranks.pow(-1.1).sum())
    for options in ({}, {"max_cluster_size": 3, "merges_per_step": 50}):
        ref = agglomerative_1d_reference(values, counts, 400, **options)
        vec = agglomerative_1d(values, counts, 400, **options)
        assert torch.equal(ref.cluster_of_id, vec.cluster_of_id)
        assert (ref.fallback_merges, ref.steps) == (vec.fallback_merges, vec.steps)
        assert ref.steps > 3
        check_valid(vec, values, 400, {"filters": ("size",)})
