"""The serving export: every rank writes its own shards (no gather), MLET collapsed, equal to
the trained model; its scripted models (TorchRec's inference path) score as the trained
model does; a killed export leaves the previous one; damaged exports are refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

from apps.dlrm import export
from apps.dlrm.export import (
    LEGACY_WEIGHTS_FILE,
    MANIFEST_FILE,
    WEIGHTS_DIR,
    export_model,
    load_scripted_model,
    load_serving_model,
)
from apps.dlrm.loop import load_data
from apps.dlrm.train import parse_args, resolve_plan
from tests._multiprocess import run_multiprocess
from tests.apps._export import no_tensors_between_ranks, trained_and_exported
from torchrec_lhf._io import save_tensors
from torchrec_lhf.distributed.gather import gather_to_rank0
from torchrec_lhf.plan import HashPlan, TableHash
from torchrec_lhf.plan_compact import CompactMapping
from torchrec_lhf.sharded_io import read_index, staging_dir

OPTIONS = json.dumps({"num_samples": 800, "num_embeddings": [30, 50, 120]})
ARGS = [
    "--dataset", "synthetic", "--dataset_options", OPTIONS, "--embedding_dim", "8",
    "--over_arch_layer_sizes", "8,1", "--batch_size", "64", "--log_every", "1000",
    "--min_table_rows", "0",
]  # fmt: skip
SMALL = ["--dense_arch_layer_sizes", "8,8", "--epochs", "1"]


def _served_logits(path: str | Path, session, rows: torch.Tensor) -> torch.Tensor:
    batch = session.dataset.make_batch(rows)
    served = load_serving_model(path, session.plan)
    with torch.no_grad():
        return served(batch.dense_features, batch.sparse_features).squeeze(-1)


def _trained_logits(session, rows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return session.model(session.dataset.make_batch(rows))[1][1]


def _train_and_export(rank: int, world_size: int, flags: list[str], path: str) -> dict:
    """Train, export; on rank 0 ``|served - trained|`` logits of this rank's batch, the
    weights' files and the object collectives of the export."""
    traffic: list[str] = []
    with trained_and_exported([*ARGS, *flags], path, traffic) as session:
        rows = torch.arange(16) + 16 * rank
        trained = _trained_logits(session, rows)
        if rank != 0:
            return {}
        logits = _served_logits(path, session, rows)
        batch = session.dataset.make_batch(rows)
        for dtype, atol in (("fp32", 1e-6), ("int8", 2e-2)):
            scripted, manifest = load_scripted_model(path, dtype)
            assert manifest["feature_names"] == list(batch.sparse_features.keys())
            kjt = batch.sparse_features
            scores = scripted(batch.dense_features, kjt.values(), kjt.lengths().long())
            torch.testing.assert_close(scores, torch.sigmoid(trained), rtol=0, atol=atol)
        files = sorted(os.listdir(Path(path) / WEIGHTS_DIR))
        served = load_serving_model(path, session.plan).state_dict()
        return {
            "diffs": (logits - trained).abs().tolist(),
            "files": files,
            "traffic": traffic,
            "served": {k: tuple(v.shape) for k, v in served.items()},
        }


def test_mlet_with_a_plan_exports_collapsed_tables(tmp_path: Path) -> None:
    # 20% of the rows by the hashing trick, trained as MLET at half the width (8 -> 4)
    flags = ["--compression", "modulo", "--fraction", "0.2", "--mlet_fraction", "0.5"]
    flags += ["--dense_arch_layer_sizes", "8,4"]
    path = tmp_path / "model"
    out = _train_and_export(0, 1, flags, str(path))
    assert max(out["diffs"]) < 1e-5
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["scripted_mlet_collapsed"] is True
    assert manifest["weights_form"] == "training"
    saved = read_index(path / WEIGHTS_DIR).state_dict_metadata
    assert any("proj" in k for k in saved)  # the weights are the training form
    served = out["served"]
    tables = [v for k, v in served.items() if k.endswith(".weight") and "embedding_bags" in k]
    assert sorted(tables) == [(6, 4), (10, 4), (24, 4)]  # rows x the narrow dim
    assert not any("proj" in k for k in served)  # no projection left to serve


