"""The distributed hash-build job: teacher artifact -> one hash plan.

One process::

    python -m apps.build_hash --teacher runs/teacher --fraction 0.1 --out runs/plan.safetensors

Many (tables are spread over the ranks; the plan is the same for any world size)::

    torchrun --nproc_per_node 4 -m apps.build_hash --teacher runs/teacher --fraction 0.1 \
        --out runs/plan.safetensors

or through torchx: ``torchx run torchx_components/lhf.py:stage --stage build_hash -j 1x4 -- --teacher ...``.
The flags are :class:`~torchrec_lhf.hash_build.config.BuildConfig`'s fields and
:class:`LaunchConfig`'s. Finished tables go to ``--work_dir`` (default ``<out>.work``); rerunning the same command
after a crash resumes from there. The plan appears at ``--out`` only when it is complete.
With several nodes, ``--work_dir`` should be on a shared filesystem (or rerun with the same
number of ranks per node so that each rank finds its own tables).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from apps.dlrm.runtime import setup_logging
from torchrec_lhf.cli import (
    add_config_flags,
    check_input_path,
    check_output_path,
    checked_fields,
    config_from_args,
    is_finite_number,
    run_command,
)
from torchrec_lhf.hash_build.artifact import TENSORS_FILE as TEACHER_TENSORS_FILE
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.job import BuildConfig, run_build
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)

MAX_TIMEOUT_MIN = 100 * 365 * 24 * 60
"""The longest collective timeout, in minutes (100 years). torch.distributed adds it to a
clock in int64 nanoseconds, which holds about 292 years: measured with gloo, 1.54e8 minutes
made the store's connect time out at once ("after 9240000000000ms"), and so did
(2**63 - 1) // 60e9 minutes; 1.53e8 worked."""


@dataclass(kw_only=True)
class LaunchConfig:
    """Where the build runs: process group and device (not part of the plan)."""

    backend: str | None = field(default=None, metadata={"choices": ("nccl", "gloo")})
    """Process group backend; default nccl with CUDA, gloo otherwise."""

    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    """Where to cluster: ``auto`` is CUDA when available."""

    timeout_min: float = 120.0
    """Collective timeout in minutes. NOTE: clustering a 10^8-id table takes long on CPU;
    rank 0 waits for the others in a blocking receive, so it must exceed the slowest rank's
    share."""

    @checked_fields
    def __post_init__(self) -> None:
        # (inf passed here and ended in timedelta's OverflowError at the process group,
        # 1e12 in a store that timed out at once)
        if not (is_finite_number(self.timeout_min) and 0 < self.timeout_min <= MAX_TIMEOUT_MIN):
            raise ValueError(
                f"timeout_min must be a number in (0, {MAX_TIMEOUT_MIN:.0f}] (minutes), got "
                f"{self.timeout_min!r}"
            )


def make_parser() -> argparse.ArgumentParser:
    """The app's flags, derived from :class:`BuildConfig` and :class:`LaunchConfig`."""
    p = argparse.ArgumentParser(
        prog="python -m apps.build_hash",
        description="Cluster a teacher's tables into learned hash functions (one hash plan).",
    )
    add_config_flags(p, BuildConfig, required=("teacher",))
    add_config_flags(p.add_argument_group("launch"), LaunchConfig)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[BuildConfig, LaunchConfig]:
    """Parse the flags into validated configs.

    Raises:
        ValueError: a bad value (e.g. ``--fraction 2``), named in the message.
    """
    args = make_parser().parse_args(argv)
    return config_from_args(BuildConfig, args), config_from_args(LaunchConfig, args)


def _device(launch: LaunchConfig, local_rank: int) -> torch.device:
    use_cuda = launch.device == "cuda" or (launch.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def run(config: BuildConfig, launch: LaunchConfig | None = None) -> HashPlan | None:
    """Run the build on this process's rank; returns the plan on rank 0, else ``None``.

    Joins the process group the caller made, or makes one from torchrun's environment.

    Raises:
        ValueError: no ``config.teacher``, or a ``work_dir`` of another build.
    """
    launch = launch or LaunchConfig()
    if config.teacher is None:
        raise ValueError("the build needs config.teacher, the teacher artifact's directory")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(launch, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        backend = launch.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=launch.timeout_min),
            device_id=device if backend == "nccl" else None,
        )
    try:
        artifact = TeacherArtifact.load(config.teacher)
        if rank == 0:
            logger.info(
                "teacher %s: %d tables, %d ids; %d rank(s) on %s",
                config.teacher,
                len(artifact.table_names),
                sum(artifact.sizes().values()),
                world_size,
                device,
            )
        return run_build(config, artifact, rank=rank, world_size=world_size, device=device)
    finally:
        if owns_group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> HashPlan | None:
    """Command-line entry point: ``python -m apps.build_hash --help``."""
    config, launch = parse_args(argv)
    check_input_path(
        "--teacher",
        config.teacher,
        expected="a teacher artifact directory (apps.teacher --out)",
        holds=TEACHER_TENSORS_FILE,
    )
    check_output_path("--out", config.out)
    check_output_path("--work_dir", config.work_dir, directory=True)
    return run(config, launch)


if __name__ == "__main__":
    # Rank-tagged INFO logs on rank 0, warnings elsewhere (entry point only: callers such
    # as the pipeline keep their own logging).
    setup_logging(int(os.environ.get("RANK", "0")))
    run_command(main)  # a bad flag value: a usage error, no traceback
