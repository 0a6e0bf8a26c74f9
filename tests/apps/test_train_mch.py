"""An ``mch`` run killed mid-epoch and resumed equals an uninterrupted one, to the digit; a
bad batch in pipelined ``mch`` and MLET training is named.

TorchRec's managed collisions evict ids during training and re-initialize the evicted rows
from the global generator, so the resume has to restore both the managed state (the kept
ids, their counts and last accesses: persistent buffers) and the CPU generator.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import apps.dlrm.loop as loop
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


@pytest.mark.parametrize(
    "flags",
    [
        ["--compression", "mch", "--fraction", "0.2"],
        ["--mlet_fraction", "0.5", "--dense_arch_layer_sizes", "16,4"],
    ],
    ids=["mch", "mlet"],
)
def test_a_negative_length_in_pipelined_training_is_named(monkeypatch, flags) -> None:  # noqa: ANN001
    """Under TrainPipelineSparseDist a batch's input dist runs before the forward. Before,
    a negative length reached TorchRec's managed collisions there, which corrupted the heap
    (the process aborted), and MLET's plain inner collection pooled it without a word."""
    batches_from = loop.batches_from

    def with_a_bad_batch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        for i, batch in enumerate(batches_from(*args, **kwargs)):
            if i == 3 and args[2] == "train":
                kjt = batch.sparse_features
                lengths = kjt.lengths().clone()  # one-hot: sample 0 of cat_0 gives its id up
                lengths[0], lengths[1] = -1, lengths[1] + lengths[0] + 1
                kjt = KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values(), lengths=lengths)
                batch = Batch(batch.dense_features, kjt, batch.labels)
            yield batch

    monkeypatch.setattr(loop, "batches_from", with_a_bad_batch)
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 \(feature 'cat_0', sample 0\)"):
        main([*SMALL, *NO_MINIMUM, *flags, "--epochs", "1"])
