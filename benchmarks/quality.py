"""Quality sweep: every compression method at every size, AUC / logloss against model bytes.

Legend (of the results): ``fraction`` of the rows kept (``mlet``: of the width), ``bytes``
= fp32 tables as saved (MLET collapsed) + the materialized id -> row remap.

Each run is the DLRM app (``apps.dlrm.train.run``, given a typed config) in this process with the same model,
optimizer, epochs and seed; only the embedding tables differ. Methods:

* ``none`` (the full model, fraction 1.0), ``modulo``, ``qr``, ``fbdh``, ``memrec``, ``mlet``
  and ``mch`` (TorchRec's managed collisions; not among the defaults) (``--compression``);
* ``lhf`` and its ablations: a teacher per seed and teacher dim (``apps.teacher.run``), a
  plan per fraction (``apps.build_hash.run``), then training with ``--learned_hash``.
  Variants (see :data:`LHF_VARIANTS`): ``lhf`` (the paper: frequency for filtering and
  weighting, one table, teacher dim ``--teacher_dim``, PCA), ``lhf-nofilter`` (no frequency
  filter), ``lhf-noweight`` (plain means), ``lhf-nofreq`` (neither), ``lhf-h2`` (two
  internal tables, summed), ``lhf-dim0`` (projection ``dim:0``), ``lhf-t2`` (teacher dim 2,
  its tables data_parallel: FBGEMM's fused tables need widths divisible by 4),
  ``lhf-skip`` (tables under ``--skip_rows`` ids stay full); and changes of ours:
  ``lhf-mlet`` (the learned plan at ``sqrt(fraction)`` of the rows, trained as MLET at
  ``sqrt(fraction)`` of the width, so about ``fraction`` of the bytes), ``lhf-t16`` (a
  teacher at the model's dim, ``--embedding_dim``), ``lhf-init`` (that teacher, and the
  compressed tables start at its cluster centroids: ``--init_from``), and
  ``lhf-rarehash`` (``apps.build_hash --head_min_count``): ids the teacher saw fewer than
  ``--head_min_count`` times are left out of the clustering and hashed into the
  same rows (same bytes). The teacher memorizes the labels of rare ids, so clustering them
  by teacher value makes compressed rows that memorize labels (see docs/RESULTS.md);
  hashing them breaks that. ``lhf-headtail``: the build's defaults (that head, the tail
  hashed into a region of its own).

Resumable: a run writes ``runs/<method>_f<fraction>_s<seed>.json`` under ``--out`` and is
skipped when it exists (teachers and plans likewise). Outputs under ``--out``:
``results.json`` (a list of ``{"method", "fraction", "seed", "auc", "logloss", "bytes",
...}``), ``results.md`` (mean +- std over seeds) and ``results.png`` (AUC against bytes, a
line per method, like Figure 3 of Ghaemmaghami et al. 2022).

Run: ``python -m benchmarks.quality --dataset movielens-100k --out docs/results/movielens``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps import build_hash, teacher
from apps.dlrm import train
from apps.dlrm.config import TrainConfig
from torchrec_lhf._io import atomic_write, atomic_write_json
from torchrec_lhf.cli import add_config_flags, config_from_args
from torchrec_lhf.compression.budget import BUDGETS, MIN_TABLE_ROWS
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.report import plot_auc_vs_bytes

logger = logging.getLogger(__name__)

BASELINES = ("none", "modulo", "qr", "fbdh", "memrec", "mlet")
LHF_VARIANTS: dict[str, dict[str, Any]] = {
    "lhf": {},
    "lhf-nofilter": {"clustering_options": {"filters": ["distance", "size"]}},
    "lhf-noweight": {"clustering_options": {"weighted_values": False}},
    "lhf-nofreq": {
        "clustering_options": {"filters": ["distance", "size"], "weighted_values": False}
    },
    "lhf-h2": {"num_hashes": 2},
    "lhf-dim0": {"projection": "dim:0"},
    "lhf-t2": {"teacher_dim": 2},
    "lhf-skip": {"skip": True},
    "lhf-rarehash": {"rare_hash": True, "tail_fraction": 0.0},
    "lhf-headtail": {"rare_hash": True},
    "lhf-mlet": {"mlet": True},
    "lhf-t16": {"teacher_dim": "model"},
    "lhf-init": {"teacher_dim": "model", "init": True},
}
"""Learned-hash variants: build options that differ from the paper's ``lhf``."""
METHODS = (*BASELINES, *LHF_VARIANTS, "mch")
DEFAULT_METHODS, DEFAULT_FRACTIONS = (*BASELINES, "mch", "lhf"), (0.5, 0.2, 0.1, 0.05, 0.01)


