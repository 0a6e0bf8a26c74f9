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
