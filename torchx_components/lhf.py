"""torchx components of the learned-hashing pipeline: teacher, hash build, training, all.

Each component launches one of the apps with ``torchrun`` (through
:func:`torchx.components.dist.ddp`) on ``nnodes x nproc_per_node`` processes; the app's
own flags go after ``--``. From the repository root, with the virtual environment active
(``torchrun`` must be on ``PATH``)::

    torchx run -s local_cwd torchx_components/lhf.py:teacher --nproc_per_node 2 -- \\
        --dataset synthetic --out runs/teacher
    torchx run -s local_cwd torchx_components/lhf.py:build_hash --nproc_per_node 2 -- \\
        --teacher runs/teacher --fraction 0.1 --out runs/plan.safetensors
    torchx run -s local_cwd torchx_components/lhf.py:train --nproc_per_node 2 -- \\
        --dataset synthetic --learned_hash runs/plan.safetensors
    torchx run torchx_components/lhf.py:build_hash --help   # the component's flags

On GPUs add ``--gpu N`` (GPUs per node) and set ``--nproc_per_node N``; on a cluster pick
another scheduler (``-s kubernetes``, ``-s slurm``, ...) and ``--nnodes``. ``.torchxconfig``
at the repository root makes ``local_cwd`` the default scheduler.
"""

# NOTE: no ``from __future__ import annotations`` and ``Optional``/``Dict``/``List`` rather
# than ``X | None``/``dict``/``list``: torchx 0.7 reads these annotations at run time and
# its component linter only understands the ``typing`` spellings.
# ruff: noqa: UP006, UP035, UP045
from typing import Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import dist


