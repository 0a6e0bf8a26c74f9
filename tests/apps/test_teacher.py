"""The teacher at world size 2: exact access counts of one pass over the training split
(across a mid-epoch resume, whatever the epochs), and embeddings equal to the model's
tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection

from apps.dlrm.model import EBC_FQN
from apps.dlrm.runtime import distributed
from apps.teacher import IdCounter, parse_args, train_teacher
from tests._multiprocess import run_multiprocess
from tests.test_checkpoint import Killed, killed_after_save
from torchrec_lhf.data import load_dataset
from torchrec_lhf.hash_build.artifact import TeacherArtifact

OPTIONS = {"num_samples": 2000, "num_embeddings": [40, 60, 200]}
# 1,600 training rows = 25 global batches of 2 x 32: every row is seen once per epoch.
ARGS = [
    "--dataset",
    "synthetic",
    "--dataset_options",
    json.dumps(OPTIONS),
    "--batch_size",
    "32",
    "--dense_arch_layer_sizes",
    "16,4",
    "--over_arch_layer_sizes",
    "16,1",
    "--log_every",
    "1000",
    "--limit_val_batches",
    "1",
    "--limit_test_batches",
    "1",
]


def _teacher(rank: int, world_size: int, tmp: str) -> dict:
    common = [*ARGS, "--checkpoint_dir", f"{tmp}/ckpt", "--out", f"{tmp}/teacher", "--epochs", "2"]
    with distributed() as env:
        # 25 steps per epoch: killed right after the checkpoint of step 10 (batch 10 of the
        # first epoch, the one counted)
        with killed_after_save(10), pytest.raises(Killed):
            train_teacher(parse_args([*common, "--checkpoint_every", "10"]), env)
        # resumed mid-epoch: the counts of the 10 steps trained come back from the checkpoint,
        # the first epoch's other 15 steps add theirs, the second epoch adds none
        session, metrics = train_teacher(parse_args([*common, "--resume"]), env)
        artifact = TeacherArtifact.load(f"{tmp}/teacher")

        # The trained (sharded) tables, looked up through the model on this rank's own ids,
        # must equal sum-pooling the artifact's rows.
        session.pipeline.detach()
        ebc = next(
            m for m in session.model.modules() if isinstance(m, ShardedEmbeddingBagCollection)
        )
        rows = torch.randint(
            0, len(session.dataset), (16,), generator=torch.Generator().manual_seed(rank)
        )
        kjt = session.dataset.make_batch(rows).sparse_features
        pooled = ebc(kjt).wait().to_dict()
        for feature, jt in kjt.to_dict().items():
            expected = F.embedding_bag(
                jt.values(),
                artifact.embeddings[feature],
                jt.offsets(),
                mode="sum",
                include_last_offset=True,
            )
            torch.testing.assert_close(
                pooled[feature], expected, msg=lambda m, f=feature: f"{f}: {m}"
            )
        ranks = {t: ps.ranks for t, ps in session.model.plan.plan[EBC_FQN].items()}
    return {
        "metrics": metrics,
        "ranks": ranks,
        "counts": {k: v.tolist() for k, v in artifact.counts.items()},
        "shapes": {k: tuple(v.shape) for k, v in artifact.embeddings.items()},
        "manifest": artifact.manifest,
    }


@pytest.mark.distributed
def test_teacher_counts_and_embeddings_at_world_size_2(tmp_path: Path) -> None:
    result = run_multiprocess(_teacher, world_size=2, tmp=str(tmp_path))[0]
    assert result["shapes"] == {"cat_0": (40, 4), "cat_1": (60, 4), "cat_2": (200, 4)}
    # the tables really are spread over both ranks (so gathering them is exercised)
    assert {r for ranks in result["ranks"].values() for r in ranks} == {0, 1}
    dataset = load_dataset("synthetic", **OPTIONS)
    assert dataset.splits["train"].numel() == 1600
    for feature, direct in zip(dataset.feature_names, dataset.id_counts("train")):
        # one pass over every row, though the teacher trained two epochs
        assert result["counts"][feature] == direct.tolist()
    assert result["metrics"]["samples_seen"] == result["manifest"]["samples_seen"] == 1600
    assert result["manifest"]["epochs"] == 2 and result["manifest"]["count_epochs"] == 1
    assert (
        result["manifest"]["dataset"] == "synthetic"
        and result["manifest"]["config"]["embedding_dim"] == 4
    )


def test_id_counter_by_hand() -> None:
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    counter = IdCounter([3, 2], torch.device("cpu"))
    kjt = KeyedJaggedTensor(
        keys=["a", "b"],
        values=torch.tensor([2, 2, 0, 1, 1]),
        lengths=torch.tensor([2, 1, 1, 1], dtype=torch.int32),
    )
    batch = Batch(dense_features=torch.zeros(2, 1), sparse_features=kjt, labels=torch.zeros(2))
    assert list(counter([batch, batch])) == [batch, batch]
    assert counter.counts_T.tolist() == [
        2,
        0,
        4,
        0,
        4,
    ]  # a: 0 once, 2 twice; b: 1 twice; x2 batches
    assert int(counter.samples) == 4


def test_teacher_rejects_compression_flags() -> None:
    with pytest.raises(SystemExit):
        parse_args([*ARGS, "--out", "x", "--compression", "modulo"])


def test_dim_2_teacher_trains_data_parallel(tmp_path: Path) -> None:
    # The paper's dim-2 teacher: FBGEMM's fused tables need widths divisible by 4, so a
    # narrower teacher trains its tables data_parallel (dense kernel) unless told otherwise.
    args = [*ARGS, "--embedding_dim", "2", "--dense_arch_layer_sizes", "16,2"]
    config = parse_args([*args, "--out", str(tmp_path / "t2")])
    assert config.train.sharding_types == ["data_parallel"]
    with pytest.raises(ValueError, match=r"embedding_dim=2 .*\['table_wise'\]"):
        parse_args([*args, "--sharding_types", "table_wise", "--out", "x"])
    with distributed() as env:
        _, metrics = train_teacher(config, env)
    artifact = TeacherArtifact.load(tmp_path / "t2")
    assert {k: tuple(v.shape) for k, v in artifact.embeddings.items()} == {
        "cat_0": (40, 2),
        "cat_1": (60, 2),
        "cat_2": (200, 2),
    }
    dataset = load_dataset("synthetic", **OPTIONS)
    for feature, direct in zip(dataset.feature_names, dataset.id_counts("train")):
        assert artifact.counts[feature].tolist() == direct.tolist()
        # the dense kernel really trains: seen rows leave TorchRec's init range
        # U(-sqrt(1/N), sqrt(1/N)), rows never seen stay inside it
        emb, bound = artifact.embeddings[feature], (1.0 / len(direct)) ** 0.5
        assert float(emb[direct > 0].abs().max()) > bound
        assert bool((emb[direct == 0].abs() <= bound).all())
    assert metrics["samples_seen"] == 1600
