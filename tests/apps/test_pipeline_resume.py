"""``apps.pipeline --resume``: an interrupted run continues where it stopped, and equals an
uninterrupted one; a resumed run with other settings redoes what they change only."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from apps import pipeline
from apps import pipeline_resume as resumable
from tests._multiprocess import run_multiprocess
from tests.test_checkpoint import Killed
from torchrec_lhf import checkpoint

TINY = json.dumps({"num_samples": 3000, "num_embeddings": [300, 400, 50]})
# 2,400 training rows in batches of 64: 38 steps; one plan (no half-width candidate
# under --budget total)
ARGS = [
    "--dataset", "synthetic", "--dataset_options", TINY, "--fraction", "0.1",
    "--min_table_rows", "100", "--teacher_epochs", "1", "--budget", "total",
    "--batch_size", "64", "--checkpoint_every", "10",
]  # fmt: skip


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record the stage runs: the teacher's and the trainings' configs, the builds'."""
    calls: dict[str, list] = {"teacher": [], "build": [], "train": []}
    for name, module in (("teacher", pipeline.teacher), ("build", pipeline.build_hash),
                         ("train", pipeline.train)):  # fmt: skip
        real = module.run

        def spy(config, _real=real, _name=name):
            calls[_name].append(config)
            return _real(config)

        monkeypatch.setattr(module, "run", spy)
    return calls


_SAVE = checkpoint.save


def _killed_in_modulo(step: int) -> Any:
    """A patch of ``checkpoint.save`` that crashes (:class:`Killed`) right after the hashing
    trick's training has saved its checkpoint of ``step``."""

    def save_then_crash(directory, **kwargs):
        path = _SAVE(directory, **kwargs)
        if Path(directory).name == "train_modulo" and kwargs["step"] == step:
            raise Killed(f"killed in the hashing trick's training, after its step {step}")
        return path

    return mock.patch.object(checkpoint, "save", save_then_crash)


def test_an_interrupted_pipeline_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    whole = pipeline.main([*ARGS, "--out_dir", str(tmp_path / "whole")])
    run = [*ARGS, "--out_dir", str(tmp_path / "run")]
    with _killed_in_modulo(20), pytest.raises(Killed):
        pipeline.main(run)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run/stages").iterdir()}
    assert {k: r["status"] for k, r in records.items()} == {
        "teacher": "done", "build_clustered": "done", "train_lhf": "done",
        "train_modulo": "started",
    }  # fmt: skip

    calls = _spy(monkeypatch)
    with caplog.at_level(logging.INFO, logger="apps.dlrm.checkpoint"):
        resumed = pipeline.main([*run, "--resume"])
    assert "resumed at epoch 1, batch 20, step 20" in caplog.text
    # the teacher, the build and the learned hash's training are not run again; the hashing
    # trick's continues from its checkpoint of step 20; the full model's runs
    assert calls["teacher"] == calls["build"] == []
    assert [(Path(c.metrics_json).stem, c.resume) for c in calls["train"]] == [
        ("metrics_modulo", True), ("metrics_none", False),
    ]  # fmt: skip
    assert _without_seconds(resumed) == _without_seconds(whole)
    assert json.loads((tmp_path / "run/results.json").read_text()) == resumed

    # resumed again: every stage is done with the same settings, nothing runs
    calls = _spy(monkeypatch)
    again = pipeline.main([*run, "--resume"])
    assert calls == {"teacher": [], "build": [], "train": []}
    assert again == resumed


def test_resumed_with_another_fraction_keeps_the_teacher_and_the_full_model(
    tmp_path: Path, monkeypatch
) -> None:
    run = [*ARGS, "--out_dir", str(tmp_path / "run")]
    first = {r["method"]: r for r in pipeline.main(run)}
    calls = _spy(monkeypatch)
    other = [a if a != "0.1" else "0.2" for a in run]
    rows = {r["method"]: r for r in pipeline.main([*other, "--resume"])}
    assert calls["teacher"] == []  # the fraction does not change the teacher
    assert len(calls["build"]) == 1 and calls["build"][0].restart
    assert [Path(c.metrics_json).stem for c in calls["train"]] == ["metrics_lhf", "metrics_modulo"]
    assert all(not c.resume for c in calls["train"])  # their checkpoints were another plan's
    assert rows["lhf"]["rows"] == rows["modulo"]["rows"] == 2 * first["lhf"]["rows"]
    assert rows["none"] == first["none"]
    # without --resume every stage runs again
    calls = _spy(monkeypatch)
    pipeline.main(other)
    assert (len(calls["teacher"]), len(calls["build"]), len(calls["train"])) == (1, 1, 3)


