"""Row budgets: how many compressed rows each table gets for a size ``fraction``.

Shapes: ``T`` tables, ``N_t`` ids of table ``t``, ``B`` the total row budget.

Two rules, named by ``budget``:

* ``"table"`` (the paper's): every table with ``N_t >= min_table_rows`` gets
  ``max(H, round(fraction * N_t))`` rows; smaller tables stay full (outside the fraction).
* ``"total"``: the whole model gets ``B = round(fraction * sum_t N_t)`` rows, small tables
  included, spent where they count. Tables under ``min_table_rows`` ids cost little and
  stay full, smallest first, while together they take at most half of ``B`` and the rest
  can still get ``H`` rows each; the other
  tables share what is left in proportion to ``N_t`` (so the big ones shrink by more than
  ``fraction``: the small ones took their share). Rows are rounded by largest remainder,
  at least ``H`` per table, adding up to ``B`` exactly.

Example::

    >>> sizes = {"user": 900, "item": 1600, "gender": 2, "age": 7}
    >>> allocate_rows(sizes, 0.1, budget="table", min_table_rows=1)
    {'user': 90, 'item': 160, 'gender': 1, 'age': 1}
    >>> allocate_rows(sizes, 0.1, budget="total", min_table_rows=10)
    {'user': 87, 'item': 155, 'gender': 2, 'age': 7}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

BUDGETS = ("table", "total")
"""The rules of :func:`allocate_rows`."""

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
        budget: ``"table"`` or ``"total"``.
        min_table_rows: smaller tables stay full (``"total"``: while the budget allows).
        num_hashes: ``H``: a compressed table gets at least ``H`` rows (one per internal table).

    Returns:
        table name -> rows, in ``sizes`` order. ``"table"`` leaves out tables under
        ``min_table_rows``; ``"total"`` names every table (``rows == N_t``: stays full).

    Raises:
        ValueError: an unknown ``budget``, ``fraction`` outside ``(0, 1]``, a size or
            ``min_table_rows`` below 0, or a total budget too small for ``H`` rows per table.
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
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
        raise ValueError(
            f"a total budget of {total} rows ({fraction} of {int(n_T.sum())} ids) cannot give "
            f"{len(names)} tables {num_hashes} row(s) each"
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
