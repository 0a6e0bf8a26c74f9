"""The distributed hash-build job: cluster a teacher's tables on many ranks, write one plan.

Each rank clusters the tables :func:`assign_tables` gives it, writes every finished table
atomically into a work directory (so a rerun after a crash skips it), sends its tables to
rank 0 over a CPU (gloo) group, and rank 0 assembles them, in the teacher's table order,
into one :class:`~torchrec_lhf.plan.HashPlan` written atomically to ``out``. A table's
result depends only on its inputs and the config, never on which rank computed it, so the
plan is the same for every world size.

Shapes: ``N`` ids of a table, ``H`` hash functions per table, ``M_h`` internal heights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from torchrec_lhf._io import atomic_write_json, tensor_digest
from torchrec_lhf.build.artifact import TeacherArtifact
from torchrec_lhf.build.budget import BUDGETS, allocate_rows
from torchrec_lhf.build.plan_builder import build_table_hash
from torchrec_lhf.clustering.registry import get_clustering
from torchrec_lhf.plan import COMBINE_MODES, HashPlan, TableHash

logger = logging.getLogger(__name__)

JOB_VERSION = 1
"""Bumped when a change makes the tables in an older work directory invalid."""

MARKER_FILE = "build.json"
_INFO_KEYS = ("seconds", "fallback_merges", "steps", "rows")
TableHook = Callable[[str, dict[str, Any]], None]
Results = dict[str, tuple[TableHash, dict[str, Any]]]


@dataclass(kw_only=True)
class BuildConfig:
    """What to build and where: everything that decides the plan, plus the paths."""

    fraction: float | None = None
    """Compressed rows of a table, ``max(H, round(fraction * N))``; exactly one of
    ``fraction`` / ``rows_per_table``."""

    rows_per_table: dict[str, int] | None = None
    """Compressed rows (total over the ``H`` internal tables) per table; tables not named
    stay full."""

    min_table_rows: int = 100_000
    """Tables with fewer ids stay full (the paper skipped tables under 100K rows)."""

    budget: str = "table"
    """How ``fraction`` is spent (:func:`~torchrec_lhf.build.budget.allocate_rows`):
    ``"table"`` (each table's own fraction) or ``"total"`` (of all the model's rows)."""

    num_hashes: int = 1
    """``H``, hash functions (internal tables) per compressed table."""

    combine: str = "sum"
    """How the ``H`` internal embeddings combine: ``"sum"`` or ``"concat"``."""

    method: str = "agglomerative"
    """A clustering registered in :mod:`torchrec_lhf.clustering.registry`."""

    projection: str = "pca"
    """Teacher embeddings -> 1-D values: ``"pca"``, ``"dim:k"`` or ``"dim:k0,k1,..."``."""

    rare_count: int = 0
    """Ids the teacher saw fewer times are hashed (``id mod M``), not clustered: the
    teacher memorizes their labels (:func:`~torchrec_lhf.build.plan_builder.build_table_hash`)."""

    method_options: dict[str, Any] = field(default_factory=dict)
    """Passed to the clustering (e.g. ``max_cluster_size``); JSON-serializable."""

    work_dir: Path
    """Finished tables and the job's fingerprint; reruns resume from it. Shared by all
    ranks, or local to each node if reruns keep the same ranks per node."""

    out: Path
    """Where rank 0 writes the plan (atomically, once every table is done)."""

    restart: bool = False
    """Discard ``work_dir``'s tables (even another build's) and start over."""

    teacher: str | None = None
    """The teacher directory, recorded in the plan's metadata (not in the fingerprint)."""

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.rows_per_table is None):
            raise ValueError(
                "give exactly one of fraction and rows_per_table, got "
                f"fraction={self.fraction!r}, rows_per_table={self.rows_per_table!r}"
            )
        f = self.fraction
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1
        ):
            raise ValueError(f"fraction must be a number in (0, 1], got {f!r}")
        if self.rows_per_table is not None:
            rows = self.rows_per_table
            if not isinstance(rows, dict) or not rows:
                raise ValueError(
                    f"rows_per_table must be a non-empty dict table -> rows, got {rows!r}"
                )
            bad = {
                k: v
                for k, v in rows.items()
                if isinstance(v, bool) or not isinstance(v, int) or v < 1
            }
            if bad:
                raise ValueError(f"rows_per_table values must be ints >= 1, got {bad}")
            self.rows_per_table = dict(rows)
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if self.budget != "table" and self.fraction is None:
            raise ValueError(f"budget={self.budget!r} needs a fraction, not rows_per_table")
        rc = self.rare_count
        if isinstance(rc, bool) or not isinstance(rc, int) or rc < 0:
            raise ValueError(f"rare_count must be an int >= 0, got {rc!r}")
        for name in ("min_table_rows", "num_hashes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")
        get_clustering(self.method)  # ValueError naming the registered methods
        if not isinstance(self.projection, str) or not re.fullmatch(
            r"pca|dim:\d+(,\d+)*", self.projection
        ):
            raise ValueError(
                f"projection must be 'pca', 'dim:k' or 'dim:k0,k1,...', got {self.projection!r}"
            )
        try:
            json.dumps(self.method_options)
        except TypeError as e:
            raise ValueError(
                f"method_options must be JSON-serializable, got {self.method_options!r}"
            ) from e
        self.method_options = dict(self.method_options)
        self.work_dir, self.out = Path(self.work_dir), Path(self.out)
        if self.work_dir.resolve() == self.out.resolve():
            raise ValueError(f"work_dir and out must differ, both are {str(self.out)!r}")

    def plan_options(self) -> dict[str, Any]:
        """The fields that decide the plan (in the fingerprint and the plan's metadata)."""
        return {
            "method": self.method,
            "fraction": self.fraction,
            "rows": self.rows_per_table,
            "projection": self.projection,
            "num_hashes": self.num_hashes,
            "combine": self.combine,
            "min_table_rows": self.min_table_rows,
            "budget": self.budget,
            "rare_count": self.rare_count,
            "method_options": self.method_options,
        }


