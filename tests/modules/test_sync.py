"""The remap and combine read no tensor value on the host (no host-device sync per batch).

A training step of the learned-hash EBC runs under :func:`host_reads`, which fails on any
op that would sync on CUDA; the only reads allowed are TorchRec's own per-key lengths,
and a step must make no more of those than the same step of a plain EBC.
"""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from tests.modules._host_reads import HostReadError, host_reads
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection

HEIGHTS = {"t0": 40, "t1": 30, "t2": 12}  # t2 stays uncompressed
B = 4


def _tables() -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name=t, embedding_dim=4, num_embeddings=n, feature_names=[f"f{i}"])
        for i, (t, n) in enumerate(HEIGHTS.items())
    ]


def _plan(num_hashes: dict[str, int], combine: str = "sum") -> HashPlan:
    g = torch.Generator().manual_seed(0)
    return HashPlan.from_multi_mappings(
        {
            t: [torch.randint(0, 7, (HEIGHTS[t],), generator=g) for _ in range(h)]
            for t, h in num_hashes.items()
        },
        combine=combine,
        heights={t: [7] * h for t, h in num_hashes.items()},
    )


def _batch(keys: list[str], *, max_len: int, weighted: bool, seed: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = (
        torch.ones(len(keys), B, dtype=torch.long)
        if max_len == 1
        else torch.randint(0, max_len + 1, (len(keys), B), generator=g)
    )
    n = {f"f{i}": h for i, h in enumerate(HEIGHTS.values())}
    values = torch.cat(
        [torch.randint(0, n[k], (int(lengths[i].sum()),), generator=g) for i, k in enumerate(keys)]
    )
    weights = torch.rand(values.shape, generator=g) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten(), weights=weights)


# name -> (hash functions per compressed table, combine, input keys, ids per bag, weighted)
CASES = {
    "one_hot": ({"t0": 1, "t1": 1}, "sum", ["f0", "f1", "f2"], 1, False),
    "multi_hot": ({"t0": 1, "t1": 1}, "sum", ["f2", "f0", "f1"], 3, False),
    "weighted": ({"t0": 1, "t1": 1}, "sum", ["f1", "f2", "f0"], 3, True),
    "two_hash_sum": ({"t0": 2, "t1": 2, "t2": 2}, "sum", ["f0", "f1", "f2"], 3, False),
    "two_hash_concat": ({"t0": 2, "t1": 2, "t2": 2}, "concat", ["f2", "f1", "f0"], 2, True),
}
# one- and two-hash tables together: input keys feed the internal features unevenly, and
# the output size needs TorchRec's per-key lengths (see torchrec_lhf.modules.remap_ops)
UNEVEN = ({"t0": 2, "t1": 1}, "sum", ["f0", "f1", "f2"], 3, False)


def _setup(
    case: tuple, *, device_path: bool = True
) -> tuple[LearnedHashEmbeddingBagCollection, KeyedJaggedTensor]:
    """The module and a batch; ``device_path``: the remap behaves as on CUDA (it takes
    no per-key lengths on the host to save work, as it does for ids on the CPU)."""
    num_hashes, combine, keys, max_len, weighted = case
    torch.manual_seed(0)
    lhf = LearnedHashEmbeddingBagCollection(
        tables=_tables(), plan=_plan(num_hashes, combine), is_weighted=weighted
    )
    lhf.remap.read_lengths_on_cpu = not device_path
    return lhf, _batch(keys, max_len=max_len, weighted=weighted)


def _fresh(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """The same tensors in a new KJT, without the per-key lengths TorchRec caches on one."""
    return KeyedJaggedTensor(
        keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(), weights=kjt.weights_or_none()
    )


def _train_step(ebc: torch.nn.Module, kjt: KeyedJaggedTensor) -> int:
    """One forward, backward and SGD step under :func:`host_reads`; TorchRec's reads."""
    head = torch.nn.Linear(sum(c.embedding_dim for c in ebc.embedding_bag_configs()), 1)
    opt = torch.optim.SGD([*ebc.parameters(), *head.parameters()], lr=0.1)
    with host_reads(allow_torchrec=True) as reads:
        loss = head(ebc(kjt).values()).square().mean()
        loss.backward()
        opt.step()
    return len(reads.allowed)


@pytest.mark.parametrize("name", CASES)
def test_remap_and_combine_read_nothing(name: str) -> None:
    lhf, kjt = _setup(CASES[name])
    with host_reads():
        internal = lhf.remap(kjt)
    pooled = EmbeddingBagCollection.forward(lhf, internal)  # TorchRec's own (it reads)
    if lhf.combine is not None:
        with host_reads():
            lhf.combine(pooled)


@pytest.mark.parametrize("device_path", [True, False])
@pytest.mark.parametrize("name", [*CASES, "uneven"])
def test_training_step_reads_no_more_than_plain_ebc(name: str, device_path: bool) -> None:
    lhf, kjt = _setup(CASES.get(name, UNEVEN), device_path=device_path)
    internal = lhf.remap(kjt)
    plain = EmbeddingBagCollection(
        tables=lhf.internal_embedding_bag_configs(), is_weighted=lhf.is_weighted()
    )
    lhf_reads = _train_step(lhf, _fresh(kjt))
    plain_reads = _train_step(plain, _fresh(internal))
    assert lhf_reads <= plain_reads, (lhf_reads, plain_reads)


@pytest.mark.parametrize("name", CASES)
def test_on_cpu_the_remap_takes_torchrec_lengths_once_and_passes_them_on(name: str) -> None:
    lhf, kjt = _setup(CASES[name], device_path=False)
    with host_reads(allow_torchrec=True) as reads:
        internal = lhf.remap(kjt)
    assert len(reads.allowed) == 1 and internal.length_per_key_or_none() is not None
    with host_reads():  # TorchRec's to_dict then reads nothing more
        internal.to_dict()


def test_uneven_layout_reads_torchrec_lengths_once_and_passes_them_on() -> None:
    lhf, kjt = _setup(UNEVEN)
    with host_reads(allow_torchrec=True) as reads:
        internal = lhf.remap(kjt)
    assert len(reads.allowed) == 1
    assert internal.length_per_key_or_none() is not None
    with host_reads():  # TorchRec's to_dict then reads nothing more
        internal.to_dict()
    # with per-key lengths already known, the remap reads nothing at all
    kjt = _fresh(kjt)
    kjt.length_per_key()
    with host_reads():
        lhf.remap(kjt)


@pytest.mark.parametrize(
    "read",
    [
        lambda t: torch.equal(t, t),
        lambda t: int(t.sum()),
        lambda t: bool((t > 0).any()),
        lambda t: t.tolist(),
        lambda t: t[t > 0],
        lambda t: torch.repeat_interleave(t, t),
    ],
)
def test_guard_catches_host_reads(read) -> None:  # noqa: ANN001
    with pytest.raises(HostReadError), host_reads():
        read(torch.tensor([1, 2]))