@dataclass(kw_only=True)
class SweepConfig:
    """The quality sweep: which compression methods, sizes and seeds, on what data."""

    out: Path
    """Output directory (runs, teachers, plans and the three reports)."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Compression methods to run (comma list); see the module docstring."""
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    """Fractions of the rows kept (``mlet``: of the width), each in (0, 1]."""
    seeds: int = 3
    """Seeds ``0..seeds-1`` of every run."""
    report: bool = False
    """Only rewrite the reports from ``out/results.json``."""
    dataset: str = TrainConfig.dataset
    """A ``torchrec_lhf.data`` spec, as in ``apps.dlrm.train``."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Loader options (JSON object)."""
    embedding_dim: int = TrainConfig.embedding_dim
    """Embedding dim of the trained models."""
    epochs: int = TrainConfig.epochs
    """Epochs of each trained model."""
    batch_size: int = 1024
    """Per-rank batch size (larger than the app's: the sweep runs many models)."""
    learning_rate: float = 0.05
    """Learning rate of the dense and table optimizers."""
    min_table_rows: int = MIN_TABLE_ROWS
    """Smaller tables stay full (every row-dropping method and the learned plans)."""
    budget: str = field(default="table", metadata={"choices": BUDGETS})
    """``fractions`` of each table (the paper) or of all rows, small tables full while cheap
    (every row-compressing method; mlet shrinks width and ignores it)."""
    skip_rows: int = 1000
    """``lhf-skip``: tables under this many ids stay full."""
    head_min_count: int = BuildConfig.head_min_count
    """``lhf-rarehash``, ``lhf-headtail``: ids the teacher saw fewer times are hashed."""
    teacher_dim: int = teacher.TEACHER_DEFAULTS["embedding_dim"]
    """Teacher dim of ``lhf`` (``lhf-t2``: 2; dims not divisible by 4 train data_parallel)."""
    teacher_epochs: int = 1
    """Epochs of each teacher."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """More :class:`~apps.dlrm.config.TrainConfig` fields for every run (JSON object),
    e.g. ``{"interaction_type": "dcn"}``."""

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must name some of {list(METHODS)}, got {self.methods}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        unknown = set(self.train_options) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"train_options names no TrainConfig field: {sorted(unknown)}")
        self.out = Path(self.out)


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    """The sweep's flags (derived from :class:`SweepConfig`); raises ValueError naming a
    bad method or fraction."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    add_config_flags(p, SweepConfig)
    return config_from_args(SweepConfig, p.parse_args(argv))


def _base(sweep: SweepConfig, seed: int) -> TrainConfig:
    """The training settings every run of ``seed`` shares (teachers included)."""
    return TrainConfig(
        dataset=sweep.dataset,
        dataset_options=sweep.dataset_options,
        batch_size=sweep.batch_size,
        learning_rate=sweep.learning_rate,
        seed=seed,
        log_every=100_000,
        embedding_dim=sweep.embedding_dim,
        epochs=sweep.epochs,
        **sweep.train_options,
    )


def _teacher(sweep: SweepConfig, seed: int, dim: int) -> Path:
    """Train (once) the teacher of ``seed`` at ``dim``; returns its artifact directory."""
    out = sweep.out / "teachers" / f"d{dim}_s{seed}"
    done = out.with_suffix(".metrics.json")
    if not done.is_file():
        base = _base(sweep, seed)
        train_config = dataclasses.replace(
            base,
            embedding_dim=dim,
            epochs=sweep.teacher_epochs,
            dense_arch_layer_sizes=None,  # re-derived for the teacher's dim
            sharding_types=teacher.teacher_sharding_types(dim) or base.sharding_types,
            metrics_json=str(done),
        )
        teacher.run(teacher.TeacherConfig(train=train_config, out=str(out)))
    return out


def _teacher_dim(sweep: SweepConfig, opts: dict[str, Any]) -> int:
    dim = opts.get("teacher_dim", sweep.teacher_dim)
    return sweep.embedding_dim if dim == "model" else dim


