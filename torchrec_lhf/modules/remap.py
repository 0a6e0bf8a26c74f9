"""The remap step: raw ids of logical features -> rows of the internal (compressed) tables.

Legend:
    F   logical features of the input KeyedJaggedTensor
    J   internal features (one per logical feature and hash function)
    B   batch size (stride)
    V   ids in the input batch;  P ids in the remapped batch (V * H for uniform H)
    C   columns of a KeyedTensor (sum of embedding dims)

All mappings of a module live in one flat buffer; each internal feature owns an offset
into it. As in the paper, the bit width of its values is set by the largest compressed
table: int16 when every internal height fits in 2**15 rows, int32 otherwise. The remap of a batch is a handful of vectorized ops and one gather,
whatever the number of features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf.modules.remap_ops import (
    IDENTITY,
    combine_plan,
    combine_values,
    needs_length_per_key,
    remap_values,
)

OUT_OF_RANGE_POLICIES = ("error", "modulo")
MAPPING_DTYPES = (torch.int16, torch.int32)


def mapping_dtype(max_height: int) -> torch.dtype:
    """The narrowest mapping dtype for rows ``[0, max_height)``."""
    return torch.int16 if max_height <= 2**15 else torch.int32


def hashed_name(name: str, h: int, num_hashes: int) -> str:
    """Name of internal table/feature ``h`` of a logical table/feature with ``num_hashes``."""
    return name if num_hashes == 1 else f"{name}__h{h}"


def check_internal_names(
    tables: list[tuple[str, list[str], int]],
) -> None:
    """Reject logical tables/features whose internal names would collide.

    A table ``t`` (or feature ``f``) with ``H > 1`` hash functions becomes ``t__h0 ..``;
    a user table or feature already named ``t__h0`` would then share a name with it.

    Args:
        tables: per logical table, ``(name, feature names, H)``.

    Raises:
        ValueError: naming both clashing names and where they come from.
    """
    for kind in ("table", "feature"):
        owner: dict[str, tuple[tuple[str, int | None], str]] = {}
        for table, features, num_hashes in tables:
            for name in [table] if kind == "table" else features:
                for h in range(num_hashes):
                    internal = hashed_name(name, h, num_hashes)
                    origin = (name, h if num_hashes > 1 else None)
                    first = owner.setdefault(internal, (origin, table))
                    if first[0] != origin:
                        raise ValueError(
                            f"internal {kind} name {internal!r} clashes: "
                            f"{_describe(kind, *first)} and {_describe(kind, origin, table)}; "
                            f"rename the {kind} (names ending in '__h<i>' are reserved for "
                            "the hash functions of a learned-hash table)"
                        )


def _describe(kind: str, origin: tuple[str, int | None], table: str) -> str:
    name, h = origin
    where = "" if kind == "table" else f" of table {table!r}"
    if h is None:
        return f"{kind} {name!r}{where}"
    return f"hash {h} of {kind} {name!r}{where}"


@torch.fx.wrap
def remap_features(
    features: KeyedJaggedTensor,
    feature_names: list[str],
    sources: list[str],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    has_identity: bool,
) -> KeyedJaggedTensor:
    """:func:`~torchrec_lhf.modules.remap_ops.remap_values` of a KeyedJaggedTensor.

    One opaque node in a symbolic trace (it reads the keys on the host); TorchScript
    compiles it. Arguments as for ``remap_values``, plus the internal ``feature_names``.

    Raises:
        ValueError: variable batch size per feature (VBE), or see ``remap_values``.
    """
    if features.variable_stride_per_key():
        raise ValueError("variable batch size per feature (VBE) is not supported by the remap")
    keys = features.keys()
    length_per_key = features.length_per_key_or_none()
    if length_per_key is None and needs_length_per_key(keys, sources):
        # TorchRec's own host read of the per-key lengths, which its EBC forward and
        # input_dist make on every batch anyway: the output carries it on, so they do not
        # read again (see remap_ops).
        length_per_key = features.length_per_key()
    rows_P, lengths, weights_P, length_per_key = remap_values(
        keys,
        features.values(),
        features.lengths(),
        features.weights_or_none(),
        length_per_key,
        sources,
        mapping,
        offset_J,
        height_J,
        modulo,
        has_identity,
    )
    return KeyedJaggedTensor(
        keys=feature_names,
        values=rows_P,
        lengths=lengths,
        weights=weights_P,
        stride=features.stride(),
        length_per_key=length_per_key,
    )


@dataclass(frozen=True)
class InternalFeature:
    """One internal feature: which logical feature feeds it and where its mapping is.

    Args:
        name: the internal feature name (``f`` or ``f__h{h}``).
        source: the logical feature name.
        offset: start of its mapping in the flat buffer, or ``IDENTITY`` (-1).
        num_embeddings: the logical height ``N`` (valid raw ids are ``[0, N)``).
    """

    name: str
    source: str
    offset: int
    num_embeddings: int


class FeatureRemap(nn.Module):
    """Maps a KeyedJaggedTensor of raw ids to the internal features of a learned hash.

    Args:
        features: the internal features, in the order the internal tables expect them.
        mapping: flat int16 or int32 buffer, shape ``(sum_t N_t * H_t,)``.
        out_of_range: ``"error"`` (ValueError naming feature, id and N on CPU; a
            device-side assert on CUDA, where reading the ids would stall the GPU) or
            ``"modulo"`` (fold raw ids into ``[0, N)`` first, negatives included).

    Example::

        >>> import torch
        >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        >>> remap = FeatureRemap(
        ...     [InternalFeature("f", "f", 0, 4)], torch.tensor([2, 0, 1, 0], dtype=torch.int32)
        ... )
        >>> kjt = KeyedJaggedTensor(["f"], torch.tensor([0, 3, 2]), lengths=torch.tensor([2, 1]))
        >>> remap(kjt).values().tolist()
        [2, 0, 1]
    """

    def __init__(
        self,
        features: list[InternalFeature],
        mapping: torch.Tensor,
        *,
        out_of_range: str = "error",
    ) -> None:
        super().__init__()
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise ValueError(
                f"out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}"
            )
        if mapping.dtype not in MAPPING_DTYPES or mapping.dim() != 1:
            raise ValueError(
                f"mapping must be a 1-D tensor of {MAPPING_DTYPES}, got {mapping.dtype} {tuple(mapping.shape)}"
            )
        self.out_of_range = out_of_range
        self.features = list(features)
        self.feature_names = [f.name for f in self.features]
        self.sources = [f.source for f in self.features]
        self.has_identity = any(f.offset == IDENTITY for f in self.features)
        self.register_buffer("mapping", mapping, persistent=True)
        # int32 offsets halve the remap's memory traffic on CPU (see remap_ops._map_ids)
        offset_dtype = torch.int32 if mapping.numel() < 2**31 else torch.long
        for name, column, dtype in (
            ("offset_J", [f.offset for f in self.features], offset_dtype),
            ("height_J", [f.num_embeddings for f in self.features], torch.long),
        ):
            self.register_buffer(
                name, torch.tensor(column, dtype=dtype, device=mapping.device), persistent=False
            )

    def remap_bytes(self) -> int:
        return self.mapping.numel() * self.mapping.element_size()

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Remap ``features`` (raw ids) to the internal features (internal rows).

        Traceable, scriptable and without a host-device sync: see
        :mod:`torchrec_lhf.modules.remap_ops`.

        Args:
            features: keys include every source feature (extra keys are dropped), lengths
                of shape ``(F * B,)``.

        Returns:
            KeyedJaggedTensor with keys ``self.feature_names`` and stride ``B``.
        """
        return remap_features(
            features,
            self.feature_names,
            self.sources,
            self.mapping,
            self.offset_J,
            self.height_J,
            self.out_of_range == "modulo",
            self.has_identity,
        )


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
        first, passes = combine_plan(in_keys, in_dims, out_dims, sources)
        self.register_buffer("first_C", torch.tensor(first, dtype=torch.long), persistent=False)
        # (multiply, dst buffer, src buffer) of each pass, in order
        self._passes: list[tuple[bool, str, str]] = []
        for i, (multiply, dst, src) in enumerate(passes):
            names = (f"pass{i}_dst", f"pass{i}_src")
            for name, cols in zip(names, (dst, src)):
                self.register_buffer(name, torch.tensor(cols, dtype=torch.long), persistent=False)
            self._passes.append((multiply, *names))

    def forward(self, kt: KeyedTensor) -> KeyedTensor:
        """Args: kt: internal KeyedTensor, values ``(B, C_in)``. Returns: values ``(B, C_out)``."""
        passes = [(mul, getattr(self, dst), getattr(self, src)) for mul, dst, src in self._passes]
        out = combine_values(kt.values(), self.first_C, passes)
        return KeyedTensor(keys=self.out_keys, length_per_key=self.out_dims, values=out)