def assign_tables(sizes: dict[str, int], world_size: int) -> list[list[str]]:
    """Longest-processing-time assignment of tables to ranks, balancing total ids.

    Tables go largest first (ties: the order of ``sizes``) onto the rank with the fewest
    ids so far (ties: the lowest rank). Each rank's list is in that processing order.

    Args:
        sizes: table name -> number of ids ``N``.
        world_size: number of ranks, ``>= 1``.

    Returns:
        ``world_size`` lists of table names; every table is in exactly one.

    Raises:
        ValueError: ``world_size < 1`` or a negative size.

    Example::

        >>> assign_tables({"a": 5, "b": 3, "c": 3, "d": 1}, 2)
        [['a', 'd'], ['b', 'c']]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    bad = {k: v for k, v in sizes.items() if int(v) < 0}
    if bad:
        raise ValueError(f"table sizes must be >= 0, got {bad}")
    loads = [0] * world_size
    out: list[list[str]] = [[] for _ in range(world_size)]
    for name in sorted(sizes, key=lambda n: -int(sizes[n])):  # stable: ties keep dict order
        r = min(range(world_size), key=lambda r: (loads[r], r))
        out[r].append(name)
        loads[r] += int(sizes[name])
    return out


def table_rows(sizes: dict[str, int], config: BuildConfig) -> dict[str, int]:
    """Compressed rows per table to build (the rule of ``build_plan``); others stay full.

    Args:
        sizes: table name -> ``N``, in the teacher's order.
        config: the build config.

    Returns:
        table name -> total rows over the table's ``H`` internal tables, in ``sizes``
        order, for tables with ``N >= min_table_rows`` (and named in ``rows_per_table``);
        with ``budget="total"``, the tables it allocates fewer rows than ids.

    Raises:
        ValueError: ``rows_per_table`` names an unknown table, gives fewer rows than ``H``,
            or more rows per internal table than the table has ids.
    """
    h = config.num_hashes
    if config.rows_per_table is not None:
        unknown = sorted(set(config.rows_per_table) - set(sizes))
        if unknown:
            raise ValueError(
                f"rows_per_table names tables the teacher lacks: {unknown} (has {list(sizes)})"
            )
    if config.fraction is not None:
        allocated = allocate_rows(
            sizes,
            config.fraction,
            budget=config.budget,
            min_table_rows=config.min_table_rows,
            num_hashes=h,
        )
    else:
        allocated = {
            k: config.rows_per_table[k]
            for k, n in sizes.items()
            if k in config.rows_per_table and n >= config.min_table_rows
        }
    out: dict[str, int] = {}
    for name, rows in allocated.items():
        n = sizes[name]
        if config.budget == "total" and rows >= n:
            continue  # the total budget keeps this table full
        if not h <= rows <= h * n:
            raise ValueError(
                f"table {name!r}: {rows} rows for {h} hash(es) of a table of {n} ids; "
                f"expected {h} <= rows <= {h * n}"
            )
        out[name] = rows
    return out


def job_fingerprint(config: BuildConfig, teacher_sha: str) -> str:
    """sha256 of the plan-deciding options and the teacher's checksum."""
    blob = {"job_version": JOB_VERSION, "options": config.plan_options(), "teacher": teacher_sha}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def run_build(
    config: BuildConfig,
    artifact: TeacherArtifact,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    on_table_done: TableHook | None = None,
) -> HashPlan | None:
    """Build this rank's tables and, on rank 0, assemble and save the plan.

    Call it on every rank; with ``world_size > 1`` the default process group must be up
    (with NCCL the job opens a gloo group for its CPU traffic).

    Args:
        config: the build config.
        artifact: the teacher (every rank holds it).
        rank: this process's rank.
        world_size: the number of ranks.
        device: where to cluster (default CPU). CPU and CUDA plans may differ; plans of
            any world size on the same kind of device do not.
        on_table_done: called ``(table, info)`` after each of this rank's tables, ``info``
            with keys ``seconds``, ``fallback_merges``, ``steps``, ``rows``, ``resumed``.

    Returns:
        The plan on rank 0, ``None`` on the other ranks.

    Raises:
        ValueError: bad ``rows_per_table``, or ``work_dir`` holds another build's tables
            (another config or teacher: pass ``restart=True`` or another ``work_dir``).
    """
    group = _cpu_group(world_size)
    sizes = {name: int(e.shape[0]) for name, e in artifact.embeddings.items()}
    rows = table_rows(sizes, config)
    teacher_sha = artifact.manifest.get("sha256") or tensor_digest(
        {
            f"{k}/{kind}": v
            for kind, d in (("embeddings", artifact.embeddings), ("counts", artifact.counts))
            for k, v in d.items()
        }
    )
    fingerprint = job_fingerprint(config, teacher_sha)
    _prepare_work_dir(config, fingerprint, rank, world_size, group)

    assignment = assign_tables({n: sizes[n] for n in rows}, world_size)
    results: Results = {}
    bar = tqdm(
        assignment[rank],
        desc=f"hash build, rank 0 of {world_size}",
        unit="table",
        disable=rank != 0,
        mininterval=5.0,
    )
    for name in bar:  # a loop per table
        results[name] = _build_or_resume(name, artifact, rows[name], config, fingerprint, device)
        if on_table_done is not None:
            on_table_done(name, dict(results[name][1]))

    if world_size > 1:
        _gather_to_rank0(results, list(rows), assignment, sizes, config, rank, group)
        dist.barrier(group=group)
    if rank != 0:
        return None
    infos = {n: results[n][1] for n in rows}
    metadata = {
        **config.plan_options(),
        "source": {"teacher": config.teacher, "teacher_sha256": teacher_sha},
        # NOTE: no seconds here, so that the metadata does not depend on the run either.
        "build_info": {
            n: {
                "fallback_merges": i["fallback_merges"],
                "steps": i["steps"],
                "heights": list(results[n][0].heights),
            }
            for n, i in infos.items()
        },
    }
    plan = HashPlan([results[n][0] for n in rows], metadata=metadata)
    plan.save(config.out)
    logger.info(
        "hash plan written to %s (%d of %d tables compressed)\n%s",
        config.out,
        len(plan),
        len(sizes),
        format_build_summary(plan, infos),
    )
    return plan


