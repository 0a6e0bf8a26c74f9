"""The distributed hash-build job: table assignment, world-size invariance, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from apps.build_hash import main as build_hash_main
from tests._multiprocess import run_multiprocess
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.hash_build.job import BuildConfig, assign_tables, run_build, table_rows
from torchrec_lhf.hash_build.plan_builder import build_plan
from torchrec_lhf.plan import HashPlan
from torchrec_lhf.plan_compact import CompactMapping, dense_width

# Five tables: three to compress at min_table_rows=300, two that stay full.
HEIGHTS = {"t_big": 2400, "t_mid": 1200, "t_low": 900, "t_small": 250, "t_tiny": 40}
MIN_ROWS = 300


def _teacher(directory: Path, dim: int = 4) -> TeacherArtifact:
    """Embeddings with planted groups, Zipf-like counts; saved to ``directory``."""
    g = torch.Generator().manual_seed(0)
    emb, cnt = {}, {}
    for i, (name, n) in enumerate(HEIGHTS.items()):
        groups_N = torch.randint(0, 8, (n,), generator=g)
        emb[name] = groups_N[:, None].float() + 0.1 * torch.randn(n, dim, generator=g)
        ranks_N = torch.randperm(n, generator=g).double() + 1
        cnt[name] = (1000.0 * (i + 1) / ranks_N**1.1).long()  # zeros in the tail
    art = TeacherArtifact(embeddings=emb, counts=cnt, manifest={"dataset": "test"})
    art.save(directory)
    return TeacherArtifact.load(directory)


def _config(tmp: Path, teacher_dir: Path, tag: str, **kw) -> BuildConfig:
    kw.setdefault("fraction", 0.1)
    return BuildConfig(
        min_table_rows=MIN_ROWS,
        work_dir=tmp / f"{tag}.work",
        out=tmp / f"{tag}.plan",
        teacher=str(teacher_dir),
        **kw,
    )


def _build_worker(
    rank: int, world_size: int, teacher_dir: str, tmp: str, tag: str, crash_after: int = -1, **kw
):
    """One rank of a build; raises after ``crash_after`` of this rank's tables (rank 1 only)."""
    done: list[tuple[str, bool]] = []

    def hook(name: str, info: dict) -> None:
        done.append((name, info["resumed"]))
        if rank == 1 and len(done) == crash_after:
            raise RuntimeError(f"simulated crash of rank 1 after {name}")

    config = _config(Path(tmp), Path(teacher_dir), tag, **kw)
    art = TeacherArtifact.load(teacher_dir)
    run_build(config, art, rank=rank, world_size=world_size, on_table_done=hook)
    return done


def _build(tmp: Path, teacher_dir: Path, tag: str, world_size: int, **kw) -> HashPlan:
    if world_size == 1:
        config = _config(tmp, teacher_dir, tag, **kw)
        run_build(config, TeacherArtifact.load(teacher_dir), rank=0, world_size=1)
    else:
        run_multiprocess(
            _build_worker,
            world_size=world_size,
            teacher_dir=str(teacher_dir),
            tmp=str(tmp),
            tag=tag,
            **kw,
        )
    return HashPlan.load(tmp / f"{tag}.plan")


def _comparable(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "created"}


# ------------------------------------------------------------------ assignment
def test_assign_tables_by_hand():
    # a -> r0 (5); b -> r1 (3); c -> r1 (6, since 3 < 5); d -> r0 (6, since 5 < 6)
    assert assign_tables({"a": 5, "b": 3, "c": 3, "d": 1}, 2) == [["a", "d"], ["b", "c"]]
    assert assign_tables({"a": 5, "b": 3, "c": 3, "d": 1}, 1) == [["a", "b", "c", "d"]]
    # equal sizes: dict order, lowest rank first
    assert assign_tables({"y": 2, "x": 2, "z": 2}, 2) == [["y", "z"], ["x"]]
    assert assign_tables({"a": 1}, 3) == [["a"], [], []]
    assert assign_tables({}, 2) == [[], []]
    with pytest.raises(ValueError, match="world_size must be an int >= 1, got 0"):
        assign_tables({"a": 1}, 0)


