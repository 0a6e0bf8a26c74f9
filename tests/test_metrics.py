"""NE, calibration and AUC through ``torchrec.metrics``: a hand-checked fixture, world size 2,
and the DLRM app's metrics JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from apps.dlrm.train import METRIC_KEYS, main
from tests._multiprocess import run_multiprocess
from tests.apps._train_args import SMALL
from torchrec_lhf.data import load_dataset
from torchrec_lhf.metrics import (
    CTR_METRIC_KEYS,
    compute_ctr_metrics,
    ctr_metric_module,
    global_qps,
    update_ctr_metrics,
)

# Five examples, two positives: base rate p = 0.4.
PREDICTIONS = [0.8, 0.3, 0.1, 0.6, 0.5]
LABELS = [1, 0, 0, 1, 0]


def _by_hand() -> dict[str, float]:
    p = sum(LABELS) / len(LABELS)
    mean_logloss = -sum(
        math.log(q) if y else math.log(1 - q) for q, y in zip(PREDICTIONS, LABELS)
    ) / len(LABELS)  # (0.2231 + 0.3567 + 0.1054 + 0.5108 + 0.6931) / 5 = 0.3778
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # 0.6730
    return {
        "ne": mean_logloss / entropy,  # 0.5614
        "calibration": sum(PREDICTIONS) / sum(LABELS),  # 2.3 / 2 = 1.15
        "rec_auc": 1.0,  # every positive scores above every negative
    }


def _update(metrics, rows: slice) -> None:
    logits_B = torch.logit(torch.tensor(PREDICTIONS[rows], dtype=torch.float64))
    update_ctr_metrics(metrics, logits_B, torch.tensor(LABELS[rows]))


def test_ne_and_calibration_equal_a_hand_computation() -> None:
    metrics = ctr_metric_module(3, window_size=8)
    _update(metrics, slice(0, 3))  # batches of uneven size: 3 then 2
    _update(metrics, slice(3, 5))
    computed = compute_ctr_metrics(metrics)
    assert set(computed) == set(CTR_METRIC_KEYS)
    expected = _by_hand()
    assert math.isclose(expected["ne"], 0.5614, abs_tol=1e-4)
    for key, value in expected.items():
        assert math.isclose(computed[key], value, rel_tol=1e-6), (key, computed[key], value)


def test_window_below_one_global_batch_is_named() -> None:
    with pytest.raises(ValueError, match="at least batch_size \\* world_size = 8, got 4"):
        ctr_metric_module(4, window_size=4, world_size=2)


def test_global_qps_without_a_process_group() -> None:
    assert global_qps(100, 2.0) == 50.0
    assert global_qps(0, 0.0) == 0.0


# ------------------------------------------------------------------------------ the app
_DATASET_OPTIONS = json.loads(SMALL[SMALL.index("--dataset_options") + 1])
_RUN = [*SMALL, "--limit_train_batches", "3", "--limit_val_batches", "2"]


def _check_app_metrics(metrics: dict) -> None:
    """NE and logloss come from the same test predictions: ``ne = logloss / H(p)``."""
    assert set(METRIC_KEYS) <= set(metrics)
    dataset = load_dataset("synthetic", **_DATASET_OPTIONS)
    p = float(dataset.labels[dataset.splits["test"]].mean())
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert metrics["test_samples"] == dataset.splits["test"].numel()  # the whole split
    assert math.isclose(metrics["ne"], metrics["logloss"] / entropy, rel_tol=1e-5)
    assert math.isclose(metrics["rec_auc"], metrics["auc"], abs_tol=1e-4)
    for key in ("calibration", "val_ne", "val_calibration", "val_rec_auc", "qps"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["qps"] == metrics["samples_per_s"]


def test_app_metrics_json_has_ne_and_calibration(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    metrics = main([*_RUN, "--metrics_json", str(out)])
    on_disk = json.loads(out.read_text())
    assert (
        on_disk["ne"] == metrics["ne"] and on_disk["val_calibration"] == metrics["val_calibration"]
    )
    _check_app_metrics(on_disk)


# ------------------------------------------------------------------------- world size 2
def _at_world_size_2(rank: int, world_size: int, tmp: str) -> tuple[dict, float, dict]:
    """The fixture split over the ranks (rank 1 has 2 rows), then the app (one process
    group for both: spawning the workers is most of the time)."""
    metrics = ctr_metric_module(3, window_size=6, world_size=world_size, rank=rank)
    _update(metrics, slice(0, 3) if rank == 0 else slice(3, 5))
    fixture = compute_ctr_metrics(metrics)
    qps = global_qps(64, 1.0 + rank)
    return fixture, qps, main([*_RUN, "--metrics_json", f"{tmp}/m.json"])


@pytest.mark.distributed
def test_world_size_2_agrees_on_every_rank(tmp_path: Path) -> None:
    (fixture0, qps0, app0), (fixture1, qps1, app1) = run_multiprocess(
        _at_world_size_2, world_size=2, tmp=str(tmp_path)
    )
    # compute() all-gathers the states: every rank the single-process values
    assert fixture0 == fixture1
    for key, value in _by_hand().items():
        assert math.isclose(fixture0[key], value, rel_tol=1e-6), (key, fixture0[key], value)
    assert qps0 == qps1 == 32.0  # the slowest rank's 2 s
    keys = ("auc", "logloss", *CTR_METRIC_KEYS)
    for key in (*keys, *(f"val_{k}" for k in keys), "qps"):
        assert app0[key] == app1[key], (key, app0[key], app1[key])
    # 200 test rows at 2 x 32: three full global batches, then 8 rows padded on rank 0
    _check_app_metrics(json.loads((tmp_path / "m.json").read_text()))
