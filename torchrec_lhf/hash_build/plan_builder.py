"""Single-process hash-plan builder: teacher embeddings + access counts -> HashPlan.

Shapes: ``N`` ids of a table, ``D`` teacher dim, ``H`` hash functions (internal tables),
``M_h`` height of internal table ``h`` (``sum_h M_h`` = the table's compressed rows).

:func:`build_table_hash` does one table and is what the distributed build job calls per
table; :func:`build_plan` loops over the tables of a model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from torchrec_lhf.clustering import check_clustering_options, get_clustering, project
from torchrec_lhf.compression.budget import allocate_rows, split_rows
from torchrec_lhf.hash_build.byte_budget import fit_head_to_bytes, learned_rows_for_bytes
from torchrec_lhf.hash_build.compose import COMPOSE_MODES, residual_stage
from torchrec_lhf.hash_build.head_tail import HeadTail, cluster_hashes
from torchrec_lhf.hash_build.shrinkage import check_shrinkage, shrink_embeddings
from torchrec_lhf.plan import COMBINE_MODES, HashPlan, TableHash

logger = logging.getLogger(__name__)


def build_table_hash(
    name: str,
    embeddings_ND: torch.Tensor,
    counts_N: torch.Tensor | None,
    *,
    rows: int,
    num_hashes: int = 1,
    combine: str = "sum",
    clustering: str = "agglomerative",
    projection: str = "pca",
    head_tail: HeadTail | None = None,
    value_shrinkage: float = 0.0,
    compose: str = "independent",
    **clustering_options: Any,
) -> tuple[TableHash, dict[str, Any]]:
    """Learn one table's hash: project, then cluster each projection coordinate.

    With ``head_tail`` choosing a head (:mod:`~torchrec_lhf.hash_build.head_tail`), only the
    head is clustered and the other ids are hashed by a seeded hash: a teacher trained on the
    student's data memorizes the labels of ids it saw once or twice, and clustering by those
    values would group ids by their training labels (docs/RESULTS.md, "The label leak").

    Args:
        name: the table's name.
        embeddings_ND: the teacher's embeddings, shape ``(N, D)``.
        counts_N: access counts, shape ``(N,)`` (``None``: all ones).
        rows: total compressed rows, split over the ``H`` internal tables
            (see :func:`split_rows`); each internal table has at most ``N`` rows.
        num_hashes: ``H``; hash ``h`` clusters projection coordinate ``h``.
        combine: ``"sum"`` or ``"concat"`` (see :class:`~torchrec_lhf.plan.TableHash`).
        clustering: a registered clustering (:func:`~torchrec_lhf.clustering.get_clustering`).
        projection: ``"pca"``, ``"dim:k"`` or ``"dim:k0,k1,..."``.
        head_tail: which ids are clustered (the head) and where the others go (default
            :class:`HeadTail()`: every id is clustered, the paper's build).
        value_shrinkage: ``k``: each id's embedding is pulled toward the tail's mean by
            ``n / (n + k)`` before the projection
            (:func:`~torchrec_lhf.hash_build.shrinkage.shrink_embeddings`; 0: raw values).
        compose: ``"independent"`` (hash ``h`` clusters projection coordinate ``h``) or
            ``"residual"`` (hash 0 clusters the first, hash ``h >= 1`` splits the cells of
            hashes ``0..h-1``: :mod:`~torchrec_lhf.hash_build.compose`).
        **clustering_options: passed to the clustering (e.g. ``max_cluster_size``).

    Returns:
        ``(table_hash, info)``; ``info`` holds ``seconds``, ``fallback_merges``, ``steps``,
        ``head_ids``, ``heights``, ``layouts`` (per hash: head rows and tail region),
        ``num_embeddings`` and the settings (JSON-serializable).

    Raises:
        ValueError: bad shapes, settings, or more rows per internal table than ids.

    Example::

        >>> emb = torch.tensor([[0.0], [5.0], [0.1], [5.2]])
        >>> build_table_hash("t", emb, None, rows=2, projection="dim:0")[0].mappings[0].tolist()
        [0, 1, 0, 1]
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"table {name!r}: combine must be one of {COMBINE_MODES}, got {combine!r}")
    if compose not in COMPOSE_MODES:
        raise ValueError(f"table {name!r}: compose must be one of {COMPOSE_MODES}, got {compose!r}")
    start = time.perf_counter()
    spec = head_tail or HeadTail()
    head_N = spec.head(counts_N, name)
    if value_shrinkage:
        embeddings_ND = shrink_embeddings(
            embeddings_ND, counts_N, value_shrinkage, head_N, table=name
        )
    composed = compose == "residual" and num_hashes > 1
    try:  # project() validates the embeddings; name the table in its message
        values_HN = project(embeddings_ND, projection, projected_hashes(compose, num_hashes))
    except ValueError as e:
        raise ValueError(f"table {name!r}: {e}") from e
    n = values_HN.shape[1]
    heights = _table_heights(name, rows, num_hashes, n)
    cluster = get_clustering(clustering)
    mappings, layouts, fallback_merges, steps = cluster_hashes(
        cluster, values_HN, counts_N, heights, head_N, spec, name, clustering_options,
        compose=residual_stage(embeddings_ND, counts_N) if composed else None,
    )  # fmt: skip
    table = TableHash(name, n, tuple(mappings), tuple(heights), combine)
    info = dict(
        table=name, num_embeddings=n, rows=rows, heights=heights, num_hashes=num_hashes,
        combine=combine, clustering=clustering, projection=projection,
        seconds=time.perf_counter() - start, head_ids=n if head_N is None else int(head_N.sum()),
        head_tail=spec.to_dict(), value_shrinkage=value_shrinkage, compose=compose, layouts=layouts, fallback_merges=fallback_merges, steps=steps,
    )  # fmt: skip
    _log_table(info)
    return table, info


