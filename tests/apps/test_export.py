"""The serving export: gathered from the shards, MLET collapsed, equal to the trained model;
its scripted models (TorchRec's inference path) score as the trained model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apps.dlrm.export import WEIGHTS_FILE, load_scripted_model, load_serving_model
from apps.dlrm.train import parse_args
from tests._multiprocess import run_multiprocess
from tests.apps._export import trained_and_exported
from torchrec_lhf._io import load_tensors

OPTIONS = json.dumps({"num_samples": 800, "num_embeddings": [30, 50, 120]})
ARGS = [
    "--dataset", "synthetic", "--dataset_options", OPTIONS, "--embedding_dim", "8",
    "--over_arch_layer_sizes", "8,1", "--batch_size", "64", "--log_every", "1000",
    "--min_table_rows", "0",
]  # fmt: skip


def _train_and_export(rank: int, world_size: int, flags: list[str], path: str) -> list[float]:
    """Train, export, and return ``|served - trained|`` logits on this rank's batch."""
    with trained_and_exported([*ARGS, *flags], path) as session:
        rows = torch.arange(16) + 16 * rank
        batch = session.dataset.make_batch(rows)
        with torch.no_grad():
            trained = session.model(batch)[1][1]
        if rank != 0:
            return []
        served = load_serving_model(path, session.plan)
        with torch.no_grad():
            logits = served(batch.dense_features, batch.sparse_features).squeeze(-1)
        scripted, manifest = load_scripted_model(path, "fp32")
        assert manifest["feature_names"] == list(batch.sparse_features.keys())
        kjt = batch.sparse_features
        scores = scripted(batch.dense_features, kjt.values(), kjt.lengths().long())
        torch.testing.assert_close(scores, torch.sigmoid(trained), rtol=0, atol=1e-6)
        return (logits - trained).abs().tolist()


def test_mlet_with_a_plan_exports_collapsed_tables(tmp_path: Path) -> None:
    # 20% of the rows by the hashing trick, trained as MLET at half the width (8 -> 4)
    flags = ["--compression", "modulo", "--fraction", "0.2", "--mlet_fraction", "0.5"]
    flags += ["--dense_arch_layer_sizes", "8,4"]
    path = tmp_path / "model"
    diffs = _train_and_export(0, 1, flags, str(path))
    assert max(diffs) < 1e-5
    tensors, manifest = load_tensors(path / WEIGHTS_FILE, "serving_model")
    assert manifest["mlet_collapsed"] is True
    tables = {
        k: v.shape for k, v in tensors.items() if k.endswith(".weight") and "embedding_bags" in k
    }
    assert sorted(tables.values()) == [(6, 4), (10, 4), (24, 4)]  # rows x the narrow dim
    assert not any("proj" in k for k in tensors)  # no projection left to serve


@pytest.mark.distributed
def test_export_at_world_size_2_equals_the_sharded_model(tmp_path: Path) -> None:
    flags = ["--compression", "qr", "--fraction", "0.3", "--dense_arch_layer_sizes", "8,8"]
    path = str(tmp_path / "model")
    diffs = run_multiprocess(_train_and_export, world_size=2, flags=flags, path=path)[0]
    assert len(diffs) == 16 and max(diffs) < 1e-5


def test_export_rejects_mch_and_a_foreign_plan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mch model is not exportable"):
        parse_args([*ARGS, "--compression", "mch", "--fraction", "0.5", "--export_model", "x"])
    path = tmp_path / "model"
    _train_and_export(0, 1, ["--dense_arch_layer_sizes", "8,8", "--epochs", "1"], str(path))
    assert sorted(p.name for p in path.iterdir()) == [
        "model_fp32.pt", "model_int8.pt", WEIGHTS_FILE
    ]  # fmt: skip
    from torchrec_lhf.plan import HashPlan

    other = HashPlan.from_mappings(
        {"cat_0": torch.zeros(30, dtype=torch.int32)}, heights={"cat_0": 1}
    )
    with pytest.raises(ValueError, match="exported with plan None"):
        load_serving_model(path, other)
