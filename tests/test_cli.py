"""Flags derived from config dataclasses: one source for every default and help text."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from apps import build_hash, criteo_to_npy, make_synthetic_criteo, pipeline, serve, teacher
from apps.dlrm import train
from apps.dlrm.config import COMPRESSION_FIELDS, TrainConfig
from benchmarks import quality
from tests._fixtures import run_module
from torchrec_lhf.cli import (
    FlagError,
    add_config_flags,
    check_fields,
    check_input_path,
    check_output_path,
    check_unique,
    checked_fields,
    comma_list,
    config_from_args,
    field_docs,
    int_at_least,
    run_command,
    unit_fraction,
)
from torchrec_lhf.compression.budget import MIN_TABLE_ROWS
from torchrec_lhf.data import load_dataset
from torchrec_lhf.hash_build.config import BuildConfig


@dataclass(kw_only=True)
class _Toy:
    name: str
    """The toy's name."""
    size: int = 3
    """How big (in 100% units)."""
    ratio: float | None = None
    """An optional ratio."""
    tags: list[str] = field(default_factory=lambda: ["a", "b"])
    """Comma list of tags."""
    options: dict = field(default_factory=dict)
    """A JSON object."""
    mode: str = field(default="x", metadata={"choices": ("x", "y")})
    """One of x, y."""
    fast: bool = False
    """Go fast."""
    path: Path | None = None
    """Where."""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")


def _parse(argv: list[str], **kwargs) -> _Toy:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Toy, **kwargs)
    return config_from_args(_Toy, parser.parse_args(argv), defaults=kwargs.get("defaults"))


def test_every_type_parses_and_defaults_come_from_the_dataclass() -> None:
    toy = _parse(
        '--name n --size 5 --ratio 0.5 --tags c,d --options {"k":1} --mode y --fast '
        "--path p".split()
    )
    assert toy == _Toy(
        name="n", size=5, ratio=0.5, tags=["c", "d"], options={"k": 1}, mode="y", fast=True,
        path=Path("p"),
    )  # fmt: skip
    assert _parse(["--name", "n"]) == _Toy(name="n")  # nothing copied into the parser
    assert _parse(["--name", "n"], defaults={"size": 7}).size == 7
    assert _parse(["--name", "n", "--no-fast"]).fast is False


def test_bad_values_are_named() -> None:
    with pytest.raises(SystemExit):
        _parse([])  # --name is required: no default
    with pytest.raises(SystemExit):
        _parse(["--name", "n", "--mode", "z"])
    with pytest.raises(ValueError, match="size must be >= 0, got -1") as err:
        _parse(["--name", "n", "--size", "-1"])
    assert isinstance(err.value, FlagError)  # what run_command reports as a usage error


@pytest.mark.parametrize("text", ["c,,d", "c,", ",c", " , "])
def test_a_comma_list_with_an_empty_item_is_refused(text: str, capsys) -> None:  # noqa: ANN001
    """Before, ``16,,4`` read as ``[16, 4]`` without a word: an item left out (a typo, or a
    value lost in a script) changed the list."""
    with pytest.raises(SystemExit):
        _parse(["--name", "n", "--tags", text])
    assert f"expected a comma-separated list of str, got {text!r}" in capsys.readouterr().err
    assert _parse(["--name", "n", "--tags", ""]).tags == []  # (the empty list)
    assert _parse(["--name", "n", "--tags", " c , d "]).tags == ["c", "d"]


def test_run_command_reports_a_bad_flag_as_argparse_does(capsys) -> None:
    def main() -> None:
        _parse(["--name", "n", "--size", "-1"])

    with pytest.raises(SystemExit) as stop:
        run_command(main, "python -m toy")
    assert stop.value.code == 2  # argparse's status for a usage error
    assert capsys.readouterr().err == "python -m toy: error: size must be >= 0, got -1\n"

    def broken() -> None:  # an error of the run itself keeps its type and traceback
        raise ValueError("not a flag")

    with pytest.raises(ValueError, match="not a flag") as err:
        run_command(broken, "python -m toy")
    assert not isinstance(err.value, FlagError)
    assert run_command(lambda: None, "python -m toy") is None


