"""The distributed hash-build job: cluster a teacher's tables on many ranks, write one plan.

Each rank clusters the tables :func:`assign_tables` gives it, writes every finished table
atomically into a work directory (so a rerun after a crash skips it), sends its tables to
rank 0 over a CPU (gloo) group, and rank 0 assembles them, in the teacher's table order,
into one :class:`~torchrec_lhf.plan.HashPlan` written atomically to ``out``. A table's
result depends only on its inputs and the config, never on which rank computed it, so the
plan is the same for every world size. Each rank reads its tables from the (lazy) teacher
artifact one at a time and frees each before the next, so a rank holds one table's
embeddings and counts and its clustering's scratch, never the whole teacher.

Shapes: ``N`` ids of a table, ``H`` hash functions per table, ``M_h`` internal heights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from torchrec_lhf._io import atomic_write_json, tensor_digest
from torchrec_lhf.clustering.projection import check_projection
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.config import BuildConfig, fitted_head_tail, table_rows
from torchrec_lhf.hash_build.head_tail import HeadTail
from torchrec_lhf.hash_build.plan_builder import build_table_hash, projected_hashes
from torchrec_lhf.plan import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping, row_dtype

logger = logging.getLogger(__name__)

JOB_VERSION = 1
"""Bumped when a change makes the tables in an older work directory invalid."""

MARKER_FILE = "build.json"
_INFO_KEYS = ("seconds", "fallback_merges", "steps", "rows")
TableHook = Callable[[str, dict[str, Any]], None]
Results = dict[str, tuple[TableHash, dict[str, Any]]]


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
        ValueError: bad ``rows_per_table``, a projection a table's teacher dim cannot
            serve, or ``work_dir`` holds another build's tables (another config or
            teacher: pass ``restart=True`` or another ``work_dir``).
    """
    group = _cpu_group(world_size)
    sizes = artifact.sizes()
    _check_projection(config, artifact)
    spec = fitted_head_tail(sizes, config, artifact.counts)
    rows = table_rows(sizes, config, artifact.counts, spec)
    teacher_sha = _teacher_sha256(artifact)
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
        results[name] = _build_or_resume(
            name, artifact, rows[name], config, spec, fingerprint, device
        )
        if on_table_done is not None:
            on_table_done(name, dict(results[name][1]))

    if world_size > 1:
        _gather_to_rank0(results, list(rows), assignment, sizes, config, rank, group)
        dist.barrier(group=group)
    if rank != 0:
        return None
    return _save_plan(config, results, list(rows), len(sizes), teacher_sha, spec)


def _check_projection(config: BuildConfig, artifact: TeacherArtifact) -> None:
    """Raises ValueError, on every rank alike and before any collective, where a table's
    teacher dim cannot serve ``config``'s projection (before: the first rank to reach such a
    table raised, and rank 0 waited on its tables)."""
    for name, emb in artifact.embeddings.items():  # a loop per table
        try:
            hashes = projected_hashes(config.compose, config.num_hashes)
            check_projection(config.projection, hashes, int(emb.shape[1]))
        except ValueError as e:
            raise ValueError(f"table {name!r}: {e}") from None


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


def _teacher_sha256(artifact: TeacherArtifact) -> str:
    """The teacher's checksum: its manifest's ``sha256``, else a digest of its tensors."""
    return artifact.manifest.get("sha256") or tensor_digest(
        {
            f"{k}/{kind}": v
            for kind, d in (("embeddings", artifact.embeddings), ("counts", artifact.counts))
            for k, v in d.items()
        }
    )