def test_table_rows_and_config_validation(tmp_path: Path):
    sizes = {"a": 1000, "b": 95, "c": 101}
    base = dict(work_dir=tmp_path / "w", out=tmp_path / "p", min_table_rows=100)
    assert table_rows(sizes, BuildConfig(fraction=0.1, **base)) == {"a": 100, "c": 10}
    assert table_rows(sizes, BuildConfig(fraction=0.001, **base)) == {"a": 1, "c": 1}
    assert table_rows(sizes, BuildConfig(rows_per_table={"a": 7, "b": 3}, **base)) == {"a": 7}
    with pytest.raises(ValueError, match=r"lacks: \['zz'\]"):
        table_rows(sizes, BuildConfig(rows_per_table={"zz": 7}, **base))
    with pytest.raises(
        ValueError,
        match=r"2000 rows for 1 hash\(es\) of a table of 1000 ids; expected 1 <= rows <= 1000",
    ):
        table_rows(sizes, BuildConfig(rows_per_table={"a": 2000}, **base))
    with pytest.raises(ValueError, match="exactly one of fraction and rows_per_table"):
        BuildConfig(fraction=0.1, rows_per_table={"a": 1}, **base)
    with pytest.raises(ValueError, match="exactly one of fraction and rows_per_table"):
        BuildConfig(**base)
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\], got 1.5"):
        BuildConfig(fraction=1.5, **base)
    with pytest.raises(ValueError, match="rows_per_table values must be ints >= 1"):
        BuildConfig(rows_per_table={"a": 0}, **base)
    with pytest.raises(ValueError, match="unknown clustering 'kmeans'"):
        BuildConfig(fraction=0.1, clustering="kmeans", **base)
    with pytest.raises(
        ValueError, match="projection must be 'pca', 'dim:k' or 'dim:k0,k1,...', got 'pca2'"
    ):
        BuildConfig(fraction=0.1, projection="pca2", **base)
    with pytest.raises(ValueError, match="num_hashes must be an int >= 1, got 0"):
        BuildConfig(fraction=0.1, num_hashes=0, **base)
    with pytest.raises(ValueError, match="combine must be one of"):
        BuildConfig(fraction=0.1, combine="mean", **base)
    # before: accepted, and never read where no table has a head to cluster
    with pytest.raises(ValueError, match=r"unknown agglomerative option\(s\) \['bogus'\]"):
        BuildConfig(fraction=0.1, clustering_options={"bogus": 1}, **base)
    with pytest.raises(
        ValueError, match=r"clustering options must be a mapping of names, got \[1\]"
    ):
        BuildConfig(fraction=0.1, clustering_options=[1], **base)
    assert BuildConfig(fraction=0.1, clustering_options={"max_cluster_size": 4}, **base)


def test_a_projection_the_teacher_cannot_serve_is_refused_before_any_work(
    tmp_path: Path, teacher_dir: Path
):
    """The teacher's dim is 4: ``dim:4`` names no coordinate. Before, the build prepared its
    work directory and failed on each rank's first table; now it fails before either. A
    composed plan takes one value per id (``dim:3`` serves it with two hash functions)."""
    config = _config(tmp_path, teacher_dir, "proj", projection="dim:4")
    with pytest.raises(ValueError, match=r"table 't_big': projection 'dim:4' with num_hashes=1"):
        run_build(config, TeacherArtifact.load(teacher_dir))
    assert not config.work_dir.exists()
    two = _config(tmp_path, teacher_dir, "two", projection="dim:3", num_hashes=2)
    with pytest.raises(ValueError, match=r"uses coordinates \[3, 4\], but the teacher dim is 4"):
        run_build(two, TeacherArtifact.load(teacher_dir))
    composed = _config(
        tmp_path, teacher_dir, "res", projection="dim:3", num_hashes=2, compose="residual"
    )
    assert run_build(composed, TeacherArtifact.load(teacher_dir)) is not None