def test_under_torchrun_a_nodes_first_process_alone_prints_the_usage_error(
    capsys, monkeypatch
) -> None:
    def main() -> None:
        _parse(["--name", "n", "--size", "-1"])

    for local_rank, printed in (
        ("1", ""),
        ("0", "python -m toy: error: size must be >= 0, got -1\n"),
    ):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(SystemExit) as stop:
            run_command(main, "python -m toy")
        assert stop.value.code == 2  # every process stops with the usage status
        assert capsys.readouterr().err == printed


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("apps.pipeline", ["--fraction", "2"], "fraction must be in (0, 1], got 2.0"),
        ("apps.pipeline", ["--dataset", "nosuch"], "unknown dataset 'nosuch'; expected one of"),
        (
            "apps.dlrm.train",
            ["--dataset", "synthetic", "--label", "clicked"],
            "--label only apply to --dataset csv:PATH, got 'synthetic'",
        ),
        (
            "apps.teacher",
            ["--out", "unused", "--dataset", "criteo-tsv:no/such/train.txt"],
            "--dataset 'criteo-tsv:no/such/train.txt': no/such/train.txt: no such file or "
            "directory; expected criteo-tsv:PATH, a file",
        ),
    ],
)
def test_a_bad_flag_ends_the_command_without_a_traceback(
    module: str, argv: list[str], message: str
) -> None:
    proc = run_module(module, argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"python -m {module}: error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_is_the_attribute_docstring() -> None:
    assert field_docs(_Toy)["size"] == "How big (in 100% units)."
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Toy)
    text = parser.format_help()
    assert "How big (in 100% units). (default: 3)" in " ".join(text.split())


def test_unsupported_types_are_refused() -> None:
    @dataclass
    class Bad:
        x: set[int] = field(default_factory=set)

    with pytest.raises(TypeError, match="field 'x': no flag"):
        add_config_flags(argparse.ArgumentParser(), Bad)


@pytest.mark.parametrize("cls", [TrainConfig, BuildConfig, pipeline.PipelineConfig,
                                 quality.SweepConfig, build_hash.LaunchConfig])  # fmt: skip
