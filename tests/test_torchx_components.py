"""torchx components: valid AppDefs, lint-clean, and a real 2-process local_cwd run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from torchx import specs
from torchx.specs.builders import materialize_appdef
from torchx.specs.file_linter import validate

from torchx_components import lhf

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = {"teacher": "apps.teacher", "build_hash": "apps.build_hash", "train": "apps.dlrm.train",
              "pipeline": "apps.pipeline", "serve": "apps.serve",
              "criteo_to_npy": "apps.criteo_to_npy",
              "make_synthetic_criteo": "apps.make_synthetic_criteo"}  # fmt: skip
SINGLE = {"serve", "criteo_to_npy", "make_synthetic_criteo"}  # one process each
COMPONENT = str(REPO / "torchx_components" / "lhf.py")


def _command(app: specs.AppDef) -> list[str]:
    (role,) = app.roles
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return shlex.split(role.args[1])


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_builds_a_torchrun_appdef(name: str):
    procs = 1 if name in SINGLE else 2
    app = lhf.stage("--fraction", "0.1", "--out", "a b/plan", stage=name, nproc_per_node=procs,
                    cpu=4)  # fmt: skip
    cmd = _command(app)
    assert cmd[0] == "torchrun"
    assert cmd[cmd.index("--nproc_per_node") + 1] == str(procs)
    assert cmd[cmd.index("--nnodes") + 1] == "1"
    i = cmd.index("-m")
    assert cmd[i + 1 : i + 2] == [COMPONENTS[name]]
    assert cmd[i + 2 :] == ["--fraction", "0.1", "--out", "a b/plan"]  # passed through, quoted
    assert app.name == name and app.roles[0].num_replicas == 1 and app.roles[0].resource.cpu == 4


def test_j_overrides_nnodes_and_nproc_per_node():
    app = lhf.stage("--out", "p", stage="build_hash", nnodes=1, nproc_per_node=1, j="2x4", gpu=4)
    cmd = _command(app)
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4" and cmd[cmd.index("--nnodes") + 1] == "2"
    assert app.roles[0].num_replicas == 2 and app.roles[0].resource.gpu == 4
    with pytest.raises(ValueError, match="must be >= 1, got 1 and 0"):
        lhf.stage(stage="train", nproc_per_node=0)
    with pytest.raises(ValueError, match="stage must be one of .* got 'bogus'"):
        lhf.stage(stage="bogus")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"j": "0x2"}, "got '0x2'"),  # no node: the job would never start
        ({"j": "2x0"}, "got '2x0'"),  # torchrun --nproc_per_node 0
        ({"j": "3:2x1"}, "got '3:2x1'"),  # min_nnodes above nnodes
        ({"cpu": 0}, "cpu must be >= 1, got 0"),
        ({"gpu": -1}, "gpu must be >= 0, got -1"),
        ({"memMB": 0}, "memMB must be >= 1, got 0"),
        ({"max_retries": -1}, "max_retries must be >= 0, got -1"),
        ({"rdzv_port": 65536}, r"rdzv_port must be a TCP port in \[1, 65535\], got 65536"),
        ({"rdzv_port": 0}, "got 0"),
    ],
)
def test_resources_that_cannot_launch_are_refused(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        lhf.stage("--out", "p", stage="train", **kwargs)
    app = lhf.stage("--out", "p", stage="train", j="2:3x1")  # an elastic range is kept
    assert app.roles[0].min_replicas == 2 and app.roles[0].num_replicas == 3


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_passes_the_torchx_linter_and_cli_parsing(name: str):
    assert validate(COMPONENT, "stage") == []
    # What `torchx run ...:stage --stage name --nproc_per_node 2 -- --teacher t` hands it.
    procs = "1" if name in SINGLE else "2"
    args = ["--stage", name, "--nproc_per_node", procs, "--env", "A=1", "--", "--teacher", "t"]
    app = materialize_appdef(lhf.stage, args)
    cmd = _command(app)
    assert cmd[cmd.index("--nproc_per_node") + 1] == procs and cmd[-2:] == ["--teacher", "t"]
    assert app.roles[0].env["A"] == "1" and cmd[cmd.index("-m") + 1] == COMPONENTS[name]


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_a_stage_that_is_not_distributed_is_refused_more_processes(name: str):
    """Before these stages were launchable, serving or converting data took a plain
    ``python -m``; more than one process would each do the whole job."""
    for kwargs, given in (({"nproc_per_node": 2}, "1x2"), ({"j": "2x1"}, "2x1"),
                          ({"j": "1:2x1"}, "1:2x1")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"stage '{name}' runs in one process .* got "
                           rf"'{given}'; expected nnodes 1 and nproc_per_node 1"):  # fmt: skip
            lhf.stage("--out", "x", stage=name, **kwargs)
    assert lhf.stage("--out", "x", stage=name, j="1x1").roles[0].num_replicas == 1


def test_help_comes_from_the_docstring():
    out = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd",
         "torchx_components/lhf.py:stage", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Run a stage of the learned-hashing pipeline" in out.stdout
    assert "--nproc_per_node" in out.stdout and "processes per node" in out.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_torchx_local_cwd_build_hash_two_processes(tmp_path: Path):
    from tests.hash_build.test_job import _teacher
    from torchrec_lhf.hash_build.job import BuildConfig, run_build
    from torchrec_lhf.plan import HashPlan

    art = _teacher(tmp_path / "teacher")
    out = tmp_path / "plan.safetensors"
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd",
         "-cfg", f"log_dir={tmp_path / 'logs'}",
         "torchx_components/lhf.py:stage", "--stage", "build_hash", "--nproc_per_node", "2", "--",
         "--teacher", str(tmp_path / "teacher"), "--fraction", "0.1", "--min_table_rows", "300",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "[rank 1]" not in proc.stderr or "Error" not in proc.stderr
    single = run_build(
        BuildConfig(
            fraction=0.1, min_table_rows=300, work_dir=tmp_path / "w1", out=tmp_path / "p1"
        ),
        art,
    )
    assert HashPlan.load(out) == single
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert "hash plan written to" in logs + proc.stderr  # rank 0's summary
