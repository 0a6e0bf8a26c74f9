"""torchx component of the learned-hashing pipeline: one component, any stage.

``stage`` launches one of the apps with ``torchrun`` (through
:func:`torchx.components.dist.ddp`, which takes ``-m MODULE``) on
``nnodes x nproc_per_node`` processes; ``--stage`` picks the app and the app's own flags go
after ``--``. From the repository root, with the virtual environment active (``torchrun``
must be on ``PATH``)::

    torchx run -s local_cwd torchx_components/lhf.py:stage --stage teacher \\
        --nproc_per_node 2 -- --dataset synthetic --out runs/teacher
    torchx run -s local_cwd torchx_components/lhf.py:stage --stage build_hash \\
        --nproc_per_node 2 -- --teacher runs/teacher --fraction 0.1 --out runs/plan.safetensors
    torchx run -s local_cwd torchx_components/lhf.py:stage --stage train \\
        --nproc_per_node 2 -- --dataset synthetic --learned_hash runs/plan.safetensors
    torchx run torchx_components/lhf.py:stage --help   # the component's flags

On GPUs add ``--gpu N`` (GPUs per node) and set ``--nproc_per_node N``; on a cluster pick
another scheduler (``-s kubernetes``, ``-s slurm``, ...) and ``--nnodes``. ``.torchxconfig``
at the repository root makes ``local_cwd`` the default scheduler.

NOTE: one function rather than one per stage: torchx reads a component's signature from
its source (its linter parses the file), so per-stage components would each repeat the
same fourteen parameters and docstring.
"""

# NOTE: no ``from __future__ import annotations`` and ``Optional``/``Dict``/``List`` rather
# than ``X | None``/``dict``/``list``: torchx 0.7 reads these annotations at run time and
# its component linter only understands the ``typing`` spellings.
# ruff: noqa: UP006, UP035, UP045
from typing import Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import dist

STAGES = {
    "teacher": "apps.teacher",
    "build_hash": "apps.build_hash",
    "train": "apps.dlrm.train",
    "pipeline": "apps.pipeline",
    "serve": "apps.serve",
    "criteo_to_npy": "apps.criteo_to_npy",
    "make_synthetic_criteo": "apps.make_synthetic_criteo",
}
"""``--stage`` -> the module torchrun runs (its ``--help`` lists the flags after ``--``)."""

SINGLE_PROCESS = ("serve", "criteo_to_npy", "make_synthetic_criteo")
"""Stages that run in one process (not distributed): more would each do the whole job."""


def stage(
    *script_args: str,
    stage: str = "pipeline",
    nnodes: int = 1,
    nproc_per_node: int = 1,
    j: Optional[str] = None,
    name: Optional[str] = None,
    image: str = torchx.IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Run a stage of the learned-hashing pipeline on every process with torchrun.

    Stages: ``teacher`` (train the small teacher DLRM, write its embeddings and access
    counts), ``build_hash`` (cluster the teacher's tables into one hash plan; tables are
    spread over the processes, the plan is the same for any number of them, and a rerun
    resumes from the work directory), ``train`` (the DLRM app, with ``--learned_hash PLAN``
    or ``--compression METHOD``) and ``pipeline`` (all of them, against the baselines); in
    one process: ``serve`` (score requests with an exported model), ``criteo_to_npy``
    (Criteo TSV to memory-mapped arrays) and ``make_synthetic_criteo`` (synthetic data at
    the MLPerf heights, in chunks).
    Example: ``torchx run -s local_cwd torchx_components/lhf.py:stage --stage build_hash
    --nproc_per_node 2 -- --teacher runs/teacher --fraction 0.1 --out runs/plan.safetensors``.

    Args:
        script_args: the stage's flags, after ``--`` (``python -m apps.<stage> --help``).
        stage: teacher, build_hash, train, pipeline; serve, criteo_to_npy or
            make_synthetic_criteo (one process).
        nnodes: number of nodes (hosts); build_hash on several needs a shared ``--work_dir``.
        nproc_per_node: processes per node (one per GPU on GPU hosts).
        j: ``[min_nnodes:]nnodes x nproc_per_node`` (e.g. ``2x8``); overrides the two above.
        name: the job's name (default: the stage).
        image: container image (ignored by ``local_cwd``).
        h: a registered named resource; takes precedence over cpu, gpu and memMB.
        cpu: CPUs per node.
        gpu: GPUs per node.
        memMB: memory per node in MB.
        env: environment variables, ``A=1,B=2``.
        max_retries: scheduler retries (a build_hash retry resumes the build).
        rdzv_port: rendezvous port on the first node (multi-node runs only).
        mounts: mounts for container schedulers (``type=bind,src=/host,dst=/job``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(
            f"nnodes and nproc_per_node must be >= 1, got {nnodes} and {nproc_per_node}"
        )
    if j is not None:
        _check_j(j)
    if stage in SINGLE_PROCESS:
        _check_one_process(stage, j or f"{nnodes}x{nproc_per_node}")
    _check_at_least(cpu=(cpu, 1), gpu=(gpu, 0), memMB=(memMB, 1), max_retries=(max_retries, 0))
    if not 1 <= rdzv_port <= 65535:
        raise ValueError(f"rdzv_port must be a TCP port in [1, 65535], got {rdzv_port}")
    return dist.ddp(
        *script_args,
        m=STAGES[stage],
        name=name or stage,
        image=image,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j or f"{nnodes}x{nproc_per_node}",
        env=dict(env or {}),
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )


def _check_j(j: str) -> None:
    """Refuse a ``-j`` that parses but launches nothing or cannot be met (``0x2``, ``3:2x1``)."""
    min_nnodes, max_nnodes, nproc_per_node, _ = dist.parse_nnodes(j)
    if min_nnodes < 1 or max_nnodes < min_nnodes or nproc_per_node < 1:
        raise ValueError(
            f"j must be [min_nnodes:]nnodes x nproc_per_node with 1 <= min_nnodes <= nnodes"
            f" and nproc_per_node >= 1, got {j!r}"
        )


def _check_one_process(stage: str, j: str) -> None:
    """Refuse more than one process for a stage that is not distributed."""
    _, max_nnodes, nproc_per_node, _ = dist.parse_nnodes(j)
    if max_nnodes * nproc_per_node != 1:
        raise ValueError(
            f"stage {stage!r} runs in one process (it is not distributed: each process would "
            f"do the whole job), got {j!r}; expected nnodes 1 and nproc_per_node 1"
        )


def _check_at_least(**values: "tuple[int, int]") -> None:
    """Raise ValueError naming the first ``name=(value, least)`` whose value is below least."""
    for name, (value, least) in values.items():
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