def test_every_config_field_is_documented(cls: type) -> None:
    undocumented = [f.name for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
    assert undocumented == []


def test_min_table_rows_has_one_default_and_accepts_zero(tmp_path: Path) -> None:
    teacher_dir = str(tmp_path / "t")
    build, _ = build_hash.parse_args(["--teacher", teacher_dir, "--fraction", "0.1",
                                      "--out", str(tmp_path / "p"), "--min_table_rows", "0"])  # fmt: skip
    assert build.min_table_rows == 0 and build.work_dir == tmp_path / "p.work"
    default, _ = build_hash.parse_args(
        ["--teacher", teacher_dir, "--fraction", "0.1", "--out", str(tmp_path / "p")]
    )
    configs = [
        default,
        train.parse_args([]),
        pipeline.parse_args([]),
        quality.parse_args(["--out", str(tmp_path)]),
    ]
    assert [c.min_table_rows for c in configs] == [MIN_TABLE_ROWS] * 4
    zero = train.parse_args(
        ["--compression", "modulo", "--fraction", "0.1", "--min_table_rows", "0"]
    )
    assert zero.min_table_rows == 0


def test_the_teacher_has_no_compression_flags_and_its_own_dim() -> None:
    config = teacher.parse_args(["--out", "x"])
    assert config.train.embedding_dim == teacher.TEACHER_DEFAULTS["embedding_dim"]
    assert pipeline.PipelineConfig().teacher_dim == teacher.TEACHER_DEFAULTS["embedding_dim"]
    for name in COMPRESSION_FIELDS:
        with pytest.raises(SystemExit):
            teacher.parse_args(["--out", "x", f"--{name}", "1"])
    narrow = teacher.parse_args(["--out", "x", "--embedding_dim", "2"])
    assert narrow.train.sharding_types == ["data_parallel"]  # FBGEMM's fused tables need 4k


def test_the_pipeline_hands_its_stages_typed_configs(tmp_path: Path) -> None:
    config = pipeline.parse_args(["--out_dir", str(tmp_path), "--min_table_rows", "0"])
    teach, build, trains = pipeline.stage_configs(config, "synthetic", {})
    assert isinstance(teach.train, TrainConfig) and isinstance(build, BuildConfig)
    assert teach.train.embedding_dim == config.teacher_dim
    assert teach.train.dense_arch_layer_sizes[-1] == config.teacher_dim
    assert build.teacher == teach.out and build.min_table_rows == 0
    # the methods, and the default's candidate plan at half the width (a byte budget)
    assert config.budget == "bytes" and config.half_select
    assert sorted(trains) == sorted([*config.methods, "lhf-clustered-counts-half"])
    assert trains["lhf"].learned_hash == str(build.out)
    assert trains["modulo"].compression == "modulo" and trains["modulo"].min_table_rows == 0
    assert trains["none"].compression == "none" and trains["none"].learned_hash is None


def test_check_input_path_names_the_flag_the_path_and_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "plan.safetensors").write_bytes(b"")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.safetensors").write_bytes(b"")
    check_input_path("--learned_hash", tmp_path / "plan.safetensors", expected="a plan")
    check_input_path("--teacher", tmp_path / "teacher", expected="x", holds="teacher.safetensors")
    cases = [
        (("--learned_hash", tmp_path / "nosuch", "a plan", None), "no such file; expected a plan"),
        (("--learned_hash", tmp_path / "teacher", "a plan", None), "not a file; expected a plan"),
        (("--teacher", tmp_path / "nosuch", "a dir", "t.st"), "no such directory; expected a dir"),
        (
            ("--teacher", tmp_path / "plan.safetensors", "a dir", "t.st"),
            "not a directory; expected a dir",
        ),
        (("--teacher", tmp_path / "teacher", "a dir", "t.st"), "no t.st in it; expected a dir"),
    ]
    for (flag, path, expected, holds), message in cases:
        with pytest.raises(FlagError) as err:
            check_input_path(flag, path, expected=expected, holds=holds)
        assert str(err.value) == f"{flag} {str(path)!r}: {message}"


def test_entry_points_refuse_missing_inputs_before_they_start(tmp_path: Path) -> None:
    nosuch = str(tmp_path / "nosuch")
    with pytest.raises(FlagError, match=r"--teacher '.*nosuch': no such directory; expected a "):
        build_hash.main(["--teacher", nosuch, "--fraction", "0.1", "--out", nosuch + ".st"])
    with pytest.raises(FlagError, match=r"--learned_hash '.*nosuch': no such file; expected a "):
        train.main(["--dataset", "synthetic", "--learned_hash", nosuch])
    with pytest.raises(FlagError, match=r"--init_from '.*nosuch': no such directory"):
        train.main(["--dataset", "synthetic", "--init_from", nosuch])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_check_output_path_names_what_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    check_output_path("--out", tmp_path / "new.json")  # missing: made when written
    check_output_path("--out", tmp_path / "a" / "b" / "new.json")  # with the folders above
    check_output_path("--out", tmp_path / "file")  # replaced
    check_output_path("--out_dir", tmp_path / "dir", directory=True)
    check_output_path("--out_dir", tmp_path / "new" / "dir", directory=True)
    check_output_path("--out", "relative.json")
    to_write = "expected the path of a file to write"
    to_fill = "expected a directory to write into"
    file = str(tmp_path / "file")
    cases = [
        (("--out", tmp_path / "dir", False), f"is a directory; {to_write}"),
        (("--out_dir", tmp_path / "file", True), f"not a directory; {to_fill}"),
        (("--out", tmp_path / "file" / "x.json", False), f"{file!r} is a file, not a directory; {to_write}"),
        (("--out_dir", tmp_path / "file" / "a" / "b", True), f"{file!r} is a file, not a directory; {to_fill}"),
    ]  # fmt: skip
    for (flag, path, directory), message in cases:
        with pytest.raises(FlagError) as err:
            check_output_path(flag, path, directory=directory)
        assert str(err.value) == f"{flag} {str(path)!r}: {message}"


