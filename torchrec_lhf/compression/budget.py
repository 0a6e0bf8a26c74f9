"""Row budgets: how many compressed rows each table gets for a size ``fraction``.

Shapes: ``T`` tables, ``N_t`` ids of table ``t``, ``B`` the total row budget.

Three rules, named by ``budget``:

* ``"table"`` (the paper's): every table with ``N_t >= min_table_rows`` gets
  ``max(H, round(fraction * N_t))`` rows; smaller tables stay full (outside the fraction).
* ``"total"``: the whole model gets ``B = round(fraction * sum_t N_t)`` rows, small tables
  included, spent where they count. Tables under ``min_table_rows`` ids cost little and
  stay full, smallest first, while together they take at most half of ``B`` and the rest
  can still get ``H`` rows each; the other
  tables share what is left in proportion to ``N_t`` (so the big ones shrink by more than
  ``fraction``: the small ones took their share). Rows are rounded by largest remainder,
  at least ``H`` per table, adding up to ``B`` exactly.
* ``"bytes"``: ``fraction`` is of the full model's fp32 table bytes, ``sum_t N_t * D * 4``,
  and what the compressed model really stores counts (:class:`ModelBytes`): its tables,
  its stored index (a learned plan's remap, ``mch``'s sorted ids; nothing for a hash
  computed from the id) and extra parameters. :func:`fit_to_bytes` finds the largest row
  fraction of the ``"table"`` rule whose model fits (a bisection over ``bytes_at(f)``);
  :func:`rows_for_bytes` does it when the index bytes are known from the heights alone
  (a learned plan: from its head and encoding, before any clustering). So a smaller
  stored index buys rows. Tables under ``min_table_rows`` ids stay full and count.

Example::

    >>> sizes = {"user": 900, "item": 1600, "gender": 2, "age": 7}
    >>> allocate_rows(sizes, 0.1, budget="table", min_table_rows=1)
    {'user': 90, 'item': 160, 'gender': 1, 'age': 1}
    >>> allocate_rows(sizes, 0.1, budget="total", min_table_rows=10)
    {'user': 87, 'item': 155, 'gender': 2, 'age': 7}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from torchrec_lhf.cli import FlagError

BUDGETS = ("table", "total", "bytes")
"""The rules: ``"table"`` and ``"total"`` of :func:`allocate_rows` (rows), ``"bytes"`` of
:func:`fit_to_bytes` (bytes stored)."""

FP32_BYTES = 4
"""Bytes of a table element (fp32)."""


class BudgetTooSmall(FlagError):
    """A byte budget below what a method's model stores at its smallest.

    A ValueError: the sweep records such a method as not fitting, instead of failing. A
    :class:`~torchrec_lhf.cli.FlagError`: an entry point whose ``--fraction`` or ``--bytes``
    is too small for its model ends with the message and exit status 2, as on any flag value
    it refuses, not with a traceback."""


MIN_TABLE_ROWS = 100
"""Tables with fewer ids stay full (``"total"``: while they are cheap). The one default of
every entry point's ``min_table_rows`` (the DLRM app, the hash build, the pipeline, the
quality sweep). The library's functions take ``min_table_rows=0`` (no minimum) unless told:
they compress what they are given. The paper skipped tables under 100,000 ids on Criteo."""


def allocate_rows(
    sizes: Mapping[str, int],
    fraction: float,
    *,
    budget: str = "table",
    min_table_rows: int = 0,
    num_hashes: int = 1,
) -> dict[str, int]:
    """Rows per table under ``budget`` (see the module docstring).

    Args:
        sizes: table name -> ``N_t`` (ids), in model order.
        fraction: in ``(0, 1]``; of each table's ids (``"table"``) or of all ids (``"total"``).
        budget: ``"table"`` or ``"total"`` (``"bytes"``: see :func:`fit_to_bytes`).
        min_table_rows: smaller tables stay full (``"total"``: while the budget allows).
        num_hashes: ``H``: a compressed table gets at least ``H`` rows (one per internal table).

    Returns:
        table name -> rows, in ``sizes`` order. ``"table"`` leaves out tables under
        ``min_table_rows``; ``"total"`` names every table (``rows == N_t``: stays full).

    Raises:
        ValueError: an unknown ``budget``, ``fraction`` outside ``(0, 1]``, a size or
            ``min_table_rows`` below 0, a total budget too small for ``H`` rows per table,
            or ``budget="bytes"``.
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if budget == "bytes":
        raise ValueError(
            "allocate_rows: budget 'bytes' needs the model's bytes, not only its heights; "
            "use fit_to_bytes or rows_for_bytes"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    for label, v, low in (("min_table_rows", min_table_rows, 0), ("num_hashes", num_hashes, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{label} must be an int >= {low}, got {v!r}")
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"table sizes must be ints >= 1, got {bad}")
    if budget == "table":
        return {
            name: max(num_hashes, round(fraction * n))
            for name, n in sizes.items()
            if n >= min_table_rows
        }
    if not sizes:
        return {}
    names = list(sizes)
    n_T = torch.tensor([sizes[k] for k in names], dtype=torch.float64)
    total = min(int(n_T.sum()), round(fraction * float(n_T.sum())))
    if total < len(names) * num_hashes and total < int(n_T.sum()):
        raise BudgetTooSmall(
            f"a total budget of {total} rows ({fraction} of {int(n_T.sum())} ids) cannot give "
            f"{len(names)} tables {num_hashes} row(s) each"
            + _smallest_fraction(len(names) * num_hashes, int(n_T.sum()), of="the ids")
        )
    # Small tables stay full, smallest first, while they take at most half of the budget
    # and every other table can keep H rows.
    order = torch.argsort(n_T, stable=True)
    small_sorted = n_T[order] < min_table_rows
    kept = torch.cumsum(n_T[order], 0)
    others = (len(names) - torch.arange(1, len(names) + 1, dtype=torch.float64)) * num_hashes
    fits_sorted = small_sorted & (kept + others <= total) & (kept <= total / 2)
    fits_sorted &= torch.cumprod(fits_sorted.to(torch.int64), 0).bool()  # a prefix
    full_T = torch.zeros_like(fits_sorted)
    full_T[order] = fits_sorted
    left = total - float(n_T[full_T].sum())
    share_T = torch.where(full_T, n_T, left * n_T / max(float(n_T[~full_T].sum()), 1.0))
    rows_T = _round_to_total(share_T, n_T, full_T, total, num_hashes)
    return {name: int(r) for name, r in zip(names, rows_T.tolist())}


def _round_to_total(
    share_T: torch.Tensor, n_T: torch.Tensor, full_T: torch.Tensor, total: int, floor: int
) -> torch.Tensor:
    """Round the shares to ints in ``[min(floor, N_t), N_t]`` adding up to ``total``.

    Full tables keep ``N_t``; the others start at ``floor(share)`` (clamped) and the rows
    still missing go one each to the largest remainders with room left, or are taken
    one each from the largest tables when the clamp overshot.
    """
    low_T = torch.clamp(n_T, max=floor)
    rows_T = torch.minimum(torch.clamp(torch.floor(share_T + 1e-9), min=low_T), n_T)
    rows_T = torch.where(full_T, n_T, rows_T)
    missing = int(total - rows_T.sum())
    while missing != 0:  # at most two rounds: one per table each
        if missing > 0:
            room_T = ~full_T & (rows_T < n_T)
            key_T = torch.where(room_T, share_T - rows_T, torch.tensor(float("-inf")))
            pick = torch.argsort(key_T, descending=True, stable=True)[
                : min(missing, int(room_T.sum()))
            ]
        else:
            room_T = ~full_T & (rows_T > low_T)
            key_T = torch.where(room_T, rows_T, torch.tensor(float("-inf")))
            pick = torch.argsort(key_T, descending=True, stable=True)[
                : min(-missing, int(room_T.sum()))
            ]
        if pick.numel() == 0:
            break
        rows_T[pick] += 1 if missing > 0 else -1
        missing = int(total - rows_T.sum())
    return rows_T.to(torch.int64)


def split_rows(rows: int, num_hashes: int) -> list[int]:
    """Split a table's total compressed rows as evenly as possible over its ``H`` internal tables.

    Example::

        >>> split_rows(10, 3)
        [4, 3, 3]
    """
    if isinstance(num_hashes, bool) or not isinstance(num_hashes, int) or num_hashes < 1:
        raise ValueError(f"num_hashes must be an int >= 1, got {num_hashes!r}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < num_hashes:
        raise ValueError(
            f"rows must be an int >= num_hashes={num_hashes} (one row per internal table), got {rows!r}"
        )
    base, extra = divmod(rows, num_hashes)
    return [base + (1 if h < extra else 0) for h in range(num_hashes)]


# ------------------------------------------------------------------------- bytes
@dataclass(frozen=True)
class ModelBytes:
    """What a compressed model stores, per table name: fp32 ``tables`` (internal tables,
    as saved), its stored ``index`` (id -> row lookups a deployment keeps) and ``extras``
    (other parameters of the embedding part, e.g. uncollapsed MLET projections)."""

    tables: dict[str, int]
    index: dict[str, int]
    extras: dict[str, int]

    def of_table(self, name: str) -> int:
        """All bytes of one table."""
        return self.tables.get(name, 0) + self.index.get(name, 0) + self.extras.get(name, 0)

    @property
    def total(self) -> int:
        """All bytes of the model's embedding part."""
        return sum(self.tables.values()) + sum(self.index.values()) + sum(self.extras.values())

    def to_dict(self) -> dict[str, int]:
        """Totals: ``tables``, ``index``, ``extras``, ``total`` (JSON)."""
        return {
            "tables": sum(self.tables.values()),
            "index": sum(self.index.values()),
            "extras": sum(self.extras.values()),
            "total": self.total,
        }


def _smallest_fraction(needed: int, full: int | None, of: str = "the full table bytes") -> str:
    """The error's hint: the smallest fraction of ``full`` (bytes, or ids: ``of`` names
    them) holding ``needed``, rounded up to three significant digits (so that it fits)."""
    if not full:
        return ""
    exact = needed / full
    if exact > 1:
        return "; it stores more than the full tables even there: no fraction fits"
    scale = 10.0 ** (2 - math.floor(math.log10(exact)))
    least = min(1.0, math.ceil(exact * scale) / scale)
    return f"; expected a fraction of {of} of at least {least:g}"


def full_table_bytes(sizes: Mapping[str, int], embedding_dim: int) -> int:
    """``sum_t N_t * D * 4``: the uncompressed fp32 tables, what ``"bytes"`` is a fraction of."""
    return FP32_BYTES * embedding_dim * sum(int(n) for n in sizes.values())


def byte_budget(sizes: Mapping[str, int], fraction: float, embedding_dim: int) -> int:
    """The bytes a model may store at ``fraction`` of :func:`full_table_bytes`.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]`` or ``embedding_dim`` below 1.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
    return math.floor(fraction * full_table_bytes(sizes, embedding_dim) + 1e-6)


def fit_to_bytes(
    bytes_at: Callable[[float], ModelBytes],
    budget_bytes: int,
    *,
    lowest: float,
    what: str,
    full_bytes: int | None = None,
) -> tuple[float, ModelBytes]:
    """The largest row fraction ``f`` in ``[lowest, 1]`` whose model fits ``budget_bytes``.

    A bisection over ``f`` (``bytes_at`` need not be exactly monotone, e.g. ``qr``: the
    result always fits, and is the best of the fractions tried).

    Args:
        bytes_at: row fraction -> the model's bytes (:class:`ModelBytes`).
        budget_bytes: the bytes the model may store.
        lowest: the smallest row fraction (every compressed table at its fewest rows).
        what: the method, for error messages.
        full_bytes: the full model's fp32 table bytes (:func:`full_table_bytes`), if the
            budget is a fraction of them: the error then gives the smallest fraction that
            fits.

    Returns:
        ``(f, bytes_at(f))``.

    Raises:
        BudgetTooSmall: the model does not fit even at ``lowest``; names the table that
            stores the most there and its bytes.
    """
    low = bytes_at(lowest)
    if low.total > budget_bytes:
        name = max(low.tables.keys() | low.index.keys(), key=low.of_table)
        raise BudgetTooSmall(
            f"{what}: a byte budget of {budget_bytes:,} bytes is below the {low.total:,} bytes "
            f"the model stores at its fewest rows; table {name!r} alone stores "
            f"{low.of_table(name):,} bytes there ({low.tables.get(name, 0):,} tables + "
            f"{low.index.get(name, 0):,} index + {low.extras.get(name, 0):,} extras)"
            + _smallest_fraction(low.total, full_bytes)
        )
    high = bytes_at(1.0)
    if high.total <= budget_bytes:
        return 1.0, high
    lo, hi, best = lowest, 1.0, low
    for _ in range(64):  # ends when a step cannot change any table's rows
        if hi - lo <= lowest:
            break
        mid = (lo + hi) / 2
        at = bytes_at(mid)
        if at.total <= budget_bytes:
            lo, best = mid, at
        else:
            hi = mid
    return lo, best


def width_for_bytes(fraction: float, embedding_dim: int) -> int:
    """The widest dim ``d`` with ``d / D <= fraction``: MLET's tables under ``"bytes"``
    (it narrows every table, and its collapsed model stores ``N * d * 4``).

    Raises:
        BudgetTooSmall: even ``d = 1`` stores more than ``fraction`` of the full table bytes.
    """
    d = math.floor(fraction * embedding_dim + 1e-9)
    if d < 1:
        raise BudgetTooSmall(
            f"--compression mlet --budget bytes: its narrowest tables (dim 1 of "
            f"{embedding_dim}) store 1/{embedding_dim} = {1 / embedding_dim:.4f} of the full "
            f"table bytes, above --fraction {fraction}"
        )
    return d


def mlet_width(fraction: float, embedding_dim: int) -> int:
    """The width of a learned hash trained as MLET at ``fraction`` of the bytes: the sqrt
    split's, ``floor(sqrt(fraction) * D)`` (at least 1). The plan's rows then take what
    the budget leaves at that width, its remap counted.

    Example::

        >>> mlet_width(0.1, 16), mlet_width(0.2, 16), mlet_width(0.01, 16)
        (5, 7, 1)
    """
    return max(1, int(fraction**0.5 * embedding_dim))


def half_width(embedding_dim: int) -> int:
    """The width of a learned hash trained as MLET at half the model's width (at least 1),
    its rows then fitted to the bytes left (``apps.pipeline --half_select``'s width, the
    default's second plan under a byte budget).

    Example::

        >>> half_width(16), half_width(1)
        (8, 1)
    """
    return max(1, embedding_dim // 2)


def fraction_at_width(fraction: float, embedding_dim: int, width: int) -> float:
    """The byte budget's ``fraction`` as a share of the full rows at a narrower ``width``:
    ``fraction * embedding_dim / width``, rounded to 6 digits (the plan files and the
    sweeps' fingerprints record it). Above 1, the narrower plan would need more rows than
    the full tables have.

    Example::

        >>> fraction_at_width(0.1, 16, 8), fraction_at_width(0.2, 16, 7)
        (0.2, 0.457143)
    """
    return round(fraction * embedding_dim / width, 6)


def lowest_fraction(sizes: Mapping[str, int]) -> float:
    """A row fraction small enough that every table gets its fewest rows
    (``round(f * N_t) == 0``), and fine enough as the bisection's step."""
    return 0.25 / max([int(n) for n in sizes.values()] + [1])


def table_bytes(rows: int, num_hashes: int, combine: str, embedding_dim: int) -> int:
    """fp32 bytes of ``rows`` split over ``H`` internal tables (:func:`split_rows`), each of
    dim ``D``, or of ``D`` split evenly over them for ``concat``."""
    heights = split_rows(rows, num_hashes)
    if combine != "concat":
        return FP32_BYTES * embedding_dim * rows
    base, extra = divmod(embedding_dim, num_hashes)
    dims = [base + (1 if h < extra else 0) for h in range(num_hashes)]
    return FP32_BYTES * sum(m * d for m, d in zip(heights, dims))


def rows_for_bytes(
    sizes: Mapping[str, int],
    fraction: float,
    *,
    embedding_dim: int,
    min_table_rows: int = 0,
    num_hashes: int = 1,
    combine: str = "sum",
    index_bytes: Callable[[dict[str, list[int]]], Mapping[str, int]] | None = None,
    rows_at: Callable[[float], dict[str, int]] | None = None,
    what: str = "rows_for_bytes",
) -> tuple[dict[str, int], ModelBytes]:
    """Rows per table under ``budget="bytes"`` when the stored index follows from the heights.

    The ``"table"`` rule (``max(H, round(f * N_t))`` rows for every table of at least
    ``min_table_rows`` ids) at the largest ``f`` whose tables plus index fit in
    ``fraction`` of :func:`full_table_bytes`; smaller tables stay full and count.

    Args:
        sizes: table name -> ``N_t``.
        fraction: of the full fp32 table bytes, in ``(0, 1]``.
        embedding_dim: the model's ``D``.
        min_table_rows: smaller tables stay full.
        num_hashes: ``H`` internal tables per compressed table.
        combine: ``"concat"`` splits ``D`` over them, else each has dim ``D``.
        index_bytes: compressed table name -> its ``H`` heights  ->  stored index bytes
            per table (default: nothing stored).
        rows_at: another rule, ``f`` in ``[0, 1]`` -> total rows of every compressed table
            (at least ``H`` each, non-decreasing in ``f``), fitted instead of the
            ``"table"`` rule (e.g. rows by access counts).
        what: the model, for the error where the budget is too small.

    Returns:
        ``(rows, bytes)``: total rows of each compressed table (in ``sizes`` order) and the
        model's :class:`ModelBytes`.

    Raises:
        ValueError: bad arguments, or a budget below the bytes at the fewest rows (naming
            the table that stores the most there).

    Example::

        >>> # 20% of 1,010 ids x 16 bytes = 3,232 bytes: b stays full (160), a's index
        >>> # (2 bytes an id) takes 2,000, its rows the 1,072 left: 67 rows of 16 bytes
        >>> rows, at = rows_for_bytes({"a": 1000, "b": 10}, 0.2, embedding_dim=4,
        ...     min_table_rows=100, index_bytes=lambda h: {t: 2 * 1000 for t in h})
        >>> rows, at.to_dict()
        ({'a': 67}, {'tables': 1232, 'index': 2000, 'extras': 0, 'total': 3232})
    """
    budget_bytes = byte_budget(sizes, fraction, embedding_dim)
    full = {t: FP32_BYTES * embedding_dim * int(n) for t, n in sizes.items() if n < min_table_rows}
    compressed = {t: int(n) for t, n in sizes.items() if n >= min_table_rows}

    def by_size(f: float) -> dict[str, int]:
        return {t: max(num_hashes, round(f * n)) for t, n in compressed.items()}

    rule = by_size if rows_at is None else rows_at

    def bytes_at(f: float) -> ModelBytes:
        rows = rule(f)
        tables = {t: table_bytes(r, num_hashes, combine, embedding_dim) for t, r in rows.items()}
        heights = {t: split_rows(r, num_hashes) for t, r in rows.items()}
        index = dict(index_bytes(heights)) if index_bytes is not None else {}
        return ModelBytes({**full, **tables}, index, {})

    f, at = fit_to_bytes(
        bytes_at,
        budget_bytes,
        lowest=lowest_fraction(sizes),
        what=what,
        full_bytes=full_table_bytes(sizes, embedding_dim),
    )
    return rule(f), at
