"""Batches with a variable batch per feature (VBE) and their expanded equivalents."""

from __future__ import annotations

import torch
from torchrec import KeyedJaggedTensor

KEYS = ("f3", "f0", "f1", "f2")  # deliberately not in table order
HEIGHTS = (12, 40, 40, 30)  # of three_tables(): t2, t0, t0, t1


def vbe_batch(
    seed: int, batch: int = 3, *, weighted: bool = False
) -> tuple[KeyedJaggedTensor, KeyedJaggedTensor]:
    """A VBE batch of :func:`tests._fixtures.three_tables`' features for ``batch`` samples
    (``f0`` and ``f2`` deduplicated to fewer bags, ``f3`` and ``f1`` at the full batch),
    and the same batch with every sample's bags written out (no VBE)."""
    g = torch.Generator().manual_seed(seed)
    strides = [batch, max(1, batch - 1), batch, 1]
    inverse = torch.stack(
        [
            torch.arange(batch) if b == batch else torch.randint(0, b, (batch,), generator=g)
            for b in strides
        ]
    )
    lengths = [torch.randint(0, 4, (b,), generator=g) for b in strides]
    values = [torch.randint(0, h, (int(n.sum()),), generator=g) for n, h in zip(lengths, HEIGHTS)]
    weights = [torch.rand(v.numel(), generator=g) for v in values] if weighted else None
    vbe = KeyedJaggedTensor(
        keys=list(KEYS),
        values=torch.cat(values),
        lengths=torch.cat(lengths),
        weights=None if weights is None else torch.cat(weights),
        stride_per_key_per_rank=[[b] for b in strides],
        inverse_indices=(list(KEYS), inverse),
    )
    out_lengths, out_values, out_weights = [], [], []
    for k in range(len(KEYS)):
        ends = torch.cumsum(lengths[k], 0).tolist()
        for i in inverse[k].tolist():
            start, end = ends[i] - int(lengths[k][i]), ends[i]
            out_lengths.append(end - start)
            out_values.append(values[k][start:end])
            if weights is not None:
                out_weights.append(weights[k][start:end])
    full = KeyedJaggedTensor(
        keys=list(KEYS),
        values=torch.cat(out_values),
        lengths=torch.tensor(out_lengths),
        weights=torch.cat(out_weights) if weights is not None else None,
    )
    return vbe, full
