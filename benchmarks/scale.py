"""Scale benchmark: every pipeline stage at scale factors of the MLPerf heights, 1 and 2 ranks.

For each scale ``s`` the synthetic Criteo-1TB-shaped npy files hold the MLPerf table heights
times ``s`` (:mod:`torchrec_lhf.data.synthetic_criteo`; 204M ids at ``s = 1``) and rows in
proportion: ``round(s * --rows_at_scale_1)`` training rows in ``--train_days`` day files of
equal size, then one more day of that size for val / test (at the default 10M training rows
at ``s = 1``: 10 days of 1M rows, 0.5M val, 0.5M test). Each stage then runs in processes of
its own (``benchmarks/_scale_stages.py``; ``world_size`` of them on gloo), so its wall time
and peak RSS (``VmHWM``, the maximum over ranks) are its own: ``generate`` (once per scale,
reported with the first world size), ``teacher`` (``--teacher_dim``, full height, counts),
``build`` (the plan: ``--fraction`` of all rows, ``--budget total``; tables under
``--min_table_rows`` times the scale full while cheap),
``train`` (the learned-hash DLRM, one epoch, TrainPipelineSparseDist, then a DCP checkpoint),
``paired`` (the learned-hash DLRM and a plain EBC of the same compressed rows fed pre-hashed
ids, built in one process and trained one epoch each in alternating blocks of
``--paired_block`` steps, ABBA), ``eval`` (val and test from the checkpoint), ``checkpoint``
(load it, save it again) and ``export``.

The JSON (``--json`` prints it; ``--out_json`` writes it): ``{"config", "rows_rule", "runs":
[{"scale", "world_size", "ids", "rows", "stages": {stage: {"seconds", "peak_rss_bytes", ...}},
"train_vs_baseline"}], "exponents": {stage: {"time", "memory"}}, "exponents_by_world_size"}``;
an exponent is the slope of a least-squares line through ``(log scale, log value)`` over the
runs of one world size (``exponents``: world size 1). ``train_vs_baseline`` is the median
over the ``paired`` stage's block pairs (the first left out) of the learned-hash model's
samples/s over the baseline's in the same pair, with its quartiles
(``train_vs_baseline_quartiles``) and the ratio of the summed times
(``train_vs_baseline_total``): alternating blocks cancel the machine's drift, which two
stages timed one after the other do not.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.scale --json`` (defaults: scales 1/64, 1/16, 1/4,
1; world sizes 1, 2; world size 2 up to ``--max_scale_by_world_size '{"2": 0.25}'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from apps.dlrm.config import SHARDING_TYPES
from apps.dlrm.config_checks import check_choice, is_positive_number
from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.cli import (
    add_config_flags,
    check_int,
    check_unique,
    config_from_args,
    run_command,
)

STAGES = ("generate", "teacher", "build", "train", "paired", "eval", "checkpoint", "export")
ROWS_RULE = (
    "training rows = round(scale * rows_at_scale_1) in train_days equal day files, plus one "
    "day of that size for val (first half) and test (second half)"
)


@dataclass(kw_only=True)
class ScaleConfig:
    """What the benchmark runs."""

    scales: list[float] = field(default_factory=lambda: [1 / 64, 1 / 16, 1 / 4, 1.0])
    """Scale factors of the MLPerf heights (ids) and of the rows."""
    world_sizes: list[int] = field(default_factory=lambda: [1, 2])
    """Numbers of ranks (gloo processes) per stage."""
    max_scale_by_world_size: dict[str, float] = field(default_factory=lambda: {"2": 0.25})
    """Largest scale run at a world size (JSON object; absent: all scales)."""
    rows_at_scale_1: int = 10_000_000
    """Training rows at scale 1 (proportional below)."""
    train_days: int = 10
    """Training day files (one more holds val / test)."""
    batch_size: int = 4096
    """Per-rank batch size of every stage."""
    fraction: float = 0.1
    """Rows kept (see ``budget``)."""
    budget: str = field(default="total", metadata={"choices": ("total", "table")})
    """``total``: ``fraction`` of all rows, tables under ``min_table_rows`` full while cheap
    (at most ``fraction`` of the model); ``table``: ``fraction`` of each big table, the small
    ones full on top (10.05% of the rows at 10%)."""
    min_table_rows: int = 100_000
    """Smaller tables stay full (at scale ``s`` the threshold is ``s`` times this)."""
    teacher_dim: int = 4
    """The teacher's embedding dim."""
    embedding_dim: int = 16
    """The trained models' embedding dim."""
    learning_rate: float = 0.05
    """Adagrad learning rate of every stage."""
    sharding_types: list[str] = field(default_factory=lambda: ["table_wise"])
    """Sharding types the planner may use. NOTE: not row-wise by default: at the small
    scales tables of 1 row would leave a rank an empty shard, which FBGEMM's CPU row-wise
    Adagrad rejects."""
    paired_block: int = 50
    """Steps per block of the ``paired`` stage (each model runs one block in turn)."""
    limit_eval_batches: int | None = None
    """Batches of val and of test evaluated (None: all)."""
    threads: int = 1
    """Torch threads per process (``OMP_NUM_THREADS``)."""
    work_dir: str = "runs/scale"
    """Data and artifacts, one folder per scale and world size (reused data per scale)."""
    out_json: str | None = None
    """Also write the JSON here."""
    json: bool = False
    """Print the JSON on stdout."""

    def __post_init__(self) -> None:
        for name in ("scales", "world_sizes", "sharding_types"):
            check_unique(name, getattr(self, name))  # (a repeat ran, and reported, twice)
        if not self.scales or not all(is_positive_number(s) for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of values > 0, got {self.scales}")
        if not self.world_sizes:
            raise ValueError(f"world_sizes must be ints >= 1, got {self.world_sizes}")
        for w in self.world_sizes:
            check_int("world_sizes", w, low=1)
        for key, top in dict(self.max_scale_by_world_size).items():
            if not (str(key).isdigit() and int(key) >= 1 and is_positive_number(top)):
                raise ValueError(
                    'max_scale_by_world_size must map world sizes ("2") to scales > 0, got '
                    f"{key!r}: {top!r}"
                )
        for name in (
            "rows_at_scale_1", "train_days", "batch_size", "teacher_dim", "embedding_dim",
            "threads", "paired_block",
        ):  # fmt: skip
            check_int(name, getattr(self, name), low=1)
        check_int("min_table_rows", self.min_table_rows, low=0)
        if self.limit_eval_batches is not None:
            check_int("limit_eval_batches", self.limit_eval_batches, low=1)
        if not (is_positive_number(self.fraction) and self.fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not is_positive_number(self.learning_rate):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate}")
        if not self.sharding_types:  # (checked here, not by the train stage after the others)
            raise ValueError("sharding_types must name at least one type")
        for st in self.sharding_types:
            check_choice("sharding type", st, SHARDING_TYPES)

    def runs(self) -> list[tuple[float, int]]:
        """``(scale, world_size)`` pairs, world size outer, scales ascending."""
        out = []
        for w in self.world_sizes:
            top = self.max_scale_by_world_size.get(str(w), math.inf)
            out += [(s, w) for s in sorted(self.scales) if s <= top]
        return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(stage: str, spec: dict[str, Any], world_size: int, threads: int) -> dict[str, Any]:
    """Run ``stage`` on ``world_size`` fresh processes; rank 0's figures, with ``seconds``
    (the stage's work in its process, its imports of the apps included) and
    ``peak_rss_bytes`` the maxima over ranks, and ``process_seconds`` (start to exit of all
    ranks, the interpreter's start included).

    Raises:
        RuntimeError: a rank failed (the message has the tail of its log).
    """
    work = Path(spec["work_dir"])
    spec_path, out = work / f"{stage}.spec.json", work / f"{stage}.result.json"
    atomic_write_json(spec_path, spec)
    port, procs, tic = _free_port(), [], time.perf_counter()
    for rank in range(world_size):
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            GLOO_DEVICE_TRANSPORT="TCP",
        )
        log = open(work / f"{stage}.rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, "-m", "benchmarks._scale_stages", stage, str(spec_path), str(out)]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log))
    failed = []
    for rank, (p, log) in enumerate(procs):
        if p.wait() != 0:
            failed.append(rank)
        log.close()
    process_seconds = time.perf_counter() - tic
    if failed:
        tail = (work / f"{stage}.rank{failed[0]}.log").read_text()[-3000:]
        raise RuntimeError(f"stage {stage} failed on ranks {failed}:\n{tail}")
    results = [
        json.loads(Path(f"{out}.rank{r}" if r else out).read_text()) for r in range(world_size)
    ]
    return {
        **results[0],
        "seconds": max(r["seconds"] for r in results),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in results),
        "peak_rss_bytes_by_rank": [r["peak_rss_bytes"] for r in results],
        "process_seconds": process_seconds,
    }


