"""The DLRM app at world size 2: mch, with and without learned hashing, checkpoint / resume
(mid-epoch, across world sizes 2 -> 1 -> 2, and of an mch run), and gathering sharded
state."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from apps.dlrm import checkpoint as ckpt
from apps.dlrm.config import TrainConfig
from apps.dlrm.loop import evaluate
from apps.dlrm.train import METRIC_KEYS, main, parse_args
from tests._multiprocess import run_multiprocess
from tests.apps._train_args import NO_MINIMUM, SMALL
from tests.test_checkpoint import Killed, killed_after_save
from torchrec_lhf.compression.baselines import modulo_plan
from torchrec_lhf.plan import HashPlan


def _random_plan() -> HashPlan:
    g = torch.Generator().manual_seed(0)
    return HashPlan.from_mappings(
        {
            "cat_1": torch.randint(0, 12, (60,), generator=g),
            "cat_2": torch.randint(0, 20, (200,), generator=g),
        },
        heights={"cat_1": 12, "cat_2": 20},
    )


# ------------------------------------------------------------------------- world size 2
def _train_mch(rank: int, world_size: int, tmp: str) -> dict:
    return main(
        [
            *SMALL,
            *NO_MINIMUM,
            *("--compression", "mch", "--fraction", "0.5", "--metrics_json", f"{tmp}/mch.json"),
            *("--limit_train_batches", "6", "--limit_val_batches", "2"),
        ]
    )


@pytest.mark.distributed
def test_mch_trains_row_wise_at_world_size_2(tmp_path: Path) -> None:
    first, second = run_multiprocess(_train_mch, world_size=2, tmp=str(tmp_path))
    assert first["auc"] == second["auc"]  # synced metrics
    metrics = json.loads((tmp_path / "mch.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics) and 0.0 <= metrics["auc"] <= 1.0
    assert metrics["steps"] == 6 and metrics["world_size"] == 2
    # 40, 60, 200 ids at 0.5: 20 + 30 + 100 managed rows of dim 8
    assert metrics["rows"] == 150 and metrics["full_rows"] == 300
    assert metrics["embedding_bytes"] == 150 * 8 * 4
    assert metrics["full_embedding_bytes"] == 300 * 8 * 4
    # the serving lookup: sorted raw ids and their rows, one int64 each per managed row
    assert metrics["remap_bytes"] == 8 * 2 * 150
    assert metrics["remap_computable"] is False and metrics["plan_fingerprint"] is None


def _train_with_and_without_plan(rank: int, world_size: int, tmp: str) -> tuple[dict, dict]:
    common = [*SMALL, "--epochs", "1", "--limit_train_batches", "6", "--limit_val_batches", "2"]
    full = main([*common, "--metrics_json", f"{tmp}/full.json"])
    hashed = main(
        [*common, "--learned_hash", f"{tmp}/plan.safetensors", "--metrics_json", f"{tmp}/lhf.json"]
    )
    return full, hashed


@pytest.mark.distributed
def test_main_at_world_size_2_with_and_without_learned_hash(tmp_path: Path) -> None:
    _random_plan().save(tmp_path / "plan.safetensors")
    results = run_multiprocess(_train_with_and_without_plan, world_size=2, tmp=str(tmp_path))
    (full, hashed), (full1, hashed1) = results
    assert full["auc"] == full1["auc"] and hashed["logloss"] == hashed1["logloss"]  # synced metrics
    on_disk = {
        name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("full", "lhf")
    }
    for metrics in on_disk.values():
        assert set(METRIC_KEYS) <= set(metrics)
        assert (
            0.0 <= metrics["auc"] <= 1.0 and metrics["logloss"] > 0 and metrics["samples_per_s"] > 0
        )
        assert metrics["steps"] == 6 and metrics["world_size"] == 2
        assert metrics["test_samples"] == 200  # the whole test split, padded tail included
    full, lhf = on_disk["full"], on_disk["lhf"]
    assert full["plan_fingerprint"] is None and full["remap_bytes"] == 0
    assert full["embedding_bytes"] == full["full_embedding_bytes"] == 4 * 8 * (40 + 60 + 200)
    assert lhf["plan_fingerprint"] == _random_plan().fingerprint()
    assert lhf["embedding_bytes"] == 4 * 8 * (40 + 12 + 20) < full["embedding_bytes"]
    assert lhf["full_embedding_bytes"] == full["full_embedding_bytes"]
    assert lhf["remap_bytes"] == 60 + 200  # uint8 rows: every compressed height <= 256
    assert lhf["rows"] == 72 and lhf["full_rows"] == 300


# row_wise: every table is split over both ranks, so loading has to scatter shards
RESUME = [
    *SMALL,
    *NO_MINIMUM,
    *("--compression", "modulo", "--fraction", "0.5", "--sharding_types", "row_wise"),
    *("--limit_train_batches", "8", "--dense_optimizer", "adam", "--epochs", "2"),
]


# mch, row-wise: each rank counts the ids of its block (a number that varies from step to
# step) and re-initializes the rows it evicts from its own generator; 25 steps an epoch
MCH_RESUME = [*SMALL, *NO_MINIMUM, "--compression", "mch", "--fraction", "0.2", "--epochs", "2"]


def _mch_run_and_crash(rank: int, world_size: int, tmp: str) -> dict:
    uninterrupted = main(MCH_RESUME)
    with killed_after_save(30), pytest.raises(Killed):  # epoch 2, after 5 of its steps
        main([*MCH_RESUME, "--checkpoint_dir", f"{tmp}/mch", "--checkpoint_every", "10"])
    return uninterrupted


def _mch_resume(rank: int, world_size: int, tmp: str) -> dict:
    return main([*MCH_RESUME, "--checkpoint_dir", f"{tmp}/mch", "--resume"])


@pytest.mark.distributed
def test_mch_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Killed mid-epoch 2 and resumed at world size 2: the same metrics to the digit (each
    rank's generator and every id's count restored)."""
    tmp = str(tmp_path)
    a = run_multiprocess(_mch_run_and_crash, world_size=2, tmp=tmp)[0]
    b = run_multiprocess(_mch_resume, world_size=2, tmp=tmp)[0]
    assert (a["epochs"], a["steps"]) == (b["epochs"], b["steps"]) == (2, 50)
    for key in ("auc", "logloss", "val_auc", "val_logloss"):
        assert b[key] == a[key], key