def _save_plan(
    config: BuildConfig,
    results: Results,
    names: list[str],
    num_tables: int,
    teacher_sha: str,
    spec: HeadTail,
) -> HashPlan:
    """Assemble the tables ``names`` (in that order) into the plan, save it, log a summary.

    Args:
        config: the build config (``out``, and the plan options for the metadata).
        results: table name -> ``(table, info)`` of every compressed table.
        names: the compressed tables, in the teacher's order.
        num_tables: how many tables the teacher has (for the log).
        teacher_sha: the teacher's checksum, recorded in the metadata.
        spec: the head/tail settings built with (a head threshold that ``index_share``
            raised is recorded as ``head_min_count_fitted``, the fill's that ``fill_share``
            raised as ``fill_min_count_fitted``).

    Returns:
        The plan, as written to ``config.out``.
    """
    infos = {n: results[n][1] for n in names}
    metadata = {
        **config.plan_options(),
        **(
            {"head_min_count_fitted": spec.min_count}
            if spec.min_count != config.head_min_count
            else {}
        ),
        **({"fill_min_count_fitted": spec.fill_min_count} if spec.fill_min_count != 1 else {}),
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
    plan = HashPlan([results[n][0] for n in names], metadata=metadata)
    plan.save(config.out)
    logger.info(
        "hash plan written to %s (%d of %d tables compressed)\n%s",
        config.out,
        len(plan),
        num_tables,
        format_build_summary(plan, infos),
    )
    return plan


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
    spec: HeadTail,
    fingerprint: str,
    device: Any,
) -> tuple[TableHash, dict[str, Any]]:
    path = config.work_dir / _table_file(name)
    n = artifact.sizes()[name]
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
    # NOTE: one table read from the (lazy) artifact at a time; freed when this returns
    table, info = build_table_hash(
        name,
        artifact.embeddings[name].to(device),
        artifact.counts[name].to(device),
        rows=rows,
        num_hashes=config.num_hashes,
        combine=config.combine,
        clustering=config.clustering,
        projection=config.projection,
        head_tail=spec,
        value_shrinkage=config.value_shrinkage,
        compose=config.compose,
        **config.clustering_options,
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
    ``[M_0..M_{H-1}, fallback_merges, steps, rows, microseconds, resumed]``, then per
    hash function its encoding (:func:`_send_mapping`).
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
                _send_mapping(m, group)
            continue
        header_H5 = torch.empty(h + 5, dtype=torch.int64)
        dist.recv(header_H5, src=src, group=group)
        hdr = header_H5.tolist()
        mappings = [_recv_mapping(sizes[name], hdr[i], src, group) for i in range(h)]
        table = TableHash(name, sizes[name], tuple(mappings), tuple(hdr[:h]), config.combine)
        info = dict(zip(_INFO_KEYS, (hdr[h + 3] / 1e6, hdr[h], hdr[h + 1], hdr[h + 2])))
        results[name] = (table, {**info, "resumed": bool(hdr[h + 4])})


def _send_mapping(m: torch.Tensor | CompactMapping, group: Any) -> None:
    """One hash function to rank 0: an int64 header ``[compact, K, seed, offset, rows]``,
    then the dense int32 ``(N,)`` mapping, or the head's int64 ids and int32 rows ``(K,)``."""
    if isinstance(m, CompactMapping):
        header = [1, m.num_head, m.tail_seed, m.tail_offset, m.tail_rows]
        dist.send(torch.tensor(header, dtype=torch.int64), dst=0, group=group)
        if m.num_head:
            dist.send(m.head_ids.contiguous(), dst=0, group=group)
            dist.send(m.head_rows.to(torch.int32).contiguous(), dst=0, group=group)
        return
    dist.send(torch.tensor([0, 0, 0, 0, 0], dtype=torch.int64), dst=0, group=group)
    dist.send(m.contiguous(), dst=0, group=group)


def _recv_mapping(
    num_embeddings: int, height: int, src: int, group: Any
) -> torch.Tensor | CompactMapping:
    """Receive what :func:`_send_mapping` sent (``height``: the internal table's rows)."""
    header_5 = torch.empty(5, dtype=torch.int64)
    dist.recv(header_5, src=src, group=group)
    compact, k, seed, offset, rows = header_5.tolist()
    if not compact:
        mapping_N = torch.empty(num_embeddings, dtype=torch.int32)
        dist.recv(mapping_N, src=src, group=group)
        return mapping_N
    ids_K, rows_K = torch.empty(k, dtype=torch.int64), torch.empty(k, dtype=torch.int32)
    if k:
        dist.recv(ids_K, src=src, group=group)
        dist.recv(rows_K, src=src, group=group)
    return CompactMapping(
        ids_K, rows_K.to(row_dtype(height)), tail_seed=seed, tail_offset=offset, tail_rows=rows
    )
