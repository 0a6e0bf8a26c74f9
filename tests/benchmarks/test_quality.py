"""The quality sweep on tiny synthetic data: outputs, summary and resuming."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from apps import pipeline
from benchmarks import quality, quality_report
from tests._fixtures import count_learned_trainings
from torchrec_lhf.cli import FlagError
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.head_tail import tail_seed
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan import HashPlan

# 600 samples, tables of 30, 50 and 120 ids, dim 4: a run takes a second or two.
TINY = [
    "--dataset",
    "synthetic",
    "--dataset_options",
    json.dumps({"num_samples": 600, "num_embeddings": [30, 50, 120], "num_groups": 4}),
    "--embedding_dim",
    "4",
    "--batch_size",
    "64",
    "--min_table_rows",
    "0",
    "--train_options",
    json.dumps({"dense_arch_layer_sizes": [8, 4], "over_arch_layer_sizes": [8, 1]}),
]


def test_tiny_sweep_writes_the_three_outputs_and_resumes(tmp_path: Path) -> None:
    argv = [*TINY, "--methods", "none,modulo,lhf", "--fractions", "0.5", "--seeds", "1"]
    rows = quality.main([*argv, "--out", str(tmp_path)])
    assert [(r["method"], r["fraction"], r["seed"]) for r in rows] == [
        ("none", 1.0, 0),
        ("modulo", 0.5, 0),
        ("lhf", 0.5, 0),
    ]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    full, modulo, lhf = rows
    # 200 ids at dim 4: 3,200 bytes, no remap; half the rows with a uint8 remap per id
    assert full["bytes"] == 200 * 4 * 4 and full["remap_bytes"] == 0
    # the hashing trick's remap computed from the id: its tail's three int64 per feature,
    # nothing per id (before: a uint8 row per id, 200 bytes)
    assert modulo["embedding_bytes"] == 100 * 4 * 4 and modulo["remap_bytes"] == 3 * 3 * 8
    assert modulo["remap_computable"] is True and lhf["remap_computable"] is False
    assert all(0 <= r["auc"] <= 1 for r in rows)
    table = (tmp_path / "results.md").read_text()
    # (the full model of this tiny data may collapse to AUC 0.5: then listed apart)
    assert "| modulo | 0.5 | 1 |" in table and "| none | 1 |" in table
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    # resuming: a second call reads every run back (a changed file proves it is not rerun)
    run = tmp_path / "runs" / "modulo_f0.5_s0.json"
    run.write_text(json.dumps({**modulo, "auc": 0.723}))
    again = quality.main([*argv, "--out", str(tmp_path)])
    assert again[1]["auc"] == 0.723 and again[0] == full
    # --report rewrites the reports from results.json alone (no run file is read)
    (tmp_path / "results.md").unlink()
    run.unlink()
    assert quality.main([*argv, "--out", str(tmp_path), "--report"]) == again
    assert "| modulo | 0.5 | 1 |" in (tmp_path / "results.md").read_text()
    assert full["ne"] > 0 and full["budget"] == "full" and modulo["budget"] == "table"
    with pytest.raises(ValueError, match="does not exist; run the sweep first"):
        quality.main([*argv, "--out", str(tmp_path / "empty"), "--report"])


def test_tiny_sweep_with_mch(tmp_path: Path) -> None:
    argv = [*TINY, "--methods", "mch", "--fractions", "0.5", "--seeds", "1"]
    (row,) = quality.main([*argv, "--out", str(tmp_path)])
    assert (row["method"], row["fraction"], row["remap_computable"]) == ("mch", 0.5, False)
    # 30, 50, 120 ids at 0.5: 15 + 25 + 60 rows of dim 4; the serving lookup: sorted raw
    # ids and their rows, one int64 each per row
    assert row["embedding_bytes"] == 100 * 4 * 4
    assert row["remap_bytes"] == 8 * 2 * 100
    assert 0 <= row["auc"] <= 1


def test_pivot_bolds_the_best_compressed_method_per_fraction() -> None:
    summary = [
        {"method": "none", "fraction": 1.0, "auc": 0.80},
        {"method": "lhf", "fraction": 0.5, "auc": 0.79},
        {"method": "lhf", "fraction": 0.1, "auc": 0.75},
        {"method": "modulo", "fraction": 0.5, "auc": 0.78},
        {"method": "modulo", "fraction": 0.1, "auc": 0.76},
    ]
    summary = [{**s, "seeds": 1} for s in summary]
    lines = quality_report.pivot_markdown(summary).splitlines()
    assert lines[0] == "| method | 0.5 | 0.1 |"
    assert lines[2] == "| none (full) | 0.8000 (all sizes) | |"
    assert lines[3] == "| lhf | **0.7900** | 0.7500 |"
    assert lines[4] == "| modulo | 0.7800 | **0.7600** |"


def test_pivot_of_a_sweep_with_no_finished_run_is_empty() -> None:
    # every method infeasible at every size and no full model: nothing to tabulate
    infeasible = [{"method": "lhf", "fraction": 0.01, "seeds": 0, "infeasible": "too small"}]
    assert quality_report.pivot_markdown(infeasible) == ""
    full = [{"method": "none", "fraction": 1.0, "auc": 0.8, "seeds": 1}]
    assert quality_report.pivot_markdown(full).splitlines()[2] == "| none (full) | 0.8000 |"


def test_total_budget_sweep_gives_equal_rows(tmp_path: Path) -> None:
    # --budget total: 20% of all 200 ids = 40 rows for modulo and lhf alike
    argv = [*TINY, "--methods", "modulo,lhf", "--fractions", "0.2", "--seeds", "1"]
    rows = quality.main([*argv, "--budget", "total", "--out", str(tmp_path)])
    assert [r["rows"] for r in rows] == [40, 40]


def _row(method: str, seed: int, auc: float, **kw) -> dict:
    fraction = 1.0 if method == "none" else 0.1
    return {"method": method, "fraction": fraction, "seed": seed, "auc": auc, "logloss": 0.5,
            "bytes": 10, "remap_bytes": 0, "remap_computable": False, **kw}  # fmt: skip


def test_summary_pairs_each_seed_with_the_full_model() -> None:
    # full 0.80, 0.70, 0.75; lhf is 0.01, 0.02, 0.03 below it seed by seed
    rows = [_row("none", s, a) for s, a in enumerate([0.80, 0.70, 0.75])]
    rows += [_row("lhf", s, a) for s, a in enumerate([0.79, 0.68, 0.72])]
    (full, lhf), collapsed, infeasible = quality_report.summarize(rows)
    assert collapsed == infeasible == []
    assert full["delta_auc"] == pytest.approx(0.0)
    assert lhf["delta_auc"] == pytest.approx(-0.02)
    assert lhf["delta_auc_se"] == pytest.approx(0.01 / 3**0.5)  # std 0.01 over 3 pairs
    assert "| -0.0200 ± 0.0058 |" in quality_report.markdown([full, lhf])


def test_summary_is_mean_and_std_over_seeds() -> None:
    rows = [_row("qr", s, a, remap_bytes=2, remap_computable=True)
            for s, a in enumerate([0.70, 0.72, 0.74])]  # fmt: skip
    (s,), _, _ = quality_report.summarize(rows)
    assert s["seeds"] == 3 and s["auc"] == pytest.approx(0.72)
    assert s["auc_std"] == pytest.approx(0.02)
    assert "| qr | 0.1 | 3 | 0.7200 ± 0.0200 |" in quality_report.markdown([s])


def test_report_of_a_hand_made_results_json(tmp_path: Path) -> None:
    # logloss and NE pair by seed like AUC: lhf's deltas are +0.01, +0.03, +0.02 (logloss)
    # and +0.02, +0.02, +0.05 (NE); seed 3 collapsed (AUC 0.52) and is not averaged; the
    # full model of seed 3 has no partner left.
    full = [(0.80, 0.50, 0.80), (0.70, 0.60, 0.90), (0.75, 0.55, 0.85), (0.78, 0.52, 0.82)]
    lhf = [(0.79, 0.51, 0.82), (0.68, 0.63, 0.92), (0.72, 0.57, 0.90), (0.52, 0.69, 0.99)]
    rows = [
        _row("none", s, a, logloss=ll, ne=ne, budget="full") for s, (a, ll, ne) in enumerate(full)
    ]
    rows += [
        _row(
            "lhf",
            s,
            a,
            logloss=ll,
            ne=ne,
            budget="bytes",
            total_bytes=100 + s,
            index_bytes=40,
            row_fraction=0.06,
        )
        for s, (a, ll, ne) in enumerate(lhf)
    ]
    rows += [{"method": "mlet", "fraction": 0.1, "seed": s, "budget": "bytes",
              "infeasible": "dim 1 of 16 stores 0.0625"} for s in range(4)]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(rows))
    argv = ["--bytes", "0.1", "--methods", "none,lhf,mlet", "--report", "--out", str(tmp_path)]
    assert quality.main(argv) == rows
    (f, s), collapsed, infeasible = quality_report.summarize(rows)
    assert (s["seeds"], s["collapsed"], f["seeds"]) == (3, 1, 4)
    assert s["auc"] == pytest.approx((0.79 + 0.68 + 0.72) / 3)  # the collapsed run left out
    assert s["delta_logloss"] == pytest.approx(0.02)
    assert s["delta_logloss_se"] == pytest.approx(0.01 / 3**0.5)
    assert s["delta_ne"] == pytest.approx(0.03)
    assert s["delta_ne_se"] == pytest.approx(0.01)  # std 0.01732 over 3 pairs
    assert s["bytes"] == 101 and s["row_fraction"] == pytest.approx(0.06)
    assert [r["seed"] for r in collapsed] == [3] and len(infeasible) == 4
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("At equal bytes")
    assert "| method | bytes budget | seeds |" in md
    assert (
        "| lhf | 0.1 | 3 | 0.7300 ± 0.0557 | -0.0200 ± 0.0058 | 0.5700 ± 0.0600 | "
        "+0.0200 ± 0.0058 | 0.8800 ± 0.0529 | +0.0300 ± 0.0100 | 101 (40) | 0.060 | 1 |" in md
    )
    assert "Collapsed runs (test AUC < 0.55), not averaged: 1" in md
    assert "- lhf at 0.1, seed 3: AUC 0.5200" in md
    assert "Budgets a method cannot fit (every seed): 1" in md and "- mlet at 0.1: dim 1" in md


def test_a_size_whose_every_run_collapsed_still_has_a_row() -> None:
    rows = [_row("none", 0, 0.8), _row("modulo", 0, 0.51), _row("modulo", 1, 0.53)]
    summary, collapsed, _ = quality_report.summarize(rows)
    assert [(s["method"], s["seeds"], s["collapsed"]) for s in summary] == [
        ("none", 1, 0), ("modulo", 0, 2)
    ]  # fmt: skip
    assert len(collapsed) == 2
    assert "| modulo | 0.1 | 0 | | | | | | | | | 2 |" in quality_report.markdown(summary)


def test_tiny_byte_sweep_fits_every_method(tmp_path: Path) -> None:
    methods = "none,modulo,qr,mlet,mch,lhf,lhf-headtail,lhf-mlet"
    argv = [*TINY, "--methods", methods, "--bytes", "0.5,0.2", "--seeds", "1"]
    rows = quality.main([*argv, "--head_min_count", "3", "--out", str(tmp_path)])
    full = 200 * 4 * 4  # 200 ids at dim 4
    by = {(r["method"], r["fraction"]): r for r in rows}
    assert by[("none", 1.0)]["total_bytes"] == full
    for (method, fraction), r in by.items():
        if method in ("none", "mlet") or r.get("infeasible"):
            continue
        assert r["budget"] == "bytes"
        # within the budget, and within a few rows of 16 bytes (qr: its steps)
        assert fraction * full - (12 if method == "qr" else 3) * 16 < r["total_bytes"]
        assert r["total_bytes"] <= fraction * full
        assert r["bytes"] == r["total_bytes"] == r["table_bytes"] + r["index_bytes"]
        assert r["bytes_fraction"] == pytest.approx(r["total_bytes"] / full)
    assert by[("lhf", 0.5)]["index_bytes"] == 200  # dense uint8 remap (under 256 rows), counted
    assert by[("modulo", 0.5)]["index_bytes"] == 0  # computed from the id
    assert by[("mlet", 0.5)]["total_bytes"] == full // 2  # width 2 of 4
    # qr cannot go below 2 sqrt(N) rows a table; mlet below width 1 (a quarter)
    assert "below the" in by[("qr", 0.2)]["infeasible"]
    assert "dim 1 of 4" in by[("mlet", 0.2)]["infeasible"]
    assert (tmp_path / "runs" / "modulo_b0.5_s0.json").is_file()
    md = (tmp_path / "results.md").read_text()
    assert "Budgets a method cannot fit (every seed): 2" in md
    # lhf-mlet: the sqrt split's width (2 of 4 at half the bytes, 1 at a fifth), its rows
    # fitted to what the budget leaves there, the remap counted (the loop above)
    assert [quality.mlet_width(f, 4) for f in (0.5, 0.2)] == [2, 1]
    for fraction, width in ((0.5, 2), (0.2, 1)):
        r = by[("lhf-mlet", fraction)]
        assert r["index_bytes"] == 200 and r["table_bytes"] % (4 * width) == 0
    assert by[("lhf-mlet", 0.2)]["table_bytes"] // 4 > by[("lhf", 0.2)]["table_bytes"] // 16


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "modulo,bogus"], r"methods must name some of .*'bogus'"),
        (["--fractions", "0.5,2"], r"fractions must be in \(0, 1\], got \[0.5, 2.0\]"),
        (["--seeds", "0"], "seeds must be an int >= 1, got 0"),
        (["--bytes", "0.1,0"], r"bytes must be fractions in \(0, 1\], got \[0.1, 0.0\]"),
        (["--budget", "bytes"], "give the sizes with --bytes"),
        (["--bytes", "0.1", "--budget", "total"], "--bytes fits every method to bytes"),
        (["--dataset", "criteo"], "unknown dataset 'criteo'; expected one of"),
        (["--teacher_dim", "0"], "teacher_dim must be an int >= 1, got 0"),
        (["--teacher_epochs", "-1"], "teacher_epochs must be an int >= 1, got -1"),
        (["--min_table_rows", "-1"], "min_table_rows must be an int >= 0, got -1"),
        (["--head_min_count", "-2"], "head_min_count must be an int >= 0, got -2"),
        (["--learning_rate", "nan"], "learning_rate must be a finite number > 0, got nan"),
        (["--train_options", '{"dcn_num_layers": 0}'], "dcn_num_layers must be an int >= 1"),
        (["--dataset", "synthetic", "--dataset_options", '{"num_dense": 0}'], "num_dense must"),
        # before: accepted, the repeat's runs listed (and averaged) twice
        (
            ["--methods", "lhf,modulo,lhf"],
            r"methods must name each value once, got .* \(\['lhf'\] rep",
        ),
        (
            ["--fractions", "0.1,0.5,0.1"],
            r"fractions must name each value once, got .* \(\[0.1\] rep",
        ),
        (
            ["--bytes", "0.1,0.1"],
            r"bytes must name each value once, got \[0.1, 0.1\] \(\[0.1\] rep",
        ),
    ],
)
def test_bad_flags_are_named(tmp_path: Path, flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quality.parse_args([*flags, "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("field", "value"), [("seeds", True), ("skip_rows", 1.5), ("teacher_epochs", 2.0)]
)
def test_a_config_built_in_python_takes_ints_only(tmp_path: Path, field: str, value) -> None:  # noqa: ANN001
    """Before, SweepConfig took a bool or a float for a count (the flags parse ints)."""
    with pytest.raises(ValueError, match=f"{field} must be an int >= ., got {value}"):
        quality.SweepConfig(out=tmp_path, **{field: value})


def test_rarehash_plan_hashes_the_ids_the_teacher_saw_rarely(tmp_path: Path) -> None:
    args = quality.parse_args([*TINY, "--head_min_count", "3", "--out", str(tmp_path)])
    plan = HashPlan.load(quality._plan(args, "lhf-rarehash", 0.5, 0))
    counts = TeacherArtifact.load(tmp_path / "teachers" / "d4_s0").counts
    assert plan.metadata["head_min_count"] == 3
    for t in plan:
        rare_N = counts[t.name] < 3
        assert 0 < int(rare_N.sum()) < t.num_embeddings  # both kinds of ids occur
        tail_N = tail_hash(torch.arange(t.num_embeddings), tail_seed(t.name, 0), t.heights[0])
        assert torch.equal(t.dense_mapping(0)[rare_N].long(), tail_N[rare_N])


def test_head_count_variants_scale_the_sweeps_head(tmp_path: Path) -> None:
    args = quality.parse_args([*TINY, "--head_min_count", "3", "--out", str(tmp_path)])
    twice = HashPlan.load(quality._plan(args, "lhf-headtail-head2x", 0.5, 0))
    half = HashPlan.load(quality._plan(args, "lhf-headtail-head0.5x", 0.5, 0))
    assert twice.metadata["head_min_count"] == 6 and half.metadata["head_min_count"] == 2


def test_select_keeps_the_variant_of_higher_validation_auc(tmp_path: Path) -> None:
    argv = [*TINY, "--methods", "lhf-headtail-select", "--bytes", "0.5", "--seeds", "2"]
    rows = quality.main([*argv, "--head_min_count", "3", "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["lhf-headtail-select"] * 2
    for r in rows:
        # both candidates ran as their own runs, and the one kept has the higher val AUC
        cands = r["candidates"]
        assert set(cands) == {"lhf-headtail", "lhf-headtail-noclust"}
        for m, c in cands.items():
            run = json.loads((tmp_path / "runs" / f"{m}_b0.5_s{r['seed']}.json").read_text())
            assert c == {"val_auc": run["val_auc"], "auc": run["auc"]}
        best = max(cands, key=lambda m: (cands[m]["val_auc"], m == "lhf-headtail"))
        assert r["choice"] == best and r["auc"] == cands[best]["auc"]
    # the frequency-only plan clusters nothing
    plan = HashPlan.load(tmp_path / "plans" / "lhf-headtail-noclust_b0.5_s0.safetensors")
    assert all(i["steps"] == 0 for i in plan.metadata["build_info"].values())


def test_counts_noclust_plan_shares_rows_by_counts_and_clusters_nothing(tmp_path: Path) -> None:
    args = quality.parse_args(
        [*TINY, "--bytes", "0.5", "--head_min_count", "3", "--out", str(tmp_path)]
    )
    meta = HashPlan.load(quality._plan(args, "lhf-headtail-counts-noclust", 0.5, 0)).metadata
    assert meta["row_allocation"] == "counts"
    assert all(i["steps"] == 0 for i in meta["build_info"].values())
    # lhf-headtail-select4 chooses among the two head treatments under both allocations
    assert set(quality.SELECTED["lhf-headtail-select4"]) == {
        "lhf-headtail", "lhf-headtail-noclust", "lhf-headtail-counts", "lhf-headtail-counts-noclust"
    }  # fmt: skip


def test_counts_mlet_plan_shares_the_bytes_left_at_the_mlet_width_by_counts(tmp_path: Path) -> None:
    args = quality.parse_args(
        [*TINY, "--bytes", "0.25", "--head_min_count", "3", "--out", str(tmp_path)]
    )
    config = quality.run_config(args, "lhf-headtail-counts-mlet", 0.25, 0)
    width = quality.mlet_width(0.25, 4)  # the sqrt split's: 2 of 4
    assert width == 2 and config.mlet_fraction == width / 4
    meta = HashPlan.load(config.learned_hash).metadata
    assert meta["row_allocation"] == "counts" and meta["embedding_dim"] == width
    assert meta["fraction"] == 0.25 * 4 / width  # the bytes' share at that width
    assert set(quality.SELECTED["lhf-headtail-select4"]) < set(
        quality.SELECTED["lhf-headtail-select6"]
    )


@pytest.mark.parametrize("view", ["--bytes", "--fractions"])
def test_half_width_plans_keep_half_the_width_and_the_rest_in_rows(
    tmp_path: Path, view: str
) -> None:
    args = quality.parse_args(
        [*TINY, view, "0.04", "--head_min_count", "3", "--out", str(tmp_path)]
    )
    counts = ("lhf-headtail-counts-half",) if view == "--bytes" else ()  # counts: bytes only
    for method in ("lhf-headtail-half", *counts):
        config = quality.run_config(args, method, 0.04, 0)
        assert config.mlet_fraction == 0.5  # 2 of 4 (the sqrt split's would be 1)
        meta = HashPlan.load(config.learned_hash).metadata
        assert meta.get("row_allocation", "size") == ("counts" if "counts" in method else "size")
        if view == "--bytes":  # the plan at that width, the bytes' share there
            assert meta["embedding_dim"] == 2 and meta["fraction"] == 0.04 * 4 / 2
        else:  # twice the rows at half the width
            assert meta["fraction"] == 0.08
    # the pipeline's default under a byte budget: the default build and it at half the width
    # with rows by counts (--half_rows counts); by size, the default before
    assert pipeline.PipelineConfig.half_rows == "counts"
    pair = ("lhf-headtail", "lhf-headtail-counts-half")
    assert quality.SELECTED["lhf-headtail-select2-counts"] == pair
    assert quality.SELECTED["lhf-headtail-select2"] == ("lhf-headtail", "lhf-headtail-half")
    # with --head_select: the frequency-only plan too (as plan_candidates' "frequency")
    three = ("lhf-headtail", "lhf-headtail-noclust", "lhf-headtail-counts-half")
    assert quality.SELECTED["lhf-headtail-select3"] == three
    assert quality.LHF_VARIANTS["lhf-headtail-noclust"]["frequency_only"]


def test_a_method_whose_training_an_earlier_one_ran_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no id is seen 1000 times: the clustered head is empty and filled by frequency, which
    # is the frequency-only plan exactly
    trained = count_learned_trainings(monkeypatch, quality.train)
    methods = "lhf-headtail,lhf-headtail-noclust,lhf-headtail-select"
    argv = [*TINY, "--methods", methods, "--bytes", "0.5", "--head_min_count", "1000", "--seeds"]
    clustered, noclust, select = quality.main([*argv, "1", "--out", str(tmp_path)])
    assert trained == [str(tmp_path / "plans" / "lhf-headtail_b0.5_s0.safetensors")]
    assert noclust["same_plan"] == "lhf-headtail" and noclust["method"] == "lhf-headtail-noclust"
    for key in ("auc", "logloss", "val_auc", "total_bytes", "fingerprint"):
        assert noclust[key] == clustered[key], key
    saved = json.loads((tmp_path / "runs" / "lhf-headtail-noclust_b0.5_s0.json").read_text())
    assert saved == noclust
    assert select["choice"] == "lhf-headtail"  # the first of the tie
    # another seed is another training
    trained.clear()
    quality.main([*argv, "2", "--out", str(tmp_path)])
    assert trained == [str(tmp_path / "plans" / "lhf-headtail_b0.5_s1.safetensors")]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows + [rows[1]], "runs 1 and 3 are both 'lhf' at size 0.1 with seed 0"),
        (lambda rows: {"runs": rows}, "expected a list of runs, got dict"),
        (lambda rows: rows + [3], "run 3 is 3; expected a JSON object"),
        (lambda rows: rows + [{"method": "qr", "fraction": 0.1}], "run 3 ('qr') has no ['seed'"),
        (lambda rows: rows + [{**rows[1], "seed": 5, "auc": None}], "has no ['auc']"),
        (lambda rows: rows + [{**rows[1], "fraction": [0.1]}], "fraction [0.1] and seed 0; exp"),
    ],
)
def test_report_refuses_runs_it_cannot_summarize(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    """Before, a results.json with a run of one seed twice (two sweeps merged) gave a table
    whose seeds counted it twice and whose means once; other malformed runs were a
    KeyError or TypeError."""
    rows = [_row("none", 0, 0.8), _row("lhf", 0, 0.78), _row("lhf", 1, 0.77)]
    (tmp_path / "results.json").write_text(json.dumps(edit(rows)))
    with pytest.raises(FlagError, match=re.escape(message)):
        quality.main(["--report", "--out", str(tmp_path)])
    assert not (tmp_path / "results.md").exists()  # nothing written
    with pytest.raises(ValueError, match="expected one run per method, size and seed"):
        quality_report.summarize(rows + [_row("none", 0, 0.8)])
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(FlagError, match="is not JSON"):
        quality.main(["--report", "--out", str(tmp_path)])