def _spec(config: ScaleConfig, scale: float, world_size: int) -> dict[str, Any]:
    root = Path(config.work_dir).resolve()
    train_rows = round(scale * config.rows_at_scale_1)
    per_day = max(1, train_rows // config.train_days)
    work = root / f"s{scale:g}_w{world_size}"
    work.mkdir(parents=True, exist_ok=True)
    return {
        "scale": scale,
        "data_dir": str(root / f"data_s{scale:g}"),
        "work_dir": str(work),
        "days": config.train_days + 1,
        "rows_per_day": per_day,
        "batch_size": config.batch_size,
        "fraction": config.fraction,
        "budget": config.budget,
        "min_table_rows": max(1, round(config.min_table_rows * scale)),
        "teacher_dim": config.teacher_dim,
        "embedding_dim": config.embedding_dim,
        "learning_rate": config.learning_rate,
        "limit_eval_batches": config.limit_eval_batches,
        "paired_block": config.paired_block,
        "sharding_types": config.sharding_types,
        "seed": 0,
    }


def _run_one(config: ScaleConfig, scale: float, world_size: int, bar: tqdm) -> dict[str, Any]:
    spec = _spec(config, scale, world_size)
    stages: dict[str, Any] = {}
    have_data = (Path(spec["data_dir"]) / "criteo_npy.json").is_file()
    for stage in STAGES:
        bar.set_postfix_str(f"scale {scale:g}, {world_size} rank(s): {stage}")
        if stage == "generate" and have_data:
            bar.update(1)
            continue
        stages[stage] = run_stage(
            stage, spec, 1 if stage == "generate" else world_size, config.threads
        )
        bar.update(1)
    train, paired = stages["train"], stages["paired"]
    from torchrec_lhf.data.synthetic_criteo import SyntheticCriteoConfig

    ids = sum(SyntheticCriteoConfig(scale=scale).num_embeddings)
    return {
        "scale": scale,
        "world_size": world_size,
        "ids": ids,
        "rows": spec["rows_per_day"] * spec["days"],
        "train_rows": spec["rows_per_day"] * (spec["days"] - 1),
        "compressed_rows": train["rows"],
        "embedding_bytes": train["embedding_bytes"],
        "remap_bytes": train["remap_bytes"],
        "full_embedding_bytes": train["full_embedding_bytes"],
        "stages": stages,
        "train_samples_per_s": train["samples_per_s"],
        "paired_samples_per_s": paired["lhf_samples_per_s"],
        "baseline_samples_per_s": paired["baseline_samples_per_s"],
        "train_vs_baseline": paired["ratio_median"],
        "train_vs_baseline_quartiles": [paired["ratio_q1"], paired["ratio_q3"]],
        "train_vs_baseline_total": paired["ratio_total"],
    }


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ``log y`` on ``log x`` (None with fewer than 2 distinct x)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def exponents(runs: list[dict[str, Any]], world_size: int) -> dict[str, dict[str, float | None]]:
    """Per stage, the log-log slopes of seconds and peak RSS against the scale."""
    mine = [r for r in runs if r["world_size"] == world_size]
    out = {}
    for stage in STAGES:
        pts = [(r["scale"], r["stages"][stage]) for r in mine if stage in r["stages"]]
        xs = [s for s, _ in pts]
        out[stage] = {
            "time": loglog_slope(xs, [st["seconds"] for _, st in pts]),
            "memory": loglog_slope(xs, [st["peak_rss_bytes"] for _, st in pts]),
        }
    return out


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the runs: per stage seconds / peak RSS (GB), then the exponents."""
    head = (
        "| scale | ranks | ids | train rows | "
        + " | ".join(STAGES)
        + " | LHF / EBC samples/s, median (quartiles) |"
    )
    lines = [head, "|" + "---:|" * (len(STAGES) + 5)]
    for r in result["runs"]:
        q = r["train_vs_baseline_quartiles"]
        cells = [
            f"{r['stages'][s]['seconds']:.0f} s / {r['stages'][s]['peak_rss_bytes'] / 1e9:.2f}"
            if s in r["stages"]
            else "(shared)"
            for s in STAGES
        ]
        lines.append(
            f"| {r['scale']:g} | {r['world_size']} | {r['ids'] / 1e6:.1f}M | "
            f"{r['train_rows'] / 1e6:.2f}M | "
            + " | ".join(cells)
            + f" | {r['train_vs_baseline']:.3f} ({q[0]:.3f}-{q[1]:.3f}) |"
        )
    for w, exps in result.get("exponents_by_world_size", {}).items():
        cells = [
            "/".join("-" if v is None else f"{v:.2f}" for v in (e["time"], e["memory"]))
            for e in (exps[s] for s in STAGES)
        ]
        lines.append(f"| exponent | {w} | | | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def run(config: ScaleConfig) -> dict[str, Any]:
    """Run every ``(scale, world size)``; returns (and writes) the JSON object."""
    pairs = config.runs()
    result: dict[str, Any] = {"config": asdict(config), "rows_rule": ROWS_RULE, "runs": []}
    started = time.time()
    with tqdm(total=len(pairs) * len(STAGES), desc="scale benchmark", unit="stage") as bar:
        for scale, world_size in pairs:
            result["runs"].append(_run_one(config, scale, world_size, bar))
            result["exponents"] = exponents(result["runs"], min(config.world_sizes))
            result["exponents_by_world_size"] = {
                str(w): exponents(result["runs"], w) for w in config.world_sizes
            }
            result["seconds"] = time.time() - started
            atomic_write_json(Path(config.work_dir) / "scale.json", result)
            if config.out_json:
                atomic_write_json(config.out_json, result)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__.split("\n")[0]
    )
    add_config_flags(parser, ScaleConfig)
    config = config_from_args(ScaleConfig, parser.parse_args(argv))
    result = run(config)
    if config.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result))
    return result


if __name__ == "__main__":
    run_command(main)  # a bad flag value: a usage error, no traceback
