"""The registry of height-compression methods: register, look up, and call them checked.

A method is ``fn(num_embeddings, *, fraction, counts=None, min_table_rows=0, seed=0,
**options) -> HashPlan`` (see :mod:`~torchrec_lhf.compression.methods`, which defines and
registers the built-in ones and re-exports this module's functions: import them from there,
so that the built-ins are registered). :func:`register_method` wraps each method in the
checks every method shares and completes its plan's metadata. With ``budget="bytes"``
(``fraction`` of the full fp32 table bytes) it fits the method to the bytes its model
stores (:func:`plan_bytes`): the tables, the stored index (by default what the plan
stores, :meth:`~torchrec_lhf.plan.TableHash.remap_bytes`; a method computable from the id
registers ``stored_index=``) and the tables left full.

Example::

    >>> from torchrec_lhf.compression.methods import list_methods
    >>> "qr" in list_methods()
    True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchrec_lhf.compression.budget import (
    BUDGETS,
    FP32_BYTES,
    ModelBytes,
    allocate_rows,
    byte_budget,
    fit_to_bytes,
    full_table_bytes,
    lowest_fraction,
)
from torchrec_lhf.plan import HashPlan, TableHash
from torchrec_lhf.plan_compact import max_dense_height

MethodFn = Callable[..., HashPlan]
IndexFn = Callable[[TableHash], int]
_COMMON = ("num_embeddings", "fraction", "counts", "min_table_rows", "seed")
_METHODS: dict[str, MethodFn] = {}
_STORED_INDEX: dict[str, IndexFn] = {}


def register_method(name: str, fn: MethodFn, *, stored_index: IndexFn | None = None) -> MethodFn:
    """Register a plan-producing method under ``name``.

    The stored function checks the common arguments (heights, fraction, counts,
    ``min_table_rows``, seed), rejects options ``fn`` does not declare, and completes the
    plan's metadata (``method``, ``fraction``, ``seed``, ``min_table_rows``, ``options``,
    ``rows_fraction`` per table).

    Args:
        name: a new, non-empty method name.
        fn: ``fn(num_embeddings, *, fraction, ...)``; of ``counts``, ``min_table_rows`` and
            ``seed`` it gets those it declares; its other keyword parameters are its options.
            If it declares ``budget`` and ``embedding_dim`` it fits ``budget="bytes"``
            itself (a learned plan: without clustering more than once); else the wrapper
            bisects over its row fraction.
        stored_index: a table's hash -> the bytes a deployment stores for it (e.g. ``0``
            for a hash computed from the id); default: what the plan stores,
            :meth:`~torchrec_lhf.plan.TableHash.remap_bytes`.

    Returns:
        The checked function, as :func:`get_method` returns it.

    Raises:
        ValueError: ``name`` is empty or already registered, or ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")
    if name in _METHODS:
        raise ValueError(f"compression method {name!r} is already registered")
    if not callable(fn):
        raise ValueError(f"method {name!r}: fn must be callable, got {type(fn).__name__}")
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    fits_bytes = "budget" in named and "embedding_dim" in named
    accepted = sorted(k for k in named if k not in (*_COMMON, "budget", "embedding_dim"))

    @functools.wraps(fn)
    def checked(
        num_embeddings: Mapping[str, int],
        *,
        fraction: float,
        counts: Mapping[str, torch.Tensor] | None = None,
        min_table_rows: int = 0,
        seed: int = 0,
        budget: str = "table",
        embedding_dim: int | None = None,
        **options: Any,
    ) -> HashPlan:
        unknown = sorted(set(options) - set(accepted))
        if unknown and not takes_any:
            raise ValueError(f"method {name!r}: unknown options {unknown}; it accepts {accepted}")
        _check_common(name, num_embeddings, fraction, counts, min_table_rows, seed)
        if budget not in BUDGETS:
            raise ValueError(f"method {name!r}: budget must be one of {BUDGETS}, got {budget!r}")
        if budget == "bytes" and not is_int(embedding_dim, 1):
            raise ValueError(
                f"method {name!r}: budget 'bytes' needs embedding_dim (an int >= 1), "
                f"got {embedding_dim!r}"
            )

        def call(heights: Mapping[str, int], f: float, min_rows: int) -> HashPlan:
            common = {"fraction": f, "counts": counts, "min_table_rows": min_rows, "seed": seed}
            if fits_bytes:
                common.update(budget="table", embedding_dim=embedding_dim)
            return fn(
                heights, **{k: v for k, v in common.items() if takes_any or k in named}, **options
            )

        if budget == "table" or name == "none":
            plan = call(num_embeddings, fraction, min_table_rows)
        elif budget == "bytes" and fits_bytes:
            common = {"counts": counts, "min_table_rows": min_table_rows, "seed": seed}
            plan = fn(
                num_embeddings,
                fraction=fraction,
                budget="bytes",
                embedding_dim=embedding_dim,
                **{k: v for k, v in common.items() if k in named},
                **options,
            )
        elif budget == "bytes":
            plan = _fit_plan_to_bytes(
                name, call, num_embeddings, fraction, min_table_rows, embedding_dim
            )
        else:
            plan = _call_per_table(call, num_embeddings, fraction, budget, min_table_rows)
        meta = plan.metadata
        meta["method"] = name
        meta.setdefault("fraction", fraction)
        meta.update(seed=seed, min_table_rows=min_table_rows, budget=budget)
        meta["options"] = {k: v for k, v in options.items() if _is_jsonable(v)}
        meta["rows_fraction"] = {t.name: t.num_rows / t.num_embeddings for t in plan}
        if budget == "bytes":
            meta["fraction"] = fraction  # of the bytes; the rows' is rows_fraction
            meta["bytes"] = plan_bytes(plan, num_embeddings, embedding_dim).to_dict()
        return plan

    _METHODS[name] = checked
    if stored_index is not None:
        _STORED_INDEX[name] = stored_index
    return checked