def _plan(sweep: SweepConfig, variant: str, fraction: float, seed: int) -> Path:
    """Build (once) the learned plan of ``variant`` at ``fraction``; returns its path."""
    opts = LHF_VARIANTS[variant]
    path = sweep.out / "plans" / f"{variant}_f{fraction:g}_s{seed}.safetensors"
    if not path.is_file():
        src = _teacher(sweep, seed, _teacher_dim(sweep, opts))
        build_hash.run(
            BuildConfig(
                teacher=str(src),
                fraction=fraction,
                min_table_rows=max(
                    sweep.min_table_rows, sweep.skip_rows if opts.get("skip") else 0
                ),
                num_hashes=opts.get("num_hashes", BuildConfig.num_hashes),
                projection=opts.get("projection", BuildConfig.projection),
                clustering_options=opts.get("clustering_options", {}),
                budget=sweep.budget,
                head_min_count=sweep.head_min_count if opts.get("rare_hash") else 0,
                tail_fraction=opts.get("tail_fraction", BuildConfig.tail_fraction),
                out=path,
                restart=True,
            )
        )
    return path


def run_config(sweep: SweepConfig, method: str, fraction: float, seed: int) -> TrainConfig:
    """The typed config of one training run."""
    base = _base(sweep, seed)
    if method in LHF_VARIANTS and LHF_VARIANTS[method].get("mlet"):
        # both ways at once: sqrt(fraction) of the rows, sqrt(fraction) of the width
        side = fraction**0.5
        return dataclasses.replace(
            base,
            learned_hash=str(_plan(sweep, method, round(side, 6), seed)),
            mlet_fraction=side,
            dense_arch_layer_sizes=None,
        )
    if method in LHF_VARIANTS:  # the plan skips small tables itself
        extra: dict[str, Any] = {"learned_hash": str(_plan(sweep, method, fraction, seed))}
        if LHF_VARIANTS[method].get("init"):
            dim = _teacher_dim(sweep, LHF_VARIANTS[method])
            extra["init_from"] = str(_teacher(sweep, seed, dim))
        return dataclasses.replace(base, **extra)
    if method == "none":
        return base
    # mlet: the dense arch is re-derived for the narrower dim; it shrinks width, not rows
    extra = {"dense_arch_layer_sizes": None} if method == "mlet" else {"budget": sweep.budget}
    return dataclasses.replace(
        base, compression=method, fraction=fraction, min_table_rows=sweep.min_table_rows, **extra
    )