def _table_heights(name: str, rows: int, num_hashes: int, n: int) -> list[int]:
    """``rows`` split over ``num_hashes`` internal tables (see :func:`split_rows`).

    Raises:
        ValueError: an internal table would have more rows than the table's ``n`` ids.
    """
    heights = split_rows(rows, num_hashes)
    if heights[0] > n:
        raise ValueError(
            f"table {name!r}: {rows} rows over {num_hashes} hash(es) gives internal tables of "
            f"{heights[0]} rows, more than the table's {n} ids"
        )
    return heights


def _log_table(info: Mapping[str, Any]) -> None:
    """Log one built table from its ``info`` (see :func:`build_table_hash`)."""
    logger.info(
        "table %s: %d ids -> %s rows (%s, %s) in %.2fs, %d fallback merges",
        info["table"],
        info["num_embeddings"],
        info["heights"],
        info["clustering"],
        info["projection"],
        info["seconds"],
        info["fallback_merges"],
    )


def build_plan(
    teacher_embeddings: Mapping[str, torch.Tensor],
    counts: Mapping[str, torch.Tensor] | None,
    *,
    fraction: float | None = None,
    rows: int | Mapping[str, int] | None = None,
    min_table_rows: int = 0,
    budget: str = "table",
    num_hashes: int = 1,
    combine: str = "sum",
    clustering: str = "agglomerative",
    projection: str = "pca",
    head_tail: HeadTail | None = None,
    clustering_options: Mapping[str, Any] | None = None,
    embedding_dim: int | None = None,
    value_shrinkage: float = 0.0,
    compose: str = "independent",
) -> HashPlan:
    """Build the hash plan of a model's tables in this process.

    Args:
        teacher_embeddings: table name -> teacher embeddings, shape ``(N, D)``.
        counts: table name -> access counts, shape ``(N,)``, for every table that is built;
            ``None``: all ones (no frequency information).
        fraction: compressed rows per table as a fraction of ``N`` in ``(0, 1]``:
            ``max(H, round(fraction * N))``.
        rows: compressed rows, one int for all tables or a dict per table; tables missing
            from the dict stay full. Exactly one of ``fraction`` / ``rows``.
        min_table_rows: tables with fewer ids stay full (left out of the plan).
        budget: how ``fraction`` is spent: ``"table"`` (of each table), ``"total"`` (of
            all rows; see :func:`~torchrec_lhf.compression.budget.allocate_rows`) or
            ``"bytes"`` (of the full fp32 table bytes at ``embedding_dim``, the remap
            counted: :func:`learned_rows_for_bytes`, before any clustering).
        num_hashes: ``H`` hash functions per table; the rows are split over them.
        combine: ``"sum"`` or ``"concat"``.
        clustering: a registered clustering.
        projection: ``"pca"``, ``"dim:k"`` or ``"dim:k0,k1,..."``.
        head_tail: which ids are clustered and where the others go (see
            :func:`build_table_hash`; a head by counts needs ``counts``).
        clustering_options: passed to the clustering.
        embedding_dim: the student's dim ``D``, for ``budget="bytes"``.
        value_shrinkage: ``k`` of the count-aware shrinkage (see :func:`build_table_hash`;
            needs ``counts``).
        compose: how a table's hashes relate (see :func:`build_table_hash`).

    Returns:
        The :class:`~torchrec_lhf.plan.HashPlan` (metadata: clustering, fraction, rows, projection,
        num_hashes, combine, min_table_rows, source, and per-table build info).

    Raises:
        ValueError: both or neither of ``fraction``/``rows``, a value out of range, a table
            named in ``rows`` or needed from ``counts`` that is missing.

    Example::

        >>> import torch
        >>> emb = {"t": torch.tensor([[0.0], [5.0], [0.1], [5.2]]), "small": torch.zeros(2, 1)}
        >>> plan = build_plan(emb, None, fraction=0.5, min_table_rows=3)
        >>> plan.table_names, plan["t"].mappings[0].tolist()
        (['t'], [0, 1, 0, 1])
    """
    sizes = _check_plan_args(
        teacher_embeddings, counts, fraction, rows, min_table_rows, budget, clustering, head_tail,
        clustering_options,
    )  # fmt: skip
    if check_shrinkage(value_shrinkage) and counts is None:
        raise ValueError(f"value_shrinkage={value_shrinkage!r} needs counts, got counts=None")
    allocated = None
    if budget == "bytes":
        if fraction is None or embedding_dim is None:
            raise ValueError(
                f"budget 'bytes' needs a fraction and embedding_dim, got fraction={fraction!r}, "
                f"embedding_dim={embedding_dim!r}"
            )
        fit = dict(
            fraction=fraction,
            embedding_dim=embedding_dim,
            min_table_rows=min_table_rows,
            num_hashes=num_hashes,
            combine=combine,
        )
        head_tail = fit_head_to_bytes(sizes, counts, head_tail or HeadTail(), **fit)
        allocated, _ = learned_rows_for_bytes(sizes, counts, **fit, head_tail=head_tail)
    elif fraction is not None:
        allocated = allocate_rows(
            sizes, fraction, budget=budget, min_table_rows=min_table_rows, num_hashes=num_hashes
        )
    hash_options = {
        "num_hashes": num_hashes,
        "combine": combine,
        "clustering": clustering,
        "projection": projection,
        "head_tail": head_tail,
        "value_shrinkage": value_shrinkage,
        "compose": compose,
    }
    tables, infos = [], {}
    for name, emb in teacher_embeddings.items():  # a loop per table
        table_rows = _rows_of_table(name, sizes[name], allocated, rows, budget, min_table_rows)
        if table_rows is not None:
            table, infos[name] = _build_table(
                name, emb, counts, table_rows, hash_options, clustering_options
            )
            tables.append(table)
    metadata = _plan_metadata(
        hash_options, fraction, rows, min_table_rows, clustering_options, build_info=infos
    )
    return HashPlan(tables, metadata=metadata)