def format_build_summary(plan: HashPlan, infos: dict[str, dict[str, Any]]) -> str:
    """Per table ``N -> M``, seconds, fallback merges, and whether it was resumed."""
    lines = [f"{'table':<20} {'N':>12} {'M':>12} {'M/N':>7} {'seconds':>8} {'fallback':>8}"]
    for t in plan:
        info = infos.get(t.name, {})
        lines.append(
            f"{t.name:<20} {t.num_embeddings:>12,} {t.num_rows:>12,} {t.num_rows / t.num_embeddings:>7.4f} "
            f"{info.get('seconds', float('nan')):>8.2f} {info.get('fallback_merges', 0):>8}"
            + ("  (resumed)" if info.get("resumed") else "")
        )
    total = sum(i.get("seconds", 0.0) for i in infos.values())
    lines.append(f"{'total (all ranks)':<20} {'':>12} {'':>12} {'':>7} {total:>8.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers
def _cpu_group(world_size: int) -> Any:
    """``None`` (the default group) if it is gloo, else a new gloo group for CPU tensors."""
    if world_size == 1:
        return None
    if not dist.is_initialized() or dist.get_world_size() != world_size:
        got = dist.get_world_size() if dist.is_initialized() else "no process group"
        raise ValueError(
            f"world_size={world_size} needs an initialized process group of that size, got {got}"
        )
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _table_file(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if safe != name:  # keep distinct names distinct after sanitizing
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{safe}.plan"


def _prepare_work_dir(
    config: BuildConfig, fingerprint: str, rank: int, world_size: int, group: Any
) -> None:
    marker = config.work_dir / MARKER_FILE
    if config.restart and rank == 0 and config.work_dir.is_dir():
        logger.info("restart: discarding the finished tables in %s", config.work_dir)
        for p in config.work_dir.glob("*.plan"):
            p.unlink()
        marker.unlink(missing_ok=True)
    if world_size > 1:
        dist.barrier(group=group)
    found = None
    if marker.is_file():
        try:
            found = json.loads(marker.read_text()).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            found = "unreadable"
    ok = torch.tensor([int(found in (None, fingerprint))])
    if world_size > 1:  # every rank raises, or none does
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
    if not int(ok):
        raise ValueError(
            f"work dir {config.work_dir} holds tables of another build (fingerprint {found} on some "
            f"rank; this build's is {fingerprint}): another config or teacher. Pass --restart "
            "(restart=True) to discard them, or choose another --work_dir"
        )
    if found is None:  # identical content from every rank; the write is atomic
        atomic_write_json(
            marker,
            {
                "fingerprint": fingerprint,
                "job_version": JOB_VERSION,
                "options": config.plan_options(),
                "teacher": config.teacher,
            },
        )
    elif rank == 0:
        logger.info("resuming: reusing the finished tables in %s", config.work_dir)


def _build_or_resume(
    name: str,
    artifact: TeacherArtifact,
    rows: int,
    config: BuildConfig,
    fingerprint: str,
    device: Any,
) -> tuple[TableHash, dict[str, Any]]:
    path = config.work_dir / _table_file(name)
    n = int(artifact.embeddings[name].shape[0])
    if path.is_file():
        try:
            part = HashPlan.load(path)
            meta = part.metadata
            if (
                meta.get("fingerprint") != fingerprint
                or part.table_names != [name]
                or part[name].num_embeddings != n
            ):
                raise ValueError(f"made by another build (fingerprint {meta.get('fingerprint')})")
            return part[name], {**{k: meta[k] for k in _INFO_KEYS}, "resumed": True}
        except (ValueError, KeyError) as e:
            logger.warning("recomputing table %r: %s is not usable: %s", name, path, e)
    device = torch.device(device or "cpu")
    table, info = build_table_hash(
        name,
        artifact.embeddings[name].to(device),
        artifact.counts[name].to(device),
        rows=rows,
        num_hashes=config.num_hashes,
        combine=config.combine,
        method=config.method,
        projection=config.projection,
        rare_count=config.rare_count,
        **config.method_options,
    )
    info = {k: info[k] for k in _INFO_KEYS}
    HashPlan([table], metadata={"fingerprint": fingerprint, **info}).save(path)
    return table, {**info, "resumed": False}


def _gather_to_rank0(
    results: Results,
    names: list[str],
    assignment: list[list[str]],
    sizes: dict[str, int],
    config: BuildConfig,
    rank: int,
    group: Any,
) -> None:
    """Point-to-point sends of every rank's tables to rank 0's ``results``, in ``names`` order.

    Each sender's sequence is a subsequence of rank 0's receive order, so the blocking
    send/recv pairs cannot deadlock. Per table: an int64 header ``(H + 5,)``
    ``[M_0..M_{H-1}, fallback_merges, steps, rows, microseconds, resumed]``, then ``H``
    int32 mappings of shape ``(N,)``.
    """
    owner = {n: r for r, tables in enumerate(assignment) for n in tables}
    h = config.num_hashes
    for name in names:
        src = owner[name]
        if src == 0 or rank not in (0, src):
            continue
        if rank == src:
            table, info = results[name]
            header = [
                *table.heights,
                info["fallback_merges"],
                info["steps"],
                info["rows"],
                round(info["seconds"] * 1e6),
                int(info["resumed"]),
            ]
            dist.send(torch.tensor(header, dtype=torch.int64), dst=0, group=group)
            for m in table.mappings:
                dist.send(m.contiguous(), dst=0, group=group)
            continue
        header_H5 = torch.empty(h + 5, dtype=torch.int64)
        dist.recv(header_H5, src=src, group=group)
        mappings = [torch.empty(sizes[name], dtype=torch.int32) for _ in range(h)]
        for m in mappings:
            dist.recv(m, src=src, group=group)
        hdr = header_H5.tolist()
        table = TableHash(name, sizes[name], tuple(mappings), tuple(hdr[:h]), config.combine)
        info = dict(zip(_INFO_KEYS, (hdr[h + 3] / 1e6, hdr[h], hdr[h + 1], hdr[h + 2])))
        results[name] = (table, {**info, "resumed": bool(hdr[h + 4])})
