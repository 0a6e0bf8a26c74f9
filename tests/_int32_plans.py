"""Plans with int32 mappings and rows (an internal table of more than 2**15 rows): the
remap's fast paths (tests only)."""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.plan_compact import CompactMapping

# table -> (features, logical height N, internal height M or None: uncompressed); "wide"
# has more than 2**15 rows, so the mapping (and compact rows) are int32
TABLES = {
    "wide": (["a"], 40_000, 33_000),
    "small": (["b"], 50, 7),
    "plain": (["c"], 12, None),
}
HEIGHTS = {"a": 40_000, "b": 50, "c": 12, "d": 30, "e": 30}


def tables(shared: bool = False) -> list[EmbeddingBagConfig]:
    tables = dict(TABLES, shared=(["d", "e"], 30, 5)) if shared else TABLES
    return [
        EmbeddingBagConfig(name=t, embedding_dim=4, num_embeddings=n, feature_names=f)
        for t, (f, n, _) in tables.items()
    ]


def mappings(shared: bool = False) -> dict[str, tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    out = {
        t: (torch.randint(0, m, (n,), generator=g, dtype=torch.int32), m)
        for t, (_, n, m) in TABLES.items()
        if m is not None
    }
    if shared:
        out["shared"] = (torch.randint(0, 5, (30,), generator=g, dtype=torch.int32), 5)
    return out


def dense(shared: bool = False, **kwargs: object) -> LearnedHashEmbeddingBagCollection:
    maps = mappings(shared)
    plan = HashPlan.from_mappings(
        {t: m for t, (m, _) in maps.items()}, heights={t: h for t, (_, h) in maps.items()}
    )
    return LearnedHashEmbeddingBagCollection(tables=tables(shared), plan=plan, **kwargs)


def compact(**kwargs: object) -> LearnedHashEmbeddingBagCollection:
    """Every compressed table compact: the head every third id, rows int32 (33_000 rows)."""
    hashes = []
    for i, (t, (mapping, height)) in enumerate(mappings().items()):
        head = torch.arange(0, mapping.numel(), 3)
        m = CompactMapping(
            head, mapping[head], tail_seed=i + 5, tail_offset=i, tail_rows=height - i
        )
        hashes.append(TableHash(t, mapping.numel(), (m,), (height,)))
    return LearnedHashEmbeddingBagCollection(tables=tables(), plan=HashPlan(hashes), **kwargs)


def batch(keys: list[str], seed: int = 0, max_len: int = 3) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(keys), 4), generator=g)
    values = torch.cat(
        [
            torch.randint(0, HEIGHTS[k], (int(lengths[i].sum()),), generator=g)
            for i, k in enumerate(keys)
        ]
    )
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten())
