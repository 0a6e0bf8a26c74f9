"""The compact (head/tail) encoding of a hash function, and what a plan does with either.

Shapes: ``N`` logical table height (raw ids ``0..N-1``), ``M`` (``M_h``) internal height,
``K`` head ids, ``V`` ids looked up.

A hash function of a table is stored one of two ways (its *encoding*):

* ``dense``: an int32 tensor of shape ``(N,)``, the row of every raw id;
* ``compact``: a :class:`CompactMapping`, the rows of the ``K`` head ids (the ids that earn
  a learned row, sorted) and, for every other id, a seeded hash
  (:func:`torchrec_lhf.hashing.tail_hash`) into a tail region of the rows. It stores
  nothing per tail id, so a table of 10^8 mostly rare ids costs only its head.

A compact head whose rows are its ids' ranks (``head_rows == arange(K)``: a head of no
more ids than its rows, a row each in id order, as every filled head is) stores no rows
and not even whole ids (:func:`ranked_bytes`): the ids are cut into blocks of
``RANK_BLOCK`` consecutive ids, each id kept as its 16-bit offset in its block, beside the
position of each block's first head id. That is 2 bytes a head id (plus 4 a block) where
ids and rows take 6 to 12, so the rows it frees buy more of the table under a byte budget;
the module looks the ids up by a bisection in their block
(:mod:`~torchrec_lhf.modules.head_rank`).

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
import functools
from collections.abc import Iterable
from typing import Any

import torch

from torchrec_lhf.hashing import tail_hash

DENSE, COMPACT = "dense", "compact"
# compact and dense mappings of tables up to this height compare (and fingerprint) by
# their materialized dense form; above it, a compact mapping never equals a dense one
DENSE_COMPARE_MAX = 10_000_000
_MAX_SEED = 2**62
RANK_BLOCK_BITS = 16
RANK_BLOCK = 2**RANK_BLOCK_BITS
"""Ids per block of a ranked head (:func:`ranked_bytes`): its offsets fit 16 bits."""


def rank_blocks(num_embeddings: int) -> int:
    """Blocks of :data:`RANK_BLOCK` ids that cover ids ``[0, N)``."""
    return -(-num_embeddings // RANK_BLOCK)


def ranked_bytes(num_head: int, num_embeddings: int) -> int:
    """Stored bytes of a ranked head of ``K`` ids in a table of ``N``: a 16-bit offset per
    id and an int32 start per block, plus its end.

    >>> ranked_bytes(1000, 2**20)  # 1,000 x 2 + (16 + 1) x 4
    2068
    """
    return 2 * num_head + 4 * (rank_blocks(num_embeddings) + 1)


def ranks_pay(num_head: int, num_embeddings: int) -> bool:
    """Whether a head whose rows are its ranks is held ranked: it has ids and its ranked
    form takes at most 4 bytes an id (ids and rows take at least 6), so that the rule does
    not depend on the rows' width (the module holds one width for all its heads)."""
    return num_head > 0 and ranked_bytes(num_head, num_embeddings) <= 4 * num_head


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
        tail_seed: the tail hash's seed, in ``[0, 2**62)``, or a divisor's ``-d`` in
            ``[-2**62, -1]`` for ``(id // d) mod tail_rows``
            (:func:`~torchrec_lhf.hashing.quotient_seed`):
            :data:`~torchrec_lhf.hashing.MODULO_SEED` (-1) is ``id mod tail_rows``, the
            hashing trick, and ``-m`` QR's quotient (an empty head and such a tail store
            nothing per id).
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
            ("tail_seed", self.tail_seed, -_MAX_SEED, _MAX_SEED),
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

    @functools.cached_property
    def rows_are_ranks(self) -> bool:
        """Whether ``head_rows == arange(K)`` (every filled head's rows: a row each, in id
        order); then the rows need not be stored (:func:`ranked_bytes`)."""
        k = self.num_head
        return k > 0 and bool(torch.equal(self.head_rows.long(), torch.arange(k)))

    def ranked(self, num_embeddings: int) -> bool:
        """Whether it is held ranked in a table of ``N`` ids: its rows are its ranks and
        that form pays (:func:`ranks_pay`)."""
        return self.rows_are_ranks and ranks_pay(self.num_head, num_embeddings)

    def nbytes(self, num_embeddings: int) -> int:
        """Stored bytes in a table of ``N`` ids: :func:`ranked_bytes` where it is held
        ranked, else the head ids as int32 when all are below ``2**31`` (any table of
        ``N <= 2**31``), or int64, plus the head rows at their width."""
        if self.ranked(num_embeddings):
            return ranked_bytes(self.num_head, num_embeddings)
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
    return m.nbytes(num_embeddings) if isinstance(m, CompactMapping) else width * num_embeddings


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
def encode(
    table: str, h: int, m: AnyMapping, num_embeddings: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and manifest entry of hash ``h`` of ``table`` (format version 3).

    Dense: tensor ``{table}/{h}`` (as in version 1). Compact: ``{table}/{h}/head_ids`` and
    ``{table}/{h}/head_rows`` (as in version 2), the tail parameters in the manifest entry;
    a head held ranked (:meth:`CompactMapping.ranked`) as ``{table}/{h}/head_offsets``
    (int16: each id's offset in its block of :data:`RANK_BLOCK`, its low 16 bits) and
    ``{table}/{h}/head_blocks`` (int32: the position of each block's first id, then ``K``),
    with ``"rows": "rank"`` in the entry.
    """
    if isinstance(m, CompactMapping):
        if m.ranked(num_embeddings):
            blocks, offsets = rank_index(m.head_ids, num_embeddings)
            tensors = {f"{table}/{h}/head_offsets": offsets, f"{table}/{h}/head_blocks": blocks}
            return tensors, {"encoding": COMPACT, "rows": "rank", **m.tail_params()}
        tensors = {f"{table}/{h}/head_ids": m.head_ids, f"{table}/{h}/head_rows": m.head_rows}
        return tensors, {"encoding": COMPACT, **m.tail_params()}
    return {f"{table}/{h}": m}, {"encoding": DENSE}


def rank_index(ids_K: torch.Tensor, num_embeddings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranked form of sorted head ids: ``(blocks, offsets)``, int32 of shape
    ``(rank_blocks(N) + 1,)`` (each block's first position, then ``K``) and int16 of shape
    ``(K,)`` (each id's low 16 bits, as a signed int16 of the same bits)."""
    ids_K = ids_K.to(torch.int64)
    starts = torch.arange(rank_blocks(num_embeddings) + 1, dtype=torch.int64) * RANK_BLOCK
    blocks = torch.searchsorted(ids_K, starts).to(torch.int32)
    offsets = (ids_K & (RANK_BLOCK - 1)).to(torch.int32)
    return blocks, torch.where(offsets >= 2**15, offsets - 2**16, offsets).to(torch.int16)


def ids_of_rank_index(blocks: torch.Tensor, offsets: torch.Tensor, where: str) -> torch.Tensor:
    """Inverse of :func:`rank_index`: the sorted head ids, int64 ``(K,)``.

    Raises:
        ValueError: malformed blocks (not int32 from 0 up to ``K``, non-decreasing) or
            offsets (not int16), naming ``where`` and the first bad entry.
    """
    if blocks.dtype != torch.int32 or blocks.dim() != 1 or blocks.numel() < 2:
        raise ValueError(
            f"{where}: head_blocks must be int32 of >= 2 entries, got {_describe(blocks)}"
        )
    if offsets.dtype != torch.int16 or offsets.dim() != 1:
        raise ValueError(f"{where}: head_offsets must be 1-D int16, got {_describe(offsets)}")
    k = offsets.numel()
    b = blocks.long()
    if int(b[0]) != 0 or int(b[-1]) != k:
        raise ValueError(
            f"{where}: head_blocks must run from 0 to the {k} head ids, got "
            f"{int(b[0])} to {int(b[-1])}"
        )
    step = (b[1:] < b[:-1]).nonzero()
    if step.numel():
        i = int(step[0, 0]) + 1
        raise ValueError(
            f"{where}: head_blocks[{i}]={int(b[i])} < head_blocks[{i - 1}]={int(b[i - 1])}"
        )
    return ids_of_blocks(b, offsets.long() & (RANK_BLOCK - 1))


def ids_of_blocks(blocks: torch.Tensor, low_K: torch.Tensor) -> torch.Tensor:
    """Ids from each block's first position (int64, ``(B + 1,)``, from 0 up to ``K``) and
    their offsets in their blocks (int64 in ``[0, RANK_BLOCK)``, ``(K,)``); unchecked."""
    block_K = torch.repeat_interleave(
        torch.arange(blocks.numel() - 1), blocks.diff(), output_size=low_K.numel()
    )
    return block_K * RANK_BLOCK + low_K


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
    rows = spec.get("rows", "stored")
    if rows == "rank":
        ids_K = ids_of_rank_index(
            tensors[f"{table}/{h}/head_blocks"],
            tensors[f"{table}/{h}/head_offsets"],
            f"table {table!r} hash {h}",
        )
        rows_K = torch.arange(ids_K.numel()).to(row_dtype(ids_K.numel()))
    elif rows == "stored":
        ids_K, rows_K = tensors[f"{table}/{h}/head_ids"], tensors[f"{table}/{h}/head_rows"]
    else:
        raise ValueError(f"table {table!r} hash {h}: unknown head rows {rows!r}")
    return CompactMapping(
        ids_K,
        rows_K,
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
    return compact if compact.nbytes(num_embeddings) < dense_bytes else dense_N


def as_int32_mapping(m: torch.Tensor, name: str) -> torch.Tensor:
    """A dense mapping as a contiguous int32 CPU tensor, values checked in ``[0, 2**31)``."""
    if not isinstance(m, torch.Tensor):
        try:
            m = torch.as_tensor(m)
        except (TypeError, RuntimeError, ValueError) as e:  # (None, a string, ragged lists)
            raise ValueError(
                f"table {name!r}: mapping must be a 1-D integer tensor (or array or list), got "
                f"{type(m).__name__} ({e})"
            ) from None
    if m.is_floating_point() or m.is_complex() or m.dtype == torch.bool:
        raise ValueError(f"table {name!r}: mapping must be an integer tensor, got {m.dtype}")
    if m.numel() and (int(m.min()) < 0 or int(m.max()) >= 2**31):
        raise ValueError(
            f"table {name!r}: mapping values must be in [0, 2**31), found [{int(m.min())}, {int(m.max())}]"
        )
    return m.detach().to("cpu", torch.int32).contiguous()
