"""Hand-checked tiny cases for both agglomerative implementations.

Each case is traced step by step in its comment; both the reference and the vectorized
version must give the stated assignment.
"""

import pytest
import torch

from torchrec_lhf.clustering import agglomerative as vec_impl
from torchrec_lhf.clustering import agglomerative_1d, agglomerative_1d_reference
from torchrec_lhf.clustering import reference as ref_impl

IMPLS = [agglomerative_1d_reference, agglomerative_1d]


@pytest.mark.parametrize("fn", IMPLS)
def test_paper_chain_example_abcde(fn):
    # ABCDE, size limit 2, K = 4: all four pairs pass every filter; the chain ABCDE (size 5)
    # is broken into AB, CD, E. Step 2: (AB,CD) and (CD,E) both exceed 2 -> fallback, both
    # selected, the chain AB-CD-E breaks into ABCD, E (1 fallback merge). Step 3: one pair
    # left, over the limit -> fallback (1 more).
    r = fn(torch.arange(5.0), None, 1, merges_per_step=4, max_cluster_size=2)
    assert r.cluster_of_id.tolist() == [0, 0, 0, 0, 0]
    assert (r.steps, r.fallback_merges, r.max_cluster_size) == (3, 2, 2)


def test_merge_chains_abcde_direct():
    # The chain rule in isolation: sizes 1, all four pairs selected, limit 2 -> AB, CD, E.
    value = torch.arange(5.0, dtype=torch.float64)
    count = torch.ones(5, dtype=torch.float64)
    size = torch.ones(5, dtype=torch.int64)
    v, n, s = vec_impl._merge_chains(value, count, size, torch.arange(4), 2, weighted=True)
    assert s.tolist() == [2, 2, 1]
    assert v.tolist() == [0.5, 2.5, 4.0]
    assert n.tolist() == [2.0, 2.0, 1.0]
    clusters = [ref_impl._Cluster(float(i), 1.0, 1) for i in range(5)]
    merged = ref_impl._merge_chains(clusters, [0, 1, 2, 3], 2, weighted=True)
    assert [(c.value, c.count, c.size) for c in merged] == [
        (0.5, 2.0, 2),
        (2.5, 2.0, 2),
        (4.0, 1.0, 1),
    ]