def get_method(name: str) -> MethodFn:
    """The registered method ``name`` (see :func:`register_method`).

    Raises:
        ValueError: no method of that name.
    """
    if name not in _METHODS:
        raise ValueError(f"unknown compression method {name!r}; registered: {list_methods()}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


def make_plan(
    method: str, num_embeddings: Mapping[str, int], *, fraction: float, **kwargs: Any
) -> HashPlan:
    """``get_method(method)(num_embeddings, fraction=fraction, **kwargs)``."""
    return get_method(method)(num_embeddings, fraction=fraction, **kwargs)


# ------------------------------------------------------------------------- bytes
def computed_from_the_id(table: TableHash) -> int:
    """``stored_index`` of a hash computed from the id at serving time: nothing stored."""
    return 0


def index_bytes(plan: HashPlan) -> dict[str, int]:
    """Table name -> the bytes of its stored index: the ``stored_index`` its method
    registered (``plan.metadata["method"]``), else what the plan stores
    (:meth:`~torchrec_lhf.plan.TableHash.remap_bytes`, dense width set module-wide)."""
    stored = _STORED_INDEX.get(plan.metadata.get("method", ""))
    if stored is not None:
        return {t.name: int(stored(t)) for t in plan}
    max_height = max_dense_height(plan.tables)
    return {t.name: t.remap_bytes(max_height) for t in plan}


def plan_bytes(plan: HashPlan, num_embeddings: Mapping[str, int], embedding_dim: int) -> ModelBytes:
    """What a model of ``plan`` at dim ``D`` stores: its internal fp32 tables (``qr``'s and
    ``memrec``'s second tables included), its stored index (:func:`index_bytes`), and the
    tables of ``num_embeddings`` it leaves full.

    Example::

        >>> from torchrec_lhf.compression.methods import make_plan
        >>> plan = make_plan("modulo", {"a": 100, "b": 5}, fraction=0.1, min_table_rows=10)
        >>> plan_bytes(plan, {"a": 100, "b": 5}, 4).to_dict()  # 10 + 5 rows of 16 bytes
        {'tables': 240, 'index': 0, 'extras': 0, 'total': 240}
    """
    tables = {
        t: FP32_BYTES * embedding_dim * int(n) for t, n in num_embeddings.items() if t not in plan
    }
    for t in plan:
        dims = t.internal_dims(embedding_dim)
        tables[t.name] = FP32_BYTES * sum(m * d for m, d in zip(t.heights, dims))
    return ModelBytes(tables, index_bytes(plan), {})


def _fit_plan_to_bytes(
    name: str,
    call: Callable[[Mapping[str, int], float, int], HashPlan],
    num_embeddings: Mapping[str, int],
    fraction: float,
    min_table_rows: int,
    embedding_dim: int,
) -> HashPlan:
    """The plan at the largest row fraction whose model fits ``fraction`` of the full
    table bytes (a bisection, one plan per step: for methods that only hash)."""

    def bytes_at(f: float) -> ModelBytes:
        plan = call(num_embeddings, f, min_table_rows)
        plan.metadata["method"] = name  # so that index_bytes finds its stored_index
        return plan_bytes(plan, num_embeddings, embedding_dim)

    budget_bytes = byte_budget(num_embeddings, fraction, embedding_dim)
    f, _ = fit_to_bytes(
        bytes_at,
        budget_bytes,
        lowest=lowest_fraction(num_embeddings),
        what=f"method {name!r} at {fraction} of the full table bytes",
        full_bytes=full_table_bytes(num_embeddings, embedding_dim),
    )
    plan = call(num_embeddings, f, min_table_rows)  # one more: the bisection keeps none
    plan.metadata["row_fraction"] = f
    plan.metadata["byte_budget"] = budget_bytes
    return plan


# ------------------------------------------------------------------------- helpers
def _call_per_table(
    call: Callable[[Mapping[str, int], float, int], HashPlan],
    num_embeddings: Mapping[str, int],
    fraction: float,
    budget: str,
    min_table_rows: int,
) -> HashPlan:
    """One call per table at the fraction the model-wide ``budget`` gives it, merged.

    Args:
        call: ``call(heights, fraction, min_table_rows)`` runs the method.
        num_embeddings: table name -> ``N``.
        fraction: the fraction of all rows (see
            :func:`~torchrec_lhf.compression.budget.allocate_rows`).
        budget: a model-wide budget of :data:`~torchrec_lhf.compression.budget.BUDGETS`.
        min_table_rows: tables with fewer ids stay full.

    Returns:
        One plan of the tables that lose rows.
    """
    rows = allocate_rows(
        dict(num_embeddings), fraction, budget=budget, min_table_rows=max(1, min_table_rows)
    )
    parts = [call({t: n}, rows[t] / n, 0) for t, n in num_embeddings.items() if rows[t] < n]
    return HashPlan([t for p in parts for t in p], metadata=_merge_metadata(parts))


def _merge_metadata(plans: list[HashPlan]) -> dict[str, Any]:
    """One metadata dict of per-table plans: per-table dicts merged, the rest from the first."""
    meta: dict[str, Any] = {}
    for plan in plans:
        for key, value in plan.metadata.items():
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key] = {**meta[key], **value}
            else:
                meta.setdefault(key, value)
    meta.pop("fraction", None)  # the per-table fractions, not the requested one
    return meta