# ------------------------------------------------------- world-size invariance
def test_world_size_1_matches_build_plan(tmp_path: Path, teacher_dir: Path):
    plan = _build(tmp_path, teacher_dir, "ws1", 1)
    assert plan.table_names == ["t_big", "t_mid", "t_low"]  # teacher order; small tables stay full
    assert [t.num_rows for t in plan] == [240, 120, 90]
    art = TeacherArtifact.load(teacher_dir)
    direct = build_plan(
        art.embeddings,
        art.counts,
        fraction=0.1,
        min_table_rows=MIN_ROWS,
        head_tail=_config(tmp_path, teacher_dir, "x").head_tail(),  # the build's defaults
    )
    assert plan == direct
    assert plan.metadata["source"]["teacher_sha256"] == art.manifest["sha256"]
    assert plan.metadata["clustering"] == "agglomerative" and plan.metadata["fraction"] == 0.1


@pytest.mark.distributed
@pytest.mark.parametrize("num_hashes", [1, 2])
def test_world_size_2_gives_the_same_plan(tmp_path: Path, teacher_dir: Path, num_hashes: int):
    kw = dict(num_hashes=num_hashes, combine="concat" if num_hashes > 1 else "sum")
    one = _build(tmp_path, teacher_dir, "ws1", 1, **kw)
    two = _build(tmp_path, teacher_dir, "ws2", 2, **kw)
    assert one == two and one.fingerprint() == two.fingerprint()
    assert one.table_names == two.table_names
    assert _comparable(one.metadata) == _comparable(two.metadata)
    assert all(t.num_hashes == num_hashes and t.combine == kw["combine"] for t in two)


@pytest.mark.distributed
def test_world_size_2_sends_compact_mappings(tmp_path: Path, teacher_dir: Path):
    """A head/tail plan: the head (ids seen at least 5 times) compact, the tail hashed."""
    kw = dict(num_hashes=2, combine="sum", head_min_count=5, tail_fraction=0.5)
    one = _build(tmp_path, teacher_dir, "ws1", 1, **kw)
    two = _build(tmp_path, teacher_dir, "ws2", 2, **kw)
    assert one == two and one.fingerprint() == two.fingerprint()
    assert HashPlan.load(tmp_path / "ws2.plan") == one
    counts = TeacherArtifact.load(teacher_dir).counts
    compact = 0
    for t in two:
        head_K = (counts[t.name] >= 5).nonzero().squeeze(1)
        for m in t.mappings:  # "auto": compact (6 bytes a head id) where below a dense id's
            width = dense_width(max(t.heights))
            assert isinstance(m, CompactMapping) == (6 * head_K.numel() < width * t.num_embeddings)
            if isinstance(m, CompactMapping):
                compact += 1
                assert torch.equal(m.head_ids, head_K)
    assert compact


@pytest.mark.distributed
@pytest.mark.slow
def test_world_size_4_gives_the_same_plan(tmp_path: Path, teacher_dir: Path):
    assert _build(tmp_path, teacher_dir, "ws1", 1) == _build(tmp_path, teacher_dir, "ws4", 4)


# ----------------------------------------------------------------------- resume
def test_crash_then_rerun_resumes(tmp_path: Path, teacher_dir: Path):
    clean = _build(tmp_path, teacher_dir, "clean", 1)
    config = _config(tmp_path, teacher_dir, "crash")
    seen: list[tuple[str, bool]] = []

    def crash_after_two(name: str, info: dict) -> None:
        seen.append((name, info["resumed"]))
        if len(seen) == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_build(config, TeacherArtifact.load(teacher_dir), on_table_done=crash_after_two)
    assert not config.out.exists()  # never a partial plan
    finished = sorted(config.work_dir.glob("*.plan"))
    assert [p.name for p in finished] == ["t_big.plan", "t_mid.plan"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in finished}

    seen.clear()
    plan = run_build(
        config,
        TeacherArtifact.load(teacher_dir),
        on_table_done=lambda n, i: seen.append((n, i["resumed"])),
    )
    assert seen == [("t_big", True), ("t_mid", True), ("t_low", False)]
    assert {p.name: p.stat().st_mtime_ns for p in finished} == mtimes  # not rewritten
    assert plan == clean and HashPlan.load(config.out) == clean