def test_merge_chains_under_limit_merges_whole_chain():
    value = torch.tensor([0.0, 1.0, 2.0, 6.0], dtype=torch.float64)
    count = torch.tensor([1.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    size = torch.ones(4, dtype=torch.int64)
    v, n, s = vec_impl._merge_chains(value, count, size, torch.tensor([0, 1]), 3, weighted=True)
    # ABC merge whole (size 3 <= 3): weighted value (0*1 + 1*0 + 2*3) / 4 = 1.5.
    assert (v.tolist(), n.tolist(), s.tolist()) == ([1.5, 6.0], [4.0, 1.0], [3, 1])
    v, _, _ = vec_impl._merge_chains(value, count, size, torch.tensor([0, 1]), 3, weighted=False)
    assert v.tolist() == [1.0, 6.0]


@pytest.mark.parametrize("fn", IMPLS)
def test_frequency_keeps_hot_pair_apart(fn):
    # Values 0, .5, 2, 4, 6, 8; the two hot ids (count 1000) are the closest pair.
    # One merge (C = 5, K' = 1): the frequency filter keeps the 2 lowest products, pairs
    # (2,4) and (4,6) (ties among three cold pairs -> lowest positions); both have distance 2,
    # the tie goes to the lower position: (2,4) merges. Distance-only merges (0, .5).
    values = torch.tensor([0.0, 0.5, 2.0, 4.0, 6.0, 8.0])
    counts = torch.tensor([1000, 1000, 1, 1, 1, 1])
    assert fn(values, counts, 5).cluster_of_id.tolist() == [0, 1, 2, 2, 3, 4]
    r = fn(values, counts, 5, filters=("distance", "size"))
    assert r.cluster_of_id.tolist() == [0, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("fn", IMPLS)
def test_weighted_values_change_the_next_merge(fn):
    # Distance only, one merge per step. Step 1 merges A=0 (count 3) and B=.4 (count 1):
    # weighted value .1, plain mean .2. Step 2 compares (AB, C=1.2) with (C, D=2.25, 1.05):
    # weighted 1.1 > 1.05 merges CD; plain 1.0 < 1.05 merges ABC.
    values = torch.tensor([0.0, 0.4, 1.2, 2.25])
    counts = torch.tensor([3, 1, 1, 1])
    opts = dict(filters=("distance", "size"), merges_per_step=1)
    assert fn(values, counts, 2, weighted_values=True, **opts).cluster_of_id.tolist() == [
        0,
        0,
        1,
        1,
    ]
    assert fn(values, counts, 2, weighted_values=False, **opts).cluster_of_id.tolist() == [
        0,
        0,
        0,
        1,
    ]


@pytest.mark.parametrize("fn", IMPLS)
def test_size_limit_redirects_merge(fn):
    # Step 1 merges (0, .1) (ties by position). Step 2: (01, .2) is the closer pair but has
    # size 3 > 2, so the size filter leaves (.2, 5). Without a limit 0, .1, .2 join.
    values = torch.tensor([0.0, 0.1, 0.2, 5.0])
    assert fn(values, None, 2, max_cluster_size=2).cluster_of_id.tolist() == [0, 0, 1, 1]
    assert fn(values, None, 2, max_cluster_size=None).cluster_of_id.tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("fn", IMPLS)
def test_numbering_follows_values_and_ties_follow_ids(fn):
    values = torch.tensor([9.0, 7.0, 7.0, 1.0])
    r = fn(values, None, 4)
    assert r.cluster_of_id.tolist() == [3, 1, 2, 0]
    assert r.steps == 0
    assert fn(values, None, 1).cluster_of_id.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("fn", IMPLS)
def test_single_id_and_all_zero_counts(fn):
    assert fn(torch.tensor([3.0]), None, 1).cluster_of_id.tolist() == [0]
    r = fn(torch.tensor([0.0, 1.0, 5.0, 5.5]), torch.zeros(4), 2)
    assert r.cluster_of_id.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize(
    "values, counts, c, opts, match",
    [
        (torch.tensor([0.0, float("nan")]), None, 1, {}, "finite"),
        (torch.tensor([0, 1]), None, 1, {}, "floating"),
        (torch.zeros(2, 2), None, 1, {}, "1-D"),
        (torch.zeros(0), None, 1, {}, "at least one"),
        (torch.zeros(3), torch.tensor([1, -1, 0]), 1, {}, ">= 0"),
        (torch.zeros(3), torch.ones(2), 1, {}, "shape"),
        (torch.zeros(3), None, 0, {}, r"\[1, 3\]"),
        (torch.zeros(3), None, 4, {}, r"\[1, 3\]"),
        (torch.zeros(3), None, 1, {"filters": ("size",)}, "at least one of"),
        (torch.zeros(3), None, 1, {"filters": ("distance", "distance")}, "distinct"),
        (torch.zeros(3), None, 1, {"filters": ("speed",)}, "distinct"),
        (torch.zeros(3), None, 1, {"merges_per_step": 0}, "merges_per_step"),
        (torch.zeros(3), None, 1, {"merge_fraction": 1.5}, "merge_fraction"),
        (torch.zeros(3), None, 1, {"max_cluster_size": 0}, "max_cluster_size"),
        (torch.zeros(3), None, 1, {"size_factor": 0.5}, "size_factor"),
    ],
)
def test_bad_input_raises_value_error(fn, values, counts, c, opts, match):
    with pytest.raises(ValueError, match=match):
        fn(values, counts, c, **opts)


@pytest.mark.parametrize("fn", IMPLS)
def test_unknown_option_is_rejected(fn):
    with pytest.raises(ValueError, match="'merges'"):
        fn(torch.zeros(3), None, 1, merges=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(20_000, generator=g)
    counts = torch.randint(0, 50, (20_000,), generator=g)
    cpu = agglomerative_1d(values, counts, 1_000)
    gpu = agglomerative_1d(values.cuda(), counts.cuda(), 1_000)
    assert gpu.cluster_of_id.is_cuda
    assert torch.equal(cpu.cluster_of_id, gpu.cluster_of_id.cpu())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_kth_smallest_is_kthvalue_with_ties(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 50, (5_000,), generator=g).double()  # many ties
    for k in (1, 17, 2_500, 4_999, 5_000):
        got = vec_impl.kth_smallest(keys.to(device), k)
        assert got.device.type == device
        assert float(got) == float(keys.kthvalue(k).values) == float(keys.sort().values[k - 1])
