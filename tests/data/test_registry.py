"""``check_dataset_files``: a spec's path checked where a run starts, before any stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchrec_lhf.cli import FlagError
from torchrec_lhf.data import check_dataset_files, register_dataset
from torchrec_lhf.data.registry import _REGISTRY


def test_paths_are_checked_against_what_the_source_reads(tmp_path: Path) -> None:
    tsv = tmp_path / "train.txt"
    tsv.write_text("")
    check_dataset_files(f"criteo-tsv:{tsv}")  # a file where a file is read
    check_dataset_files(f"criteo-npy:{tmp_path}")  # a directory where one is read
    check_dataset_files("synthetic")  # no path: nothing to check
    check_dataset_files("movielens-100k")

    missing = tmp_path / "nosuch.txt"
    with pytest.raises(FlagError) as err:
        check_dataset_files(f"criteo-tsv:{missing}")
    assert str(err.value) == (
        f"--dataset 'criteo-tsv:{missing}': {missing}: no such file or directory; "
        "expected criteo-tsv:PATH, a file"
    )
    assert isinstance(err.value, ValueError)  # what callers of the configs catch
    with pytest.raises(FlagError, match=r"not a directory; expected criteo-npy:DIR, a directory"):
        check_dataset_files(f"criteo-npy:{tsv}")
    with pytest.raises(FlagError, match=r"not a file; expected csv:PATH, a file"):
        check_dataset_files(f"csv:{tmp_path}")


def test_a_bad_spec_is_refused_before_its_path_is_looked_at() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nosuch:x'"):
        check_dataset_files("nosuch:x")
    with pytest.raises(ValueError, match="dataset 'criteo-tsv' needs a path: criteo-tsv:PATH"):
        check_dataset_files("criteo-tsv")
    with pytest.raises(ValueError, match="dataset 'criteo-npy' needs a path: criteo-npy:DIR"):
        check_dataset_files("criteo-npy")


def test_register_dataset_refuses_an_unknown_path_kind() -> None:
    with pytest.raises(ValueError, match="path_kind must be 'file' or 'directory', got 'dir'"):
        register_dataset("toy-kind", lambda path: None, takes_path=True, path_kind="dir")
    assert "toy-kind" not in _REGISTRY  # nothing registered on a refusal
