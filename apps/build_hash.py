"""The distributed hash-build job: teacher artifact -> one hash plan.

One process::

    python -m apps.build_hash --teacher runs/teacher --fraction 0.1 --out runs/plan.safetensors

Many (tables are spread over the ranks; the plan is the same for any world size)::

    torchrun --nproc_per_node 4 -m apps.build_hash --teacher runs/teacher --fraction 0.1 \
        --out runs/plan.safetensors

or through torchx: ``torchx run torchx_components/lhf.py:build_hash -j 1x4 -- --teacher ...``.
Finished tables go to ``--work_dir`` (default ``<out>.work``); rerunning the same command
after a crash resumes from there. The plan appears at ``--out`` only when it is complete.
With several nodes, ``--work_dir`` should be on a shared filesystem (or rerun with the same
number of ranks per node so that each rank finds its own tables).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist

from apps.dlrm.runtime import setup_logging
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.compression.budget import BUDGETS
from torchrec_lhf.hash_build.job import BuildConfig, run_build
from torchrec_lhf.clustering.registry import list_clusterings
from torchrec_lhf.plan import COMBINE_MODES, HashPlan

logger = logging.getLogger(__name__)

# NOTE: clustering a 10^8-id table takes long on CPU; rank 0 waits for the others in a
# blocking receive, so the collective timeout must exceed the slowest rank's share.
_DEFAULT_TIMEOUT_MIN = 120


def _rows_per_table(text: str) -> dict[str, int]:
    """``--rows_per_table``: a JSON object, or the path of a file holding one."""
    source = "argument"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise argparse.ArgumentTypeError(
                f"--rows_per_table must be a JSON object or a JSON file, got {text!r} (no such file)"
            )
        text, source = path.read_text(), str(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"--rows_per_table: {source} is not valid JSON: {e}"
        ) from e
    if not isinstance(rows, dict):
        raise argparse.ArgumentTypeError(
            f"--rows_per_table must be a JSON object table -> rows, got {type(rows).__name__}"
        )
    return rows


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apps.build_hash",
        description="Cluster a teacher's tables into learned hash functions (one HashPlan).",
    )
    p.add_argument("--teacher", required=True, type=Path, help="teacher artifact directory")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--fraction", type=float, help="compressed rows per table as a fraction of its ids"
    )
    size.add_argument(
        "--rows_per_table",
        type=_rows_per_table,
        help="JSON object (or file) table -> compressed rows, e.g. '{\"t_cat_0\": 1000}'",
    )
    p.add_argument("--min_table_rows", type=int, default=100_000, help="smaller tables stay full")
    p.add_argument(
        "--rare_count",
        type=int,
        default=0,
        help="ids the teacher saw fewer times are hashed, not clustered (0: the paper's)",
    )
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="table",
        help="'table': --fraction of each table; 'total': --fraction of all rows, small tables "
        "full while cheap, the rest in proportion (torchrec_lhf.compression.budget)",
    )
    p.add_argument("--num_hashes", type=int, default=1, help="hash functions per table")
    p.add_argument("--combine", choices=COMBINE_MODES, default="sum", help="how hashes combine")
    p.add_argument(
        "--method", default="agglomerative", choices=list_clusterings(), help="clustering"
    )
    p.add_argument("--projection", default="pca", help="'pca', 'dim:k' or 'dim:k0,k1,...'")
    p.add_argument(
        "--method_options",
        type=json.loads,
        default={},
        help="JSON object passed to the clustering, e.g. '{\"max_cluster_size\": null}'",
    )
    p.add_argument("--out", required=True, type=Path, help="the plan file to write")
    p.add_argument(
        "--work_dir", type=Path, help="finished tables, for resuming (default <out>.work)"
    )
    p.add_argument("--restart", action="store_true", help="discard --work_dir's tables first")
    p.add_argument("--backend", choices=("nccl", "gloo"), help="default: nccl with CUDA, else gloo")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to cluster"
    )
    p.add_argument(
        "--timeout_min", type=float, default=_DEFAULT_TIMEOUT_MIN, help="collective timeout"
    )
    return p


def main(argv: list[str] | None = None) -> HashPlan | None:
    """Run the build on this process's rank; returns the plan on rank 0, else ``None``.

    Raises:
        ValueError: bad flags (e.g. ``--fraction 2``), or a ``--work_dir`` of another build.
    """
    args = make_parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    config = BuildConfig(
        fraction=args.fraction,
        rows_per_table=args.rows_per_table,
        min_table_rows=args.min_table_rows,
        budget=args.budget,
        rare_count=args.rare_count,
        num_hashes=args.num_hashes,
        combine=args.combine,
        method=args.method,
        projection=args.projection,
        method_options=args.method_options,
        work_dir=args.work_dir or args.out.with_name(args.out.name + ".work"),
        out=args.out,
        restart=args.restart,
        teacher=str(args.teacher),
    )
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=args.timeout_min),
            device_id=device if backend == "nccl" else None,
        )
    try:
        artifact = TeacherArtifact.load(args.teacher)
        if rank == 0:
            logger.info(
                "teacher %s: %d tables, %d ids; %d rank(s) on %s",
                args.teacher,
                len(artifact.table_names),
                sum(int(e.shape[0]) for e in artifact.embeddings.values()),
                world_size,
                device,
            )
        return run_build(config, artifact, rank=rank, world_size=world_size, device=device)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _setup_logging() -> None:
    """Rank-tagged INFO logs on rank 0, warnings elsewhere (entry point only: callers such
    as the pipeline keep their own logging)."""
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(rank)


if __name__ == "__main__":
    _setup_logging()
    main()
