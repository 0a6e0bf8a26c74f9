"""The DLRM app: flags, world size 2 with and without learned hashing, checkpoint / resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apps.dlrm.config import TrainConfig
from apps.dlrm.train import METRIC_KEYS, main, parse_args
from tests._multiprocess import run_multiprocess
from torchrec_lhf.compression.baselines import modulo_plan
from torchrec_lhf.plan import HashPlan

ROOT = Path(__file__).resolve().parents[2]
# Tiny synthetic data: 2,000 samples (1,600 train), three tables of 40, 60 and 200 ids.
DATA = [
    "--dataset",
    "synthetic",
    "--dataset_options",
    json.dumps({"num_samples": 2000, "num_embeddings": [40, 60, 200]}),
]
NO_MINIMUM = ["--min_table_rows", "0"]  # compress these tiny tables too (the default is 100)
SMALL = [
    *DATA,
    "--embedding_dim",
    "8",
    "--dense_arch_layer_sizes",
    "16,8",
    "--over_arch_layer_sizes",
    "16,1",
    "--batch_size",
    "32",
    "--log_every",
    "1000",
]


def _random_plan() -> HashPlan:
    g = torch.Generator().manual_seed(0)
    return HashPlan.from_mappings(
        {
            "cat_1": torch.randint(0, 12, (60,), generator=g),
            "cat_2": torch.randint(0, 20, (200,), generator=g),
        },
        heights={"cat_1": 12, "cat_2": 20},
    )


# ---------------------------------------------------------------------------------- flags
def test_flags_parse_into_a_config() -> None:
    config = parse_args([*SMALL, "--compression", "modulo", "--fraction", "0.25", "--epochs", "3"])
    assert config.dataset_options == {"num_samples": 2000, "num_embeddings": [40, 60, 200]}
    assert config.dense_arch_layer_sizes == [16, 8] and config.over_arch_layer_sizes == [16, 1]
    assert (config.compression, config.fraction, config.epochs) == ("modulo", 0.25, 3)
    assert TrainConfig(embedding_dim=4).dense_arch_layer_sizes == [64, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"compression": "lhf", "fraction": 0.1},
            r"'lhf' is not a built-in method; supported: \['none', 'modulo', 'qr'",
        ),
        (
            {"compression": "mch", "fraction": 0.1, "mlet_fraction": 0.5},
            "--compression mch does not combine with --mlet_fraction 0.5",
        ),
        (
            {"compression": "mch", "fraction": 0.1, "sharding_types": ["table_wise"]},
            r"row_wise only .* --sharding_types \['table_wise'\] must include row_wise",
        ),
        ({"compression_options": {"retain": 0.5}}, r"need a plan method"),
        ({"compression": "modulo", "fraction": 0.1, "budget": "weekly"}, r"'weekly'"),
        (
            {"compression": "mlet", "fraction": 0.5, "budget": "total"},
            r"--budget 'total' needs a method that drops rows .* got --compression 'mlet'",
        ),
        ({"compression": "mlet", "fraction": 0.5, "mlet_fraction": 0.25}, "disagrees"),
        ({"mlet_fraction": 1.5}, r"mlet_fraction must be in \(0, 1\], got 1.5"),
        ({"mlet_fraction": 0.5, "mlet_inner_dim": 0}, "mlet_inner_dim must be an int >= 1"),
        ({"compression": "modulo"}, "needs --fraction"),
        ({"fraction": 0.1}, "needs --compression"),
        ({"compression": "modulo", "fraction": 1.5}, r"fraction must be in \(0, 1\], got 1.5"),
        ({"learned_hash": "p", "compression": "modulo", "fraction": 0.1}, "give one"),
        (
            {"embedding_dim": 8, "dense_arch_layer_sizes": [16, 4]},
            r"equal the model's embedding dim 8 \(embedding_dim=8, mlet_fraction=None\), got \[16, 4\]",
        ),
        ({"over_arch_layer_sizes": [16, 2]}, r"must be 1, got \[16, 2\]"),
        ({"resume": True}, "--resume needs --checkpoint_dir"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"sharding_types": ["grid_shard"]}, "got 'grid_shard'"),
    ],
)
def test_bad_config_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


# ------------------------------------------------------------- every --compression method
# Tables 40, 60, 200 at dim 8: the full model has 300 rows, 300 * 8 * 4 = 9,600 bytes.
@pytest.mark.parametrize(
    ("flags", "rows", "embedding_bytes", "computable"),
    [
        # modulo: round(0.5 N) rows per table
        (["--compression", "modulo"], 20 + 30 + 100, 150 * 8 * 4, True),
        # qr at 0.5: m + ceil(N / m) closest to 0.5 N: 40 -> 8 + 5 (or 5 + 8), 60 -> 3 + 20 /
        # ..., checked against the plan below rather than by hand
        (["--compression", "qr", "--compression_options", '{"combine": "sum"}'], None, None, True),
        (["--compression", "fbdh"], None, None, True),
        (["--compression", "memrec"], None, None, True),
        # MLET alone at 0.5: dim 4, collapsed tables 300 * 4 * 4 bytes
        (["--compression", "mlet"], 300, 300 * 4 * 4, None),
        # modulo at 0.5 with MLET at 0.5: 150 rows of dim 4
        (["--compression", "modulo", "--mlet_fraction", "0.5"], 150, 150 * 4 * 4, True),
        # TorchRec's managed collisions: round(0.5 N) rows, a non-computable id -> row state
        (["--compression", "mch"], 150, 150 * 8 * 4, False),
        # ... with the 40-id table full (a plain EBC beside the managed one)
        (["--compression", "mch", "--min_table_rows", "50"], 40 + 30 + 100, 170 * 8 * 4, False),
    ],
)
def test_every_compression_method_trains(
    tmp_path: Path,
    flags: list[str],
    rows: int | None,
    embedding_bytes: int | None,
    computable: bool | None,
) -> None:
    dims = ["--dense_arch_layer_sizes", "16,4"] if "mlet" in " ".join(flags) else []
    metrics = main(
        [
            *SMALL,
            *dims,
            *NO_MINIMUM,
            *flags,
            "--fraction",
            "0.5",
            "--limit_train_batches",
            "2",
            "--limit_val_batches",
            "1",
            "--limit_test_batches",
            "2",
        ]
    )
    assert 0.0 <= metrics["auc"] <= 1.0 and math.isfinite(metrics["logloss"])
    assert metrics["full_embedding_bytes"] == 300 * 8 * 4
    assert metrics["remap_computable"] is computable
    if rows is not None:
        assert metrics["rows"] == rows and metrics["embedding_bytes"] == embedding_bytes
    else:  # a plan method at 0.5: about half the rows, full dim, a materialized remap
        assert 0.4 * 300 <= metrics["rows"] <= 0.6 * 300 + 3
        assert metrics["embedding_bytes"] == metrics["rows"] * 8 * 4
    assert (metrics["remap_bytes"] > 0) == (computable is not None)


def test_mlet_trains_wider_than_it_saves() -> None:
    metrics = main(
        [
            *SMALL,
            "--dense_arch_layer_sizes",
            "16,2",
            "--compression",
            "mlet",
            "--fraction",
            "0.25",
            "--mlet_inner_dim",
            "16",
            "--limit_train_batches",
            "2",
            "--limit_val_batches",
            "1",
            "--limit_test_batches",
            "1",
        ]
    )
    # dim 8 * 0.25 = 2 saved; inner tables 300 x 16 plus three (16, 2) projections train
    assert metrics["embedding_bytes"] == 300 * 2 * 4
    assert metrics["train_embedding_bytes"] == 300 * 16 * 4 + 3 * 16 * 2 * 4


def test_unknown_compression_option_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown options \['colour'\]"):
        main(
            [
                *SMALL,
                "--compression",
                "qr",
                "--fraction",
                "0.5",
                "--compression_options",
                '{"colour": 1}',
            ]
        )


def test_csv_flags_need_a_csv_dataset() -> None:
    with pytest.raises(ValueError, match="only apply to --dataset csv:PATH"):
        parse_args(["--dataset", "synthetic", "--label", "clicked"])
    config = parse_args(
        ["--dataset", "csv:x.csv", "--label", "y", "--categorical", "a,b", "--dense", "c"]
    )
    assert config.dataset_options == {"label": "y", "categorical": ["a", "b"], "dense": ["c"]}


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
    assert lhf["remap_bytes"] == 2 * (60 + 200)  # int16 rows: every compressed height < 2**15
    assert lhf["rows"] == 72 and lhf["full_rows"] == 300


def _resume(rank: int, world_size: int, tmp: str) -> dict:
    # row_wise: every table is split over both ranks, so loading has to scatter shards
    common = [
        *SMALL,
        *NO_MINIMUM,
        "--compression",
        "modulo",
        "--fraction",
        "0.5",
        "--sharding_types",
        "row_wise",
        "--limit_train_batches",
        "8",
        "--dense_optimizer",
        "adam",
    ]
    uninterrupted = main([*common, "--epochs", "2"])
    main([*common, "--epochs", "1", "--checkpoint_dir", f"{tmp}/ckpt"])
    resumed = main([*common, "--epochs", "2", "--checkpoint_dir", f"{tmp}/ckpt", "--resume"])
    other_plan = [
        *common,
        "--fraction",
        "0.25",
        "--epochs",
        "3",
        "--checkpoint_dir",
        f"{tmp}/ckpt",
        "--resume",
    ]
    with pytest.raises(ValueError) as error:
        main(other_plan)
    return {"uninterrupted": uninterrupted, "resumed": resumed, "error": str(error.value)}


@pytest.mark.distributed
def test_resume_equals_uninterrupted_and_rejects_another_plan(tmp_path: Path) -> None:
    result = run_multiprocess(_resume, world_size=2, tmp=str(tmp_path))[0]
    a, b = result["uninterrupted"], result["resumed"]
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


def test_single_process_command_line(tmp_path: Path) -> None:
    """``python -m apps.dlrm.train`` with no torchrun variables makes its own 1-rank group;
    DCN interaction; table heights below the data's fold the ids."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    out = tmp_path / "m.json"
    args = [
        *SMALL,
        "--limit_train_batches",
        "3",
        "--limit_val_batches",
        "1",
        "--limit_test_batches",
        "1",
        "--interaction_type",
        "dcn",
        "--dcn_num_layers",
        "1",
        "--dcn_low_rank_dim",
        "4",
        "--num_embeddings_per_feature",
        "40,30,100",  # ids of cat_1 and cat_2 fold modulo
        "--metrics_json",
        str(out),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "apps.dlrm.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["world_size"] == 1 and metrics["steps"] == 3 and metrics["test_samples"] == 32
    assert metrics["config"]["interaction_type"] == "dcn"
    assert metrics["full_rows"] == 170 and metrics["embedding_bytes"] == 4 * 8 * 170
    assert "fold modulo the table height" in proc.stderr


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