def _run_and_crash(rank: int, world_size: int, tmp: str) -> dict:
    uninterrupted = main(RESUME)
    # checkpoints at steps 5 (mid epoch 1), 8 (end of epoch 1) and 10 (batch 2 of epoch 2)
    with killed_after_save(10), pytest.raises(Killed):
        main([*RESUME, "--checkpoint_dir", f"{tmp}/ckpt", "--checkpoint_every", "5"])
    return uninterrupted


def _session(config: TrainConfig):
    from apps.dlrm.loop import build_session, load_data
    from apps.dlrm.runtime import distributed
    from apps.dlrm.train import resolve_plan

    with distributed() as env:
        dataset = load_data(config)
        plan = resolve_plan(config, dataset, list(dataset.num_embeddings))
        return build_session(config, env, dataset, plan)


def _reload_at_world_size_1(rank: int, world_size: int, tmp: str) -> dict:
    # the global batch of 64 rows stays the same; the sharding is now all on rank 0
    config = parse_args([*RESUME, "--batch_size", "64", "--checkpoint_dir", f"{tmp}/ckpt"])
    session = _session(config)
    assert ckpt.resume(session)
    position = (session.epoch, session.batch, session.step)
    val = evaluate(session, "val")
    session.config = dataclasses.replace(config, checkpoint_dir=f"{tmp}/ckpt_ws1")
    ckpt.save(session)
    return {"position": position, "val": val}


def _resume(rank: int, world_size: int, tmp: str) -> dict:
    session = _session(parse_args([*RESUME, "--checkpoint_dir", f"{tmp}/ckpt"]))
    assert ckpt.resume(session)
    val = evaluate(session, "val")
    resumed = main([*RESUME, "--checkpoint_dir", f"{tmp}/ckpt", "--resume"])
    via_ws1 = main([*RESUME, "--checkpoint_dir", f"{tmp}/ckpt_ws1", "--resume"])
    other_plan = [*RESUME, "--fraction", "0.25", "--checkpoint_dir", f"{tmp}/ckpt", "--resume"]
    with pytest.raises(ValueError) as error:
        main(other_plan)
    return {"val": val, "resumed": resumed, "via_ws1": via_ws1, "error": str(error.value)}


@pytest.mark.distributed
def test_resume_equals_uninterrupted_and_rejects_another_plan(tmp_path: Path) -> None:
    """Killed mid-epoch 2 at world size 2, resumed at world size 2, and through a reload and
    save at world size 1: the same model and optimizer state, so the same final metrics."""
    tmp = str(tmp_path)
    a = run_multiprocess(_run_and_crash, world_size=2, tmp=tmp)[0]
    ws1 = run_multiprocess(_reload_at_world_size_1, world_size=1, tmp=tmp)[0]
    assert ws1["position"] == (1, 2, 10)  # epoch 2 (0-based 1), 2 of its batches trained
    result = run_multiprocess(_resume, world_size=2, tmp=tmp)[0]
    for key in ("auc", "logloss"):  # the same state evaluates alike at world sizes 1 and 2
        assert math.isclose(ws1["val"][key], result["val"][key], abs_tol=1e-6), key
    for b in (result["resumed"], result["via_ws1"]):
        assert (a["epochs"], a["steps"]) == (b["epochs"], b["steps"]) == (2, 16)
        for key in ("auc", "logloss", "val_auc", "val_logloss"):
            assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=1e-6), (key, a[key], b[key])
        assert b["history"] == [
            {"epoch": 2, "step": 16, "val_auc": b["val_auc"], "val_logloss": b["val_logloss"]}
        ]
    fingerprints = [
        modulo_plan(n, fraction=f).fingerprint()
        for n, f in [
            ({"cat_0": 40, "cat_1": 60, "cat_2": 200}, 0.5),
            ({"cat_0": 40, "cat_1": 60, "cat_2": 200}, 0.25),
        ]
    ]
    assert fingerprints[0] in result["error"] and fingerprints[1] in result["error"]