def _check_common(
    name: str,
    num_embeddings: Mapping[str, int],
    fraction: float,
    counts: Mapping[str, torch.Tensor] | None,
    min_table_rows: int,
    seed: int,
) -> None:
    """Check the arguments every method takes; errors name the method ``name``.

    Raises:
        ValueError: a height, ``fraction``, ``min_table_rows``, ``seed`` or a table's counts
            out of range.
    """
    if not isinstance(num_embeddings, Mapping):
        raise ValueError(
            f"method {name!r}: num_embeddings must map table names to heights, got {type(num_embeddings).__name__}"
        )
    for table, n in num_embeddings.items():
        if not is_int(n, 1):
            raise ValueError(
                f"method {name!r}: table {table!r} num_embeddings must be an int >= 1, got {n!r}"
            )
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction <= 1
    ):
        raise ValueError(f"method {name!r}: fraction must be in (0, 1], got {fraction!r}")
    if not is_int(min_table_rows, 0):
        raise ValueError(
            f"method {name!r}: min_table_rows must be an int >= 0, got {min_table_rows!r}"
        )
    if not is_int(seed, 0):
        raise ValueError(f"method {name!r}: seed must be an int >= 0, got {seed!r}")
    check_counts(name, num_embeddings, counts)


def check_counts(
    name: str, num_embeddings: Mapping[str, int], counts: Mapping[str, torch.Tensor] | None
) -> None:
    """Check each planned table's counts: shape ``(N,)``, finite and ``>= 0``."""
    for table, c in (counts or {}).items():
        if table not in num_embeddings:
            continue
        n = num_embeddings[table]
        if not isinstance(c, torch.Tensor) or c.shape != (n,) or c.is_complex():
            got = f"shape {tuple(c.shape)}" if isinstance(c, torch.Tensor) else type(c).__name__
            raise ValueError(
                f"method {name!r}: counts of table {table!r} must have shape ({n},), got {got}"
            )
        if c.numel() and (bool((c < 0).any()) or not bool(torch.isfinite(c.double()).all())):
            raise ValueError(f"method {name!r}: counts of table {table!r} must be finite and >= 0")


def is_int(value: Any, lowest: int) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least ``lowest``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


def _is_jsonable(value: Any) -> bool:
    """Whether ``value`` is JSON data (the plan's metadata keeps only such options)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_jsonable(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_jsonable(v) for k, v in value.items())
    return False
