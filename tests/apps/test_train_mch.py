"""An ``mch`` run killed mid-epoch and resumed equals an uninterrupted one, to the digit.

TorchRec's managed collisions evict ids during training and re-initialize the evicted rows
from the global generator, so the resume has to restore both the managed state (the kept
ids, their counts and last accesses: persistent buffers) and the CPU generator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.dlrm.train import main
from tests.apps._train_args import NO_MINIMUM, SMALL
from tests.test_checkpoint import Killed, killed_after_save

# 1,600 training samples in batches of 32: 50 steps an epoch; 20% of the rows kept, so the
# managed tables evict (60 and 200 ids for 12 and 40 rows) from the first steps on
MCH = [*SMALL, *NO_MINIMUM, "--compression", "mch", "--fraction", "0.2", "--epochs", "2"]


def test_resumed_mch_run_equals_uninterrupted(tmp_path: Path) -> None:
    uninterrupted = main(MCH)
    ckpt = ["--checkpoint_dir", str(tmp_path / "ckpt"), "--checkpoint_every", "20"]
    with killed_after_save(60), pytest.raises(Killed):  # epoch 2, after 10 of its steps
        main([*MCH, *ckpt])
    resumed = main([*MCH, *ckpt, "--resume"])
    assert (resumed["epochs"], resumed["steps"]) == (uninterrupted["epochs"], 100)
    for key in ("auc", "logloss", "val_auc", "val_logloss"):
        assert resumed[key] == uninterrupted[key], key
