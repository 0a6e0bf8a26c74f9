"""The end-to-end pipeline (teacher -> hash build -> three trainings) on tiny synthetic data."""

from __future__ import annotations

import json
import re

import pytest

from apps import pipeline
from tests._fixtures import count_learned_trainings
from torchrec_lhf.cli import run_command
from torchrec_lhf.data import DatasetUnavailableError
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.report import plot_auc_vs_bytes

TINY = json.dumps({"num_samples": 3000, "num_embeddings": [300, 400, 50]})


def test_pipeline_end_to_end(tmp_path, monkeypatch) -> None:
    plotted: list[dict] = []

    def plot(summary, path, title):
        plotted.extend(summary)
        return plot_auc_vs_bytes(summary, path, title)

    monkeypatch.setattr(pipeline, "plot_auc_vs_bytes", plot)
    rows = pipeline.main([
        "--dataset", "synthetic", "--dataset_options", TINY, "--out_dir", str(tmp_path / "run"),
        "--fraction", "0.1", "--min_table_rows", "100", "--teacher_epochs", "1",
        "--budget", "total",
        "--results_json", str(tmp_path / "demo.json"), "--plot", str(tmp_path / "demo.png"),
    ])  # fmt: skip
    by_method = {r["method"]: r for r in rows}
    assert list(by_method) == ["lhf", "modulo", "none"]
    # --budget total: 10% of all 750 ids = 75 rows; the 50-id table alone would
    # take more than half of them, so all three tables shrink in proportion: 30 + 40 + 5
    assert by_method["lhf"]["rows"] == by_method["modulo"]["rows"] == 30 + 40 + 5
    assert by_method["none"]["rows"] == 750 and by_method["none"]["remap_bytes"] == 0
    assert by_method["lhf"]["embedding_bytes"] < by_method["none"]["embedding_bytes"]
    assert by_method["modulo"]["remap_computable"] and not by_method["lhf"]["remap_computable"]
    for r in rows:
        assert 0.0 <= r["auc"] <= 1.0 and r["logloss"] > 0
    assert json.loads((tmp_path / "demo.json").read_text()) == rows
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    # plotted at what each model stores: the hashing trick's remap is computed, not stored
    assert [p["bytes"] for p in plotted] == [r["total_bytes"] for r in rows]
    modulo = by_method["modulo"]
    assert modulo["total_bytes"] == modulo["embedding_bytes"] < modulo["bytes"]
    assert (tmp_path / "run" / "plan.safetensors").is_file()


