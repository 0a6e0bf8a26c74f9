"""The hash plan: per table, the learned lookup tables raw id -> compressed row.

Shapes: ``N`` logical table height (raw ids ``0..N-1``), ``H`` hash functions of a
table, ``M_h`` height of internal table ``h``.

A table with ``H > 1`` hash functions has ``H`` internal tables (the paper's
"multiple internal tables"); their embeddings combine by ``sum`` (each internal
table has the full dim), ``concat`` (the dim is split across them), ``mult`` (element-wise
product, as in compositional embeddings), ``scaled_sum`` (the sum of the first ``H - 1``
times the last, as MEM-REC's token and weight tables) or ``sum_concat`` (``num_columns``
columns of ``H / num_columns`` consecutive internal tables: each column's sum, the columns
concatenated; the dim is split evenly over the columns, as CCE's chunks).

Each hash function is stored dense (an int32 row per id) or compact (a learned head and a
hashed tail: :class:`~torchrec_lhf.plan_compact.CompactMapping`), whichever is smaller.
"""

from __future__ import annotations

import hashlib
import operator
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchrec_lhf.cli import check_int
from torchrec_lhf.plan_compact import (
    CompactMapping,
    as_int32_mapping,
    check_mapping,
    dense_mapping,
    dense_width,
    encoding,
    mapping_bytes,
    mapping_digest,
    mappings_equal,
    max_dense_height,
)

# 2: compact encodings (a manifest entry per hash function); 3: ranked heads
# ("rows": "rank", plan_compact.encode); version-1 and -2 files still load
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
COMBINE_MODES = ("sum", "concat", "mult", "scaled_sum", "sum_concat")
_KIND = "hash_plan"


