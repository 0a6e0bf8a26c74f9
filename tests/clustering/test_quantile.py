"""Hand-checked and property tests of the quantile clusterings."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrec_lhf.clustering import frequency_quantile_1d, quantile_1d


def test_quantile_equal_sizes_in_value_order():
    values = torch.tensor([5.0, 0.0, 4.0, 1.0, 3.0, 2.0, 6.0])
    # Sorted positions 0..6 -> floor(i * 3 / 7) = 0,0,0,1,1,2,2.
    assert quantile_1d(values, None, 3).cluster_of_id.tolist() == [2, 0, 1, 0, 1, 0, 2]


def test_frequency_quantile_hot_id_alone():
    values = torch.arange(6.0)
    counts = torch.tensor([1, 1, 10, 1, 1, 1])  # T = 15, targets 5 and 10
    # Mass before each position: 0, 1, 2, 12, 13, 14; both targets land at position 3 -> cuts
    # 3 and 4 after pushing apart: clusters {0,1,2}, {3}, {4,5}.
    r = frequency_quantile_1d(values, counts, 3)
    assert r.cluster_of_id.tolist() == [0, 0, 0, 1, 2, 2]


def test_frequency_quantile_cuts_at_equal_mass():
    values = torch.tensor([3.0, 2.0, 1.0, 0.0])
    counts = torch.tensor([1, 1, 1, 3])  # sorted counts 3, 1, 1, 1: target 3 -> cut at 1
    assert frequency_quantile_1d(values, counts, 2).cluster_of_id.tolist() == [1, 1, 1, 0]


def test_frequency_quantile_zero_counts_is_quantile():
    values = torch.randn(11, generator=torch.Generator().manual_seed(0))
    r = frequency_quantile_1d(values, torch.zeros(11), 4)
    assert torch.equal(r.cluster_of_id, quantile_1d(values, None, 4).cluster_of_id)


@pytest.mark.parametrize("fn", [quantile_1d, frequency_quantile_1d])
def test_options_and_bad_input_rejected(fn):
    with pytest.raises(ValueError, match="takes no options"):
        fn(torch.zeros(3), None, 2, max_cluster_size=3)
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        fn(torch.zeros(3), None, 4)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["uniform", "zipf", "sparse"]),
    st.data(),
)
def test_quantiles_are_valid(n, seed, kind, data):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 5, (n,), generator=g).float()
    if kind == "uniform":
        counts = torch.randint(0, 10, (n,), generator=g)
    elif kind == "zipf":
        counts = torch.floor(1e4 * (torch.randperm(n, generator=g).double() + 1).pow(-1.1))
    else:
        counts = (torch.rand(n, generator=g) < 0.1).long() * 1000
    c = data.draw(st.integers(1, n))
    order = torch.argsort(values, stable=True)
    for fn in (quantile_1d, frequency_quantile_1d):
        cid = fn(values, counts, c).cluster_of_id
        assert torch.equal(torch.unique(cid), torch.arange(c))
        steps = torch.diff(cid[order])
        assert bool(((steps == 0) | (steps == 1)).all())
    sizes = torch.bincount(quantile_1d(values, counts, c).cluster_of_id)
    assert int(sizes.max() - sizes.min()) <= 1