def test_default_dataset_falls_back_to_synthetic_offline(monkeypatch) -> None:
    def unavailable(spec: str, **options):
        raise DatasetUnavailableError("no network")

    monkeypatch.setattr(pipeline, "load_dataset", unavailable)
    assert pipeline._resolve_dataset(pipeline.PipelineConfig()) == ("synthetic", {})
    named = pipeline.PipelineConfig(dataset="criteo-tsv:x.txt")  # a named dataset is kept as is
    assert pipeline._resolve_dataset(named) == ("criteo-tsv:x.txt", {})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fraction": 0.0}, "fraction"),
        ({"dataset": "nosuch"}, "unknown dataset 'nosuch'; expected one of"),
        ({"dataset": "criteo-tsv"}, "dataset 'criteo-tsv' needs a path: criteo-tsv:PATH"),
        (
            {"dataset": "synthetic", "dataset_options": {"tables": 3}},
            r"dataset 'synthetic': unknown options \['tables'\]",
        ),
        ({"methods": ["lhf", "bogus"]}, "methods"),
        # before: 'lhf' trained twice, the results listing it twice
        (
            {"methods": ["lhf", "lhf"]},
            r"methods must name each value once, got \['lhf', 'lhf'\] \(\['lhf'\] repeated\)",
        ),
        # before: refused by the hash build, after the teacher's training
        ({"projection": "dim:4"}, r"uses coordinates \[4\], but the teacher dim is 4"),
        ({"projection": "dim:0", "teacher_dim": 2, "num_hashes": 3}, r"coordinates \[0, 1, 2\]"),
        ({"num_hashes": 5}, "pca with num_hashes=5 needs teacher dim >= 5, got 4"),
        ({"epochs": 0}, "epochs"),
        ({"budget": "weekly"}, "'weekly'"),
        ({"tail_region": "wide"}, "tail_region must be one of .*'wide'"),
        ({"row_allocation": "rows"}, "row_allocation must be one of .*'rows'"),
        ({"index_share": 1.5}, r"index_share must be a number in \(0, 1\] or None, got 1.5"),
        ({"fill_share": 0.0}, r"fill_share must be a number in \(0, 1\] or None, got 0.0"),
        ({"train_window": 0.0}, r"train_window must be a number in \(0, 1\], got 0.0"),
        ({"train_window": True}, r"train_window must be a number in \(0, 1\], got True"),
        # before, accepted: a bool or a float where an int is counted
        ({"teacher_dim": 1.5}, "teacher_dim must be an int >= 1, got 1.5"),
        ({"num_hashes": True}, "num_hashes must be an int >= 1, got True"),
        ({"min_table_rows": 1.5}, "min_table_rows must be an int >= 0, got 1.5"),
        (
            {"head_select": True, "tail_region": "fixed"},
            "head_select .* needs tail_region 'fill' and head_min_count > 0, got tail_region='fixed'",
        ),
        ({"head_select": True, "head_min_count": 0}, "head_select .* got .* head_min_count=0"),
        (
            {"rows_select": True, "budget": "total"},
            "rows_select .* needs budget 'bytes', got budget='total'",
        ),
        (
            {"width_select": True, "budget": "table"},
            "width_select .* needs budget 'bytes', got budget='table'",
        ),
        (
            {"rows_select": True, "budget": "bytes", "tail_region": "fixed"},
            "rows_select also tries row_allocation='counts': .* tail_region='fixed'",
        ),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pipeline.PipelineConfig(**kwargs)


def test_pipeline_at_equal_bytes(tmp_path) -> None:
    rows = pipeline.main([
        "--dataset", "synthetic", "--dataset_options", TINY, "--out_dir", str(tmp_path / "run"),
        "--fraction", "0.2", "--min_table_rows", "0", "--teacher_epochs", "1",
        "--budget", "bytes", "--embedding_dim", "8", "--head_min_count", "0",
        "--no-half_select",  # one plan: its rows by hand
    ])  # fmt: skip
    by_method = {r["method"]: r for r in rows}
    assert "choice" not in by_method["lhf"]
    full = by_method["none"]["total_bytes"]
    assert full == 750 * 8 * 4
    # 20% of the full tables' bytes = 4,800: modulo stores only rows (150 of 32 bytes);
    # lhf's dense remap (uint8: every table under 256 rows; 750) leaves 4,050 bytes: 126 rows
    assert by_method["modulo"]["total_bytes"] == 4800 and by_method["modulo"]["rows"] == 150
    assert by_method["lhf"]["index_bytes"] == 750 and by_method["lhf"]["rows"] == 126
    assert 4800 - 3 * 32 < by_method["lhf"]["total_bytes"] <= 4800
    assert by_method["lhf"]["rows"] < by_method["modulo"]["rows"]
    assert all(r["budget"] == "bytes" and r["ne"] > 0 for r in rows)


