"""The rare-ids benchmark at a tiny scale: equal total bytes, and the JSON has its fields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from apps import pipeline, plan_candidates
from benchmarks import rare_ids
from torchrec_lhf.compression.budget import mlet_width
from torchrec_lhf.data.criteo_npy import MLPERF_NUM_EMBEDDINGS
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.plan import HashPlan


def test_config_rejects_unknown_budgets_and_methods() -> None:
    with pytest.raises(ValueError, match="'total'"):
        rare_ids.RareIdsConfig(budget="total")
    with pytest.raises(ValueError, match="lhf-x"):
        rare_ids.RareIdsConfig(methods=["none", "lhf-x"])
    with pytest.raises(ValueError, match=r"methods must name each value once, .* \(\['lhf'\] rep"):
        rare_ids.RareIdsConfig(methods=["lhf", "none", "lhf"])  # (before: run twice)
    with pytest.raises(ValueError, match="fraction"):
        rare_ids.RareIdsConfig(fraction=0.0)
    with pytest.raises(ValueError, match="-1"):
        rare_ids.RareIdsConfig(seed=-1)
    with pytest.raises(ValueError, match="teacher_epochs must be an int >= 1, got 0"):
        rare_ids.RareIdsConfig(teacher_epochs=0)
    for scale in (0.0, float("inf")):
        with pytest.raises(ValueError, match=f"scale must be a finite number > 0, got {scale}"):
            rare_ids.RareIdsConfig(scale=scale)
    with pytest.raises(ValueError, match="min_height must be an int >= 1, got 0"):
        rare_ids.RareIdsConfig(min_height=0)
    # before, the config took these three
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        rare_ids.RareIdsConfig(batch_size=0)
    with pytest.raises(ValueError, match="min_table_rows must be an int >= 0, got -1"):
        rare_ids.RareIdsConfig(min_table_rows=-1)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got True"):
        rare_ids.RareIdsConfig(seed=True)
    # the data's own checks, before anything runs
    with pytest.raises(ValueError, match="dataset 'synthetic': group_scale must be a finite"):
        rare_ids.RareIdsConfig(group_scale=float("nan"))
    with pytest.raises(ValueError, match=r"num_groups must be in \[1, min\(num_embeddings\)=3\]"):
        rare_ids.RareIdsConfig(num_groups=4)


def test_the_teacher_trains_teacher_epochs(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    seen = []

    class Stop(Exception):
        pass

    def fake_teacher(config):  # noqa: ANN001, ANN202
        seen.append(config.train.epochs)
        raise Stop

    monkeypatch.setattr(rare_ids.teacher, "run", fake_teacher)
    for epochs in (1, 3):
        config = rare_ids.RareIdsConfig(out_dir=str(tmp_path), teacher_epochs=epochs)
        with pytest.raises(Stop):
            rare_ids.run(config)
    assert seen == [1, 3]  # the issue's command, then the pipeline's default


def test_gap_closed_is_the_share_of_the_hashing_tricks_gap() -> None:
    results = {
        "none": {"auc": 0.80},
        "modulo": {"auc": 0.70},
        "lhf": {"auc": 0.78},
        "lhf-paper": {"infeasible": "too small"},
    }
    rare_ids._gap_closed(results)
    assert results["lhf"]["gap_closed"] == pytest.approx(0.8)
    assert results["none"]["gap_closed"] == pytest.approx(1.0)
    assert results["modulo"]["gap_closed"] == 0.0
    assert "gap_closed" not in results["lhf-paper"]
    no_gap = {"none": {"auc": 0.7}, "modulo": {"auc": 0.71}}
    rare_ids._gap_closed(no_gap)
    assert no_gap["none"]["gap_closed"] is None


def test_tiny_run_at_equal_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 1e-4 of the MLPerf heights: 20,462 ids. At 2% of their fp32 bytes (26,191 bytes) the
    # paper's dense remap (uint8 here: a byte an id of the compressed tables) and the fewest
    # rows do not fit, while the hashing trick and the compact head/tail plan do.
    argv = [
        "--scale", "0.0001",
        "--num_samples", "20000",
        "--min_table_rows", "100",
        "--batch_size", "512",
        "--fraction", "0.02",
        "--budget", "bytes",
        "--out_dir", str(tmp_path),
        "--json",
    ]  # fmt: skip
    report = rare_ids.main(argv)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    heights = [max(3, round(n * 1e-4)) for n in MLPERF_NUM_EMBEDDINGS]
    full = sum(heights) * 16 * 4
    budget = math.floor(0.02 * full)
    assert report["budget_bytes"] == budget
    res = report["results"]
    assert list(res) == ["none", "modulo", "lhf-paper", "lhf"]
    assert "byte budget of 26,191 bytes" in res["lhf-paper"]["infeasible"]
    assert set(res["lhf-paper"]) == {"infeasible"}
    assert res["none"]["stored_bytes"] == res["none"]["table_bytes"] == full
    assert res["none"]["gap_closed"] == 1.0 and res["modulo"]["gap_closed"] == 0.0
    gap = res["none"]["auc"] - res["modulo"]["auc"]
    row = 16 * 4
    num_compressed = sum(n >= 100 for n in heights)
    for method in ("modulo", "lhf"):
        r = res[method]
        # fitted to the budget: no more than it, and within a row per compressed table of it
        assert budget - num_compressed * row < r["stored_bytes"] <= budget
        assert r["stored_bytes"] == r["table_bytes"] + r["index_bytes"]
        assert r["bytes_fraction"] == pytest.approx(r["stored_bytes"] / full)
        assert r["compression"] == pytest.approx(full / r["stored_bytes"])
        assert r["compression_in_memory"] == pytest.approx(
            full / (r["table_bytes"] + r["remap_bytes"])
        )
        assert 0.5 < r["auc"] < 1 and r["logloss"] > 0 and r["ne"] > 0
        if gap > 0:
            want = (r["auc"] - res["modulo"]["auc"]) / gap
            assert r["gap_closed"] == pytest.approx(want)
    assert res["modulo"]["index_bytes"] == 0 and res["modulo"]["remap_computable"]
    # the learned hash pays for its stored remap in rows; the compact head is held in
    # memory as its cuckoo table, larger than the sorted heads it stores
    lhf = res["lhf"]
    assert lhf["index_bytes"] > 0 and not lhf["remap_computable"]
    assert lhf["rows"] < res["modulo"]["rows"]
    assert lhf["remap_bytes"] > lhf["index_bytes"]


def test_tiny_run_of_the_other_methods_at_equal_bytes(tmp_path: Path) -> None:
    argv = [
        "--scale", "0.0001",
        "--num_samples", "20000",
        "--min_table_rows", "100",
        "--batch_size", "512",
        "--fraction", "0.3",  # cce's index (an int16 per id) fits from about 0.15
        "--budget", "bytes",
        "--methods", "modulo,mlet,cce,qr",
        "--out_dir", str(tmp_path),
    ]  # fmt: skip
    report = rare_ids.main(argv)
    res = report["results"]
    assert list(res) == ["modulo", "mlet", "cce", "qr"]
    for method, r in res.items():  # each fitted to the budget: what it stores, no more
        assert r["stored_bytes"] <= report["budget_bytes"], method
        assert r["stored_bytes"] == r["table_bytes"] + r["index_bytes"], method
        assert 0.5 < r["auc"] < 1, method
    assert res["cce"]["index_bytes"] > 0  # its clustered index is stored and counted
    assert res["mlet"]["rows"] > res["modulo"]["rows"]  # full height, a narrower width


def test_tiny_select_run_reuses_the_default_and_keeps_the_better_on_validation(
    tmp_path: Path,
) -> None:
    argv = [
        "--scale", "0.0001", "--num_samples", "20000", "--min_table_rows", "100",
        "--batch_size", "512", "--fraction", "0.05", "--budget", "bytes",
        "--methods",
        "lhf,lhf-select,lhf-select4,lhf-select6,lhf-select8,lhf-select2,lhf-select2-counts,"
        "lhf-select3",
        "--out_dir", str(tmp_path), "--json",
    ]  # fmt: skip
    report = rare_ids.main(argv)
    res = report["results"]
    sel, cands = res["lhf-select"], res["lhf-select"]["candidates"]
    assert cands["lhf"] == {"val_auc": res["lhf"]["val_auc"], "auc": res["lhf"]["auc"]}
    best = max(cands, key=lambda m: (cands[m]["val_auc"], m == "lhf"))
    assert sel["choice"] == best and sel["auc"] == cands[best]["auc"]
    freq = HashPlan.load(tmp_path / "plan_lhf-freq.safetensors")
    assert all(i["steps"] == 0 for i in freq.metadata["build_info"].values())
    # four candidates: the two of lhf-select (trained once) and both with rows by counts
    sel4, cands4 = res["lhf-select4"], res["lhf-select4"]["candidates"]
    assert list(cands4) == ["lhf", "lhf-freq", "lhf-counts", "lhf-counts-freq"]
    assert {m: cands4[m] for m in cands} == cands
    best = max(cands4, key=lambda m: cands4[m]["val_auc"])  # the first of ties
    assert sel4["choice"] == best and sel4["auc"] == cands4[best]["auc"]
    both = HashPlan.load(tmp_path / "plan_lhf-counts-freq.safetensors").metadata
    assert both["row_allocation"] == "counts"
    assert all(i["steps"] == 0 for i in both["build_info"].values())
    # six: and both clustered plans at the sqrt split's width, trained at it within the bytes
    cands6 = res["lhf-select6"]["candidates"]
    assert list(cands6) == [*cands4, "lhf-sqrt-mlet", "lhf-counts-sqrt-mlet"]
    for m in ("lhf-sqrt-mlet", "lhf-counts-sqrt-mlet"):
        meta = HashPlan.load(tmp_path / f"plan_{m}.safetensors").metadata
        assert meta["embedding_dim"] == mlet_width(0.05, 16) == 3
        metrics = json.loads((tmp_path / f"metrics_{m}.json").read_text())
        assert metrics["embedding_bytes"] == metrics["rows"] * 3 * 4
        assert metrics["total_bytes"] <= report["budget_bytes"]
    # eight: and both at half the width (8 of 16), the rows fitted to the bytes left,
    # trained at that width
    sel8, cands8 = res["lhf-select8"], res["lhf-select8"]["candidates"]
    assert list(cands8) == [*cands6, "lhf-half", "lhf-counts-half"]
    assert {m: cands8[m] for m in cands6} == cands6  # each trained once
    best = max(cands8, key=lambda m: cands8[m]["val_auc"])
    assert sel8["choice"] == best and sel8["auc"] == cands8[best]["auc"]
    for m in ("lhf-half", "lhf-counts-half"):
        meta = HashPlan.load(tmp_path / f"plan_{m}.safetensors").metadata
        assert meta["embedding_dim"] == 8 and meta["fraction"] == 0.05 * 16 / 8
        assert meta.get("row_allocation", "size") == ("counts" if "counts" in m else "size")
        metrics = json.loads((tmp_path / f"metrics_{m}.json").read_text())
        assert metrics["embedding_bytes"] == metrics["rows"] * 8 * 4
        assert metrics["total_bytes"] <= report["budget_bytes"]
    # two: the default and at half the width, its rows by size (the pipeline's default
    # before) or by counts (the pipeline's default under --budget bytes, --half_rows counts)
    assert pipeline.PipelineConfig.half_rows == "counts"
    for name, half in (("lhf-select2", "lhf-half"), ("lhf-select2-counts", "lhf-counts-half")):
        sel2, cands2 = res[name], res[name]["candidates"]
        assert list(cands2) == ["lhf", half] and cands2 == {m: cands8[m] for m in cands2}
        best = max(cands2, key=lambda m: cands2[m]["val_auc"])
        assert sel2["choice"] == best and sel2["auc"] == cands2[best]["auc"]
    # three: the pipeline's candidates under --budget bytes with --head_select
    build = BuildConfig(
        teacher="t", out=tmp_path / "p", fraction=0.05, budget="bytes", embedding_dim=16
    )
    names = plan_candidates.candidate_builds(
        build, head_select=True, half_select=True, half_rows=pipeline.PipelineConfig.half_rows
    )
    assert list(names) == ["clustered", "frequency", "clustered-counts-half"]
    sel3, cands3 = res["lhf-select3"], res["lhf-select3"]["candidates"]
    assert list(cands3) == ["lhf", "lhf-freq", "lhf-counts-half"]
    assert cands3 == {m: cands8[m] for m in cands3}
    best = max(cands3, key=lambda m: cands3[m]["val_auc"])
    assert sel3["choice"] == best and sel3["auc"] == cands3[best]["auc"]


def test_tiny_run_with_the_fill_capped_stores_less_and_buys_rows(tmp_path: Path) -> None:
    argv = [
        "--scale", "0.0001", "--num_samples", "20000", "--min_table_rows", "100",
        "--batch_size", "512", "--fraction", "0.05", "--budget", "bytes",
        "--methods", "lhf-half,lhf-half-fill0.05",
        "--out_dir", str(tmp_path), "--json",
    ]  # fmt: skip
    report = rare_ids.main(argv)
    res, budget = report["results"], report["budget_bytes"]
    capped, uncapped = res["lhf-half-fill0.05"], res["lhf-half"]
    meta = HashPlan.load(tmp_path / "plan_lhf-half-fill0.05.safetensors").metadata
    assert meta["fill_share"] == 0.05 and meta["embedding_dim"] == 8
    # the uncapped fill stores more than 5% of the bytes, so the cap binds: the fill keeps
    # only ids seen at least a raised count (at most the head's 10) and the remap stores at
    # most 5% (with filled heads held ranked, 2 bytes an id, the head alone fits in it here)
    threshold = meta["fill_min_count_fitted"]
    assert uncapped["index_bytes"] > 0.05 * budget >= capped["index_bytes"]
    assert 1 < threshold <= meta["head_min_count"] == 10
    # the bytes it does not store buy rows, within the same budget
    assert capped["rows"] > uncapped["rows"] and capped["stored_bytes"] <= budget