def run_one(sweep: SweepConfig, method: str, fraction: float, seed: int) -> dict[str, Any]:
    """One training run (or its saved result); returns its results row."""
    path = sweep.out / "runs" / f"{method}_f{fraction:g}_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    m = train.run(run_config(sweep, method, fraction, seed))
    row = {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "auc": m["auc"],
        "logloss": m["logloss"],
        "bytes": m["embedding_bytes"] + m["remap_bytes"],
        "embedding_bytes": m["embedding_bytes"],
        "remap_bytes": m["remap_bytes"],
        "remap_computable": m["remap_computable"],
        "full_embedding_bytes": m["full_embedding_bytes"],
        "rows": m["rows"],
        "full_rows": m["full_rows"],
        "val_auc": m["val_auc"],
        "dataset": m["dataset"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(path, row)
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std (over seeds) per method and fraction, sorted by method then size.

    ``delta_auc`` is the mean, over the seeds the full model (``none``) also ran, of the AUC
    minus the full model's AUC of the same seed, and ``delta_auc_se`` its standard error:
    paired by seed, it resolves smaller differences than the two means' stds.
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["fraction"])].append(r)
    full_by_seed = {r["seed"]: r["auc"] for r in rows if r["method"] == "none"}
    out = []
    for (method, fraction), rs in groups.items():
        auc = [r["auc"] for r in rs]
        ll = [r["logloss"] for r in rs]
        # AUC minus the full model's of the same seed (same data order and initial MLPs)
        deltas = [r["auc"] - full_by_seed[r["seed"]] for r in rs if r["seed"] in full_by_seed]
        out.append({
            "method": method, "fraction": fraction, "seeds": len(rs),
            "auc": statistics.fmean(auc), "auc_std": statistics.stdev(auc) if len(rs) > 1 else 0.0,
            "logloss": statistics.fmean(ll),
            "logloss_std": statistics.stdev(ll) if len(rs) > 1 else 0.0,
            "bytes": round(statistics.fmean(r["bytes"] for r in rs)),
            "remap_bytes": round(statistics.fmean(r["remap_bytes"] for r in rs)),
            "remap_computable": rs[0]["remap_computable"],
            "delta_auc": statistics.fmean(deltas) if deltas else None,
            "delta_auc_se": statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else None,
        })  # fmt: skip
    return sorted(out, key=lambda s: (s["method"] != "none", s["method"], -s["fraction"]))


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table (bytes include the remap; ``*``: computable remap)."""
    lines = [
        "| method | fraction | seeds | test AUC | test logloss | bytes (tables + remap) "
        "| AUC - full (paired) |",
        "|---|---:|---:|---|---|---:|---|",
    ]
    for s in summary:
        star = "*" if s["remap_computable"] else ""
        delta = ""
        if s.get("delta_auc") is not None and s["method"] != "none":
            se = s.get("delta_auc_se")
            delta = f"{s['delta_auc']:+.4f}" + ("" if se is None else f" ± {se:.4f}")
        lines.append(
            f"| {s['method']} | {s['fraction']:g} | {s['seeds']} | {s['auc']:.4f} ± "
            f"{s['auc_std']:.4f} | {s['logloss']:.4f} ± {s['logloss_std']:.4f} | "
            f"{s['bytes']:,} ({s['remap_bytes']:,}{star}) | {delta} |"
        )
    lines.append(
        "\nBytes: fp32 tables as saved (MLET collapsed) + the materialized id -> row remap "
        "(in parentheses; `*`: computable from the id, so a deployment may drop it). "
        "AUC - full: mean over seeds of the AUC minus the full model's of the same seed, "
        "± its standard error."
    )
    return "\n".join(lines) + "\n"


def pivot_markdown(summary: list[dict[str, Any]]) -> str:
    """Test AUC (mean over seeds) as a method x fraction table; bold: the best compressed
    method of each fraction (``none`` is the full model at every size)."""
    fractions = sorted({s["fraction"] for s in summary if s["method"] != "none"}, reverse=True)
    cell = {(s["method"], s["fraction"]): s["auc"] for s in summary}
    best = {
        f: max((a for (m, g), a in cell.items() if g == f and m != "none"), default=None)
        for f in fractions
    }
    if not fractions:  # the full model alone
        return f"| method | AUC |\n|---|---:|\n| none (full) | {cell[('none', 1.0)]:.4f} |\n"
    lines = [
        "| method | " + " | ".join(f"{f:g}" for f in fractions) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    for method in dict.fromkeys(s["method"] for s in summary):
        if method == "none":
            lines.append(
                f"| none (full) | {cell[('none', 1.0)]:.4f} (all sizes) |"
                + " |" * (len(fractions) - 1)
            )
            continue
        row = []
        for f in fractions:
            a = cell.get((method, f))
            row.append("" if a is None else f"**{a:.4f}**" if a == best[f] else f"{a:.4f}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write ``results.json``, ``results.md`` and ``results.png`` of ``rows`` under ``out``;
    returns the summary."""
    atomic_write_json(out / "results.json", rows)
    summary = summarize(rows)
    with atomic_write(out / "results.md", "w") as f:
        f.write(markdown(summary))
        f.write("\nTest AUC, mean over seeds (bold: the best compressed method per fraction):\n\n")
        f.write(pivot_markdown(summary))
    plot_auc_vs_bytes(summary, out / "results.png", f"{rows[0]['dataset']}: test AUC against size")
    return summary


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the sweep and write the three outputs; returns the results rows.

    With ``--report`` only the reports are rewritten from ``--out``'s ``results.json``.
    """
    args = parse_args(argv)
    if args.report:
        path = args.out / "results.json"
        if not path.is_file():
            raise ValueError(f"--report: {path} does not exist; run the sweep first")
        rows = json.loads(path.read_text())
        write_reports(args.out, rows)
        return rows
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(args.seeds):
        for method in args.methods:
            for fraction in [1.0] if method == "none" else args.fractions:
                row = run_one(args, method, fraction, seed)
                logger.info("%s f=%g seed %d: auc %.4f", method, fraction, seed, row["auc"])
                rows.append(row)
    summary = write_reports(args.out, rows)
    print(json.dumps({"out": str(args.out), "runs": len(rows), "summary": summary}, indent=1))  # noqa: T201
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
