"""The combine step: internal pooled embeddings -> the logical ones (sum, concat, mult,
scaled sum of a table's internal embeddings), as column gathers and adds over the batch.

Legend:
    B   batch size
    C   columns of a KeyedTensor (sum of embedding dims)
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_lhf.modules.remap_ops import combine_plan, combine_values


class KeyedTensorCombine(nn.Module):
    """Combines internal pooled embeddings into the logical ones.

    Args:
        in_keys: internal embedding names, in the internal KeyedTensor's order.
        in_dims: their dims.
        out_keys: logical embedding names, in the order the plain EBC returns them.
        out_dims: their dims.
        sources: for each logical key, ``(internal keys, combine)``; ``combine`` is one of
            ``sum``, ``concat``, ``mult``, ``scaled_sum`` (see :mod:`torchrec_lhf.plan`).
    """

    def __init__(
        self,
        in_keys: list[str],
        in_dims: list[int],
        out_keys: list[str],
        out_dims: list[int],
        sources: list[tuple[list[str], str]],
    ) -> None:
        super().__init__()
        self.out_keys, self.out_dims = list(out_keys), list(out_dims)
        self.in_keys, self._sources = list(in_keys), [(list(k), c) for k, c in sources]
        first, passes = combine_plan(in_keys, in_dims, out_dims, sources)
        self.register_buffer("first_C", torch.tensor(first, dtype=torch.long), persistent=False)
        # (multiply, dst buffer, src buffer) of each pass, in order
        self._passes: list[tuple[bool, str, str]] = []
        for i, (multiply, dst, src) in enumerate(passes):
            names = (f"pass{i}_dst", f"pass{i}_src")
            for name, cols in zip(names, (dst, src)):
                self.register_buffer(name, torch.tensor(cols, dtype=torch.long), persistent=False)
            self._passes.append((multiply, *names))

    def for_input_order(self, in_keys: list[str], in_dims: list[int]) -> KeyedTensorCombine:
        """The same combine for internal embeddings that arrive in another key order (a
        sharded collection returns them grouped by sharding type and rank)."""
        if sorted(in_keys) != sorted(self.in_keys):
            raise ValueError(f"input keys {in_keys} are not a reordering of {self.in_keys}")
        combine = KeyedTensorCombine(in_keys, in_dims, self.out_keys, self.out_dims, self._sources)
        return combine.to(self.first_C.device)

    def forward(self, kt: KeyedTensor) -> KeyedTensor:
        """Args: kt: internal KeyedTensor, values ``(B, C_in)``, keys in :attr:`in_keys`'
        order. Returns: values ``(B, C_out)``."""
        passes = [(mul, getattr(self, dst), getattr(self, src)) for mul, dst, src in self._passes]
        out = combine_values(kt.values(), self.first_C, passes)
        return KeyedTensor(keys=self.out_keys, length_per_key=self.out_dims, values=out)
