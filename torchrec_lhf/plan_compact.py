"""The compact (head/tail) encoding of a hash function, and what a plan does with either.

Shapes: ``N`` logical table height (raw ids ``0..N-1``), ``M`` (``M_h``) internal height,
``K`` head ids, ``V`` ids looked up.

A hash function of a table is stored one of two ways (its *encoding*):

* ``dense``: an int32 tensor of shape ``(N,)``, the row of every raw id;
* ``compact``: a :class:`CompactMapping`, the rows of the ``K`` head ids (the ids that earn
  a learned row, sorted) and, for every other id, a seeded hash
  (:func:`torchrec_lhf.hashing.tail_hash`) into a tail region of the rows. It stores
  nothing per tail id, so a table of 10^8 mostly rare ids costs only its head.

:func:`choose_encoding` picks the smaller of the two for one mapping; the rest of this file
is what :mod:`torchrec_lhf.plan` does with either (validation, equality, fingerprint,
bytes, file layout).

Example::

    >>> import torch
    >>> m = CompactMapping(
    ...     torch.tensor([2, 7]), torch.tensor([0, 1], dtype=torch.int16),
    ...     tail_seed=3, tail_offset=2, tail_rows=4,
    ... )
    >>> rows = m.rows(torch.tensor([2, 7, 5]))
    >>> rows[:2].tolist(), 2 <= int(rows[2]) < 6
    ([0, 1], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from torchrec_lhf.hashing import tail_hash

DENSE, COMPACT = "dense", "compact"
# compact and dense mappings of tables up to this height compare (and fingerprint) by
# their materialized dense form; above it, a compact mapping never equals a dense one
DENSE_COMPARE_MAX = 10_000_000
_MAX_SEED = 2**62


def row_dtype(height: int) -> torch.dtype:
    """The fewest bits for rows ``[0, height)``: int16 up to ``2**15`` rows, else int32
    (a compact head's rows; a dense mapping also takes uint8: :func:`dense_width`)."""
    return torch.int16 if height <= 2**15 else torch.int32


def dense_width(max_height: int) -> int:
    """Bytes per id of a module's dense mappings, set by the largest dense height: 1 (uint8)
    up to 256 rows, 2 (int16) up to ``2**15``, else 4 (the buffer's dtype,
    :func:`~torchrec_lhf.modules.remap_layout.mapping_dtype`)."""
    return 1 if max_height <= 2**8 else row_dtype(max_height).itemsize


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CompactMapping:
    """One hash function of a table as a sorted head and a hashed tail.

    Raw id ``i`` maps to ``head_rows[k]`` when ``i == head_ids[k]``, else to
    ``tail_offset + tail_hash(i, tail_seed, tail_rows)``. Its values are checked against
    the table (``N``, ``M_h``) by :class:`~torchrec_lhf.plan.TableHash`.

    Args:
        head_ids: the head's raw ids, sorted, unique, in ``[0, N)``, shape ``(K,)``
            (any integer dtype; stored as int64 on CPU). ``K`` may be 0.
        head_rows: their rows, int16 or int32 of shape ``(K,)``, in ``[0, M_h)``.
        tail_seed: the tail hash's seed, in ``[0, 2**62)``.
        tail_offset: first row of the tail region, ``>= 0``.
        tail_rows: rows of the tail region, ``>= 1``; the region
            ``[tail_offset, tail_offset + tail_rows)`` lies within ``[0, M_h)``.

    Raises:
        ValueError: wrong dtypes or shapes, or tail parameters out of range.
    """

    head_ids: torch.Tensor
    head_rows: torch.Tensor
    _: dataclasses.KW_ONLY
    tail_seed: int
    tail_offset: int
    tail_rows: int

    def __post_init__(self) -> None:
        ids, rows = self.head_ids, self.head_rows
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or not _is_int(ids):
            raise ValueError(f"head_ids must be a 1-D integer tensor, got {_describe(ids)}")
        if not isinstance(rows, torch.Tensor) or rows.dtype not in (torch.int16, torch.int32):
            raise ValueError(f"head_rows must be an int16 or int32 tensor, got {_describe(rows)}")
        if tuple(rows.shape) != tuple(ids.shape):
            raise ValueError(
                f"head_rows has shape {tuple(rows.shape)}, head_ids {tuple(ids.shape)}"
            )
        for name, value, low, high in (
            ("tail_seed", self.tail_seed, 0, _MAX_SEED),
            ("tail_offset", self.tail_offset, 0, 2**31),
            ("tail_rows", self.tail_rows, 1, 2**31),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
                raise ValueError(f"{name} must be an int in [{low}, {high}), got {value!r}")
        object.__setattr__(self, "head_ids", ids.detach().to("cpu", torch.int64).contiguous())
        object.__setattr__(self, "head_rows", rows.detach().cpu().contiguous())

    @property
    def num_head(self) -> int:
        """``K``, the number of head ids."""
        return self.head_ids.numel()

    def rows(self, ids_V: torch.Tensor) -> torch.Tensor:
        """The row of every id (vectorized: one binary search and one tail hash).

        Args:
            ids_V: raw ids, shape ``(V,)``, on any device.

        Returns:
            int64 rows of shape ``(V,)``.
        """
        ids_V = ids_V.to(torch.int64)
        tail_V = self.tail_offset + tail_hash(ids_V, self.tail_seed, self.tail_rows)
        if self.num_head == 0:
            return tail_V
        head_ids = self.head_ids.to(ids_V.device)
        pos_V = torch.searchsorted(head_ids, ids_V).clamp_(max=self.num_head - 1)
        hit_V = head_ids[pos_V] == ids_V
        return torch.where(hit_V, self.head_rows.to(ids_V.device)[pos_V].long(), tail_V)

    def dense(self, num_embeddings: int) -> torch.Tensor:
        """The dense encoding, int32 of shape ``(N,)`` (materializes ``N`` rows: small
        tables and tests)."""
        out_N = self.tail_offset + tail_hash(
            torch.arange(num_embeddings), self.tail_seed, self.tail_rows
        )
        out_N[self.head_ids] = self.head_rows.long()
        return out_N.to(torch.int32)

    def nbytes(self) -> int:
        """Stored bytes: head ids as int32 when all are below ``2**31`` (any table of
        ``N <= 2**31``), else int64, plus the head rows at their width."""
        id_width = 4 if self.num_head == 0 or int(self.head_ids.max()) < 2**31 else 8
        return self.num_head * (id_width + self.head_rows.element_size())

    def problem(self, num_embeddings: int, height: int) -> str | None:
        """The first inconsistency with a table of ``N`` ids and ``M_h`` rows, or None."""
        bad = _head_problem(self.head_ids, num_embeddings)
        if bad is not None:
            return bad
        rows = self.head_rows.long()
        out = ((rows < 0) | (rows >= height)).nonzero()
        if out.numel():
            k = int(out[0, 0])
            return (
                f"head_rows[{k}]={int(rows[k])} (head id {int(self.head_ids[k])}) is outside "
                f"the table's rows [0, {height})"
            )
        if self.tail_offset + self.tail_rows > height:
            return (
                f"tail region [{self.tail_offset}, {self.tail_offset + self.tail_rows}) is "
                f"outside the table's rows [0, {height})"
            )
        return None

    def tail_params(self) -> dict[str, int]:
        return {
            "tail_seed": self.tail_seed,
            "tail_offset": self.tail_offset,
            "tail_rows": self.tail_rows,
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.tail_params().items())
        return f"CompactMapping(K={self.num_head}, rows={self.head_rows.dtype}, {params})"


def _is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} of shape {tuple(x.shape)}"
    return str(type(x))


def _head_problem(ids_K: torch.Tensor, num_embeddings: int) -> str | None:
    """The first head id out of ``[0, N)``, out of order or repeated, or None."""
    out = ((ids_K < 0) | (ids_K >= num_embeddings)).nonzero()
    if out.numel():
        k = int(out[0, 0])
        return f"head_ids[{k}]={int(ids_K[k])} is outside [0, {num_embeddings})"
    step = (ids_K[1:] <= ids_K[:-1]).nonzero()
    if step.numel():
        k = int(step[0, 0]) + 1
        what = "duplicated" if int(ids_K[k]) == int(ids_K[k - 1]) else "not sorted"
        return f"head_ids[{k}]={int(ids_K[k])} after head_ids[{k - 1}]={int(ids_K[k - 1])}: {what}"
    return None


# ------------------------------------------------------------------ either encoding
AnyMapping = torch.Tensor | CompactMapping


def encoding(m: AnyMapping) -> str:
    return COMPACT if isinstance(m, CompactMapping) else DENSE


def check_mapping(table: str, h: int, m: AnyMapping, num_embeddings: int, height: int) -> None:
    """Validate hash function ``h`` of ``table`` against ``N`` and ``M_h``.

    Raises:
        ValueError: naming the table, the hash and the first bad entry.
    """
    where = f"table {table!r} hash {h}"
    if isinstance(m, CompactMapping):
        problem = m.problem(num_embeddings, height)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
        return
    if not isinstance(m, torch.Tensor) or m.dtype != torch.int32 or m.dim() != 1:
        raise ValueError(
            f"{where}: mapping must be a 1-D int32 tensor or a CompactMapping, got {_describe(m)}"
        )
    if m.numel() != num_embeddings:
        raise ValueError(
            f"{where}: mapping has {m.numel()} entries, expected num_embeddings={num_embeddings}"
        )
    lo, hi = int(m.min()), int(m.max())
    if lo < 0 or hi >= height:
        raise ValueError(
            f"{where}: mapping values must be in [0, {height}), found range [{lo}, {hi}]"
        )


def max_dense_height(tables: Iterable[Any]) -> int:
    """The largest height of a dense hash function of ``tables`` (``TableHash`` es; 1 when
    none): it sets the width of every dense one in a module's one mapping buffer."""
    return max(
        (h for t in tables for h, m in zip(t.heights, t.mappings) if encoding(m) == DENSE),
        default=1,
    )


def dense_mapping(m: AnyMapping, num_embeddings: int) -> torch.Tensor:
    """The int32 ``(N,)`` rows of either encoding."""
    return m.dense(num_embeddings) if isinstance(m, CompactMapping) else m


def mapping_bytes(m: AnyMapping, num_embeddings: int, width: int) -> int:
    """Stored bytes: ``width`` per id when dense, :meth:`CompactMapping.nbytes` when not."""
    return m.nbytes() if isinstance(m, CompactMapping) else width * num_embeddings


def mappings_equal(a: AnyMapping, b: AnyMapping, num_embeddings: int) -> bool:
    """Same rows: compact and compact by their fields, compact and dense by the dense
    form up to ``DENSE_COMPARE_MAX`` ids (never equal above it)."""
    ca, cb = isinstance(a, CompactMapping), isinstance(b, CompactMapping)
    if ca and cb:
        return (
            a.tail_params() == b.tail_params()
            and torch.equal(a.head_ids, b.head_ids)
            and torch.equal(a.head_rows.int(), b.head_rows.int())
        )
    if (ca or cb) and num_embeddings > DENSE_COMPARE_MAX:
        return False
    return torch.equal(dense_mapping(a, num_embeddings), dense_mapping(b, num_embeddings))


def mapping_digest(m: AnyMapping, num_embeddings: int) -> bytes:
    """Bytes that :func:`mappings_equal` mappings share (fed to the plan's fingerprint).

    Dense mappings, and compact ones up to ``DENSE_COMPARE_MAX`` ids, give their dense
    int32 bytes (so a plan's fingerprint does not change with its encoding there).
    """
    if isinstance(m, CompactMapping) and num_embeddings > DENSE_COMPARE_MAX:
        params = "|".join(f"{k}={v}" for k, v in m.tail_params().items())
        return (
            f"compact|{params}|".encode()
            + m.head_ids.numpy().tobytes()
            + m.head_rows.to(torch.int32).numpy().tobytes()
        )
    return dense_mapping(m, num_embeddings).contiguous().numpy().tobytes()


# ------------------------------------------------------------------ file layout
def encode(table: str, h: int, m: AnyMapping) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and manifest entry of hash ``h`` of ``table`` (format version 2).

    Dense: tensor ``{table}/{h}`` (as in version 1). Compact: ``{table}/{h}/head_ids`` and
    ``{table}/{h}/head_rows``, the tail parameters in the manifest entry.
    """
    if isinstance(m, CompactMapping):
        tensors = {f"{table}/{h}/head_ids": m.head_ids, f"{table}/{h}/head_rows": m.head_rows}
        return tensors, {"encoding": COMPACT, **m.tail_params()}
    return {f"{table}/{h}": m}, {"encoding": DENSE}


def decode(table: str, h: int, tensors: dict[str, torch.Tensor], spec: dict | None) -> AnyMapping:
    """Inverse of :func:`encode`; ``spec`` None is a version-1 (dense) entry.

    Raises:
        KeyError: a tensor or manifest field is missing.
        ValueError: an unknown encoding or malformed values.
    """
    kind = DENSE if spec is None else spec["encoding"]
    if kind == DENSE:
        return tensors[f"{table}/{h}"]
    if kind != COMPACT:
        raise ValueError(f"table {table!r} hash {h}: unknown encoding {kind!r}")
    return CompactMapping(
        tensors[f"{table}/{h}/head_ids"],
        tensors[f"{table}/{h}/head_rows"],
        tail_seed=spec["tail_seed"],
        tail_offset=spec["tail_offset"],
        tail_rows=spec["tail_rows"],
    )


def choose_encoding(
    mapping_N: torch.Tensor,
    head_ids_K: torch.Tensor,
    tail_seed: int,
    tail_offset: int,
    tail_rows: int,
    height: int,
) -> torch.Tensor | CompactMapping:
    """The smaller encoding of one mapping: dense ``(N,)`` int32 or compact.

    Args:
        mapping_N: the mapping's rows of every id, shape ``(N,)``: the learned rows at the
            head ids, the tail hash's (``tail_offset + tail_hash(id, tail_seed,
            tail_rows)``) everywhere else.
        head_ids_K: the head ids, sorted and unique, shape ``(K,)``.
        tail_seed, tail_offset, tail_rows: the tail hash (see :class:`CompactMapping`).
        height: the internal table's rows ``M_h``.

    Returns:
        The compact mapping when its :meth:`~CompactMapping.nbytes` is below the dense
        mapping's (:func:`dense_width` bytes per id), else the int32 mapping.

    Raises:
        ValueError: bad head ids, rows or tail region, or ``mapping_N`` differs from the
            head/tail mapping at some id (naming the first).
    """
    mapping_N = torch.as_tensor(mapping_N).to("cpu", torch.int64)
    head_ids_K = torch.as_tensor(head_ids_K).to("cpu", torch.int64)
    num_embeddings = mapping_N.numel()
    problem = _head_problem(head_ids_K, num_embeddings)
    if problem is None:
        rows_K = mapping_N[head_ids_K]
        if rows_K.numel() and (int(rows_K.min()) < 0 or int(rows_K.max()) >= height):
            problem = f"head rows must be in [0, {height}), found [{int(rows_K.min())}, {int(rows_K.max())}]"
    if problem is not None:
        raise ValueError(f"choose_encoding: {problem}")
    compact = CompactMapping(
        head_ids_K,
        rows_K.to(row_dtype(height)),
        tail_seed=tail_seed,
        tail_offset=tail_offset,
        tail_rows=tail_rows,
    )
    problem = compact.problem(num_embeddings, height)
    if problem is not None:
        raise ValueError(f"choose_encoding: {problem}")
    dense_N = compact.dense(num_embeddings)
    differ = (dense_N != mapping_N).nonzero()
    if differ.numel():
        i = int(differ[0, 0])
        raise ValueError(
            f"choose_encoding: mapping_N[{i}]={int(mapping_N[i])}, but id {i} is in the tail "
            f"and hashes to row {int(dense_N[i])}"
        )
    dense_bytes = num_embeddings * dense_width(height)
    return compact if compact.nbytes() < dense_bytes else dense_N


def as_int32_mapping(m: torch.Tensor, name: str) -> torch.Tensor:
    """A dense mapping as a contiguous int32 CPU tensor, values checked in ``[0, 2**31)``."""
    if not isinstance(m, torch.Tensor):
        m = torch.as_tensor(m)
    if m.is_floating_point() or m.dtype == torch.bool:
        raise ValueError(f"table {name!r}: mapping must be an integer tensor, got {m.dtype}")
    if m.numel() and (int(m.min()) < 0 or int(m.max()) >= 2**31):
        raise ValueError(
            f"table {name!r}: mapping values must be in [0, 2**31), found [{int(m.min())}, {int(m.max())}]"
        )
    return m.detach().to("cpu", torch.int32).contiguous()