def _build_table(
    name: str,
    emb: torch.Tensor,
    counts: Mapping[str, torch.Tensor] | None,
    rows: int,
    hash_options: Mapping[str, Any],
    clustering_options: Mapping[str, Any] | None,
) -> tuple[TableHash, dict[str, Any]]:
    """One table of :func:`build_plan`: :func:`build_table_hash` and the info the plan keeps.

    Raises:
        ValueError: ``counts`` is given but lacks the table, or as :func:`build_table_hash`.
    """
    if counts is not None and name not in counts:
        raise ValueError(f"table {name!r}: no access counts (counts has {sorted(counts)})")
    table, info = build_table_hash(
        name,
        emb,
        None if counts is None else counts[name],
        rows=rows,
        **hash_options,
        **dict(clustering_options or {}),
    )
    keep = ("seconds", "fallback_merges", "steps", "heights", "head_ids", "layouts")
    return table, {k: info[k] for k in keep}


def _plan_metadata(
    hash_options: Mapping[str, Any],
    fraction: float | None,
    rows: int | Mapping[str, int] | None,
    min_table_rows: int,
    clustering_options: Mapping[str, Any] | None,
    *,
    build_info: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The metadata of :func:`build_plan`'s plan: its settings, source and per-table info."""
    return {
        "clustering": hash_options["clustering"],
        "fraction": fraction,
        "rows": dict(rows) if isinstance(rows, Mapping) else rows,
        "projection": hash_options["projection"],
        "head_tail": (hash_options["head_tail"] or HeadTail()).to_dict(),
        # NOTE: named only when on, so that plans without it keep their metadata
        **({"value_shrinkage": k} if (k := hash_options["value_shrinkage"]) else {}),
        **({"compose": c} if (c := hash_options["compose"]) != "independent" else {}),
        "num_hashes": hash_options["num_hashes"],
        "combine": hash_options["combine"],
        "min_table_rows": min_table_rows,
        "clustering_options": _jsonable(dict(clustering_options or {})),
        "source": "build_plan",
        "build_info": build_info,
    }


def projected_hashes(compose: str, num_hashes: int) -> int:
    """How many 1-D values per id a table's hash functions take from its teacher
    (``project``'s ``num_hashes``): one where they are composed (each later one clusters
    what the earlier ones leave), else one per hash function."""
    return 1 if compose == "residual" and num_hashes > 1 else num_hashes


def _check_plan_args(
    teacher_embeddings: Mapping[str, torch.Tensor],
    counts: Mapping[str, torch.Tensor] | None,
    fraction: float | None,
    rows: int | Mapping[str, int] | None,
    min_table_rows: int,
    budget: str,
    clustering: str,
    head_tail: HeadTail | None,
    clustering_options: Mapping[str, Any] | None,
) -> dict[str, int]:
    """Check :func:`build_plan`'s arguments before any work.

    Returns:
        Table name -> ``N``, in the order of ``teacher_embeddings``.

    Raises:
        ValueError: as :func:`build_plan` (counts per table are checked later).
    """
    if (fraction is None) == (rows is None):
        raise ValueError(
            f"give exactly one of fraction / rows, got fraction={fraction!r}, rows={rows!r}"
        )
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if (
        isinstance(min_table_rows, bool)
        or not isinstance(min_table_rows, int)
        or min_table_rows < 0
    ):
        raise ValueError(f"min_table_rows must be an int >= 0, got {min_table_rows!r}")
    if isinstance(rows, Mapping):
        unknown = sorted(set(rows) - set(teacher_embeddings))
        if unknown:
            raise ValueError(f"rows names tables {unknown} that have no teacher embeddings")
    get_clustering(clustering)  # fail before any work on an unknown clustering
    check_clustering_options(clustering, clustering_options)  # (or options it refuses)
    if budget != "table" and fraction is None:
        raise ValueError(f"budget={budget!r} needs a fraction, not rows")
    if budget not in ("table", "total", "bytes"):
        raise ValueError(f"budget must be 'table', 'total' or 'bytes', got {budget!r}")
    if head_tail is not None and head_tail.splits and counts is None:
        raise ValueError(f"a head by access counts ({head_tail}) needs counts, got counts=None")
    sizes = {}
    for name, emb in teacher_embeddings.items():  # a loop per table, not per id
        if not (isinstance(emb, torch.Tensor) and emb.dim() == 2 and emb.shape[0] > 0):
            raise ValueError(f"table {name!r}: teacher embeddings must be a 2-D tensor (N, D)")
        sizes[name] = int(emb.shape[0])
    return sizes


def _rows_of_table(
    name: str,
    n: int,
    allocated: Mapping[str, int] | None,
    rows: int | Mapping[str, int] | None,
    budget: str,
    min_table_rows: int,
) -> int | None:
    """A table's compressed rows, or ``None`` (logged) if it stays full.

    ``allocated`` is what :func:`allocate_rows` gave each table when :func:`build_plan` has
    a ``fraction``, else ``None`` (then ``rows`` decides); the rest are ``build_plan``'s.
    """
    if allocated is not None:
        if name not in allocated or (budget != "table" and allocated[name] >= n):
            logger.info("table %s: %d ids, stays full (budget %r)", name, n, budget)
            return None
        return allocated[name]
    if n < min_table_rows:
        logger.info("table %s: %d ids < min_table_rows=%d, stays full", name, n, min_table_rows)
        return None
    if isinstance(rows, Mapping):
        if name not in rows:
            logger.info("table %s: not in rows, stays full", name)
            return None
        return rows[name]
    return rows


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
