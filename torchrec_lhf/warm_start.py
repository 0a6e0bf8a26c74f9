"""Warm start: the compressed tables begin at the teacher's cluster centroids.

Shapes: ``N`` ids of a table, ``D`` the embedding dim (teacher = student), ``M`` rows of a
compressed table.

:func:`warm_start` (``python -m apps.dlrm.train --learned_hash PLAN --init_from TEACHER_DIR``)
sets, before the first step, every row of a compressed table to the access-count-weighted mean of the
teacher embeddings of the ids mapped to it (``+1`` on every count, so ids the teacher never
saw still count), and every uncompressed table to the teacher's own table. It needs a
teacher trained at the student's ``--embedding_dim`` (a dim-4 teacher does not fit a
dim-16 student) and single-hash plans (with ``H > 1`` the rows of a table are summed, so
no row has a centroid of its own). The dense layers start fresh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from torchrec_lhf.distributed.gather import copy_into
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)


def check_teacher(
    artifact: TeacherArtifact,
    plan: HashPlan | None,
    dim: int,
    heights: Mapping[str, int] | None = None,
) -> None:
    """Refuse a teacher that does not fit the student, before anything is built or copied.

    Args:
        artifact: the teacher (embeddings ``(N, D)`` per table).
        plan: the student's plan (``None``: every table full).
        dim: the student's embedding dim.
        heights: the student's tables and their ids ``N`` (``None``: not checked).

    Raises:
        ValueError: the teacher's dim is not ``dim``; a planned table has several hashes
            or is not in the teacher; the teacher and the plan disagree on a table's
            height; or, given ``heights``, the teacher and the student do not have the
            same tables of the same heights.
    """
    teacher = artifact.embeddings
    if heights is not None:
        missing = [name for name in heights if name not in teacher]
        if missing:  # (they would keep their random rows: a teacher of other data)
            raise ValueError(
                f"--init_from: the teacher has no table {missing} of the model; it has "
                f"{sorted(teacher)}"
            )
        extra = [name for name in teacher if name not in heights]
        if extra:
            raise ValueError(
                f"--init_from: the model has no table {extra} of the teacher; it has "
                f"{sorted(heights)}"
            )
    for name, emb_ND in teacher.items():
        if emb_ND.shape[1] != dim:
            raise ValueError(
                f"--init_from: teacher table {name!r} has dim {emb_ND.shape[1]}, the model "
                f"{dim}; train the teacher at --embedding_dim {dim}"
            )
        if heights is not None and emb_ND.shape[0] != heights[name]:
            raise ValueError(
                f"--init_from: teacher table {name!r} has {emb_ND.shape[0]} ids, the model's "
                f"table {heights[name]} (a teacher of other data?)"
            )
    for table in [] if plan is None else plan.tables:
        if table.name not in teacher:
            raise ValueError(
                f"--init_from: planned table {table.name!r} is not in the teacher, which has "
                f"{sorted(teacher)}"
            )
        if table.num_hashes != 1:
            raise ValueError(
                f"--init_from: table {table.name!r} has {table.num_hashes} hash functions; "
                "centroids need one (each row then is one group of ids)"
            )
        if table.num_embeddings != teacher[table.name].shape[0]:
            raise ValueError(
                f"--init_from: table {table.name!r} has {teacher[table.name].shape[0]} ids in "
                f"the teacher and {table.num_embeddings} in the plan"
            )


def centroid_tables(
    artifact: TeacherArtifact, plan: HashPlan | None, dim: int
) -> dict[str, torch.Tensor]:
    """The starting weights of every table: centroids for planned tables, else the teacher's.

    Args:
        artifact: the teacher (embeddings ``(N, D)`` and counts ``(N,)`` per table).
        plan: the student's plan (``None``: every table full).
        dim: the student's embedding dim.

    Returns:
        table name -> ``(M, D)`` (planned) or ``(N, D)`` float32 weights.

    Raises:
        ValueError: see :func:`check_teacher` (without the student's heights).
    """
    check_teacher(artifact, plan, dim)
    out = {}
    for name, emb_ND in artifact.embeddings.items():
        if plan is None or name not in plan:
            out[name] = emb_ND.float()
            continue
        table = plan[name]
        rows_N = table.dense_mapping(0).long()
        weight_N = artifact.counts[name].double() + 1.0
        m = table.heights[0]
        sums_MD = torch.zeros(m, dim, dtype=torch.float64).index_add_(
            0, rows_N, emb_ND.double() * weight_N[:, None]
        )
        totals_M = torch.zeros(m, dtype=torch.float64).index_add_(0, rows_N, weight_N)
        out[name] = (sums_MD / totals_M.clamp(min=1e-12)[:, None]).float()
    return out


def warm_start(
    model: nn.Module,
    artifact: TeacherArtifact,
    *,
    plan: HashPlan | None,
    dim: int,
    collection_fqn: str,
) -> None:
    """Copy :func:`centroid_tables` into a (sharded or unsharded) model's tables, in place.

    Every rank calls it with the same artifact; each writes its own shards.

    Args:
        model: the model, e.g. after ``DistributedModelParallel``.
        artifact: the teacher, trained at ``dim``.
        plan: the hash plan the model's collection was built with (``None``: full tables).
        dim: the model's embedding dim.
        collection_fqn: the embedding collection's name in ``model.state_dict()`` keys
            (its tables are ``{collection_fqn}.embedding_bags.{table}.weight``).

    Raises:
        ValueError: see :func:`check_teacher`, with the model's tables and heights. Nothing
            is copied then.
    """
    state = model.state_dict()
    prefix, suffix = f"{collection_fqn}.embedding_bags.", ".weight"
    rows = {
        k[len(prefix) : -len(suffix)]: t.shape[0]
        for k, t in state.items()
        if k.startswith(prefix) and k.endswith(suffix)
    }
    # the model's tables at their full heights (a planned table holds its plan's rows)
    heights = {
        n: plan[n].num_embeddings if plan is not None and n in plan else m for n, m in rows.items()
    }
    check_teacher(artifact, plan, dim, heights)  # (before anything is copied)
    tables = centroid_tables(artifact, plan, dim)
    for name, weight in tables.items():
        key = f"{prefix}{name}{suffix}"
        copy_into(key, state[key], weight)
    logger.info("warm start: %d tables from the teacher's centroids", len(tables))
