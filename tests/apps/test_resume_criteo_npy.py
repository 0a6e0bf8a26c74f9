"""A run on ``criteo-npy`` through DataLoader workers, killed mid-epoch and resumed, equals an
uninterrupted one (the resumed run skips to its data position without reading the batches)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from apps.dlrm.train import main
from tests.test_checkpoint import Killed, killed_after_save
from torchrec_lhf.data.criteo_npy import CriteoNpyDataset
from torchrec_lhf.data.synthetic_criteo import SyntheticCriteoConfig, write_synthetic_criteo


def _args(data: Path, workers: int) -> list[str]:
    return [
        *("--dataset", f"criteo-npy:{data}"),
        *("--dataset_options", json.dumps({"num_workers": workers})),
        *("--embedding_dim", "4", "--batch_size", "32", "--epochs", "2", "--log_every", "1000"),
        *("--dense_arch_layer_sizes", "8,4", "--over_arch_layer_sizes", "8,1"),
        *("--sharding_types", "table_wise"),
    ]


def test_resumed_run_with_workers_equals_uninterrupted(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "npy"
    write_synthetic_criteo(data, SyntheticCriteoConfig(scale=1e-5, days=3, rows_per_day=160))
    # 320 training rows: 10 batches per epoch; two workers read them for the uninterrupted run
    uninterrupted = main(_args(data, workers=2))
    args = _args(data, workers=0)  # NOTE: in-process reads, so that they can be counted
    ckpt = ["--checkpoint_dir", str(tmp_path / "ckpt"), "--checkpoint_every", "4"]
    with killed_after_save(12), pytest.raises(Killed):  # epoch 2, after 2 of its batches
        main([*args, *ckpt])
    reads: list[int] = []
    original = CriteoNpyDataset.read_batch

    def counted(self, start, batch_size):
        reads.append(start)
        return original(self, start, batch_size)

    monkeypatch.setattr(CriteoNpyDataset, "read_batch", counted)
    resumed = main([*args, *ckpt, "--resume"])
    assert (resumed["epochs"], resumed["steps"]) == (uninterrupted["epochs"], 20)
    for key in ("auc", "logloss", "val_auc", "val_logloss"):
        assert math.isclose(resumed[key], uninterrupted[key], abs_tol=1e-6), key
    # the 8 remaining training batches of epoch 2, then val and test (40 rows each: 1 + 1
    # full batches and a padded tail each); the 2 trained ones are never read
    assert len(reads) == 8 + 2 + 2
