"""Paired differences from a baseline, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.paired import load_runs, main, paired_table
from torchrec_lhf.cli import FlagError


def _run(method: str, seed: int, auc: float, logloss: float = 0.5, size: float = 0.1) -> dict:
    return {"method": method, "fraction": size, "seed": seed, "auc": auc, "logloss": logloss}


def test_paired_by_seed_by_hand(tmp_path: Path) -> None:
    runs = [_run("base", 0, 0.70), _run("base", 1, 0.80), _run("base", 2, 0.75)]
    # deltas +0.02, +0.04 (seed 2 collapsed: left out, counted): mean 0.03, se 0.01
    runs += [_run("x", 0, 0.72, 0.4), _run("x", 1, 0.84, 0.5), _run("x", 2, 0.50)]
    (tmp_path / "results.json").write_text(json.dumps(runs))
    table = main(["--baseline", "base", str(tmp_path / "results.json")])
    lines = table.splitlines()
    assert lines[2] == "| `base` | 0.1 | 3 | 0.7500 | - | - | - | 0 |"
    assert lines[3] == "| `x` | 0.1 | 2 | 0.7800 | +0.0300 ± 0.0100 | -0.0500 ± 0.0500 | - | 1 |"


def test_a_baseline_of_one_size_pairs_with_every_size() -> None:
    """The full model runs once a seed (size 1); every size pairs with it, NE too."""
    runs = [_run("none", s, 0.80 + s / 100, size=1.0) | {"ne": 0.8} for s in range(3)]
    runs += [
        _run("x", s, 0.79 + s / 100 + d, size=0.1) | {"ne": 0.81}
        for s, d in enumerate((0, 0.01, 0.02))
    ]
    runs += [_run("x", s, 0.70 + s / 100, size=0.01) for s in range(2)]  # no NE recorded
    lines = paired_table(runs, "none").splitlines()
    assert lines[2] == "| `none` | 1 | 3 | 0.8100 | - | - | - | 0 |"
    # AUC deltas -0.01, 0, +0.01: mean 0, se 0.01/sqrt(3); NE +0.01 each (se 0)
    assert (
        lines[3]
        == "| `x` | 0.1 | 3 | 0.8100 | +0.0000 ± 0.0058 | +0.0000 ± 0.0000 | +0.0100 ± 0.0000 | 0 |"
    )
    assert lines[4] == "| `x` | 0.01 | 2 | 0.7050 | -0.1000 ± 0.0000 | +0.0000 ± 0.0000 | - | 0 |"
    # a baseline of several sizes pairs size by size only
    more = runs + [_run("none", 0, 0.5, size=0.1)]
    assert "| `x` | 0.01 | 0 |" in paired_table(more, "none")


def test_rare_ids_reports_and_bad_input(tmp_path: Path) -> None:
    for seed, auc in ((0, 0.88), (1, 0.87)):
        report = {
            "benchmark": "rare_ids",
            "config": {"fraction": 0.01, "seed": seed},
            "results": {"lhf": {"auc": auc, "logloss": 0.4}, "lhf-paper": {"infeasible": "x"}},
        }
        (tmp_path / f"s{seed}.json").write_text(json.dumps(report))
    runs = load_runs(sorted(tmp_path.glob("s*.json")))
    assert [(r["method"], r["seed"], r["auc"]) for r in runs] == [
        ("lhf", 0, 0.88),
        ("lhf", 1, 0.87),
    ]
    with pytest.raises(ValueError, match="no runs of the baseline 'none'"):
        paired_table(runs, "none")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="neither a sweep's results.json nor a rare_ids report"):
        load_runs([tmp_path / "other.json"])


def test_two_runs_of_one_seed_are_refused_not_one_dropped(tmp_path: Path) -> None:
    """Before, the second run of a method, size and seed replaced the first without a word
    (the same file given twice, or reports of two variants both naming ``lhf``)."""
    runs = [_run("none", 0, 0.8), _run("x", 0, 0.7), _run("x", 0, 0.75)]
    with pytest.raises(ValueError, match="two runs of 'x' at size 0.1 with seed 0"):
        paired_table(runs, "none")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(runs[:2]))
    with pytest.raises(FlagError, match="two runs of 'none' at size 0.1 with seed 0"):
        main(["--baseline", "none", str(path), str(path)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('[{"method": "a", "auc": 0.7}]', r"run 0 \('a'\) has no \['fraction', 'seed'\]"),
        ('[{"method": "a", "fraction": 1, "seed": 0, "auc": 0.7}, 3]', "not a JSON object"),
        ('{"benchmark": "rare_ids", "results": {"a": {"auc": 0.7}}}', "has no"),
    ],
)
def test_files_that_are_not_runs_are_named(tmp_path: Path, text: str, message: str) -> None:
    """Before: a JSONDecodeError, a KeyError or an AttributeError traceback naming no file."""
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        load_runs([path])
    with pytest.raises(FlagError, match=message):  # the command: a usage error, no traceback
        main(["--baseline", "a", str(path)])
    with pytest.raises(FlagError, match="PATH '.*missing.json': no such file"):
        main(["--baseline", "a", str(tmp_path / "missing.json")])
