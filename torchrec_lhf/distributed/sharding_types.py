"""The sharding types a learned-hash sharder offers, and the checks of what it is asked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torchrec.distributed.types import ParameterSharding


def requested_types(
    requested: Iterable[str] | None, offered: Iterable[str], what: str
) -> list[str]:
    """The sharding types a sharder offers: ``requested`` (default: all of ``offered``).

    Raises:
        ValueError: ``requested`` is empty or holds a type not in ``offered`` (named, with
            ``what`` the sharder's tables).
    """
    offered = list(offered)
    chosen = offered if requested is None else list(requested)
    for st in chosen:
        if st not in offered:
            raise ValueError(
                f"sharding type {st!r} is not supported for {what}; expected one of {offered}"
            )
    if not chosen:
        raise ValueError(f"sharding_types is empty; expected some of {offered} for {what}")
    return chosen


def check_placements(params: Mapping[str, ParameterSharding], allowed: list[str]) -> None:
    """Raise ValueError naming the first table of a sharding plan placed by a type not in
    ``allowed``."""
    for name, ps in params.items():
        if ps.sharding_type not in allowed:
            raise ValueError(
                f"table {name!r}: sharding type {ps.sharding_type!r} is not supported; "
                f"expected one of {allowed}"
            )


FUSED_DIM_MULTIPLE = 4
"""TorchRec shards a fused FBGEMM embedding-bag table (every compute kernel but ``dense``,
which ``data_parallel`` uses) only at widths divisible by 4 (it asserts so when it builds
the kernel)."""


def check_fused_dims(dims: Mapping[str, int], sharding_types: Iterable[str]) -> None:
    """Raise ValueError naming the first table of ``dims`` (table name -> dim) whose dim
    TorchRec's fused embedding-bag tables reject (:data:`FUSED_DIM_MULTIPLE`), unless
    ``sharding_types`` holds ``data_parallel`` alone (the dense kernel takes any dim).

    Before, such a table failed where TorchRec built its kernel, with an ``AssertionError``
    that suggests planner constraints; an internal table of a ``concat`` plan (dim 6 split
    into 3 + 3) did so on every rank, after the data was read and the plan built.
    """
    types = list(sharding_types)
    if set(types) <= {"data_parallel"}:
        return
    for name, dim in dims.items():
        if dim % FUSED_DIM_MULTIPLE == 0:
            continue
        logical = name.partition("__h")[0]
        note = (
            f" (an internal table of {logical!r}; its plan sets its dim)" if logical != name else ""
        )
        raise ValueError(
            f"table {name!r}{note} has dim {dim}, but TorchRec shards FBGEMM's fused "
            f"embedding-bag tables (sharding types {types}) only at dims that are multiples "
            f"of {FUSED_DIM_MULTIPLE}: give it such a dim (with a concat plan, every part), "
            "or shard it data_parallel only (the dense kernel)"
        )


def check_fused_placements(
    params: Mapping[str, ParameterSharding], dims: Mapping[str, int]
) -> None:
    """:func:`check_fused_dims` of the tables of a sharding plan (``dims``: every table's
    dim) that it places on a fused kernel (all but the ``dense`` one of ``data_parallel``),
    and of their shards' widths: a column-wise shard holds part of the dim (12 over two
    ranks: 6 + 6), and TorchRec checks each shard's."""
    fused = {n: dims[n] for n, ps in params.items() if ps.compute_kernel != "dense" and n in dims}
    check_fused_dims(fused, sorted({params[n].sharding_type for n in fused}))
    for name in fused:
        ps = params[name]
        widths = sorted({int(s.shard_sizes[1]) for s in getattr(ps.sharding_spec, "shards", [])})
        if any(w % FUSED_DIM_MULTIPLE for w in widths):
            raise ValueError(
                f"table {name!r} (dim {dims[name]}) is placed {ps.sharding_type} in shards of "
                f"widths {widths}, but TorchRec shards FBGEMM's fused embedding-bag tables only "
                f"at widths that are multiples of {FUSED_DIM_MULTIPLE}: split it into such "
                "widths (the planner's column-wise shards are)"
            )