def test_the_build_takes_the_pipelines_head_tail_settings(tmp_path, capsys) -> None:
    default = pipeline.stage_configs(
        pipeline.PipelineConfig(out_dir=str(tmp_path)), "synthetic", {}
    )[1]
    assert (default.tail_region, default.tail_fraction) == ("fill", 0.05)  # BuildConfig's
    fixed = pipeline.PipelineConfig(out_dir=str(tmp_path), tail_region="fixed", tail_fraction=0.7)
    _, build, trains = pipeline.stage_configs(fixed, "synthetic", {})
    assert (build.tail_region, build.tail_fraction) == ("fixed", 0.7)
    # no fill region, so no rows by counts: the default's plan at half the width (under the
    # default byte budget) shares its rows by size, as the build does
    assert "lhf-clustered-half" in trains and "lhf-clustered-counts-half" not in trains
    assert default.row_allocation == "size"
    config = pipeline.parse_args(
        ["--out_dir", str(tmp_path), "--budget", "bytes", "--row_allocation", "counts"]
    )
    assert pipeline.stage_configs(config, "synthetic", {})[1].row_allocation == "counts"
    with pytest.raises(ValueError, match="row_allocation='counts' .* needs budget='bytes'"):
        config = pipeline.PipelineConfig(row_allocation="counts", budget="total")
        pipeline.stage_configs(config, "synthetic", {})
    # index_share: BuildConfig's default, the flag passed on (and "none" for no cap)
    assert default.index_share == BuildConfig.index_share == 0.5
    config = pipeline.parse_args(["--out_dir", str(tmp_path), "--index_share", "0.25"])
    assert pipeline.stage_configs(config, "synthetic", {})[1].index_share == 0.25
    config = pipeline.parse_args(["--out_dir", str(tmp_path), "--index_share", "none"])
    assert pipeline.stage_configs(config, "synthetic", {})[1].index_share is None
    with pytest.raises(SystemExit):  # argparse names the flag and the text
        pipeline.parse_args(["--out_dir", str(tmp_path), "--index_share", "half"])
    assert "--index_share: expected a number in (0, 1] or 'none', got 'half'" in (
        capsys.readouterr().err
    )
    # fill_share: BuildConfig's default (no cap), the flag passed on
    assert default.fill_share is BuildConfig.fill_share is None
    argv = ["--out_dir", str(tmp_path), "--budget", "bytes", "--fill_share", "0.05"]
    build = pipeline.stage_configs(pipeline.parse_args(argv), "synthetic", {})[1]
    assert build.fill_share == build.head_tail().fill_share == 0.05
    with pytest.raises(
        ValueError, match="fill_share=0.05 .* needs budget='bytes', got budget='total'"
    ):
        config = pipeline.PipelineConfig(fill_share=0.05, budget="total")
        pipeline.stage_configs(config, "synthetic", {})


def test_the_teacher_takes_the_pipelines_train_window(tmp_path) -> None:
    default = pipeline.stage_configs(
        pipeline.PipelineConfig(out_dir=str(tmp_path)), "synthetic", {}
    )[0]
    assert default.train_window == 1.0  # TeacherConfig's: the paper's teacher
    config = pipeline.parse_args(["--out_dir", str(tmp_path), "--train_window", "0.5"])
    assert pipeline.stage_configs(config, "synthetic", {})[0].train_window == 0.5


SELECT_ARGS = [
    "--dataset", "synthetic", "--dataset_options", TINY, "--fraction", "0.3",
    "--min_table_rows", "0", "--teacher_epochs", "1", "--budget", "bytes",
    "--no-half_select", "--head_min_count", "2",
]  # fmt: skip
"""A tiny pipeline at 30% of the bytes whose plans can be chosen on validation (without
the default's half-width plan, so that each flag's candidates are its own)."""


