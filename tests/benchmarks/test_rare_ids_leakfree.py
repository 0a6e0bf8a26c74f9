"""The rare-ids benchmark's leak-free variants at a tiny scale: same bytes, their teachers."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import rare_ids
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.plan import HashPlan


def test_shrink_and_window_variants_at_equal_bytes(tmp_path: Path) -> None:
    argv = [
        "--scale", "0.0001", "--num_samples", "20000", "--min_table_rows", "100",
        "--batch_size", "512", "--fraction", "0.03", "--budget", "bytes",
        "--out_dir", str(tmp_path), "--methods", "lhf,lhf-shrink10,lhf-window", "--json",
    ]  # fmt: skip
    results = rare_ids.main(argv)["results"]
    # the counts (so the head, the rows and the remap) are the same: equal stored bytes
    assert len({r["stored_bytes"] for r in results.values()}) == 1
    full, window = (
        TeacherArtifact.load(tmp_path / "teacher"),
        TeacherArtifact.load(tmp_path / "teacher_w0.5"),
    )
    assert window.manifest["train_window"] == 0.5 and full.manifest["train_window"] == 1.0
    for name in full.table_names:
        assert torch.equal(full.counts[name], window.counts[name])
    plans = {m: HashPlan.load(tmp_path / f"plan_{m}.safetensors") for m in results}
    assert plans["lhf-shrink10"].metadata["value_shrinkage"] == 10.0
    assert "value_shrinkage" not in plans["lhf"].metadata
    assert plans["lhf-window"].metadata["source"]["teacher"] == str(tmp_path / "teacher_w0.5")
    assert plans["lhf-shrink10"] != plans["lhf"] and plans["lhf-window"] != plans["lhf"]
