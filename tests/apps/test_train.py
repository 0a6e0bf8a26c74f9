"""The DLRM app in one process: flags, every --compression method, the command line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from apps.dlrm.config import TrainConfig
from apps.dlrm.train import main, parse_args
from tests._fixtures import run_module
from tests.apps._train_args import NO_MINIMUM, SMALL
from torchrec_lhf.hash_build.artifact import TeacherArtifact


# ---------------------------------------------------------------------------------- flags
def test_flags_parse_into_a_config() -> None:
    config = parse_args([*SMALL, "--compression", "modulo", "--fraction", "0.25", "--epochs", "3"])
    assert config.dataset_options == {"num_samples": 2000, "num_embeddings": [40, 60, 200]}
    assert config.dense_arch_layer_sizes == [16, 8] and config.over_arch_layer_sizes == [16, 1]
    assert (config.compression, config.fraction, config.epochs) == ("modulo", 0.25, 3)
    assert TrainConfig(embedding_dim=4).dense_arch_layer_sizes == [64, 4]
    # a dim TorchRec's fused tables reject trains with the dense kernel
    assert TrainConfig(embedding_dim=6, sharding_types=["data_parallel"]).sharded_dim == 6
    dp_cce = {"compression": "cce", "fraction": 0.5, "sharding_types": ["data_parallel"]}
    assert TrainConfig(**dp_cce, cce_phases=0).cce_phases == 0  # (no phase: no re-clustering)


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
        (  # before: TorchRec asserted where it built the kernel, after the data was read
            {"embedding_dim": 6},
            r"embedding_dim=6 is not a multiple of 4: .* or sharding_types \['data_parallel'\]",
        ),
        ({"mlet_fraction": 0.5, "mlet_inner_dim": 10}, "mlet_inner_dim=10 is not a multiple of 4"),
        (  # before: refused at its first phase, after part of the training
            {"compression": "cce", "fraction": 0.5, "sharding_types": ["data_parallel"]},
            r"--compression cce re-clusters its tables .* --sharding_types \['data_parallel'\]",
        ),
        (  # (a tuple, which the list field takes, too)
            {"compression": "cce", "fraction": 0.5, "sharding_types": ("data_parallel",)},
            r"--compression cce re-clusters its tables .* --sharding_types \('data_parallel',\)",
        ),
        ({"resume": True}, "--resume needs --checkpoint_dir"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0, got inf"),
        ({"embedding_learning_rate": 0.0}, "embedding_learning_rate must be a finite number > 0"),
        ({"learning_rate": "0.1"}, "learning_rate must be a finite number > 0, got '0.1'"),
        ({"sharding_types": ["grid_shard"]}, "got 'grid_shard'"),
        (  # before: accepted (as the other list flags now refuse a repeat)
            {"sharding_types": ["table_wise", "row_wise", "table_wise"]},
            r"sharding_types must name each value once, .* \(\['table_wise'\] repeated\)",
        ),
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


def test_table_dims_a_plan_or_the_export_cannot_take_are_named_before_training(
    tmp_path: Path,
) -> None:
    """A concat plan splits dim 12 into 6 + 6, which TorchRec's fused tables reject; MLET
    at 0.625 of dim 8 exports dim-5 tables, which int8 rows cannot hold. Before, the first
    failed where TorchRec built its kernel (an AssertionError), the second after the whole
    training, in the export (FBGEMM's "ncols needs to be multiple of 2 Bytes"); so did MLET
    over a mult plan (its collapse refused it)."""
    wide = [*SMALL, *NO_MINIMUM, "--embedding_dim", "12", "--dense_arch_layer_sizes", "16,12"]
    concat = ["--compression", "qr", "--fraction", "0.5", "--compression_options"]
    with pytest.raises(ValueError, match=r"table 'cat_0__h0' \(an internal .* has dim 6, but"):
        main([*wide, *concat, '{"combine": "concat"}'])
    narrow = [*SMALL, "--dense_arch_layer_sizes", "16,5", "--compression", "mlet"]
    export = [*narrow, "--fraction", "0.625", "--export_model", str(tmp_path / "m")]
    with pytest.raises(ValueError, match=r"--export_model writes int8 .* 'cat_0' has dim 5"):
        main(export)
    assert not (tmp_path / "m").exists()
    # MLET over a plan that combines by mult: the export's collapse (W @ P) cannot fold it
    mult = ["--compression", "qr", "--fraction", "0.5", "--mlet_fraction", "0.5"]
    mult += ["--compression_options", '{"combine": "mult"}', "--dense_arch_layer_sizes", "16,4"]
    with pytest.raises(ValueError, match=r"--export_model serves MLET collapsed .* \['cat_0'"):
        main([*SMALL, *NO_MINIMUM, *mult, "--export_model", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_a_teacher_that_does_not_fit_is_refused_before_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a teacher without one of the model's tables warm-started the others and left
    that one at its random rows without a word; one whose planned tables had several hash
    functions (qr) was refused only after the model was built and sharded."""
    import apps.dlrm.train as train_app

    def not_built(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(train_app, "build_session", not_built)
    emb = {"cat_0": torch.zeros(40, 8), "cat_1": torch.zeros(60, 8)}
    counts = {k: torch.zeros(v.shape[0], dtype=torch.int64) for k, v in emb.items()}
    TeacherArtifact(embeddings=emb, counts=counts, manifest={}).save(tmp_path / "two")
    with pytest.raises(ValueError, match=r"the teacher has no table \['cat_2'\] of the model"):
        main([*SMALL, "--init_from", str(tmp_path / "two")])
    emb["cat_2"] = torch.zeros(200, 8)
    counts["cat_2"] = torch.zeros(200, dtype=torch.int64)
    TeacherArtifact(embeddings=emb, counts=counts, manifest={}).save(tmp_path / "three")
    qr = ["--compression", "qr", "--fraction", "0.5", "--init_from", str(tmp_path / "three")]
    with pytest.raises(ValueError, match=r"table 'cat_0' has 2 hash functions"):
        main([*SMALL, *NO_MINIMUM, *qr])


def test_a_mid_epoch_checkpoint_resumes_with_its_own_seed_only(tmp_path: Path) -> None:
    """The seed orders each epoch's rows. Before, a run resumed mid-epoch with another
    --seed went on in the other order without a word (some rows trained twice, some never);
    at an epoch's end another seed is taken."""
    from tests.test_checkpoint import Killed, killed_after_save

    run = [*SMALL, "--epochs", "2", "--limit_train_batches", "6", "--limit_val_batches", "1"]
    ckpt = ["--checkpoint_dir", str(tmp_path / "ckpt"), "--checkpoint_every", "2"]
    with killed_after_save(4), pytest.raises(Killed):  # epoch 1, batch 4 of 6
        main([*run, *ckpt])
    with pytest.raises(
        ValueError, match=r"saved mid-epoch \(epoch 1, batch 4\) by a run with seed 0"
    ):
        main([*run, *ckpt, "--resume", "--seed", "1"])
    assert main([*run, *ckpt, "--resume"])["steps"] == 12  # its own seed goes on
    with killed_after_save(6), pytest.raises(Killed):  # the end of epoch 1
        main([*run, "--checkpoint_dir", str(tmp_path / "end"), "--checkpoint_every", "6"])
    resumed = main([*run, "--checkpoint_dir", str(tmp_path / "end"), "--resume", "--seed", "1"])
    assert resumed["steps"] == 12


def test_the_full_model_plans_row_wise_on_cpu() -> None:
    """Before, the full model (a plain EBC) with ``--sharding_types row_wise`` failed to plan
    on CPU ("No available sharding type and compute kernel combination"): TorchRec's plain
    sharder offers row-wise types on CUDA only; its learned-hash twin planned."""
    short = ["--limit_train_batches", "3", "--limit_val_batches", "1", "--limit_test_batches", "1"]
    metrics = main([*SMALL, *short, "--sharding_types", "row_wise"])
    assert metrics["steps"] == 3 and math.isfinite(metrics["logloss"])


def test_a_bad_dataset_spec_fails_before_the_run() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; expected one of"):
        parse_args(["--dataset", "imagenet"])
    with pytest.raises(ValueError, match="dataset 'movielens-100k' takes no path"):
        parse_args(["--dataset", "movielens-100k:x"])
    with pytest.raises(ValueError, match=r"dataset 'csv': unknown options \['colour'\]"):
        parse_args(["--dataset", "csv:x.csv", "--dataset_options", '{"colour": 1}'])


def test_a_training_split_below_one_batch_is_refused() -> None:
    """1,600 training samples and a batch of 2,000: no step would run, and the untrained
    model's metrics were reported as a run's; evaluating only (no epochs) still runs."""
    too_big = [*SMALL, "--batch_size", "2000"]
    with pytest.raises(
        ValueError,
        match=r"the training split of 'synthetic' holds 1600 samples, fewer than one global "
        r"batch of batch_size 2000 x world size 1 = 2000: no training step would run",
    ):
        main(too_big)
    metrics = main([*too_big, "--epochs", "0"])
    assert metrics["steps"] == 0 and metrics["test_samples"] == 200


def test_csv_flags_need_a_csv_dataset() -> None:
    with pytest.raises(ValueError, match="only apply to --dataset csv:PATH"):
        parse_args(["--dataset", "synthetic", "--label", "clicked"])
    config = parse_args(
        ["--dataset", "csv:x.csv", "--label", "y", "--categorical", "a,b", "--dense", "c"]
    )
    assert config.dataset_options == {"label": "y", "categorical": ["a", "b"], "dense": ["c"]}


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
    proc = run_module("apps.dlrm.train", args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["world_size"] == 1 and metrics["steps"] == 3 and metrics["test_samples"] == 32
    assert metrics["config"]["interaction_type"] == "dcn"
    assert metrics["full_rows"] == 170 and metrics["embedding_bytes"] == 4 * 8 * 170
    assert "fold modulo the logical table height" in proc.stderr