def test_a_plan_with_compact_heads_exports_equal(tmp_path: Path) -> None:
    # learned heads + hashed tails (what the hash build makes): the remap's state dict shows
    # the heads in another form (sorted) than it holds them (a cuckoo table)
    tables = []
    for seed, (name, n) in enumerate((("cat_0", 30), ("cat_1", 50), ("cat_2", 120))):
        heads = torch.arange(0, n // 2, 3)
        rows = torch.arange(len(heads), dtype=torch.int16).flip(0)
        m = CompactMapping(heads, rows, tail_seed=seed, tail_offset=len(heads), tail_rows=4)
        tables.append(TableHash(name, n, (m,), (len(heads) + 4,)))
    HashPlan(tables).save(tmp_path / "plan.safetensors")
    flags = [*SMALL, "--learned_hash", str(tmp_path / "plan.safetensors")]
    out = _train_and_export(0, 1, flags, str(tmp_path / "model"))
    assert max(out["diffs"]) < 1e-5
    assert "sparse_arch.embedding_bag_collection.remap.head_keys" in out["served"]


def test_a_cce_model_exports_with_the_plan_of_its_last_phase(tmp_path: Path) -> None:
    # two phases re-cluster the tables in training: the export holds the plan they left,
    # which the flags (the starting plan) do not give
    flags = ["--compression", "cce", "--fraction", "0.5", "--cce_phases", "2", *SMALL]
    path = tmp_path / "model"
    out = _train_and_export(0, 1, flags, str(path))  # scripted fp32 and int8 checked too
    assert max(out["diffs"]) < 1e-5
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    plan = HashPlan.load(path / manifest["plan_file"])
    assert plan.metadata["cce_phase"] == 2
    assert manifest["plan_fingerprint"] == plan.fingerprint()
    with_plan = load_serving_model(path, plan).state_dict()
    own_plan = load_serving_model(path).state_dict()  # the export's plan file
    assert with_plan.keys() == own_plan.keys()
    assert all(torch.equal(with_plan[k], own_plan[k]) for k in with_plan)
    start = resolve_plan(parse_args([*ARGS, *flags]), *_dataset_and_heights(flags))
    assert start.fingerprint() != plan.fingerprint()
    with pytest.raises(ValueError, match="exported with plan"):
        load_serving_model(path, start)
    manifest["plan_file"] = "../plan.safetensors"
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="plan_file is '../plan.safetensors'"):
        load_serving_model(path)


def _dataset_and_heights(flags: list[str]) -> tuple:
    dataset = load_data(parse_args([*ARGS, *flags]))
    return dataset, list(dataset.num_embeddings)


@pytest.mark.distributed
def test_export_at_world_size_2_writes_shards_without_a_gather(tmp_path: Path) -> None:
    flags = ["--compression", "qr", "--fraction", "0.3", "--dense_arch_layer_sizes", "8,8"]
    path = str(tmp_path / "model")
    assert not hasattr(export, "gather_to_rank0")
    out = run_multiprocess(_train_and_export, world_size=2, flags=flags, path=path)[0]
    assert len(out["diffs"]) == 16 and max(out["diffs"]) < 1e-5
    assert out["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank's own
    assert "gather_object" in out["traffic"]  # DCP's plans went through the guard
    assert not staging_dir(path).exists()


def _gather_under_guard(rank: int, world_size: int) -> str:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (world_size,))
    rows = DTensor.from_local(torch.full((2, 3), float(rank)), mesh, [Shard(0)], run_check=False)
    with no_tensors_between_ranks():
        try:
            gather_to_rank0({"w": rows}, device=torch.device("cpu"))
        except AssertionError as e:
            return str(e)
    return ""


@pytest.mark.distributed
def test_the_guard_catches_a_gather(tmp_path: Path) -> None:
    # the old export's gather fails under the guard the export tests run in
    errors = run_multiprocess(_gather_under_guard, world_size=2, timeout=60)
    assert "dist.send sends a tensor" in errors[1]


class Killed(Exception):
    """A simulated crash."""


def test_a_killed_export_leaves_the_previous_export(tmp_path: Path) -> None:
    path, rows = tmp_path / "model", torch.arange(32)
    flags = [*ARGS, *SMALL, "--compression", "qr", "--fraction", "0.3"]
    with trained_and_exported(flags, path) as s:
        num_dense = len(s.dataset.dense_names)
        before = _served_logits(path, s, rows)
        torch.testing.assert_close(before, _trained_logits(s, rows), rtol=0, atol=1e-5)
        with torch.no_grad():
            for p in s.model.parameters():
                p.add_(0.5)  # another model to export
        changed = _trained_logits(s, rows)
        assert not torch.allclose(changed, before, atol=1e-3)
        with mock.patch.object(export, "replace_dir", side_effect=Killed("killed")):
            with pytest.raises(Killed):
                export_model(s, path, num_dense=num_dense)
        assert (staging_dir(path) / WEIGHTS_DIR / "__0_0.distcp").is_file()  # written, not moved
        torch.testing.assert_close(_served_logits(path, s, rows), before, rtol=0, atol=0)
        export_model(s, path, num_dense=num_dense)
        torch.testing.assert_close(_served_logits(path, s, rows), changed, rtol=0, atol=1e-5)
        assert not staging_dir(path).exists()
        assert sorted(os.listdir(tmp_path)) == ["model"]  # no staged or old directory left
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        with pytest.raises(ValueError, match="not an earlier export"):
            export_model(s, tmp_path / "other", num_dense=num_dense)
        (tmp_path / "other" / MANIFEST_FILE).write_text('{"kind": "teacher_artifact"}')
        with pytest.raises(ValueError, match="not an earlier export"):  # another's manifest
            export_model(s, tmp_path / "other", num_dense=num_dense)
        assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def _damaged(path: Path, name: str) -> Path:
    copy = path.parent / name
    shutil.copytree(path, copy)
    return copy


