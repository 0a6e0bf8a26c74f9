"""The held-out teacher (``--train_window``): which rows it trains on, and its counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apps.dlrm.runtime import distributed
from apps.teacher import parse_args, train_teacher, window_dataset
from tests.apps.test_teacher import ARGS, OPTIONS
from torchrec_lhf.data import RecDataset, load_dataset
from torchrec_lhf.hash_build.artifact import TeacherArtifact


def _tiny() -> RecDataset:
    return RecDataset(
        name="tiny", feature_names=["a"], num_embeddings=[4], dense_names=["x"],
        dense=torch.zeros(6, 1), lengths=torch.ones(6, 1, dtype=torch.int32),
        values=torch.tensor([0, 1, 2, 3, 0, 1]), labels=torch.zeros(6),
        splits={"train": torch.tensor([5, 3, 1, 0]), "val": torch.tensor([2]),
                "test": torch.tensor([4])},
        info={},
    )  # fmt: skip


def test_window_keeps_the_first_training_rows_by_hand() -> None:
    ds = _tiny()
    assert window_dataset(ds, 1.0) is ds
    half = window_dataset(ds, 0.5)
    assert half.splits["train"].tolist() == [5, 3]  # the split's order, not sorted
    assert half.splits["val"].tolist() == [2] and half.splits["test"].tolist() == [4]
    assert window_dataset(ds, 0.1).splits["train"].tolist() == [5]  # at least one row
    assert ds.splits["train"].tolist() == [5, 3, 1, 0]  # the caller's dataset unchanged
    with pytest.raises(ValueError, match="needs an in-memory dataset, got object"):
        window_dataset(object(), 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2"])
def test_bad_window_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"train_window must be a number in \(0, 1\], got {bad}"):
        parse_args([*ARGS, "--out", "x", "--train_window", bad])


def test_a_window_below_one_batch_is_refused(tmp_path: Path) -> None:
    """A window of 1% of 1,600 training rows holds 16, under one batch of 32: the teacher
    would train on nothing, and its artifact is not written."""
    out = tmp_path / "w"
    config = parse_args([*ARGS, "--out", str(out), "--train_window", "0.01"])
    with (
        distributed() as env,
        pytest.raises(
            ValueError,
            match=r"the first 0.01 of the training split \(--train_window\) of 'synthetic' "
            r"holds 16 samples, fewer than one global batch",
        ),
    ):
        train_teacher(config, env)
    assert not out.exists()


def _ids(ds: RecDataset, rows_R: torch.Tensor) -> dict[str, torch.Tensor]:
    kjt = ds.make_batch(rows_R).sparse_features
    return {f: jt.values().unique() for f, jt in kjt.to_dict().items()}


def test_held_out_teacher_trains_on_the_window_and_counts_every_row(tmp_path: Path) -> None:
    # dim 2: the dense kernel, whose untouched rows stay at TorchRec's init
    # U(-sqrt(1/N), sqrt(1/N)) (see test_teacher.py)
    args = [*ARGS, "--embedding_dim", "2", "--dense_arch_layer_sizes", "16,2"]
    out = str(tmp_path / "w")
    config = parse_args([*args, "--out", out, "--train_window", "0.5", "--epochs", "2"])
    assert config.train_window == 0.5
    with distributed() as env:
        _, metrics = train_teacher(config, env)
    artifact = TeacherArtifact.load(tmp_path / "w")
    ds = load_dataset("synthetic", **OPTIONS)
    train_R = ds.splits["train"]
    window, rest = _ids(ds, train_R[:800]), _ids(ds, train_R[800:])
    num_only_rest = 0
    for feature, direct in zip(ds.feature_names, ds.id_counts("train")):
        # the counts are those of one pass over all 1,600 training rows (two epochs trained),
        # as a full teacher counts them
        assert artifact.counts[feature].tolist() == direct.tolist()
        emb, bound = artifact.embeddings[feature], (1.0 / len(direct)) ** 0.5
        only_rest = rest[feature][~torch.isin(rest[feature], window[feature])]
        num_only_rest += only_rest.numel()
        # ids seen only outside the window were never trained; the window's ids were
        assert bool((emb[only_rest].abs() <= bound).all()), feature
        assert float(emb[window[feature]].abs().max()) > bound, feature
    assert num_only_rest > 0  # the check above is not empty
    assert artifact.manifest["train_window"] == 0.5
    assert metrics["samples_seen"] == 1600  # the rows counted
