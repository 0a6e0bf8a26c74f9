"""``apps.pipeline --resume``: an interrupted or changed run continues where it can.

Each stage of the pipeline (the teacher, each plan's hash build, each training) records in
``out_dir/stages/<stage>.json`` the settings it runs with, when it starts (``started``)
and, with its result, when it ends (``done``); the files are written atomically by rank 0.
Before anything runs, every rank reads them, and a barrier follows, so that all ranks take
the same decision per stage (:func:`decide`):

- ``skip``: done with the same settings, and nothing it depends on runs again: its result
  is read back (a training's metrics, a teacher or build whose output files are still as it
  left them: the record keeps each file's size and modification time);
- ``resume``: started with the same settings and not done: the teacher and the trainings
  continue from their checkpoints (``--checkpoint_every``), the hash build from its finished
  tables;
- ``fresh``: anything else (no record, one not of the form :func:`mark` writes, which a
  warning names, other settings, a stage it depends on runs again):
  its checkpoints are discarded and it runs from the start.

The settings are a stage config's fields, without those that say how a run is run, not
what it makes (:data:`RUN_FIELDS`): a run resumed with another ``--fraction`` reuses the
teacher, rebuilds the plans and retrains, and never mixes checkpoints of two settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from apps.plan_candidates import CANDIDATE_PREFIX
from apps.teacher import TeacherConfig
from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.hash_build.artifact import TENSORS_FILE as TEACHER_TENSORS_FILE

logger = logging.getLogger(__name__)

STAGES_DIR = "stages"
CHECKPOINTS_DIR = "checkpoints"
RUN_FIELDS = frozenset(
    {"resume", "checkpoint_dir", "checkpoint_every", "metrics_json", "log_every", "restart"}
)
"""Config fields that do not change what a stage makes (at any nesting level)."""
ACTIONS = ("skip", "resume", "fresh")


def settings(config: Any) -> Any:
    """The JSON form of a stage's (dataclass) config without :data:`RUN_FIELDS`."""
    if dataclasses.is_dataclass(config):
        return {
            f.name: settings(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if f.name not in RUN_FIELDS
        }
    if isinstance(config, dict):
        return {str(k): settings(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [settings(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return json.loads(json.dumps(config, default=str))


def stage_settings(stage: str, stage_config: Any) -> dict[str, Any]:
    """What a stage's record holds as its settings: its name and :func:`settings`."""
    return {"stage": stage, "config": settings(stage_config)}


def record_path(out: Path, stage: str) -> Path:
    return out / STAGES_DIR / f"{stage}.json"


def checkpoint_dir(out: Path, stage: str) -> Path:
    """Where a stage's checkpoints go (``--checkpoint_every``)."""
    return out / CHECKPOINTS_DIR / stage


def read_record(out: Path, stage: str) -> dict[str, Any] | None:
    """The stage's record, or None if it has none, it cannot be read or it is not of the
    form :func:`mark` writes (:func:`record_problem`): then the stage runs afresh, with a
    warning naming the file and what was wrong."""
    path = record_path(out, stage)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("%s unreadable (%s): the stage runs afresh", path, e)
        return None
    problem = record_problem(stage, record)
    if problem is not None:
        logger.warning("%s is not a stage record (%s): the stage runs afresh", path, problem)
        return None
    return record


def record_problem(stage: str, record: Any) -> str | None:
    """What is wrong with a stage's record (None: it is of the form :func:`mark` writes).

    A record is an object with ``settings`` (an object) and ``status`` (``started`` or
    ``done``); a done one has ``result`` (an object: a training's with ``metrics``, an
    object, and ``seconds``, a number) and, if written since outputs were recorded,
    ``outputs`` (file name -> ``[size, mtime_ns]``)."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("settings"), dict):
        return f"'settings' must be an object, got {record.get('settings')!r}"
    status = record.get("status")
    if status not in ("started", "done"):
        return f"'status' must be 'started' or 'done', got {status!r}"
    if status == "started":
        return None
    result = record.get("result")
    if not isinstance(result, dict):
        return f"a done stage's 'result' must be an object, got {result!r}"
    if stage.startswith("train_"):
        if not isinstance(result.get("metrics"), dict):
            return f"a training's 'result.metrics' must be an object, got {result.get('metrics')!r}"
        seconds = result.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return f"a training's 'result.seconds' must be a number, got {seconds!r}"
    outputs = record.get("outputs", {})
    if not isinstance(outputs, dict):
        return f"'outputs' must be an object, got {outputs!r}"
    for name, stat in outputs.items():
        if not (
            isinstance(stat, list)
            and len(stat) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in stat)
        ):
            return f"'outputs' entry {name!r} must be [size, mtime_ns], got {stat!r}"
    return None


def output_files(out: Path, paths: Iterable[Path]) -> dict[str, list[int]]:
    """A stage's output files as its record keeps them: each file's size and modification
    time (ns), by its path relative to ``out`` (absolute outside it); a directory stands for
    the files directly in it, and a missing path for none."""
    files: dict[str, list[int]] = {}
    for path in paths:
        found = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in found:
            try:
                stat = file.stat()
            except FileNotFoundError:
                continue
            name = file.relative_to(out) if file.is_relative_to(out) else file.resolve()
            files[str(name)] = [stat.st_size, stat.st_mtime_ns]
    return files


def outputs_unchanged(
    record: dict[str, Any] | None, out: Path, paths: Iterable[Path], *, required: Path | None
) -> bool:
    """Whether a done stage's outputs are as its record left them (:func:`output_files`).

    A record written before outputs were recorded has no ``outputs``: then only whether
    ``required`` (its main output, or None) is still a file."""
    if record is None or "outputs" not in record:
        return required is None or required.is_file()
    return record["outputs"] == output_files(out, paths)


def decide(record: dict[str, Any] | None, now: Any, *, upstream_runs: bool, output_ok: bool) -> str:
    """What ``--resume`` does with a stage (one of :data:`ACTIONS`).

    Args:
        record: the stage's record (:func:`read_record`).
        now: its settings now (:func:`stage_settings`).
        upstream_runs: a stage it depends on does not skip.
        output_ok: its output (a teacher artifact, a plan file) is as it left it
            (:func:`outputs_unchanged`; True for a training, whose result is in its record).
    """
    if record is None or upstream_runs or record.get("settings") != now:
        return "fresh"
    if record.get("status") == "done" and output_ok and "result" in record:
        return "skip"
    return "resume"


def mark(
    out: Path, stage: str, stage_config: Any, result: Any = None, outputs: Iterable[Path] = ()
) -> None:
    """Record (rank 0) that the stage, run with ``stage_config``, started (``result`` None)
    or ended with ``result`` (JSON), leaving ``outputs`` (:func:`output_files`)."""
    if not is_main():
        return
    record = {
        "settings": stage_settings(stage, stage_config),
        "status": "started" if result is None else "done",
    }
    if result is not None:
        record["result"] = result
        record["outputs"] = output_files(out, outputs)
    atomic_write_json(record_path(out, stage), record)


def teacher_outputs(teacher_config: TeacherConfig) -> list[Path]:
    """The teacher stage's output: its artifact directory."""
    return [Path(teacher_config.out)]


def actions(
    resume: bool,
    out: Path,
    teacher_config: TeacherConfig,
    builds: dict[str, Any],
    trains: dict[str, Any],
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Each stage's action (one of :data:`ACTIONS`), decided on every rank from the records
    before any is written (a barrier follows); every stage ``fresh`` without ``resume``.
    Also the results of the stages that skip, as their records hold them (each record is
    read once: what a rank decided on is what it reads back).

    Args:
        resume: ``--resume``.
        out: the pipeline's ``out_dir``.
        teacher_config: the teacher's config (a stage only where there are builds).
        builds: the hash builds by candidate name, the learned hash's own first.
        trains: the trainings by method (``lhf``, its candidates ``lhf-<name>``, the others).
    """
    decided: dict[str, str] = {}
    skipped: dict[str, dict[str, Any]] = {}

    def decide_stage(
        stage: str,
        stage_config: Any,
        upstream: list[str],
        outputs: Iterable[Path] = (),
        required: Path | None = None,
    ) -> None:
        if not resume:
            decided[stage] = "fresh"
            return
        record = read_record(out, stage)
        decided[stage] = decide(
            record,
            stage_settings(stage, stage_config),
            upstream_runs=any(decided[u] != "skip" for u in upstream),
            output_ok=outputs_unchanged(record, out, outputs, required=required),
        )
        if decided[stage] == "skip":
            skipped[stage] = record["result"]
        logger.info("--resume: %s %s", stage, decided[stage])

    if builds:
        tensors = Path(teacher_config.out) / TEACHER_TENSORS_FILE
        decide_stage("teacher", teacher_config, [], teacher_outputs(teacher_config), tensors)
    for name, build in builds.items():
        plan = Path(build.out)
        decide_stage(f"build_{name}", build, ["teacher"], [plan], plan)
    first = next(iter(builds), None)
    for method, train_config in trains.items():
        if method == "lhf":
            upstream = [f"build_{first}"]
        elif method.startswith(CANDIDATE_PREFIX):
            upstream = [f"build_{method[len(CANDIDATE_PREFIX) :]}"]
        else:
            upstream = []
        decide_stage(f"train_{method}", train_config, upstream)
    if dist.is_initialized():
        dist.barrier()  # NOTE: every rank has read the records before rank 0 writes any
    return decided, skipped


def with_checkpoints(
    checkpoint_every: int | None, out: Path, stage: str, stage_config: Any, action: str
) -> Any:
    """``stage_config`` (a TrainConfig, or a TeacherConfig through its ``train``) checkpointing
    every ``checkpoint_every`` steps into the stage's directory, resuming there if
    ``action`` is ``resume``; a ``fresh`` stage's old checkpoints are discarded first
    (collective where a process group is up)."""
    if action == "fresh":
        path = checkpoint_dir(out, stage)
        if is_main() and path.exists():
            logger.info("%s: discarding the checkpoints in %s", stage, path)
            shutil.rmtree(path)
        if dist.is_initialized():
            dist.barrier()
    if checkpoint_every is None:
        return stage_config
    is_teacher = isinstance(stage_config, TeacherConfig)
    train = dataclasses.replace(
        stage_config.train if is_teacher else stage_config,
        checkpoint_dir=str(checkpoint_dir(out, stage)),
        checkpoint_every=checkpoint_every,
        resume=action == "resume",
    )
    return dataclasses.replace(stage_config, train=train) if is_teacher else train


def is_main() -> bool:
    """Rank 0, or no process group."""
    return not dist.is_initialized() or dist.get_rank() == 0