def _whole(value: object, high: int) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool) in ``[1, high)``, else
    None."""
    if isinstance(value, bool):
        return None
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return number if 1 <= number < high else None


@dataclass(frozen=True, eq=False)
class TableHash:
    """The learned hash of one logical table.

    Args:
        name: the logical table's name (as in ``EmbeddingBagConfig.name``).
        num_embeddings: logical height ``N``.
        mappings: ``H`` hash functions, each an int32 tensor of shape ``(N,)`` with values
            in ``[0, M_h)`` (dense) or a :class:`CompactMapping` (compact).
        heights: the internal heights ``M_h``, one per mapping.
        combine: how the ``H`` internal embeddings combine: ``"sum"``, ``"concat"``,
            ``"mult"``, ``"scaled_sum"`` or ``"sum_concat"`` (see the module docstring).
        num_columns: ``sum_concat``'s columns (a divisor of ``H``); 1 for the other modes.

    Raises:
        ValueError: sizes, dtypes or values are inconsistent.
    """

    name: str
    num_embeddings: int
    mappings: tuple[torch.Tensor | CompactMapping, ...]
    heights: tuple[int, ...]
    combine: str = "sum"
    num_columns: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(
                f"table name must be a non-empty string without '.', got {self.name!r}"
            )
        # (ints of any kind, numpy's and 0-d tensors' too, made Python ints; a float, a string
        # or a bool, as a hand-edited plan file may hold, refused)
        n = _whole(self.num_embeddings, 2**63)
        if n is None:
            raise ValueError(
                f"table {self.name!r}: num_embeddings must be an int in [1, 2**63), got "
                f"{self.num_embeddings!r}"
            )
        object.__setattr__(self, "num_embeddings", n)
        if len(self.mappings) < 1:
            raise ValueError(f"table {self.name!r}: needs at least one hash function, got 0")
        if len(self.heights) != len(self.mappings):
            raise ValueError(
                f"table {self.name!r}: {len(self.mappings)} mappings but {len(self.heights)} heights"
            )
        if self.combine not in COMBINE_MODES:
            raise ValueError(
                f"table {self.name!r}: combine must be one of {COMBINE_MODES}, got {self.combine!r}"
            )
        if self.combine == "scaled_sum" and len(self.mappings) < 2:
            raise ValueError(
                f"table {self.name!r}: scaled_sum needs at least 2 hash functions, got {len(self.mappings)}"
            )
        columns = self.num_columns
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise ValueError(
                f"table {self.name!r}: num_columns must be an int >= 1, got {columns!r}"
            )
        if columns != 1 and (self.combine != "sum_concat" or self.num_hashes % columns):
            raise ValueError(
                f"table {self.name!r}: num_columns={columns} needs combine 'sum_concat' and a "
                f"number of hash functions it divides, got {self.combine!r} with {self.num_hashes}"
            )
        heights = tuple(_whole(height, 2**31) for height in self.heights)
        for h, (m, height) in enumerate(zip(self.mappings, heights)):
            if height is None:
                raise ValueError(
                    f"table {self.name!r} hash {h}: height must be an int in [1, 2**31), got "
                    f"{self.heights[h]!r}"
                )
            check_mapping(self.name, h, m, self.num_embeddings, height)
        object.__setattr__(self, "heights", heights)

    @property
    def num_hashes(self) -> int:
        """``H``, the number of hash functions (internal tables)."""
        return len(self.mappings)

    @property
    def num_rows(self) -> int:
        """Total rows over the internal tables, ``sum(M_h)``."""
        return sum(self.heights)

    @property
    def encodings(self) -> tuple[str, ...]:
        """``"dense"`` or ``"compact"``, per hash function."""
        return tuple(encoding(m) for m in self.mappings)

    def dense_mapping(self, h: int) -> torch.Tensor:
        """Hash function ``h`` as int32 rows of shape ``(N,)`` (materializes a compact one)."""
        return dense_mapping(self.mappings[h], self.num_embeddings)

    def remap_bytes(self, max_height: int | None = None) -> int:
        """Stored bytes of the hash functions: a dense one takes 1 per id (uint8) when the
        largest dense height (``max_height``, default this table's) is at most 256, 2
        (int16) when it fits in 2**15, else 4 (the module's buffer,
        :func:`~torchrec_lhf.modules.remap_layout.mapping_dtype`); a compact one its
        :meth:`CompactMapping.nbytes`."""
        width = dense_width(max_height or max_dense_height([self]))
        return sum(mapping_bytes(m, self.num_embeddings, width) for m in self.mappings)

    def internal_dims(self, embedding_dim: int) -> list[int]:
        """Dims of the internal tables for a logical dim (split evenly for ``concat``; over
        the columns for ``sum_concat``, each column's tables of its column's dim)."""
        parts = {"concat": self.num_hashes, "sum_concat": self.num_columns}.get(self.combine, 1)
        if embedding_dim < parts:
            raise ValueError(
                f"table {self.name!r}: {self.combine} of {parts} parts needs "
                f"embedding_dim >= {parts}, got {embedding_dim}"
            )
        base, extra = divmod(embedding_dim, parts)
        per_part = self.num_hashes // parts  # consecutive internal tables of one part
        return [base + (1 if h // per_part < extra else 0) for h in range(self.num_hashes)]

    def equals(self, other: TableHash) -> bool:
        return (
            self.name == other.name
            and self.num_embeddings == other.num_embeddings
            and tuple(self.heights) == tuple(other.heights)
            and self.combine == other.combine
            and self.num_columns == other.num_columns
            and all(
                mappings_equal(a, b, self.num_embeddings)
                for a, b in zip(self.mappings, other.mappings)
            )
        )


@dataclass(eq=False)
class HashPlan:
    """Learned hash functions for some tables of a model.

    Tables absent from the plan stay uncompressed. Compare plans with ``==`` (tables,
    mappings, heights, combine modes; not metadata).

    Args:
        tables: the tables' hashes.
        metadata: free-form JSON-serializable information (method, fraction, source, ...).
            ``created`` and ``format_version`` are filled in when missing.

    Example::

        >>> import torch
        >>> from torchrec_lhf import HashPlan
        >>> plan = HashPlan.from_mappings({"t0": torch.tensor([0, 0, 1, 2, 1], dtype=torch.int32)})
        >>> plan["t0"].num_embeddings, plan["t0"].heights
        (5, (3,))
    """

    tables: list[TableHash]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tables = list(self.tables)
        names = [t.name for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"hash plan has duplicate table names: {dupes}")
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("format_version", FORMAT_VERSION)
        self.metadata.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._by_name = {t.name: t for t in self.tables}

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_mappings(
        cls,
        mappings: Mapping[str, torch.Tensor],
        *,
        heights: Mapping[str, int] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> HashPlan:
        """One hash function per table (``H = 1``).

        Args:
            mappings: table name -> integer tensor of shape ``(N,)``, values ``>= 0``.
            heights: table name -> ``M``; defaults to ``max + 1`` of the mapping.
            metadata: see the class.
        """
        return cls.from_multi_mappings(
            {name: [m] for name, m in mappings.items()},
            heights={k: [v] for k, v in (heights or {}).items()},
            metadata=metadata,
        )

    @classmethod
    def from_multi_mappings(
        cls,
        mappings: Mapping[str, Sequence[torch.Tensor]],
        *,
        combine: str | Mapping[str, str] = "sum",
        heights: Mapping[str, Sequence[int]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> HashPlan:
        """``H >= 1`` hash functions per table.

        Args:
            mappings: table name -> list of ``H`` integer tensors, each shape ``(N,)``.
            combine: one of ``COMBINE_MODES``, for all tables or per table name.
            heights: table name -> list of ``H`` heights; default ``max + 1`` of each mapping.
            metadata: see the class.
        """
        heights = heights or {}
        tables = []
        for name, ms in mappings.items():
            ms = [as_int32_mapping(m, name) for m in ms]
            if not ms:
                raise ValueError(f"table {name!r}: needs at least one mapping, got none")
            hs = list(heights.get(name) or [int(m.max()) + 1 if m.numel() else 1 for m in ms])
            mode = combine if isinstance(combine, str) else combine.get(name, "sum")
            tables.append(
                TableHash(name, int(ms[0].numel()), tuple(ms), tuple(int(h) for h in hs), mode)
            )
        return cls(tables, metadata=metadata or {})

    # --------------------------------------------------------------- container
    def __getitem__(self, name: str) -> TableHash:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"table {name!r} is not in the hash plan (tables: {self.table_names})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TableHash]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashPlan):
            return NotImplemented
        return sorted(self.table_names) == sorted(other.table_names) and all(
            t.equals(other[t.name]) for t in self.tables
        )

    __hash__ = None  # type: ignore[assignment]

    def fingerprint(self) -> str:
        """A sha256 of what ``==`` compares: equal plans have equal fingerprints."""
        h = hashlib.sha256()
        for t in sorted(self.tables, key=lambda t: t.name):
            h.update(f"{t.name}|{t.num_embeddings}|{t.heights}|{t.combine}|".encode())
            if t.num_columns != 1:  # NOTE: only then, so that other plans keep their fingerprints
                h.update(f"columns={t.num_columns}|".encode())
            for m in t.mappings:
                h.update(mapping_digest(m, t.num_embeddings))
        return h.hexdigest()

    # --------------------------------------------------------------- reporting
    def remap_bytes(self) -> int:
        """Bytes of all hash functions in one module (dense width set by the largest dense
        height, as the module's one mapping buffer)."""
        max_height = max_dense_height(self.tables)
        return sum(t.remap_bytes(max_height) for t in self.tables)

    def summary(self, embedding_dim: int | Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """Per table: ``N -> M``, hash count, combine, encoding and bytes (fp32 tables, remap).

        Args:
            embedding_dim: the logical dim (one for all tables, or per table name) to
                compute table bytes; without it the byte columns are ``None``.

        Returns:
            One dict per table with keys ``table, num_embeddings, rows, num_hashes,
            combine, encoding, ratio, table_bytes, full_table_bytes, remap_bytes``;
            ``encoding`` is ``dense``, ``compact``, ``ranked`` (compact, its heads' rows
            their ranks: :meth:`CompactMapping.ranked`) or ``mixed`` (several, over its
            hashes).

        Raises:
            ValueError: a dim that is not an int >= 1, or a mapping without a dim for every
                plan table (names it has beyond the plan's are ignored: a model's tables).
        """
        if embedding_dim is not None:
            _check_summary_dims(embedding_dim)
        if isinstance(embedding_dim, Mapping):
            missing = [t.name for t in self.tables if t.name not in embedding_dim]
            if missing:
                raise ValueError(
                    f"embedding_dim has no dim for plan tables {missing[:20]}; expected one for "
                    f"every table of the plan, got names {sorted(embedding_dim)[:20]}"
                )
        rows = []
        max_height = max_dense_height(self.tables)
        for t in self.tables:
            dim = embedding_dim.get(t.name) if isinstance(embedding_dim, Mapping) else embedding_dim
            dims = t.internal_dims(dim) if dim else None
            rows.append(
                {
                    "table": t.name,
                    "num_embeddings": t.num_embeddings,
                    "rows": t.num_rows,
                    "num_hashes": t.num_hashes,
                    "combine": t.combine,
                    "encoding": _encoding_name(t),
                    "ratio": t.num_rows / t.num_embeddings,
                    "table_bytes": 4 * sum(m * d for m, d in zip(t.heights, dims))
                    if dims
                    else None,
                    "full_table_bytes": 4 * t.num_embeddings * dim if dim else None,
                    "remap_bytes": t.remap_bytes(max_height),
                }
            )
        return rows

    def format_summary(self, embedding_dim: int | Mapping[str, int] | None = None) -> str:
        """:meth:`summary` as an aligned text table."""
        lines = [
            f"{'table':<20} {'N':>12} {'rows':>12} {'H':>2} {'combine':>10} {'encoding':>8} "
            f"{'remap MB':>9}"
        ]
        for r in self.summary(embedding_dim):
            lines.append(
                f"{r['table']:<20} {r['num_embeddings']:>12,} {r['rows']:>12,} {r['num_hashes']:>2} "
                f"{r['combine']:>10} {r['encoding']:>8} {r['remap_bytes'] / 2**20:>9.2f}"
            )
        return "\n".join(lines)

    # --------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write the plan to one safetensors file (JSON manifest in its header), atomically
        (see :mod:`~torchrec_lhf.plan_io`)."""
        from torchrec_lhf.plan_io import save_plan

        save_plan(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HashPlan:
        """Load a plan written by :meth:`save` (see :func:`~torchrec_lhf.plan_io.load_plan`).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is truncated, altered, of another kind or of a newer format,
                or holds an invalid plan (naming the table, hash and first bad entry).
        """
        from torchrec_lhf.plan_io import load_plan

        return load_plan(path, cls)


def _check_summary_dims(embedding_dim: int | Mapping[str, int]) -> None:
    """Raise ValueError unless ``embedding_dim`` (or each of its values) is an int >= 1."""
    if not isinstance(embedding_dim, Mapping):
        check_int("embedding_dim", embedding_dim, low=1)
        return
    for name, d in embedding_dim.items():
        check_int(f"embedding_dim[{name!r}]", d, low=1)


def _encoding_name(t: TableHash) -> str:
    """``dense``, ``compact`` or ``ranked`` for all of a table's hashes, else ``mixed``."""
    names = {
        "ranked" if isinstance(m, CompactMapping) and m.ranked(t.num_embeddings) else encoding(m)
        for m in t.mappings
    }
    return names.pop() if len(names) == 1 else "mixed"