def _launch(
    module: str,
    script_args: tuple,
    *,
    name: str,
    nnodes: int,
    nproc_per_node: int,
    j: Optional[str],
    image: str,
    h: Optional[str],
    cpu: int,
    gpu: int,
    memMB: int,
    env: Optional[Dict[str, str]],
    max_retries: int,
    rdzv_port: int,
    mounts: Optional[List[str]],
) -> specs.AppDef:
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(
            f"nnodes and nproc_per_node must be >= 1, got {nnodes} and {nproc_per_node}"
        )
    return dist.ddp(
        *script_args,
        m=module,
        name=name,
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


def teacher(
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    j: Optional[str] = None,
    name: str = "teacher",
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
    """Train the small teacher DLRM and write its artifact (embeddings and access counts).

    Runs ``python -m apps.teacher`` on every process; see ``python -m apps.teacher --help``.
    Example: ``torchx run -s local_cwd torchx_components/lhf.py:teacher --nproc_per_node 2
    -- --dataset synthetic --out runs/teacher``.

    Args:
        script_args: the teacher's flags, after ``--`` (e.g. ``--dataset``, ``--out``).
        nnodes: number of nodes (hosts).
        nproc_per_node: processes per node (one per GPU on GPU hosts).
        j: ``[min_nnodes:]nnodes x nproc_per_node`` (e.g. ``2x8``); overrides the two above.
        name: the job's name.
        image: container image (ignored by ``local_cwd``).
        h: a registered named resource; takes precedence over cpu, gpu and memMB.
        cpu: CPUs per node.
        gpu: GPUs per node.
        memMB: memory per node in MB.
        env: environment variables, ``A=1,B=2``.
        max_retries: scheduler retries.
        rdzv_port: rendezvous port on the first node (multi-node runs only).
        mounts: mounts for container schedulers (``type=bind,src=/host,dst=/job``).
    """
    return _launch(
        "apps.teacher", script_args, name=name, nnodes=nnodes, nproc_per_node=nproc_per_node,
        j=j, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, env=env, max_retries=max_retries,
        rdzv_port=rdzv_port, mounts=mounts,
    )  # fmt: skip


def build_hash(
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    j: Optional[str] = None,
    name: str = "build_hash",
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
    """Cluster a teacher's tables into learned hash functions: one hash plan.

    Runs ``python -m apps.build_hash`` on every process; tables are spread over the
    processes and the plan is the same for any number of them. Rerunning after a crash
    resumes from the work directory. See ``python -m apps.build_hash --help``.
    Example: ``torchx run -s local_cwd torchx_components/lhf.py:build_hash --nproc_per_node 2
    -- --teacher runs/teacher --fraction 0.1 --out runs/plan.safetensors``.

    Args:
        script_args: the build's flags, after ``--`` (``--teacher``, ``--fraction``, ``--out``, ...).
        nnodes: number of nodes (hosts); several nodes need a shared ``--work_dir``.
        nproc_per_node: processes per node (one per GPU on GPU hosts).
        j: ``[min_nnodes:]nnodes x nproc_per_node`` (e.g. ``2x8``); overrides the two above.
        name: the job's name.
        image: container image (ignored by ``local_cwd``).
        h: a registered named resource; takes precedence over cpu, gpu and memMB.
        cpu: CPUs per node.
        gpu: GPUs per node.
        memMB: memory per node in MB.
        env: environment variables, ``A=1,B=2``.
        max_retries: scheduler retries (a retry resumes the build).
        rdzv_port: rendezvous port on the first node (multi-node runs only).
        mounts: mounts for container schedulers (``type=bind,src=/host,dst=/job``).
    """
    return _launch(
        "apps.build_hash", script_args, name=name, nnodes=nnodes, nproc_per_node=nproc_per_node,
        j=j, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, env=env, max_retries=max_retries,
        rdzv_port=rdzv_port, mounts=mounts,
    )  # fmt: skip


def train(
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    j: Optional[str] = None,
    name: str = "train",
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
    """Train the DLRM app, with a learned hash plan (``--learned_hash PLAN``) or without.

    Runs ``python -m apps.dlrm.train`` on every process; see
    ``python -m apps.dlrm.train --help``. Example: ``torchx run -s local_cwd
    torchx_components/lhf.py:train --nproc_per_node 2 -- --dataset synthetic
    --learned_hash runs/plan.safetensors``.

    Args:
        script_args: the app's flags, after ``--`` (``--dataset``, ``--learned_hash``, ...).
        nnodes: number of nodes (hosts).
        nproc_per_node: processes per node (one per GPU on GPU hosts).
        j: ``[min_nnodes:]nnodes x nproc_per_node`` (e.g. ``2x8``); overrides the two above.
        name: the job's name.
        image: container image (ignored by ``local_cwd``).
        h: a registered named resource; takes precedence over cpu, gpu and memMB.
        cpu: CPUs per node.
        gpu: GPUs per node.
        memMB: memory per node in MB.
        env: environment variables, ``A=1,B=2``.
        max_retries: scheduler retries.
        rdzv_port: rendezvous port on the first node (multi-node runs only).
        mounts: mounts for container schedulers (``type=bind,src=/host,dst=/job``).
    """
    return _launch(
        "apps.dlrm.train", script_args, name=name, nnodes=nnodes, nproc_per_node=nproc_per_node,
        j=j, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, env=env, max_retries=max_retries,
        rdzv_port=rdzv_port, mounts=mounts,
    )  # fmt: skip


def pipeline(
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    j: Optional[str] = None,
    name: str = "pipeline",
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
    """The whole pipeline: teacher, hash build, then the compressed and baseline models.

    Runs ``python -m apps.pipeline`` on every process; see ``python -m apps.pipeline --help``.
    Example: ``torchx run -s local_cwd torchx_components/lhf.py:pipeline --nproc_per_node 2``.

    Args:
        script_args: the pipeline's flags, after ``--``.
        nnodes: number of nodes (hosts).
        nproc_per_node: processes per node (one per GPU on GPU hosts).
        j: ``[min_nnodes:]nnodes x nproc_per_node`` (e.g. ``2x8``); overrides the two above.
        name: the job's name.
        image: container image (ignored by ``local_cwd``).
        h: a registered named resource; takes precedence over cpu, gpu and memMB.
        cpu: CPUs per node.
        gpu: GPUs per node.
        memMB: memory per node in MB.
        env: environment variables, ``A=1,B=2``.
        max_retries: scheduler retries.
        rdzv_port: rendezvous port on the first node (multi-node runs only).
        mounts: mounts for container schedulers (``type=bind,src=/host,dst=/job``).
    """
    return _launch(
        "apps.pipeline", script_args, name=name, nnodes=nnodes, nproc_per_node=nproc_per_node,
        j=j, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, env=env, max_retries=max_retries,
        rdzv_port=rdzv_port, mounts=mounts,
    )  # fmt: skip
