"""Synthetic generator: the planted structure is real, seeds are deterministic, config checked."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.data import SyntheticConfig, load_dataset, make_synthetic, synthetic_groups


@pytest.fixture(scope="module")
def default():
    config = SyntheticConfig()
    return config, make_synthetic(config)


def test_shapes_and_split(default):
    config, ds = default
    assert len(ds) == 50_000 and ds.num_embeddings == list(config.num_embeddings)
    assert ds.dense.shape == (50_000, 4) and bool((ds.lengths == 1).all())
    assert [ds.splits[k].numel() for k in ("train", "val", "test")] == [40_000, 5_000, 5_000]
    assert 0.15 < float(ds.labels.mean()) < 0.5


def test_click_rate_differs_across_groups_far_more_than_within(default):
    config, ds = default
    ids = ds.values.view(len(ds), -1)
    groups = synthetic_groups(config)
    for f in (0, 2, 7):
        group = groups[f][ids[:, f]]
        # within a group: ids split into two halves by parity, which the model ignores
        half = ids[:, f] % 2
        cell = group * 2 + half
        n = torch.bincount(cell, minlength=2 * config.num_groups).double()
        clicks = torch.bincount(cell, weights=ds.labels.double(), minlength=2 * config.num_groups)
        rate = (clicks / n).view(config.num_groups, 2)
        across = rate.mean(1).std()
        within = (rate[:, 0] - rate[:, 1]).abs().mean()
        assert across > 4 * within, (f, rate)


def test_groups_match_planted_model_and_are_independent_of_popularity(default):
    config, ds = default
    groups = synthetic_groups(config)
    assert [g.numel() for g in groups] == list(config.num_embeddings)
    assert all(int(g.min()) >= 0 and int(g.max()) < config.num_groups for g in groups)
    counts = ds.id_counts("train")[2]  # 20,000 ids
    hot = torch.argsort(counts, descending=True)
    share = counts[hot[:20]].sum() / counts.sum()
    assert share > 0.2  # Zipf: 0.1 % of the ids take a large share of the traffic
    assert not torch.equal(hot[:20], torch.arange(20))  # popularity is permuted over ids
    hot_groups = torch.bincount(groups[2][hot[:2000]], minlength=config.num_groups)
    assert int(hot_groups.min()) > 150  # the hottest ids spread over all groups (~250 each)


def test_same_seed_same_data_other_seed_other_data():
    config = SyntheticConfig(num_samples=2000, num_embeddings=[100, 300], seed=3)
    a, b = make_synthetic(config), make_synthetic(SyntheticConfig(**vars(config)))
    assert torch.equal(a.values, b.values) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.dense, b.dense) and torch.equal(a.splits["val"], b.splits["val"])
    c = make_synthetic(SyntheticConfig(num_samples=2000, num_embeddings=[100, 300], seed=4))
    assert not torch.equal(a.values, c.values)
    assert torch.equal(
        synthetic_groups(config)[1], synthetic_groups(SyntheticConfig(**vars(config)))[1]
    )


def test_registry_options_map_to_config():
    ds = load_dataset("synthetic", num_samples=100, num_embeddings=[10, 20, 30], num_dense=2)
    assert ds.num_embeddings == [10, 20, 30] and ds.dense_names == ["dense_0", "dense_1"]
    with pytest.raises(ValueError, match=r"unknown options \['tables'\]"):
        load_dataset("synthetic", tables=3)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("csv")
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("synthetic:/tmp/x")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_samples=0), "num_samples must be an int >= 1, got 0"),
        (dict(num_samples="abc"), "num_samples must be an int >= 1, got 'abc'"),
        (dict(num_samples=2.5), "num_samples must be an int >= 1, got 2.5"),
        (dict(num_embeddings=[]), "num_embeddings must be a non-empty list"),
        (dict(num_embeddings=[10, 0]), r"got \[10, 0\]"),
        (dict(num_embeddings=[10, "x"]), r"got \[10, 'x'\]"),
        (
            dict(num_embeddings="100"),
            "num_embeddings must be a non-empty list of ints >= 1, got '100'",
        ),
        (
            dict(num_embeddings=[4], num_groups=5),
            r"num_groups must be in \[1, min\(num_embeddings\)=4\], got 5",
        ),
        (dict(zipf_exponent=-1.0), "zipf_exponent must be a finite number >= 0, got -1.0"),
        (dict(zipf_exponent=float("nan")), "zipf_exponent must be a finite number >= 0, got nan"),
        (dict(num_dense=0), "num_dense must be an int >= 1, got 0"),
        (dict(group_scale=-0.1), "group_scale must be a finite number >= 0, got -0.1"),
        (dict(dense_scale=None), "dense_scale must be a finite number >= 0, got None"),
        (dict(interaction_scale=float("inf")), "interaction_scale must be a finite number >= 0"),
        (dict(base_logit=float("inf")), "base_logit must be a finite number, got inf"),
        (dict(seed=True), "seed must be an int >= 0, got True"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)


def test_data_larger_than_the_machine_is_refused_before_it_is_drawn(monkeypatch):
    """A table of 2**40 ids failed in torch's allocator (``you tried to allocate
    8796093022208 bytes``); sizes that fit one allocation at a time could instead be
    ended by the out-of-memory killer part way. Now refused up front, naming the sizes."""
    from torchrec_lhf.data import synthetic

    huge = SyntheticConfig(num_embeddings=[2**40, 10])
    with pytest.raises(
        ValueError,
        match=r"about 83,562.9 GB \(1,099,511,627,786 ids at about 76 bytes each, 50,000 "
        r"samples\), more than the .* GB this process may use \(the machine's memory, or its "
        r"container's limit where lower\); expected fewer ids",
    ):
        make_synthetic(huge)
    # the estimate against a given memory, by hand: 76 bytes an id, 60 a sample and
    # feature, 20 a sample and dense feature
    small = SyntheticConfig(num_samples=100, num_embeddings=[1000, 500], num_dense=3)
    need = 76 * 1500 + (60 * 2 + 20 * 3) * 100
    assert synthetic.peak_bytes(small) == need
    synthetic.check_fits(small, memory=need)
    with pytest.raises(ValueError, match=r"expected fewer ids \(num_embeddings\) or samples"):
        synthetic.check_fits(small, memory=need - 1)
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: need - 1)
    monkeypatch.setattr(synthetic, "_cgroup_limit", lambda: None)
    with pytest.raises(ValueError, match="more than the 0.0 GB this process may use"):
        make_synthetic(small)
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: None)  # unknown: not refused
    assert len(make_synthetic(small)) == 100


def test_a_container_memory_limit_below_the_machine_is_what_fits(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Before, the check compared with the machine's physical memory only: in a container
    (a pod, a batch job) limited below it, data that did not fit the limit passed the check
    and the out-of-memory killer ended the process."""
    from torchrec_lhf.data import synthetic

    v2, v1 = tmp_path / "memory.max", tmp_path / "memory" / "memory.limit_in_bytes"
    root = str(tmp_path)
    assert synthetic._cgroup_limit(root) is None  # neither file: no limit known
    v1.parent.mkdir()
    v1.write_text("9223372036854771712\n")  # v1's "no limit"
    assert synthetic._cgroup_limit(root) is None
    v1.write_text("2147483648\n")
    assert synthetic._cgroup_limit(root) == 2**31
    v2.write_text("max\n")  # v2 first: no limit
    assert synthetic._cgroup_limit(root) is None
    v2.write_text("1073741824\n")
    assert synthetic._cgroup_limit(root) == 2**30
    small = SyntheticConfig(num_samples=100, num_embeddings=[1000, 500], num_dense=3)
    need = synthetic.peak_bytes(small)
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: 10 * need)
    monkeypatch.setattr(synthetic, "_cgroup_limit", lambda: need - 1)
    assert synthetic._usable_memory() == need - 1
    with pytest.raises(ValueError, match="container's limit where lower"):
        make_synthetic(small)
    monkeypatch.setattr(synthetic, "_physical_memory", lambda: None)  # only the limit known
    assert synthetic._usable_memory() == need - 1
    monkeypatch.setattr(synthetic, "_cgroup_limit", lambda: need)
    assert len(make_synthetic(small)) == 100
