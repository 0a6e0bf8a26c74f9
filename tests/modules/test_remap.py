"""The remap module (torchrec_lhf/modules/remap.py): the combine of internal pooled embeddings
and the range check for lookups that remap raw ids themselves, by hand."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.combine import KeyedTensorCombine


def _combine() -> KeyedTensorCombine:
    # logical "a" = a__h0 + a__h1 (dims 2), logical "b" = b (dim 1)
    return KeyedTensorCombine(
        ["a__h0", "a__h1", "b"],
        [2, 2, 1],
        ["a", "b"],
        [2, 1],
        [(["a__h0", "a__h1"], "sum"), (["b"], "sum")],
    )


def test_combine_by_hand() -> None:
    kt = KeyedTensor(["a__h0", "a__h1", "b"], [2, 2, 1], torch.tensor([[1.0, 2, 10, 20, 5]]))
    out = _combine()(kt)
    assert out.keys() == ["a", "b"] and out.values().tolist() == [[11.0, 22.0, 5.0]]


def test_combine_follows_another_input_order() -> None:
    # a sharded collection may return the internal embeddings grouped by rank
    reordered = _combine().for_input_order(["b", "a__h1", "a__h0"], [1, 2, 2])
    kt = KeyedTensor(["b", "a__h1", "a__h0"], [1, 2, 2], torch.tensor([[5.0, 10, 20, 1, 2]]))
    assert reordered(kt).values().tolist() == [[11.0, 22.0, 5.0]]
    with pytest.raises(ValueError, match="not a reordering"):
        _combine().for_input_order(["b", "a__h0"], [1, 2])


def _two_table_remap(policy: str):  # t0 (40 ids) compressed, t1 (30 ids) not
    tables = [
        EmbeddingBagConfig(name=n, embedding_dim=2, num_embeddings=h, feature_names=[f])
        for n, h, f in (("t0", 40, "f0"), ("t1", 30, "f1"))
    ]
    plan = HashPlan.from_mappings({"t0": torch.arange(40) % 9})
    return LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, out_of_range=policy).remap


@pytest.mark.parametrize("kernel", [True, False])
def test_check_ids_passes_the_ids_on_checked(kernel: bool) -> None:
    """For a lookup that remaps raw ids itself (FBGEMM's, in the served dense model): the
    ids unchanged, keyed by the internal features (an extra key dropped), or the feature,
    the id and N of one out of range; ``modulo`` folds them. CPU kernel and torch ops."""
    remap = _two_table_remap("error")
    remap.read_lengths_on_cpu = kernel
    values = torch.tensor([0, 39, 7, 3, 29, 5, 5])
    lengths = torch.tensor([1, 2, 1, 2, 1, 0])  # f0: 2 samples, f1, then "extra"
    kjt = KeyedJaggedTensor(["f0", "f1", "extra"], values, lengths=lengths)
    out = remap.check_ids(kjt)
    assert out.keys() == ["f0", "f1"]
    assert out.values().tolist() == [0, 39, 7, 3, 29, 5]
    assert out.lengths().tolist() == [1, 2, 1, 2]
    for at, bad, feature, height in ((1, 40, "f0", 40), (4, 30, "f1", 30), (3, -1, "f1", 30)):
        wrong = values.clone()
        wrong[at] = bad
        with pytest.raises(
            ValueError, match=rf"feature '{feature}': id {bad} is out of range \[0, {height}\)"
        ):
            remap.check_ids(KeyedJaggedTensor(["f0", "f1", "extra"], wrong, lengths=lengths))
    folding = _two_table_remap("modulo")
    folding.read_lengths_on_cpu = kernel
    ids = torch.tensor([40, -1, 7, 30, 61])
    out = folding.check_ids(
        KeyedJaggedTensor(["f0", "f1"], ids, lengths=torch.tensor([1, 2, 1, 1]))
    )
    assert out.values().tolist() == [0, 39, 7, 0, 1]


_HEIGHTS = (1, 2, 5, 27, 300, 5000, 70_000, 2**20 + 3)  # one block, several, a partial last
_EXTREME_IDS = (-1, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1)


def _random_mapping(g: torch.Generator, rng, n: int, m: int):  # noqa: ANN001, ANN202
    """A dense, compact, ranked, computed or divided hash function of ``n`` ids into ``m``
    rows (seeds drawn from a few, so that hash functions share them)."""
    from torchrec_lhf.plan_compact import CompactMapping

    kind = rng.choice(["dense", "compact", "ranked", "computed", "divided"])
    if kind == "dense" and n <= 300_000:
        return torch.randint(0, m, (n,), generator=g, dtype=torch.int32)
    tail_rows = rng.randint(1, m)
    seed = rng.choice([-1, -3, 7])  # (a few seeds: hash functions share them)
    if kind in ("computed", "divided"):
        seed = -rng.randint(2, 50) if kind == "divided" else seed
        head, rows = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.int32)
    else:
        k = rng.randint(0, min(n, m if kind == "ranked" else n, 20_000))
        head = torch.randperm(n, generator=g)[:k].sort().values if n <= 300_000 else None
        head = head if head is not None else torch.unique(torch.randint(0, n, (k,), generator=g))
        rows = (
            torch.arange(head.numel(), dtype=torch.int32)
            if kind == "ranked"
            else torch.randint(0, m, (head.numel(),), generator=g, dtype=torch.int32)
        )
    return CompactMapping(
        head, rows, tail_seed=seed, tail_offset=rng.randint(0, m - tail_rows), tail_rows=tail_rows
    )


@pytest.mark.parametrize("seed", range(24))
def test_random_plans_map_every_id_as_the_plan_says(monkeypatch, seed: int) -> None:  # noqa: ANN001
    """Random plans (every encoding, shared tables, hash functions sharing seeds, some
    tables uncompressed) and random batches (keys in any order, empty bags, extreme ids
    folded by ``modulo``): the remap's rows equal each hash function's own, on the CPU
    kernel and the torch ops. (Such a check found the shared seeds' cuckoo failure.)"""
    import random

    from torchrec_lhf import TableHash
    from torchrec_lhf.modules import compact_kernel

    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    configs, tables = [], []
    for t in range(rng.randint(1, 4)):
        n = rng.choice(_HEIGHTS)
        features = [f"t{t}f{i}" for i in range(rng.randint(1, 2))]
        configs.append(
            EmbeddingBagConfig(
                name=f"t{t}", embedding_dim=4, num_embeddings=n, feature_names=features
            )
        )
        if rng.random() < 0.8:
            heights = [rng.randint(1, min(n, 70_000)) for _ in range(rng.randint(1, 4))]
            maps = tuple(_random_mapping(g, rng, n, m) for m in heights)
            tables.append(TableHash(f"t{t}", n, maps, tuple(heights)))
    plan = HashPlan(tables)
    policy = rng.choice(["error", "modulo"])
    ebc = LearnedHashEmbeddingBagCollection(tables=configs, plan=plan, out_of_range=policy)
    height = {f: c.num_embeddings for c in configs for f in c.feature_names}
    table = {f: c.name for c in configs for f in c.feature_names}
    keys = list(height)
    rng.shuffle(keys)
    batch = rng.randint(1, 6)
    lengths = [rng.choice([0, 1, 1, 2, 4]) for _ in range(len(keys) * batch)]
    values = []
    for i, key in enumerate(keys):
        for _ in range(sum(lengths[i * batch : (i + 1) * batch])):
            wild = policy == "modulo" and rng.random() < 0.3
            values.append(rng.choice(_EXTREME_IDS) if wild else rng.randrange(height[key]))
    kjt = KeyedJaggedTensor(keys, torch.tensor(values), lengths=torch.tensor(lengths))
    raw = kjt.to_dict()
    expected = {}
    for f, jt in raw.items():
        ids = torch.tensor([v % height[f] for v in jt.values().tolist()], dtype=torch.long)
        if table[f] not in plan:
            expected[f] = ids
            continue
        th = plan[table[f]]
        for h, m in enumerate(th.mappings):
            name = f if th.num_hashes == 1 else f"{f}__h{h}"
            expected[name] = m.long()[ids] if isinstance(m, torch.Tensor) else m.rows(ids)
    for path in ("kernel", "torch ops"):
        if path == "torch ops":  # (as on CUDA)
            monkeypatch.setattr(compact_kernel, "fused_rows", lambda *args: None)
        elif not compact_kernel.available():
            continue
        out = ebc.remap(kjt).to_dict()
        assert sorted(out) == sorted(expected)
        for name, rows in expected.items():
            assert torch.equal(out[name].values().long(), rows), (path, name)
