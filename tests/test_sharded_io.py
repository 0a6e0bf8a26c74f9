"""``torchrec_lhf/sharded_io.py``: shards written per rank, read back in place on one
process equal to the sharded model; mismatches refused; a directory replaced whole."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import row_wise, table_wise

from tests._fixtures import shard_on_cpu
from tests._multiprocess import run_multiprocess
from torchrec_lhf.distributed.gather import gather_to_rank0
from torchrec_lhf.sharded_io import (
    load_state_dict_in_place,
    replace_dir,
    save_state_dict,
    staging_dir,
)

TABLES = [
    EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=12, feature_names=["f0"]),
    EmbeddingBagConfig(name="t1", embedding_dim=4, num_embeddings=10, feature_names=["f1"]),
]


def _save_sharded(rank: int, world_size: int, path: str) -> dict[str, torch.Tensor] | None:
    """Tables row-wise and table-wise over the ranks, written by :func:`save_state_dict`;
    the full tables on rank 0 (the reference, gathered)."""
    torch.manual_seed(rank)  # a different random init per rank: shards must not mix up
    ebc = EmbeddingBagCollection(TABLES, device=torch.device("meta"))
    fused = EmbeddingComputeKernel.FUSED.value
    shardings = {
        "t0": row_wise(compute_kernel=fused),
        "t1": table_wise(rank=1, compute_kernel=fused),
    }
    model = shard_on_cpu(ebc, EmbeddingBagCollectionSharder(), shardings, world_size)
    state = model.state_dict()
    save_state_dict(state, path)
    return gather_to_rank0(dict(state), device=torch.device("cpu"))


@pytest.mark.distributed
def test_shards_saved_at_world_size_2_load_in_place_unsharded(tmp_path: Path) -> None:
    path = tmp_path / "weights"
    full = run_multiprocess(_save_sharded, world_size=2, path=str(path))[0]
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    model = EmbeddingBagCollection(TABLES)
    state = model.state_dict()
    pointers = {k: v.data_ptr() for k, v in state.items()}
    load_state_dict_in_place(state, path)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == pointers  # in place
    assert sorted(state) == sorted(full)
    for key, value in full.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_other_keys_shapes_or_dtypes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights"
    save_state_dict(nn.Linear(3, 2).state_dict(), path)
    cases = {
        "not in this model \\['bias'\\]": {"weight": torch.zeros(2, 3)},
        "not saved \\['extra'\\]": {**nn.Linear(3, 2).state_dict(), "extra": torch.zeros(1)},
        r"'weight' was saved as \(2, 3\) torch.float32, the model has \(2, 4\)": nn.Linear(
            4, 2
        ).state_dict(),
        "the model has \\(2, 3\\) torch.float64": nn.Linear(3, 2).double().state_dict(),
    }
    for message, state in cases.items():
        with pytest.raises(ValueError, match=message):
            load_state_dict_in_place(state, path)
    with pytest.raises(ValueError, match="no DCP index"):
        load_state_dict_in_place(nn.Linear(3, 2).state_dict(), tmp_path)
    with pytest.raises(ValueError, match="'step' is a int, not a tensor"):
        save_state_dict({"step": 3}, tmp_path / "x")  # type: ignore[dict-item]


def test_replace_dir_moves_the_staged_directory_over_the_old(tmp_path: Path) -> None:
    path = tmp_path / "export"
    staged = staging_dir(path)
    assert staged == tmp_path / ".export.partial"
    for version in ("1", "2"):
        staged.mkdir()
        (staged / "v").write_text(version)
        replace_dir(staged, path)
        assert (path / "v").read_text() == version
        assert sorted(os.listdir(tmp_path)) == ["export"]  # no staged or old copy left
    staged.mkdir()
    (staged / "v").write_text("3")
    rename, done = os.rename, []

    def rename_then_die(src: Path, dst: Path) -> None:
        if done:
            raise OSError("killed between the two renames")
        done.append(rename(src, dst))

    with mock.patch("os.rename", rename_then_die), pytest.raises(OSError, match="killed"):
        replace_dir(staged, path)
    assert not path.exists() and (tmp_path / ".export.old" / "v").read_text() == "2"
    staged_4 = tmp_path / "v4"
    staged_4.mkdir()
    (staged_4 / "v").write_text("4")
    replace_dir(staged_4, path)  # the old version is put back first, then replaced
    assert (path / "v").read_text() == "4"
    assert sorted(os.listdir(tmp_path)) == [".export.partial", "export"]