def test_damaged_foreign_and_old_exports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mch model is not exportable"):
        parse_args([*ARGS, "--compression", "mch", "--fraction", "0.5", "--export_model", "x"])
    path = tmp_path / "model"
    with trained_and_exported([*ARGS, *SMALL], path):
        served = load_serving_model(path)
    assert sorted(p.name for p in path.iterdir()) == [
        MANIFEST_FILE, "model_fp32.pt", "model_int8.pt", WEIGHTS_DIR
    ]  # fmt: skip
    other = HashPlan.from_mappings(
        {"cat_0": torch.zeros(30, dtype=torch.int32)}, heights={"cat_0": 1}
    )
    with pytest.raises(ValueError, match="exported with plan None"):
        load_serving_model(path, other)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    bad = _damaged(path, "kind")
    (bad / MANIFEST_FILE).write_text(json.dumps(dict(manifest, kind="hash_plan")))
    with pytest.raises(ValueError, match="kind.*not a serving_model|not a serving_model"):
        load_serving_model(bad)
    bad = _damaged(path, "no_manifest")
    (bad / MANIFEST_FILE).unlink()
    with pytest.raises(ValueError, match="no readable manifest.json"):
        load_serving_model(bad)
    bad = _damaged(path, "taller")
    tables = [dict(t, num_embeddings=t["num_embeddings"] + 1) for t in manifest["tables"]]
    (bad / MANIFEST_FILE).write_text(json.dumps(dict(manifest, tables=tables)))
    with pytest.raises(ValueError, match=r"was saved as \(30, 8\).*the model has \(31, 8\)"):
        load_serving_model(bad)
    bad = _damaged(path, "unsafe_index")
    (bad / WEIGHTS_DIR / ".metadata").write_bytes(pickle.dumps(os.getcwd))
    with pytest.raises(ValueError, match="not a safe DCP checkpoint index"):
        load_serving_model(bad)
    bad = _damaged(path, "truncated")
    data = bad / WEIGHTS_DIR / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot be read"):
        load_serving_model(bad)
    bad = _damaged(path, "no_digest")
    del_digest = {k: v for k, v in manifest.items() if k != "weights_sha256"}
    (bad / MANIFEST_FILE).write_text(json.dumps(del_digest))
    with pytest.raises(ValueError, match=r"manifest lacks \['weights_sha256'\]"):
        load_serving_model(bad)
    bad = _damaged(path, "altered")
    (bad / MANIFEST_FILE).write_text(json.dumps(dict(manifest, weights_sha256="0" * 64)))
    with pytest.raises(ValueError, match="altered or damaged"):
        load_serving_model(bad)
    # a manifest edited by hand: before, a TypeError, KeyError or IndexError naming no file
    first = manifest["tables"][0]
    for name, edit, message in [
        ("dense_str", dict(num_dense="3"), r"num_dense must be an int >= 1, got '3'"),
        ("tables_str", dict(tables="x"), r"tables must be a non-empty list, got 'x'"),
        ("tables_empty", dict(tables=[]), r"tables must be a non-empty list, got \[\]"),
        (
            "no_features",
            dict(tables=[{"name": "t", "num_embeddings": 5}]),
            r"KeyError\('features'\)",
        ),
        (
            "height_str",
            dict(tables=[dict(first, num_embeddings="30")]),
            r"num_embeddings must be an int >= 1, got '30'",
        ),
        ("config_list", dict(config=[1]), r"TypeError\(.*must be a mapping"),
        (
            "config_key",
            dict(config=dict(manifest["config"], bogus=1)),
            r"unexpected keyword argument 'bogus'",
        ),
    ]:
        bad = _damaged(path, name)
        (bad / MANIFEST_FILE).write_text(json.dumps(dict(manifest, **edit)))
        with pytest.raises(
            ValueError, match=rf"{name}: the serving_model manifest is malformed: .*{message}"
        ):
            load_serving_model(bad)
    # an export from before DCP: its collapsed float weights in weights.safetensors
    old = tmp_path / "old"
    old.mkdir()
    legacy = {k: manifest[k] for k in ("kind", "config", "num_dense", "plan_fingerprint")}
    legacy.update(mlet_collapsed=False, tables=manifest["tables"])
    save_tensors(old / LEGACY_WEIGHTS_FILE, served.state_dict(), legacy)
    for source in (old, old / LEGACY_WEIGHTS_FILE):
        model = load_serving_model(source)
        for key, value in served.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