def test_under_a_byte_budget_the_default_also_trains_the_plan_at_half_the_width(
    tmp_path, monkeypatch, capsys
) -> None:
    from torchrec_lhf import HashPlan

    args = [a for a in SELECT_ARGS if a != "--no-half_select"]  # the default: --half_select
    args += ["--methods", "lhf,none"]
    trained = count_learned_trainings(monkeypatch, pipeline.train)
    lhf, _ = pipeline.main([*args, "--out_dir", str(tmp_path / "sel")])
    half = tmp_path / "sel" / "plan_clustered-counts-half.safetensors"
    # the learned hash, the full model (no plan), then the candidate
    assert trained == [str(tmp_path / "sel" / "plan.safetensors"), None, str(half)]
    names = ["clustered", "clustered-counts-half"]  # --half_rows counts, the default
    assert list(lhf["candidates"]) == names
    best = max(names, key=lambda k: lhf["candidates"][k]["val_auc"])  # the first of ties
    assert lhf["choice"] == best and lhf["auc"] == lhf["candidates"][best]["auc"]
    assert f"lhf: the plan {best!r}, chosen on validation AUC (clustered " in (
        capsys.readouterr().out
    )
    # half of the width 16, twice the rows' share: 0.3 * 16 / 8, trained as MLET at 8
    meta = HashPlan.load(half).metadata
    assert meta["embedding_dim"] == 8 and meta["fraction"] == 0.6
    assert meta["row_allocation"] == "counts"  # its rows shared by the tables' access counts
    metrics = json.loads((tmp_path / "sel" / "metrics_lhf-clustered-counts-half.json").read_text())
    assert metrics["embedding_bytes"] == metrics["rows"] * 8 * 4
    assert metrics["total_bytes"] <= 0.3 * 750 * 16 * 4 and lhf["total_bytes"] <= 0.3 * 750 * 16 * 4
    # --no-half_select: the one plan, trained once, the candidate "clustered" exactly
    trained.clear()
    (plain,) = pipeline.main(
        [*args[:-1], "lhf", "--no-half_select", "--out_dir", str(tmp_path / "one")]
    )
    assert trained == [str(tmp_path / "one" / "plan.safetensors")] and "choice" not in plain
    assert plain["auc"] == lhf["candidates"]["clustered"]["auc"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": "total"},  # counts rows, which a narrower plan does not change
        {"budget": "table"},
        {"budget": "bytes", "fraction": 0.6},  # twice the rows would exceed the full tables
        {"budget": "bytes", "half_select": False},
    ],
)
def test_no_half_width_plan_where_it_cannot_apply_or_is_turned_off(tmp_path, kwargs) -> None:
    config = pipeline.PipelineConfig(out_dir=str(tmp_path), **kwargs)
    assert list(pipeline.stage_configs(config, "synthetic", {})[2]) == ["lhf", "modulo", "none"]
    assert pipeline.PipelineConfig.budget == "bytes"  # the default: equal memory
    on = pipeline.PipelineConfig(out_dir=str(tmp_path))
    assert "lhf-clustered-counts-half" in pipeline.stage_configs(on, "synthetic", {})[2]
    same = pipeline.PipelineConfig(out_dir=str(tmp_path), budget="bytes", half_rows="size")
    assert "lhf-clustered-half" in pipeline.stage_configs(same, "synthetic", {})[2]


def test_head_select_trains_both_plans_and_keeps_the_better_on_validation(tmp_path) -> None:
    args = [*SELECT_ARGS, "--methods", "lhf,none"]
    rows = pipeline.main([*args, "--out_dir", str(tmp_path / "sel"), "--head_select"])
    assert [r["method"] for r in rows] == ["lhf", "none"]
    lhf = rows[0]
    candidates = lhf["candidates"]
    assert set(candidates) == {"clustered", "frequency"}
    best = max(candidates, key=lambda k: (candidates[k]["val_auc"], k == "clustered"))
    assert lhf["choice"] == best and lhf["auc"] == candidates[best]["auc"]
    assert lhf["total_bytes"] <= 0.3 * 750 * 16 * 4
    # the clustered candidate is the plain run's learned hash, exactly
    plain = pipeline.main([*args, "--out_dir", str(tmp_path / "plain")])
    assert plain[0]["auc"] == candidates["clustered"]["auc"]
    # the frequency-only plan clusters nothing (rows by frequency); the default clusters
    from torchrec_lhf import HashPlan

    steps = {
        name: sum(i["steps"] for i in HashPlan.load(tmp_path / "sel" / f).metadata["build_info"].values())
        for name, f in (("frequency", "plan_frequency.safetensors"), ("clustered", "plan.safetensors"))
    }  # fmt: skip
    assert steps["frequency"] == 0 < steps["clustered"]