def test_a_stage_whose_output_changed_runs_again(
    tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A done stage is skipped only while its output files are as its record left them
    (size and modification time): a plan written again reruns the build and what trains on
    it; a teacher artifact written again reruns everything after it too; a record not of
    the pipeline's form reruns its stage, with a warning."""
    out = tmp_path / "run"
    run = [*ARGS, "--out_dir", str(out)]
    first = pipeline.main(run)
    record = json.loads((out / "stages" / "build_clustered.json").read_text())
    plan = out / "plan.safetensors"
    assert list(record["outputs"]) == [plan.name]
    teacher = json.loads((out / "stages" / "teacher.json").read_text())["outputs"]
    assert "teacher/teacher.safetensors" in teacher

    stat = plan.stat()
    os.utime(plan, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # written again, the same
    calls = _spy(monkeypatch)
    rows = pipeline.main([*run, "--resume"])
    assert calls["teacher"] == [] and len(calls["build"]) == 1
    assert [Path(c.metrics_json).stem for c in calls["train"]] == ["metrics_lhf"]
    assert _without_seconds(rows) == _without_seconds(first)

    tensors = out / "teacher" / "teacher.safetensors"
    stat = tensors.stat()
    os.utime(tensors, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    calls = _spy(monkeypatch)
    pipeline.main([*run, "--resume"])
    assert (len(calls["teacher"]), len(calls["build"])) == (1, 1)
    assert [Path(c.metrics_json).stem for c in calls["train"]] == ["metrics_lhf"]

    # a record written before outputs were recorded: the output's presence is checked
    for stage in ("teacher", "build_clustered"):
        path = out / "stages" / f"{stage}.json"
        old = json.loads(path.read_text())
        del old["outputs"]
        path.write_text(json.dumps(old))
    calls = _spy(monkeypatch)
    pipeline.main([*run, "--resume"])
    assert calls == {"teacher": [], "build": [], "train": []}
    plan.unlink()
    calls = _spy(monkeypatch)
    pipeline.main([*run, "--resume"])
    assert calls["teacher"] == [] and len(calls["build"]) == 1

    # a hand-edited record without the training's metrics: that training runs afresh
    path = out / "stages" / "train_modulo.json"
    edited = json.loads(path.read_text())
    del edited["result"]["metrics"]
    path.write_text(json.dumps(edited))
    calls = _spy(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=resumable.__name__):
        rows = pipeline.main([*run, "--resume"])
    assert calls["teacher"] == [] and calls["build"] == []
    assert [(Path(c.metrics_json).stem, c.resume) for c in calls["train"]] == [
        ("metrics_modulo", False)
    ]
    assert f"{path} is not a stage record (a training's 'result.metrics'" in caplog.text
    assert _without_seconds(rows) == _without_seconds(first)


@pytest.mark.parametrize(
    ("stage", "record", "problem"),
    [
        ("teacher", [], "expected a JSON object, got list"),
        ("teacher", {"status": "done"}, "'settings' must be an object, got None"),
        ("teacher", {"settings": {}, "status": "ended"}, "'status' must be 'started' or"),
        ("teacher", {"settings": {}, "status": "done"}, "'result' must be an object, got None"),
        (
            "train_lhf",
            {"settings": {}, "status": "done", "result": {"metrics": {}, "seconds": "1"}},
            "'result.seconds' must be a number, got '1'",
        ),
        (
            "build_clustered",
            {"settings": {}, "status": "done", "result": {}, "outputs": {"plan": [3]}},
            "'outputs' entry 'plan' must be [size, mtime_ns], got [3]",
        ),
    ],
)
def test_records_not_of_the_pipelines_form_are_named(
    tmp_path: Path, stage: str, record: Any, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert problem in resumable.record_problem(stage, record)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / f"{stage}.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger=resumable.__name__):
        assert resumable.read_record(tmp_path, stage) is None
    assert problem in caplog.text and "the stage runs afresh" in caplog.text


def test_records_the_pipeline_writes_are_of_its_form(tmp_path: Path) -> None:
    (tmp_path / "plan").write_bytes(b"1")
    resumable.mark(tmp_path, "train_lhf", {"fraction": 0.1}, result={"metrics": {}, "seconds": 2})
    resumable.mark(tmp_path, "build_x", {"a": 1}, result={}, outputs=[tmp_path / "plan"])
    resumable.mark(tmp_path, "teacher", {"a": 1})
    for stage in ("train_lhf", "build_x", "teacher"):
        assert resumable.read_record(tmp_path, stage) is not None, stage


def test_output_files(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a").write_bytes(b"12")
    (tmp_path / "dir" / "sub").mkdir()  # (not a file: left out)
    (tmp_path / "b").write_bytes(b"345")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"6")
    try:
        files = resumable.output_files(
            tmp_path, [tmp_path / "dir", tmp_path / "b", tmp_path / "gone", outside]
        )
    finally:
        outside.unlink()
    assert {k: v[0] for k, v in files.items()} == {"dir/a": 2, "b": 3, str(outside.resolve()): 1}
    record = {"outputs": files}
    assert not resumable.outputs_unchanged(record, tmp_path, [tmp_path / "b"], required=None)
    assert resumable.outputs_unchanged({}, tmp_path, [], required=tmp_path / "b")
    assert not resumable.outputs_unchanged({}, tmp_path, [], required=tmp_path / "gone")


def test_decide() -> None:
    settings = {"stage": "train_lhf", "config": {"fraction": 0.1}}
    done = {"settings": settings, "status": "done", "result": {}}
    started = {"settings": settings, "status": "started"}
    assert resumable.decide(done, settings, upstream_runs=False, output_ok=True) == "skip"
    assert resumable.decide(done, settings, upstream_runs=False, output_ok=False) == "resume"
    assert resumable.decide(done, settings, upstream_runs=True, output_ok=True) == "fresh"
    assert resumable.decide(started, settings, upstream_runs=False, output_ok=True) == "resume"
    other = {"stage": "train_lhf", "config": {"fraction": 0.2}}
    assert resumable.decide(done, other, upstream_runs=False, output_ok=True) == "fresh"
    assert resumable.decide(None, settings, upstream_runs=False, output_ok=True) == "fresh"


def test_settings_leave_out_how_a_stage_is_run_and_records_are_read_safely(tmp_path) -> None:
    config = pipeline.parse_args(["--dataset", "synthetic"])
    dataset, options = pipeline._resolve_dataset(config)
    teacher_config, build, trains = pipeline.stage_configs(config, dataset, options)
    moved = dataclasses.replace(
        trains["lhf"], checkpoint_dir="/x", checkpoint_every=3, resume=True, metrics_json="/y"
    )
    assert resumable.settings(moved) == resumable.settings(trains["lhf"])
    assert resumable.settings(trains["lhf"]) != resumable.settings(trains["modulo"])
    assert resumable.settings(dataclasses.replace(build, restart=False)) == resumable.settings(
        build
    )
    json.dumps(resumable.settings(teacher_config))  # JSON all the way down
    assert resumable.read_record(tmp_path, "teacher") is None
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "teacher.json").write_text("{not json")
    assert resumable.read_record(tmp_path, "teacher") is None  # runs afresh, with a warning


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_checkpoint_every_is_checked(value) -> None:
    with pytest.raises(ValueError, match=f"checkpoint_every must be an int >= 1, got {value!r}"):
        pipeline.PipelineConfig(dataset="synthetic", checkpoint_every=value)


def _interrupted_then_resumed(rank: int, world_size: int, tmp: str) -> dict:
    whole = pipeline.main([*ARGS, "--out_dir", f"{tmp}/whole"])
    run = [*ARGS, "--out_dir", f"{tmp}/run"]
    with _killed_in_modulo(10), pytest.raises(Killed):
        pipeline.main(run)
    stages = sorted(p.stem for p in Path(f"{tmp}/run/stages").iterdir())
    return {"whole": whole, "resumed": pipeline.main([*run, "--resume"]), "stages": stages}


@pytest.mark.distributed
def test_resume_at_world_size_2(tmp_path: Path) -> None:
    """Both ranks take the same decisions (read before rank 0 writes a record) and the
    resumed run equals the uninterrupted one (19 steps a rank: killed after step 10)."""
    results = run_multiprocess(_interrupted_then_resumed, world_size=2, tmp=str(tmp_path))
    for r in results:
        assert r["stages"] == ["build_clustered", "teacher", "train_lhf", "train_modulo"]
        assert _without_seconds(r["resumed"]) == _without_seconds(r["whole"])
    # (each rank times its own stages: the seconds may differ)
    assert _without_seconds(results[0]["resumed"]) == _without_seconds(results[1]["resumed"])


def _resumed_at_world_size_2(rank: int, world_size: int, run: list[str]) -> list[dict]:
    return pipeline.main([*run, "--resume"])


@pytest.mark.distributed
def test_interrupted_at_world_size_1_resumes_at_world_size_2(tmp_path: Path) -> None:
    """Killed in the hashing trick's training at world size 1 (after step 20) and resumed at
    world size 2 (18 steps an epoch): the done stages are read back, the hashing trick's
    training continues from its checkpoint (resharded by DCP, at its global batch 10 of 18:
    step 28 at the end), the full model's trains afresh (18 steps)."""
    run = [*ARGS, "--out_dir", str(tmp_path / "run")]
    with _killed_in_modulo(20), pytest.raises(Killed):
        pipeline.main(run)
    lhf = json.loads((tmp_path / "run/stages/train_lhf.json").read_text())["result"]
    first, second = run_multiprocess(_resumed_at_world_size_2, world_size=2, run=run)
    assert _without_seconds(first) == _without_seconds(second)
    rows = {r["method"]: r for r in first}
    # read back, not trained again (at world size 2 it would score otherwise)
    assert (rows["lhf"]["auc"], rows["lhf"]["seconds"]) == (
        lhf["metrics"]["auc"], round(lhf["seconds"], 1),
    )  # fmt: skip
    modulo = tmp_path / "run/checkpoints/train_modulo"
    latest = json.loads((modulo / "latest").read_text())
    manifest = json.loads((modulo / latest["dir"] / "manifest.json").read_text())
    assert (latest["step"], manifest["world_size"]) == (28, 2)
    none = tmp_path / "run/checkpoints/train_none"
    assert json.loads((none / "latest").read_text())["step"] == 18
