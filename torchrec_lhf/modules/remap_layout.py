"""The layout of a learned-hash remap: its internal features (one per logical feature and
hash function), their names, and the packing of every hash function into the flat buffers
that :class:`~torchrec_lhf.modules.remap.FeatureRemap` holds.

All dense mappings of a module live in one flat buffer; each internal feature owns an
offset into it. As in the paper, the bit width of its values is set by the largest
compressed table: uint8 when every dense internal height is at most 256 rows, int16 when
it fits in 2**15, int32 otherwise (:func:`mapping_dtype`). The heads of all compact
(head/tail) mappings live in one key buffer (``key offset + id``: int32 when the compact
tables have at most 2**31 ids in all) and one row buffer (int16 or int32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchrec_lhf.plan_compact import CompactMapping, row_dtype

MAPPING_DTYPES = (torch.uint8, torch.int16, torch.int32)


def mapping_dtype(max_height: int) -> torch.dtype:
    """The narrowest dtype of a dense mapping for rows ``[0, max_height)``: uint8 up to
    256 rows (a byte per id, as :meth:`~torchrec_lhf.plan.TableHash.remap_bytes` counts),
    int16 up to ``2**15``, else int32."""
    if max_height <= 2**8:
        return torch.uint8
    return row_dtype(max_height)


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
        ValueError: naming both clashing names and where they come from; or a table name
            that cannot name a module (empty, or with a ``.``: before, ``nn.ModuleDict``'s
            ``KeyError``).
    """
    for table, _, _ in tables:
        if not isinstance(table, str) or not table or "." in table:
            raise ValueError(
                f"table name must be a non-empty string without '.' (it names the table's "
                f"module), got {table!r}"
            )
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
        offset: start of its mapping in the flat buffer, or ``IDENTITY`` (-1); for a
            compact mapping, its key offset (its head's keys are ``offset + id``).
        num_embeddings: the logical height ``N`` (valid raw ids are ``[0, N)``).
        tail: ``(seed, offset, rows)`` of the tail hash of a compact mapping, else None.
    """

    name: str
    source: str
    offset: int
    num_embeddings: int
    tail: tuple[int, int, int] | None = None


class MappingPacker:
    """Packs a module's hash functions into :class:`FeatureRemap`'s buffers.

    Call :meth:`add` per hash function, in order, then :meth:`buffers`.
    """

    def __init__(self) -> None:
        self._dense: list[torch.Tensor] = []
        self._heads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._dense_ids = self._compact_ids = 0
        self._dense_height = self._compact_height = 1

    def add(
        self, mapping: torch.Tensor | CompactMapping, num_embeddings: int, height: int
    ) -> tuple[int, tuple[int, int, int] | None]:
        """Returns ``(offset, tail)`` for the :class:`InternalFeature` s it feeds."""
        if isinstance(mapping, CompactMapping):
            offset, self._compact_ids = self._compact_ids, self._compact_ids + num_embeddings
            self._heads.append((offset + mapping.head_ids, mapping.head_rows))
            self._compact_height = max(self._compact_height, height)
            return offset, (mapping.tail_seed, mapping.tail_offset, mapping.tail_rows)
        offset, self._dense_ids = self._dense_ids, self._dense_ids + num_embeddings
        self._dense.append(mapping)
        self._dense_height = max(self._dense_height, height)
        return offset, None

    def buffers(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(mapping, compact)``: the flat dense mapping and, if any compact mapping was
        added, its ``(head_keys, head_rows)`` (as :class:`FeatureRemap` takes them)."""
        dense = torch.cat(self._dense) if self._dense else torch.zeros(0, dtype=torch.int32)
        dense = dense.to(mapping_dtype(self._dense_height))
        if self._compact_ids == 0:
            return dense, None
        key_dtype = torch.int32 if self._compact_ids <= 2**31 else torch.long
        keys = torch.cat([k for k, _ in self._heads]).to(key_dtype)
        rows = torch.cat([r.int() for _, r in self._heads])
        return dense, (keys, rows.to(row_dtype(self._compact_height)))  # (int16 or int32)