@pytest.mark.distributed
def test_rank_killed_midway_then_rerun_at_another_world_size(tmp_path: Path, teacher_dir: Path):
    clean = _build(tmp_path, teacher_dir, "clean", 1)
    # world size 2: rank 0 gets t_big, rank 1 gets t_mid then t_low; rank 1 dies after t_mid.
    with pytest.raises(AssertionError, match="simulated crash of rank 1 after t_mid"):
        run_multiprocess(
            _build_worker,
            world_size=2,
            teacher_dir=str(teacher_dir),
            tmp=str(tmp_path),
            tag="kill",
            crash_after=1,
        )
    assert not (tmp_path / "kill.plan").exists()
    assert (tmp_path / "kill.work" / "t_mid.plan").is_file()
    assert not (tmp_path / "kill.work" / "t_low.plan").exists()
    # resume with one rank: everything already finished is reused
    config = _config(tmp_path, teacher_dir, "kill")
    seen: dict[str, bool] = {}
    plan = run_build(
        config,
        TeacherArtifact.load(teacher_dir),
        on_table_done=lambda n, i: seen.update({n: i["resumed"]}),
    )
    assert seen["t_mid"] is True and seen["t_low"] is False
    assert plan == clean


def test_work_dir_of_another_config_is_refused(tmp_path: Path, teacher_dir: Path):
    _build(tmp_path, teacher_dir, "a", 1)
    other = _config(tmp_path, teacher_dir, "a", fraction=0.2)
    with pytest.raises(ValueError, match="holds tables of another build.*--restart"):
        run_build(other, TeacherArtifact.load(teacher_dir))
    restarted = _config(tmp_path, teacher_dir, "a", fraction=0.2, restart=True)
    plan = run_build(restarted, TeacherArtifact.load(teacher_dir))
    assert [t.num_rows for t in plan] == [480, 240, 180]
    assert plan == _build(tmp_path, teacher_dir, "b", 1, fraction=0.2)


def test_damaged_table_file_is_recomputed(
    tmp_path: Path, teacher_dir: Path, caplog: pytest.LogCaptureFixture
):
    clean = _build(tmp_path, teacher_dir, "d", 1)
    path = tmp_path / "d.work" / "t_mid.plan"
    path.write_bytes(path.read_bytes()[:-10])
    seen: dict[str, bool] = {}
    with caplog.at_level(logging.WARNING):
        plan = run_build(
            _config(tmp_path, teacher_dir, "d"),
            TeacherArtifact.load(teacher_dir),
            on_table_done=lambda n, i: seen.update({n: i["resumed"]}),
        )
    assert seen == {"t_big": True, "t_mid": False, "t_low": True}
    assert "recomputing table 't_mid'" in caplog.text
    assert plan == clean


# -------------------------------------------------------------------------- app
def test_app_main_single_process(
    tmp_path: Path, teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"t_big": 100, "t_low": 30}))
    out = tmp_path / "app.plan"
    common = (
        f"--teacher {teacher_dir} --min_table_rows 300 --clustering quantile --projection dim:1"
    )
    plan = build_hash_main([*common.split(), "--rows_per_table", str(rows), "--out", str(out)])
    assert (tmp_path / "app.plan.work" / "build.json").is_file()
    assert HashPlan.load(out) == plan
    assert [(t.name, t.num_rows) for t in plan] == [("t_big", 100), ("t_low", 30)]
    assert plan.metadata["clustering"] == "quantile" and plan.metadata["projection"] == "dim:1"
    # the same rows given inline, written elsewhere: the same plan
    inline = build_hash_main(
        [
            *common.split(),
            "--rows_per_table",
            '{"t_big": 100, "t_low": 30}',
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert inline == plan
    with pytest.raises(ValueError, match="give exactly one of fraction and rows_per_table"):
        build_hash_main(
            [*common.split(), "--fraction", "0.1", "--rows_per_table", "{}", "--out", "x"]
        )
    with pytest.raises(SystemExit):  # argparse: neither a JSON object nor a file
        build_hash_main([*common.split(), "--rows_per_table", "nope.json", "--out", "x"])
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\], got 2.0"):
        build_hash_main([*common.split(), "--fraction", "2", "--out", str(out)])
