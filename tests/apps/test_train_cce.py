"""``--compression cce`` in the DLRM app: flags, end to end with its phases, at world size 2,
and resumed after a phase."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from unittest import mock

import pytest

from apps.dlrm.train import main, parse_args
from tests._multiprocess import run_multiprocess
from tests.apps._train_args import NO_MINIMUM, SMALL
from tests.test_checkpoint import Killed, killed_after_save
from torchrec_lhf import checkpoint

CCE = [*SMALL, *NO_MINIMUM, "--compression", "cce", "--fraction", "0.5"]
SHORT = ["--limit_train_batches", "6", "--limit_val_batches", "1", "--limit_test_batches", "2"]


def test_cce_flags_parse_and_are_checked() -> None:
    config = parse_args([*CCE, "--cce_phases", "2", "--no-cce_reset_optimizer"])
    assert config.cce_config().phases == 2 and not config.cce_config().reset_optimizer
    assert parse_args(CCE).cce_config().phases == 3  # the library's default
    with pytest.raises(ValueError, match="phases"):
        parse_args([*CCE, "--cce_phases", "-1"])
    # resumed runs and exports take the plan of the last phase (tests below, test_export.py)
    assert parse_args([*CCE, "--resume", "--checkpoint_dir", "/tmp/x"]).resume
    assert parse_args([*CCE, "--export_model", "/tmp/x"]).export_model == "/tmp/x"
    with pytest.raises(ValueError, match="--mlet_fraction"):
        parse_args([*CCE, "--mlet_fraction", "0.5"])
    assert parse_args(CCE).cce_columns == 4  # the reference's n_chunks
    with pytest.raises(ValueError, match="cce_columns must be an int >= 1, got 0"):
        parse_args([*CCE, "--cce_columns", "0"])
    with pytest.raises(ValueError, match="--cce_columns"):
        parse_args([*CCE, "--compression_options", '{"columns": 2}'])


def test_cce_trains_end_to_end_with_its_phases(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="apps.dlrm.loop"):
        metrics = main([*CCE, *SHORT, "--cce_phases", "2", "--epochs", "2"])
    # 2 epochs of 6 steps: phases at the ends of the first two thirds, steps 4 and 8
    phases = [
        (int(m[1]), int(m[2]))
        for r in caplog.records
        if (m := re.match(r"cce phase (\d+) at step (\d+)", r.getMessage()))
    ]
    assert phases == [(1, 4), (2, 8)]
    assert metrics["steps"] == 12 and 0.0 <= metrics["auc"] <= 1.0
    assert metrics["cce_phases"] == 2
    assert math.isfinite(metrics["logloss"])
    # dim 8: 2 columns of width 4 (not 4 of width 2), each two internal tables at half the
    # rows; the two clustered indices stored, so the remap is not computable from the id
    assert 2 * 0.4 * 300 <= metrics["rows"] <= 2 * (0.6 * 300 + 3)
    assert metrics["embedding_bytes"] == metrics["rows"] * 4 * 4
    assert metrics["remap_bytes"] >= 2 * 300  # (uint8: every internal table under 256 rows)
    assert metrics["remap_computable"] is False
    # the plan reported is the one the model holds after its phases
    assert metrics["plan_fingerprint"] != metrics["start_plan_fingerprint"]
    one = main([*CCE, *SHORT, "--cce_phases", "0", "--cce_columns", "1"])
    assert one["plan_fingerprint"] == one["start_plan_fingerprint"]
    assert one["embedding_bytes"] == one["rows"] * 8 * 4 == metrics["embedding_bytes"]


def test_cce_keeps_its_tables_off_data_parallel() -> None:
    """Given data_parallel with another type, the planner placed these small tables data
    parallel and the first phase refused them, after part of the training (``cce table
    'cat_0': ... is not sharded``); the cce tables are now kept off it. data_parallel alone
    is refused before any work (test_train.py)."""
    metrics = main(
        [*CCE, *SHORT, "--cce_phases", "1", "--sharding_types", "data_parallel,table_wise"]
    )
    assert metrics["cce_phases"] == 1 and math.isfinite(metrics["logloss"])
    assert metrics["plan_fingerprint"] != metrics["start_plan_fingerprint"]


def _train_cce(rank: int, world_size: int) -> dict:
    return main([*CCE, *SHORT, "--cce_phases", "1"])


@pytest.mark.distributed
def test_cce_trains_at_world_size_2() -> None:
    first, second = run_multiprocess(_train_cce, world_size=2)
    assert first["auc"] == second["auc"] and math.isfinite(first["logloss"])
    assert first["steps"] == 6 and first["world_size"] == 2


# 2 epochs of 50 steps; phases at steps 25, 50 and 75
RESUME = [*CCE, "--epochs", "2"]


def _crash_after_two_phases(checkpoint_dir: str) -> None:
    ckpt = ["--checkpoint_dir", checkpoint_dir, "--checkpoint_every", "20"]
    with killed_after_save(60), pytest.raises(Killed):  # epoch 2, after phases 1 and 2
        main([*RESUME, *ckpt])


def test_resumed_cce_run_equals_uninterrupted(tmp_path: Path) -> None:
    """Killed after two of its three phases and resumed: the plan it held restored from the
    checkpoint (the clustered indices from the state, the seeds from the phase), the third
    phase taken from it, and the same metrics to the digit."""
    uninterrupted = main(RESUME)
    checkpoint_dir = str(tmp_path / "ckpt")
    _crash_after_two_phases(checkpoint_dir)
    manifest = json.loads((tmp_path / "ckpt" / "step_60" / "manifest.json").read_text())
    assert manifest["meta"]["cce_phase"] == 2
    assert manifest["meta"]["start_plan_fingerprint"] == uninterrupted["start_plan_fingerprint"]
    resumed = main([*RESUME, "--checkpoint_dir", checkpoint_dir, "--resume"])
    assert (resumed["epochs"], resumed["steps"]) == (uninterrupted["epochs"], 100)
    for key in ("auc", "logloss", "val_auc", "val_logloss", "plan_fingerprint"):
        assert resumed[key] == uninterrupted[key], key
    # another starting plan (another seed) is refused before anything is loaded
    with pytest.raises(ValueError, match="start_plan_fingerprint"):
        main([*RESUME, "--seed", "1", "--checkpoint_dir", checkpoint_dir, "--resume"])


def test_a_cce_checkpoint_whose_phase_does_not_match_its_plan_is_refused(tmp_path: Path) -> None:
    checkpoint_dir = str(tmp_path / "ckpt")
    _crash_after_two_phases(checkpoint_dir)
    manifest_path = tmp_path / "ckpt" / "step_60" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["meta"]["cce_phase"] = 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="after cce phase 1 the model holds plan"):
        main([*RESUME, "--checkpoint_dir", checkpoint_dir, "--resume"])


def _resume_cce(rank: int, world_size: int, tmp: str) -> dict:
    # 2 epochs of 25 steps at world size 2; phases at steps 12, 25 and 38
    run = [*RESUME, "--sharding_types", "row_wise"]
    ckpt = ["--checkpoint_dir", f"{tmp}/ckpt", "--checkpoint_every", "10"]
    uninterrupted = main(run)
    with killed_after_save(30), pytest.raises(Killed):  # epoch 2, after phases 1 and 2
        main([*run, *ckpt])
    return {"uninterrupted": uninterrupted, "resumed": main([*run, *ckpt, "--resume"])}


@pytest.mark.distributed
def test_cce_resume_equals_uninterrupted_at_world_size_2(tmp_path: Path) -> None:
    """Row-wise sharded cce tables, killed after phase 2 and resumed at world size 2."""
    for result in run_multiprocess(_resume_cce, world_size=2, tmp=str(tmp_path)):
        a, b = result["uninterrupted"], result["resumed"]
        assert b["steps"] == a["steps"] == 50
        for key in ("auc", "logloss", "val_auc", "val_logloss", "plan_fingerprint"):
            assert b[key] == a[key], key


def _resume_cce_from_world_size_1(rank: int, world_size: int, checkpoint_dir: str) -> dict:
    ckpt = ["--checkpoint_dir", checkpoint_dir, "--checkpoint_every", "8"]
    save, saved = checkpoint.save, []

    def recorded(*args, **kwargs):
        saved.append(kwargs["step"])
        return save(*args, **kwargs)

    with mock.patch.object(checkpoint, "save", recorded):
        return {**main([*RESUME, *ckpt, "--resume"]), "saved": saved}


@pytest.mark.distributed
def test_cce_checkpoint_of_world_size_1_resumes_at_world_size_2(tmp_path: Path) -> None:
    """Saved at world size 1 at step 24, just before its first phase (step 25 of 100),
    resumed at world size 2 (25 steps an epoch, phases at steps 12, 25 and 38): the resumed
    run is at its position 12, so it takes the first phase at once, then the other two.
    Before phases were placed by position, the resumed step count (24) had passed the
    first phase step of world size 2, and the run ended after two phases. The checkpoint of
    step 24 is not saved again after the phase taken at once (no step trained)."""
    checkpoint_dir = tmp_path / "ckpt"
    ckpt = ["--checkpoint_dir", str(checkpoint_dir), "--checkpoint_every", "8"]
    with killed_after_save(24), pytest.raises(Killed):
        main([*RESUME, *ckpt])
    step_24 = (checkpoint_dir / "step_24" / "manifest.json").read_text()
    assert json.loads(step_24)["meta"]["cce_phase"] == 0
    results = run_multiprocess(
        _resume_cce_from_world_size_1, world_size=2, checkpoint_dir=str(checkpoint_dir)
    )
    first, second = results
    assert first["auc"] == second["auc"] and math.isfinite(first["logloss"])
    assert first["cce_phases"] == 3 and first["world_size"] == 2
    assert first["plan_fingerprint"] == second["plan_fingerprint"]
    assert first["plan_fingerprint"] != first["start_plan_fingerprint"]
    # the rest at world size 2: batches 12 to 25 of epoch 1 and all of epoch 2
    assert first["steps"] == 24 + 13 + 25
    # every 8 steps from step 32, and at the ends of the epochs (steps 37 and 62)
    assert first["saved"] == [32, 37, 40, 48, 56, 62]
    latest = json.loads((checkpoint_dir / "latest").read_text())
    manifest = json.loads((checkpoint_dir / latest["dir"] / "manifest.json").read_text())
    assert manifest["meta"]["cce_phase"] == 3


def _crash_after_three_phases(rank: int, world_size: int, checkpoint_dir: str) -> None:
    # 2 epochs of 25 steps at world size 2; phases at steps 12, 25 and 38
    ckpt = ["--checkpoint_dir", checkpoint_dir, "--checkpoint_every", "20"]
    with killed_after_save(40), pytest.raises(Killed):
        main([*RESUME, *ckpt])


@pytest.mark.distributed
def test_cce_checkpoint_of_world_size_2_resumes_at_world_size_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Saved at world size 2 after its three phases (step 40 of 50), resumed at world size
    1, where phase steps are 25, 50 and 75: the step count (40) passes 50, which took a
    fourth phase before phases were placed by position."""
    checkpoint_dir = str(tmp_path / "ckpt")
    run_multiprocess(_crash_after_three_phases, world_size=2, checkpoint_dir=checkpoint_dir)
    manifest = json.loads((tmp_path / "ckpt" / "step_40" / "manifest.json").read_text())
    assert manifest["meta"]["cce_phase"] == 3
    with caplog.at_level(logging.INFO, logger="apps.dlrm.loop"):
        resumed = main([*RESUME, "--checkpoint_dir", checkpoint_dir, "--resume"])
    assert not [r for r in caplog.records if r.getMessage().startswith("cce phase")]
    assert resumed["cce_phases"] == 3 and resumed["world_size"] == 1
    assert resumed["plan_fingerprint"] == manifest["meta"]["plan_fingerprint"]
    # the rest of epoch 2 at world size 1: batches 30 to 50 of 50 (world size 2's 15 of 25)
    assert resumed["steps"] == 40 + 20
