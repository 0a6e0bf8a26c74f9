"""The quality sweep on tiny synthetic data: outputs, summary and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import quality
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
    # 200 ids at dim 4: 3,200 bytes, no remap; half the rows with an int16 remap per id
    assert full["bytes"] == 200 * 4 * 4 and full["remap_bytes"] == 0
    assert modulo["embedding_bytes"] == 100 * 4 * 4 and modulo["remap_bytes"] == 200 * 2
    assert modulo["remap_computable"] is True and lhf["remap_computable"] is False
    assert all(0 <= r["auc"] <= 1 for r in rows)
    table = (tmp_path / "results.md").read_text()
    assert "| modulo | 0.5 | 1 |" in table and "| none | 1 | 1 |" in table
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    # resuming: a second call reads every run back (a changed file proves it is not rerun)
    run = tmp_path / "runs" / "modulo_f0.5_s0.json"
    run.write_text(json.dumps({**modulo, "auc": 0.123}))
    again = quality.main([*argv, "--out", str(tmp_path)])
    assert again[1]["auc"] == 0.123 and again[0] == full
    # --report rewrites the reports from results.json alone (no run file is read)
    (tmp_path / "results.md").unlink()
    run.unlink()
    assert quality.main([*argv, "--out", str(tmp_path), "--report"]) == again
    assert "| modulo | 0.5 | 1 |" in (tmp_path / "results.md").read_text()
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
    lines = quality.pivot_markdown(summary).splitlines()
    assert lines[0] == "| method | 0.5 | 0.1 |"
    assert lines[2] == "| none (full) | 0.8000 (all sizes) | |"
    assert lines[3] == "| lhf | **0.7900** | 0.7500 |"
    assert lines[4] == "| modulo | 0.7800 | **0.7600** |"


def test_total_budget_sweep_gives_equal_rows(tmp_path: Path) -> None:
    # --budget total: 20% of all 200 ids = 40 rows for modulo and lhf alike
    argv = [*TINY, "--methods", "modulo,lhf", "--fractions", "0.2", "--seeds", "1"]
    rows = quality.main([*argv, "--budget", "total", "--out", str(tmp_path)])
    assert [r["rows"] for r in rows] == [40, 40]


def test_summary_pairs_each_seed_with_the_full_model() -> None:
    def row(method, seed, auc):
        return {"method": method, "fraction": 1.0 if method == "none" else 0.1, "seed": seed,
                "auc": auc, "logloss": 0.5, "bytes": 10, "remap_bytes": 0, "remap_computable": False}  # fmt: skip

    # full 0.80, 0.70, 0.75; lhf is 0.01, 0.02, 0.03 below it seed by seed
    rows = [row("none", s, a) for s, a in enumerate([0.80, 0.70, 0.75])]
    rows += [row("lhf", s, a) for s, a in enumerate([0.79, 0.68, 0.72])]
    full, lhf = quality.summarize(rows)
    assert full["delta_auc"] == pytest.approx(0.0)
    assert lhf["delta_auc"] == pytest.approx(-0.02)
    assert lhf["delta_auc_se"] == pytest.approx(0.01 / 3**0.5)  # std 0.01 over 3 pairs
    assert "| -0.0200 ± 0.0058 |" in quality.markdown([full, lhf])


def test_summary_is_mean_and_std_over_seeds() -> None:
    rows = [
        {"method": "qr", "fraction": 0.1, "seed": s, "auc": a, "logloss": 0.5, "bytes": 10,
         "remap_bytes": 2, "remap_computable": True}
        for s, a in enumerate([0.70, 0.72, 0.74])
    ]  # fmt: skip
    (s,) = quality.summarize(rows)
    assert s["seeds"] == 3 and s["auc"] == pytest.approx(0.72)
    assert s["auc_std"] == pytest.approx(0.02)
    assert "| qr | 0.1 | 3 | 0.7200 ± 0.0200 |" in quality.markdown([s])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "modulo,bogus"], r"methods must name some of .*'bogus'"),
        (["--fractions", "0.5,2"], r"fractions must be in \(0, 1\], got \[0.5, 2.0\]"),
        (["--seeds", "0"], "seeds must be >= 1, got 0"),
    ],
)
def test_bad_flags_are_named(tmp_path: Path, flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quality.parse_args([*flags, "--out", str(tmp_path)])


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