def test_entry_points_refuse_outputs_in_the_way_before_they_start(tmp_path: Path) -> None:
    """Before, each of these failed where it wrote, after its work (a training run, a hash
    build, a conversion), with an OS error and a traceback."""
    file = tmp_path / "file"
    file.write_bytes(b"")
    busy = str(tmp_path)  # a directory where a file is to be written
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.safetensors").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_int8.pt").write_bytes(b"")
    synthetic = ["--dataset", "synthetic"]
    cases = [
        (lambda: build_hash.main(["--teacher", str(tmp_path / "teacher"), "--fraction", "0.1", "--out", busy]), "--out"),
        (lambda: build_hash.main(["--teacher", str(tmp_path / "teacher"), "--fraction", "0.1", "--out", str(tmp_path / "p.st"), "--work_dir", str(file)]), "--work_dir"),
        (lambda: teacher.main([*synthetic, "--out", str(file)]), "--out"),
        (lambda: teacher.main([*synthetic, "--out", str(tmp_path / "t2"), "--metrics_json", busy]), "--metrics_json"),
        (lambda: train.main([*synthetic, "--metrics_json", busy]), "--metrics_json"),
        (lambda: train.main([*synthetic, "--checkpoint_dir", str(file / "ckpt")]), "--checkpoint_dir"),
        (lambda: train.main([*synthetic, "--export_model", str(file)]), "--export_model"),
        (lambda: train.main([*synthetic, "--export_model", str(tmp_path)]), "--export_model: "),
        (lambda: pipeline.main(["--out_dir", str(file)]), "--out_dir"),
        (lambda: pipeline.main(["--out_dir", str(tmp_path / "p"), "--results_json", busy]), "--results_json"),
        (lambda: pipeline.main(["--out_dir", str(tmp_path / "p"), "--plot", busy]), "--plot"),
        (lambda: serve.main(["--model", str(tmp_path / "model"), *synthetic, "--out", busy]), "--out"),
        (lambda: criteo_to_npy.main(["--input", str(file), "--out", str(file)]), "--out"),
        (lambda: make_synthetic_criteo.main(["--out", str(file)]), "--out"),
    ]  # fmt: skip
    for call, flag in cases:
        with pytest.raises(FlagError, match=f"^{flag}( '|export path)"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model", "teacher"]


def test_check_unique_names_the_repeats() -> None:
    check_unique("methods", ["a", "b"])
    check_unique("bytes", None)
    with pytest.raises(ValueError) as err:
        check_unique("fractions", [0.1, 0.5, 0.1, 0.5, 1.0])
    assert str(err.value) == (
        "fractions must name each value once, got [0.1, 0.5, 0.1, 0.5, 1.0] ([0.1, 0.5] repeated)"
    )


def test_int_at_least_and_unit_fraction_name_the_bound_and_the_text() -> None:
    parse = int_at_least(1)
    assert parse("3") == 3
    for text in ("0", "-2", "1.5", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected an int >= 1, got {text!r}"):
            parse(text)
    assert int_at_least(0)("0") == 0
    assert unit_fraction("1") == 1.0 and unit_fraction("1e-3") == 0.001
    for text in ("0", "-0.1", "1.01", "nan", "inf", "a"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a fraction in"):
            unit_fraction(text)
    ints = comma_list(int_at_least(1), "ints >= 1")
    assert ints("1,2") == [1, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="list of ints >= 1, got '1,0'"):
        ints("1,0")
    assert ints("2,2") == [2, 2]  # repeats are allowed unless asked
    once = comma_list(int_at_least(1), "ints >= 1", unique=True)
    with pytest.raises(argparse.ArgumentTypeError, match=r"got \[2, 3, 2\] \(\[2\] repeated\)"):
        once("2,3,2")


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        # each ran on: an empty median (--iters 0), a negative dimension (--pooling -1), an
        # IndexError (--batch_size 0), or measured a plan of no rows (--fraction 0)
        ("remap", ["--iters", "0"], "argument --iters: expected an int >= 1, got '0'"),
        ("remap", ["--pooling", "-1"], "argument --pooling: expected an int >= 1"),
        ("remap", ["--batch_size", "0"], "argument --batch_size: expected an int >= 1"),
        ("remap", ["--fraction", "0"], "argument --fraction: expected a fraction in (0, 1]"),
        ("remap", ["--min_table_rows", "-1"], "argument --min_table_rows: expected an int >= 0"),
        ("serve", ["--batch_sizes", "64,0"], "expected a comma-separated list of ints >= 1"),
        ("serve", ["--fraction", "2"], "argument --fraction: expected a fraction in (0, 1]"),
        ("serve", ["--iters", "0"], "argument --iters: expected an int >= 1"),
        ("build_hash", ["--world_sizes", "1,x"], "list of ints >= 1, got '1,x'"),
        ("build_hash", ["--repeats", "0"], "argument --repeats: expected an int >= 1"),
        ("build_hash", ["--fraction", "1.5"], "argument --fraction: expected a fraction"),
        ("clustering", ["--num-ids", "0"], "argument --num-ids: expected an int >= 1"),
        ("clustering", ["--options", "[1]"], "argument --options: expected a JSON object"),
        # these three failed in the case's own process, whose stderr was not shown
        ("clustering", ["--num-ids", "10", "--num-clusters", "20"], "<= --num-ids (10), got 20"),
        ("clustering", ["--counts", "zipf,pareto"], "kinds of ['uniform', 'zipf'], got"),
        ("clustering", ["--options", '{"bogus": 1}'], '--options {"bogus": 1}: '),
        ("export_memory", ["--rows", "0"], "argument --rows: expected an int >= 1, got '0'"),
        ("export_memory", ["--fraction", "0"], "argument --fraction: expected a fraction"),
        ("gpu_check", ["--batch_sizes", "0"], "list of ints >= 1, got '0'"),
        # a repeat: its result or step replaced the first under the same key
        ("serve", ["--batch_sizes", "64,64"], "argument --batch_sizes: the list must name each"),
        ("build_hash", ["--world_sizes", "1,1"], "--world_sizes: the list must name each value"),
        ("gpu_check", ["--clustering_ids", "5,5"], "got [5, 5] ([5] repeated)"),
        ("clustering", ["--counts", "zipf,zipf"], "argument --counts: the list must name each"),
    ],
)
def test_benchmarks_refuse_numbers_they_cannot_measure_before_they_start(
    module: str, argv: list[str], message: str, capsys
) -> None:  # noqa: ANN001
    import importlib

    bench = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@dataclass(kw_only=True)
class _Typed:
    count: int = 1
    rate: float = 0.5
    name: str = "a"
    flag: bool = False
    where: Path = Path("x")
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    cap: int | None = None
    mode: str = field(default="sum", metadata={"choices": ("sum", "concat")})
    options: dict = field(default_factory=dict)

    @checked_fields
    def __post_init__(self) -> None:
        if self.count > 10:  # (breaks with a TypeError where count is not a number)
            raise ValueError(f"count must be at most 10, got {self.count}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": True}, "count must be an int, got True"),
        ({"count": "3"}, "count must be an int, got '3'"),  # (its own check: a TypeError)
        ({"rate": float("nan")}, "rate must be a number, got nan"),
        ({"rate": None}, "rate must be a number, got None"),
        ({"name": 3}, "name must be a string, got 3"),
        ({"flag": 1}, "flag must be a bool, got 1"),
        ({"where": 3.0}, "where must be a path, got 3.0"),
        ({"sizes": [1, "2"]}, r"sizes must be a list of ints, got \[1, '2'\]"),
        ({"sizes": 3}, "sizes must be a list of ints, got 3"),
        ({"cap": 1.5}, "cap must be an int or None, got 1.5"),
        ({"mode": "max"}, r"mode must be one of \['sum', 'concat'\], got 'max'"),
        ({"options": [1]}, r"options must be a mapping, got \[1\]"),
        ({"count": 11}, "count must be at most 10, got 11"),  # the config's own message first
    ],
)
def test_check_fields_names_the_field_and_what_it_expects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        _Typed(**kwargs)