def _one_row_tables(rank: int, world_size: int, types: str, fraction: str) -> dict | str:
    short = ["--limit_train_batches", "3", "--limit_val_batches", "1", "--limit_test_batches", "1"]
    tiny = ["--compression", "modulo", "--fraction", fraction, "--sharding_types", types]
    try:
        return main([*SMALL, *NO_MINIMUM, *short, *tiny])
    except ValueError as e:
        return str(e)


@pytest.mark.distributed
def test_tables_of_too_few_rows_for_a_row_wise_split_at_world_size_2() -> None:
    """40 and 60 ids at 0.02: 1 row each, row-wise over 2 ranks ``[1, 0]``; 200 ids: 4 rows.
    Before, with row_wise allowed the planner split the 1-row tables row-wise, and FBGEMM's
    CPU kernel failed on their empty shards inside the first step (at 0.005, where every
    table has 1 row: "weights[0] must be a GPU or MTIA tensor"); now they are placed
    otherwise where the sharding types allow, and refused by name, on both ranks, before
    training where not."""
    trained = run_multiprocess(
        _one_row_tables, world_size=2, types="row_wise,table_wise", fraction="0.02"
    )
    assert all(isinstance(m, dict) and m["steps"] == 3 for m in trained), trained
    assert math.isfinite(trained[0]["logloss"]) and trained[0]["rows"] == 1 + 1 + 4
    refused = run_multiprocess(_one_row_tables, world_size=2, types="row_wise", fraction="0.02")
    assert refused[0] == refused[1]
    assert "rank 1 would hold empty row shards of tables ['cat_0', 'cat_1']" in refused[0]


# ------------------------------------------------------------- gathering sharded state
def _gather_and_scatter(rank: int, world_size: int) -> dict:
    import torch.distributed as dist
    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from torchrec_lhf.distributed.gather import copy_into, gather_to_rank0

    full = {
        "rows": torch.arange(10.0).reshape(5, 2),
        "cols": torch.arange(12).reshape(3, 4).int(),
        "owned_by_1": torch.arange(6.0),
        "dt_rows": torch.arange(8.0).reshape(4, 2),
        "dt_repl": torch.arange(3.0),
        "plain": torch.tensor([7.0, 8.0]),
    }
    spec_rows = ChunkShardingSpec(dim=0, placements=["rank:0/cpu", "rank:1/cpu"])
    spec_cols = ChunkShardingSpec(dim=1, placements=["rank:0/cpu", "rank:1/cpu"])
    mesh = init_device_mesh("cpu", (world_size,))
    leaves = {
        "rows": sharded_tensor.zeros(spec_rows, 5, 2),  # rows 0-2 on rank 0, 3-4 on rank 1
        "cols": sharded_tensor.zeros(spec_cols, 3, 4, dtype=torch.int32),
        "owned_by_1": sharded_tensor.zeros(ChunkShardingSpec(dim=0, placements=["rank:1/cpu"]), 6),
        "dt_rows": distribute_tensor(torch.zeros(4, 2), mesh, [Shard(0)]),
        "dt_repl": distribute_tensor(torch.zeros(3), mesh, [Replicate()]),
        "plain": torch.zeros(2),
    }
    for key, t in leaves.items():  # the scatter: every rank copies its part of the full tensor
        copy_into(key, t, full[key])
    if rank == 0:  # like the fused optimizer's state of a table-wise table on rank 1
        del leaves["owned_by_1"]
    gathered = gather_to_rank0(leaves, device=torch.device("cpu"))
    local = {
        k: [s.tensor.tolist() for s in t.local_shards()]
        for k, t in leaves.items()
        if hasattr(t, "local_shards")
    }
    dist.barrier()
    return {"gathered": gathered, "full": full, "local": local}


@pytest.mark.distributed
def test_gather_and_scatter_sharded_state_at_world_size_2() -> None:
    r0, r1 = run_multiprocess(_gather_and_scatter, world_size=2)
    assert r1["gathered"] is None
    assert sorted(r0["gathered"]) == sorted(r0["full"])
    for key, expected in r0["full"].items():
        assert r0["gathered"][key].dtype == expected.dtype
        assert torch.equal(r0["gathered"][key], expected), key
    assert r0["local"]["rows"] == [[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]]
    assert r1["local"]["rows"] == [[[6.0, 7.0], [8.0, 9.0]]]
    assert r1["local"]["cols"] == [[[2, 3], [6, 7], [10, 11]]]
    assert r1["local"]["owned_by_1"] == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