def test_rows_select_with_head_select_trains_four_plans_and_keeps_the_best(
    tmp_path, capsys
) -> None:
    from torchrec_lhf import HashPlan

    args = [*SELECT_ARGS, "--methods", "lhf"]
    out = tmp_path / "sel"
    (lhf,) = pipeline.main([*args, "--out_dir", str(out), "--head_select", "--rows_select"])
    candidates = lhf["candidates"]
    printed = capsys.readouterr().out  # the report names the choice and the candidates
    assert f"lhf: the plan {lhf['choice']!r}, chosen on validation AUC (clustered " in printed
    names = ["clustered", "clustered-counts", "frequency", "frequency-counts"]
    assert list(candidates) == names
    best = max(names, key=lambda k: candidates[k]["val_auc"])  # the first of ties
    assert lhf["choice"] == best and lhf["auc"] == candidates[best]["auc"]
    assert lhf["total_bytes"] <= 0.3 * 750 * 16 * 4
    # each candidate's plan as its name says: its rows' allocation and its clustered head
    for name in names:
        plan = HashPlan.load(
            out / ("plan.safetensors" if name == "clustered" else f"plan_{name}.safetensors")
        )
        assert plan.metadata.get("row_allocation", "size") == (
            "counts" if name.endswith("counts") else "size"
        )
        steps = sum(i["steps"] for i in plan.metadata["build_info"].values())
        assert (steps == 0) == name.startswith("frequency"), name
    # the four were trained each on its own plan: not all the same model
    assert len({c["auc"] for c in candidates.values()}) > 1


def test_a_candidate_with_an_earlier_candidates_plan_is_not_trained_again(
    tmp_path, monkeypatch
) -> None:
    # no id is seen 10^6 times: the default's head is empty and filled by frequency, the
    # frequency-only plan exactly
    args = [*SELECT_ARGS[:-1], "1000000", "--methods", "lhf", "--head_select"]
    trained = count_learned_trainings(monkeypatch, pipeline.train)
    (lhf,) = pipeline.main([*args, "--out_dir", str(tmp_path)])
    assert trained == [str(tmp_path / "plan.safetensors")]
    assert lhf["candidates"]["frequency"] == lhf["candidates"]["clustered"]
    assert lhf["choice"] == "clustered"  # the first of the tie


def test_a_candidate_plan_that_does_not_fit_is_left_out_of_the_choice(
    tmp_path, monkeypatch, capsys
) -> None:
    from torchrec_lhf.compression.budget import BudgetTooSmall

    build = pipeline.build_hash.run

    def frequency_too_big(config):  # the frequency-only plan does not fit
        if config.out.name == "plan_frequency.safetensors":
            raise BudgetTooSmall("a byte budget of 1 byte is below the 2 bytes ...")
        return build(config)

    monkeypatch.setattr(pipeline.build_hash, "run", frequency_too_big)
    args = [*SELECT_ARGS, "--methods", "lhf", "--head_select", "--out_dir", str(tmp_path)]
    (lhf,) = pipeline.main(args)
    assert lhf["choice"] == "clustered"
    assert lhf["candidates"]["frequency"] == {
        "infeasible": "a byte budget of 1 byte is below the 2 bytes ..."
    }
    assert (
        "lhf: the plan 'clustered', chosen on validation AUC (clustered " in capsys.readouterr().out
    )

    # the learned hash's own plan not fitting fails the run, as without --head_select
    def nothing_fits(config):
        raise BudgetTooSmall(f"{config.out.name} does not fit")

    monkeypatch.setattr(pipeline.build_hash, "run", nothing_fits)
    with pytest.raises(BudgetTooSmall, match="plan.safetensors does not fit"):
        pipeline.main([*args[:-1], str(tmp_path / "again")])


