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

OUT_OF_RANGE_POLICIES = ("error", "modulo")
IDENTITY = -1  # offset of an internal feature whose table is not compressed
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
        out_of_range: ``"error"`` (ValueError naming feature, id and N) or ``"modulo"``
            (fold raw ids into ``[0, N)`` first, negatives included).

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
        self.sources = list(dict.fromkeys(f.source for f in self.features))
        self.has_identity = any(f.offset == IDENTITY for f in self.features)
        self.register_buffer("mapping", mapping, persistent=True)
        device = mapping.device
        self.register_buffer(
            "offset_J",
            torch.tensor([f.offset for f in self.features], dtype=torch.long, device=device),
            persistent=False,
        )
        self.register_buffer(
            "height_J",
            torch.tensor(
                [f.num_embeddings for f in self.features], dtype=torch.long, device=device
            ),
            persistent=False,
        )
        # input key order -> (index of each internal feature's source among the input keys,
        # whether the layout is the identity); computed once per distinct key order.
        self._layout_cache: dict[tuple[str, ...], tuple[torch.Tensor, bool]] = {}
        self._position_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def remap_bytes(self) -> int:
        return self.mapping.numel() * self.mapping.element_size()

    def _layout(self, keys: list[str], device: torch.device) -> tuple[torch.Tensor, bool]:
        key = tuple(keys)
        cached = self._layout_cache.get(key)
        if cached is not None and cached[0].device == device:
            return cached
        index = {k: i for i, k in enumerate(keys)}
        missing = [s for s in self.sources if s not in index]
        if missing:
            raise ValueError(f"input features {keys} lack {missing}, which this module embeds")
        src = [index[f.source] for f in self.features]
        identity = src == list(range(len(keys)))
        layout = (torch.tensor(src, dtype=torch.long, device=device), identity)
        self._layout_cache[key] = layout
        return layout

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Remap ``features`` (raw ids) to the internal features (internal rows).

        Args:
            features: keys include every source feature (extra keys are dropped), lengths
                of shape ``(F * B,)``.

        Returns:
            KeyedJaggedTensor with keys ``self.feature_names`` and stride ``B``.
        """
        if features.variable_stride_per_key():
            raise ValueError("variable batch size per feature (VBE) is not supported by the remap")
        values_V, lengths, weights_V = (
            features.values(),
            features.lengths(),
            features.weights_or_none(),
        )
        src_J, identity = self._layout(features.keys(), values_V.device)
        num_keys, stride = len(features.keys()), features.stride()
        lengths_FB = lengths.view(num_keys, stride)
        per_key_F = lengths_FB.sum(1)
        if identity:
            ids_P = values_V
            rows_P = self._remap_ids(ids_P, per_key_F, values_V.numel())
            out_lengths = lengths
        else:
            per_key_J = per_key_F[src_J]
            num_out = int(per_key_J.sum())
            start_F = torch.cumsum(per_key_F, 0) - per_key_F
            # position of every output id in the input values
            shift_J = start_F[src_J] - (torch.cumsum(per_key_J, 0) - per_key_J)
            pos_P = torch.arange(num_out, device=values_V.device) + torch.repeat_interleave(
                shift_J, per_key_J, output_size=num_out
            )
            ids_P = values_V[pos_P]
            weights_V = None if weights_V is None else weights_V[pos_P]
            rows_P = self._remap_ids(ids_P, per_key_J, num_out)
            out_lengths = lengths_FB[src_J].reshape(-1)
        return KeyedJaggedTensor(
            keys=self.feature_names,
            values=rows_P,
            lengths=out_lengths,
            weights=weights_V,
            stride=stride,
        )

    def _per_position(self, per_key_J: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(height_P, offset_P)``; reused while the ids per feature stay the same (one-hot
        features at a fixed batch size: every batch), which saves two repeat_interleaves."""
        cached = self._position_cache
        if (
            cached is not None
            and cached[0].shape == per_key_J.shape
            and torch.equal(cached[0], per_key_J)
        ):
            return cached[1], cached[2]
        height_P = torch.repeat_interleave(self.height_J, per_key_J, output_size=num)
        offset_P = torch.repeat_interleave(self.offset_J, per_key_J, output_size=num)
        self._position_cache = (per_key_J.clone(), height_P, offset_P)
        return height_P, offset_P

    def _remap_ids(self, ids_P: torch.Tensor, per_key_J: torch.Tensor, num: int) -> torch.Tensor:
        height_P, offset_P = self._per_position(per_key_J, num)
        if self.out_of_range == "modulo":
            ids_P = torch.remainder(ids_P, height_P)
        elif num and (bool((ids_P >= height_P).any()) or int(ids_P.min()) < 0):
            bad_P = (ids_P < 0) | (ids_P >= height_P)
            first = int(bad_P.nonzero()[0, 0])
            j = int(torch.searchsorted(torch.cumsum(per_key_J, 0), first, right=True))
            f = self.features[j]
            raise ValueError(
                f"feature {f.source!r}: id {int(ids_P[first])} is out of range [0, {f.num_embeddings}) "
                f"({int(bad_P.sum())} such ids in the batch); pass out_of_range='modulo' to fold ids"
            )
        if self.has_identity:
            mapped_P = offset_P >= 0
            rows = self.mapping.index_select(0, torch.where(mapped_P, offset_P + ids_P, 0))
            return torch.where(mapped_P, rows.to(ids_P.dtype), ids_P)
        # NOTE: index_select is ~1.5x faster than advanced indexing for this 1-D gather on CPU
        return self.mapping.index_select(0, offset_P + ids_P).to(ids_P.dtype)


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
        col = dict(zip(in_keys, (sum(in_dims[:i]) for i in range(len(in_dims)))))
        dim = dict(zip(in_keys, in_dims))
        # One gather fills every output column from the first internal table (all of them,
        # for concat); pass h then adds or multiplies in internal table h, for all features
        # at once: the number of ops depends on the largest H, not on the features.
        first: list[int] = []
        passes: list[dict[str, tuple[list[int], list[int]]]] = []
        out_col = 0
        for (keys, mode), out_dim in zip(sources, out_dims):
            if mode == "concat" or len(keys) == 1:
                first.extend(c for k in keys for c in range(col[k], col[k] + dim[k]))
            else:
                first.extend(range(col[keys[0]], col[keys[0]] + out_dim))
                for h, k in enumerate(keys[1:], start=1):
                    op = (
                        "mul"
                        if mode == "mult" or (mode == "scaled_sum" and h == len(keys) - 1)
                        else "add"
                    )
                    while len(passes) < h:
                        passes.append({"add": ([], []), "mul": ([], [])})
                    dst, src = passes[h - 1][op]
                    dst.extend(range(out_col, out_col + out_dim))
                    src.extend(range(col[k], col[k] + dim[k]))
            out_col += out_dim
        assert len(first) == out_col == sum(out_dims), "combine layout mismatch"
        self.register_buffer("first_C", torch.tensor(first, dtype=torch.long), persistent=False)
        self._ops: list[tuple[str, str, str]] = []
        for h, ops in enumerate(passes):
            for op, (dst, src) in ops.items():
                if dst:
                    names = (f"{op}_dst_{h}", f"{op}_src_{h}")
                    self.register_buffer(
                        names[0], torch.tensor(dst, dtype=torch.long), persistent=False
                    )
                    self.register_buffer(
                        names[1], torch.tensor(src, dtype=torch.long), persistent=False
                    )
                    self._ops.append((op, *names))

    def forward(self, kt: KeyedTensor) -> KeyedTensor:
        """Args: kt: internal KeyedTensor, values ``(B, C_in)``. Returns: values ``(B, C_out)``."""
        values = kt.values()
        out = values.index_select(1, self.first_C)
        for op, dst_name, src_name in self._ops:
            dst, src = getattr(self, dst_name), getattr(self, src_name)
            if op == "add":
                out = out.index_add(1, dst, values.index_select(1, src))
            else:
                out = out.index_copy(1, dst, out.index_select(1, dst) * values.index_select(1, src))
        return KeyedTensor(keys=self.out_keys, length_per_key=self.out_dims, values=out)