def test_check_fields_takes_what_the_flags_give() -> None:
    config = _Typed(count=np.int64(3), rate=2, where="y", sizes=(3, 4), cap=7, mode="concat")
    check_fields(config)
    assert config.count == 3


def test_numpy_numbers_are_made_python_numbers_before_any_check() -> None:
    """Before, ``seed=np.int64(3)`` passed the checks and failed in
    ``torch.Generator.manual_seed`` ("an integer is required"), and a NumPy int in a list of
    sizes was refused by the config's own check ("must be a non-empty list of ints")."""
    config = _Typed(
        count=np.int64(3), rate=np.float32(0.5), sizes=[1, np.int32(2)], flag=np.bool_(1)
    )
    assert (type(config.count), type(config.rate), type(config.flag)) == (int, float, bool)
    assert config.sizes == [1, 2] and all(type(v) is int for v in config.sizes)
    train = TrainConfig(embedding_dim=np.int64(8), dense_arch_layer_sizes=[16, np.int64(8)])
    assert train.dense_arch_layer_sizes == [16, 8] and type(train.embedding_dim) is int
    ds = load_dataset("synthetic", num_samples=200, seed=np.int64(3), num_embeddings=[50, 70])
    assert len(ds) == 200


def _configs() -> list[tuple[type, dict]]:
    """Every config dataclass of the project, with its required values."""
    from apps.make_synthetic_criteo import OutputConfig
    from torchrec_lhf.clustering.config import AgglomerativeConfig
    from torchrec_lhf.compression.cce import CCEConfig
    from torchrec_lhf.data.synthetic import SyntheticConfig
    from torchrec_lhf.data.synthetic_criteo import SyntheticCriteoConfig

    return [
        (AgglomerativeConfig, {}),
        (BuildConfig, {"out": "out", "fraction": 0.1}),
        (CCEConfig, {}),
        (SyntheticConfig, {}),
        (SyntheticCriteoConfig, {}),
        (teacher.TeacherConfig, {"train": TrainConfig(), "out": "out"}),
        (build_hash.LaunchConfig, {}),
        (criteo_to_npy.CriteoToNpyConfig, {"input": "in.tsv", "out": "out"}),
        (TrainConfig, {}),
        (OutputConfig, {"out": "out"}),
        (pipeline.PipelineConfig, {}),
        (serve.ServeConfig, {"model": "m.pt", "dataset": "movielens-100k", "out": "out"}),
    ]


