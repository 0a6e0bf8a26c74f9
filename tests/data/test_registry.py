"""``check_dataset_files``: a spec's path checked where a run starts, before any stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchrec_lhf.cli import FlagError
from torchrec_lhf.data import check_dataset_files, check_dataset_spec, register_dataset
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


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("synthetic", {"num_samples": -5}, "dataset 'synthetic': num_samples must be an int >= 1"),
        ("synthetic", {"num_embeddings": "100"}, "num_embeddings must be a non-empty list"),
        ("movielens-100k", {"split": "day"}, "split must be one of ['random', 'time'], got 'day'"),
        ("movielens-100k", {"split_seed": 1.5}, "split_seed must be an int >= 0, got 1.5"),
        ("movielens-100k", {"cache_dir": 3}, "cache_dir must be a path or None, got 3"),
        ("criteo-tsv:t.txt", {"min_count": 0}, "'criteo-tsv': min_count must be an int >= 1"),
        ("criteo-tsv:t.txt", {"max_rows": 2.5}, "max_rows must be an int >= 1, got 2.5"),
        ("criteo-npy:d", {"num_workers": -1}, "num_workers must be an int >= 0, got -1"),
        ("criteo-npy:d", {"num_embeddings_per_feature": [5, 5]}, "must be 26 ints >= 1"),
        ("csv:c.csv", {"label": "y"}, "dataset 'csv' needs the options ['categorical']"),
        ("csv:c.csv", {}, "dataset 'csv' needs the options ['categorical', 'label']"),
        ("csv:c.csv", {"label": "y", "categorical": ["a", 3]}, "non-empty strings, got 3"),
        ("csv:c.csv", {"label": "y", "categorical": ["a"], "delimiter": ";;"}, "got ';;'"),
        ("csv:c.csv", {"label": "y", "categorical": ["y"]}, "columns used twice"),
        (
            "csv:c.csv",
            {"label": "y", "categorical": ["a"], "label_threshold": "high"},
            "label_threshold must be a finite number or None, got 'high'",
        ),
    ],
)
def test_option_values_are_checked_before_any_data_is_read(spec, options, message) -> None:
    """A source's ``check_options`` refuses a bad value in ``check_dataset_spec``, the
    configs' check (so at parse time), without reading or drawing any data (the paths here
    do not exist); a loader's required options are asked for there too."""
    with pytest.raises(ValueError) as err:
        check_dataset_spec(spec, options)
    assert message in str(err.value)


def test_good_options_pass_and_the_spec_alone_is_not_asked_for_options() -> None:
    check_dataset_spec("synthetic", {"num_samples": 10, "num_embeddings": [9, 17]})
    check_dataset_spec("movielens-100k", {"split": "time", "split_seed": 3, "cache_dir": None})
    check_dataset_spec("criteo-tsv:t.txt", {"min_count": 2, "max_rows": None})
    check_dataset_spec("criteo-npy:d", {"num_embeddings_per_feature": [3] * 26, "num_workers": 2})
    check_dataset_spec("csv:c.csv", {"label": "y", "categorical": ["a"], "dense": ["x"]})
    check_dataset_spec("csv:c.csv")  # the spec alone (check_dataset_files): no options asked


def test_the_apps_refuse_a_bad_option_value_as_a_usage_error() -> None:
    from apps import pipeline
    from apps.dlrm import train

    argv = ["--dataset", "synthetic", "--dataset_options", '{"num_dense": 0}']
    for parse in (pipeline.parse_args, train.parse_args):
        with pytest.raises(ValueError, match="dataset 'synthetic': num_dense must be an int >= 1"):
            parse(argv)
    for value in ("-1", "inf", "nan"):
        with pytest.raises(
            ValueError, match=f"learning_rate must be a finite number > 0, got {float(value)}"
        ):
            pipeline.parse_args(["--dataset", "synthetic", "--learning_rate", value])


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        # before: "unknown options [' ', '\"', '0', '1', ':', ...]", the string's characters
        ("synthetic", '{"num_samples": 100}', "options must be a mapping of option names"),
        ("synthetic", 3, "options must be a mapping .* got 3"),  # before: a TypeError
        (3, {}, "a dataset spec must be a string such as 'synthetic', got 3"),  # AttributeError
    ],
)
def test_a_spec_or_options_of_the_wrong_kind_is_named(spec, options, message) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        check_dataset_spec(spec, options)