def test_width_select_trains_the_clustered_plans_at_narrower_widths_too(tmp_path) -> None:
    from torchrec_lhf import HashPlan

    # at 20% of the bytes the sqrt split's width is 7 of 16, half the width 8
    args = [*SELECT_ARGS, "--fraction", "0.2", "--methods", "lhf", "--out_dir", str(tmp_path)]
    (lhf,) = pipeline.main([*args, "--head_select", "--rows_select", "--width_select"])
    names = [
        "clustered", "clustered-counts", "frequency", "frequency-counts",
        "clustered-mlet", "clustered-counts-mlet", "clustered-half", "clustered-counts-half",
    ]  # fmt: skip
    assert list(lhf["candidates"]) == names
    best = max(names, key=lambda k: lhf["candidates"][k]["val_auc"])  # the first of ties
    assert lhf["choice"] == best and lhf["total_bytes"] <= 0.2 * 750 * 16 * 4
    for name in names[4:]:
        width = 8 if name.endswith("-half") else 7
        meta = HashPlan.load(tmp_path / f"plan_{name}.safetensors").metadata
        assert meta["embedding_dim"] == width and meta["fraction"] == round(0.2 * 16 / width, 6)
        assert meta.get("row_allocation", "size") == ("counts" if "counts" in name else "size")
        # trained as MLET at that width: the run's tables are that narrow, within the bytes
        metrics = json.loads((tmp_path / f"metrics_lhf-{name}.json").read_text())
        assert metrics["total_bytes"] <= 0.2 * 750 * 16 * 4
        assert metrics["embedding_bytes"] == metrics["rows"] * width * 4


TOO_SMALL = {
    "bytes": r"the learned hash at 0\.001 of the full table bytes: a byte budget of .* bytes is "
    r"below .*; expected a fraction of the full table bytes of at least ([0-9.]+)",
    "total": r"a total budget of 1 rows \(0\.001 of 750 ids\) cannot give 3 tables 1 row\(s\) "
    r"each; expected a fraction of the ids of at least ([0-9.]+)",
}


@pytest.mark.parametrize("budget", list(TOO_SMALL))
def test_a_fraction_too_small_for_the_learned_hash_names_one_that_fits(
    tmp_path, monkeypatch, capsys, budget: str
) -> None:
    """Before, the learned hash's budget too small ended the pipeline, after the teacher's
    training, with a traceback (naming ``rows_for_bytes``, or ``allocate_rows`` under a
    total budget). Now: a usage error (exit status 2) giving the smallest fraction that
    fits, and ``--resume`` at that fraction reuses the teacher."""
    args = [*SELECT_ARGS, "--methods", "lhf", "--out_dir", str(tmp_path)]
    args[args.index("--fraction") + 1] = "0.001"
    args[args.index("--budget") + 1] = budget
    monkeypatch.setattr("sys.argv", ["pipeline", *args])
    with pytest.raises(SystemExit) as exit_:
        run_command(pipeline.main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    found = re.search(
        r"error: --fraction 0\.001: " + TOO_SMALL[budget] + r"\. The teacher is kept in .*: "
        r"--resume with a larger --fraction",
        err,
    )
    assert found, err
    args[args.index("--fraction") + 1] = found.group(1)

    def no_second_teacher(config):  # noqa: ANN001, ANN202
        raise AssertionError("the teacher trained again")

    monkeypatch.setattr(pipeline.teacher, "run", no_second_teacher)
    (lhf,) = pipeline.main([*args, "--resume"])
    assert lhf["method"] == "lhf" and lhf["fraction"] == float(found.group(1))  # it fits