_JUNK = [None, "x", 1.5, float("nan"), True, [1], {"a": 1}]


@pytest.mark.parametrize("cls", [c for c, _ in _configs()], ids=lambda c: c.__name__)
def test_every_config_refuses_a_value_of_the_wrong_type_by_name(cls: type) -> None:
    """A config built in Python refuses a value its flag could not give with a ValueError
    naming the field: before, some such values failed with a TypeError deep in its checks
    (``PipelineConfig(fraction="x")``) or were taken (``PipelineConfig(clustering=3)``,
    ``TrainConfig(learning_rate=None)``)."""
    from typing import get_type_hints

    from torchrec_lhf.cli import _is_of

    required = dict(_configs())[cls]
    cls(**required)  # its defaults are fine
    hints = get_type_hints(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        for junk in _JUNK:
            if _is_of(junk, hints[f.name]):
                continue  # (a value of its type: the config's own checks judge it)
            with pytest.raises(ValueError) as error:
                cls(**{**required, f.name: junk})
            # the field by name, or its words (a nested config's check: "head min_count"; an
            # entry of a list: "sharding type must be one of ...")
            words = [part.removesuffix("s") for part in f.name.split("_")]
            assert all(word in str(error.value) for word in words), (f.name, junk)
            checked += 1
    assert checked > 0
