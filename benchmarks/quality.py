"""Quality sweep: every compression method at every size, AUC / logloss against model bytes.

Legend (of the results): ``fraction`` of the rows kept (``mlet``: of the width), ``bytes``
= fp32 tables as saved (MLET collapsed) + the materialized id -> row remap.

Each run is the DLRM app (``apps.dlrm.train.main``) in this process with the same model,
optimizer, epochs and seed; only the embedding tables differ. Methods:

* ``none`` (the full model, fraction 1.0), ``modulo``, ``qr``, ``fbdh``, ``memrec``, ``mlet``
  and ``mch`` (TorchRec's managed collisions; not among the defaults) (``--compression``);
* ``lhf`` and its ablations: a teacher per seed and teacher dim (``apps.teacher.main``), a
  plan per fraction (``apps.build_hash.main``), then training with ``--learned_hash``.
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
  ``lhf-rarehash`` (``apps.build_hash --rare_count``): ids the teacher saw fewer than
  ``--rare_count`` times are left out of the clustering and hashed ``id mod M`` into the
  same rows (same bytes). The teacher memorizes the labels of rare ids, so clustering them
  by teacher value makes compressed rows that memorize labels (see docs/RESULTS.md);
  hashing them breaks that.

Resumable: each run writes ``runs/<method>_f<fraction>_s<seed>.json`` under ``--out`` and
is skipped when that file exists (teachers and plans likewise). Outputs under ``--out``:
``results.json`` (a list of ``{"method", "fraction", "seed", "auc", "logloss", "bytes",
...}``), ``results.md`` (mean +- std over seeds) and ``results.png`` (AUC against bytes, a
line per method, like Figure 3 of Ghaemmaghami et al. 2022).

Run::

    python -m benchmarks.quality --dataset movielens-100k --out docs/results/movielens
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from apps import build_hash, teacher
from apps.dlrm import train
from torchrec_lhf._io import atomic_write, atomic_write_json
from torchrec_lhf.compression.budget import BUDGETS
from torchrec_lhf.report import plot_auc_vs_bytes

logger = logging.getLogger(__name__)

BASELINES = ("none", "modulo", "qr", "fbdh", "memrec", "mlet")
LHF_VARIANTS: dict[str, dict[str, Any]] = {
    "lhf": {},
    "lhf-nofilter": {"method_options": {"filters": ["distance", "size"]}},
    "lhf-noweight": {"method_options": {"weighted_values": False}},
    "lhf-nofreq": {"method_options": {"filters": ["distance", "size"], "weighted_values": False}},
    "lhf-h2": {"num_hashes": 2},
    "lhf-dim0": {"projection": "dim:0"},
    "lhf-t2": {"teacher_dim": 2},
    "lhf-skip": {"skip": True},
    "lhf-rarehash": {"rare_hash": True},
    "lhf-mlet": {"mlet": True},
    "lhf-t16": {"teacher_dim": "model"},
    "lhf-init": {"teacher_dim": "model", "init": True},
}
"""Learned-hash variants: build options that differ from the paper's ``lhf``."""
METHODS = (*BASELINES, *LHF_VARIANTS, "mch")
DEFAULT_METHODS = (*BASELINES, "mch", "lhf")
DEFAULT_FRACTIONS = (0.5, 0.2, 0.1, 0.05, 0.01)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sweep's flags; raises ValueError naming a bad method or fraction."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list of {METHODS}")
    p.add_argument("--fractions", default=",".join(map(str, DEFAULT_FRACTIONS)))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--dataset", default="movielens-100k", help="as in apps.dlrm.train")
    p.add_argument("--dataset_options", type=json.loads, default={}, help="JSON object")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--report", action="store_true", help="only rewrite the reports from --out/results.json"
    )
    p.add_argument("--embedding_dim", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--learning_rate", type=float, default=0.05)
    p.add_argument("--min_table_rows", type=int, default=0, help="smaller tables stay full")
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="table",
        help="--fractions of each table (the paper) or of all rows, small tables full while "
        "cheap (every row-compressing method; mlet shrinks width and ignores it)",
    )
    p.add_argument("--skip_rows", type=int, default=1000, help="lhf-skip: smaller tables stay full")
    p.add_argument("--rare_count", type=int, default=5, help="lhf-rarehash: rare = fewer hits")
    p.add_argument(
        "--teacher_dim",
        type=int,
        default=4,
        help="teacher dim of lhf (lhf-t2: 2; dims not divisible by 4 train data_parallel)",
    )
    p.add_argument("--teacher_epochs", type=int, default=1)
    p.add_argument(
        "--train_flags", type=json.loads, default=[], help="JSON list of extra app flags"
    )
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise ValueError(f"--methods must name some of {list(METHODS)}, got {args.methods}")
    args.fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    if not args.fractions or any(not 0 < f <= 1 for f in args.fractions):
        raise ValueError(f"--fractions must be in (0, 1], got {args.fractions}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    return args


def _common(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        "--dataset", args.dataset, "--dataset_options", json.dumps(args.dataset_options),
        "--batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--seed", str(seed), "--log_every", "100000", *args.train_flags,
    ]  # fmt: skip


def _teacher(args: argparse.Namespace, seed: int, dim: int) -> Path:
    """Train (once) the teacher of ``seed`` at ``dim``; returns its artifact directory."""
    out = args.out / "teachers" / f"d{dim}_s{seed}"
    done = out.with_suffix(".metrics.json")
    if not done.is_file():
        teacher.main([
            *_common(args, seed), "--embedding_dim", str(dim), "--epochs", str(args.teacher_epochs),
            "--dense_arch_layer_sizes", f"64,{dim}", "--out", str(out), "--metrics_json", str(done),
        ])  # fmt: skip
    return out


def _teacher_dim(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    dim = opts.get("teacher_dim", args.teacher_dim)
    return args.embedding_dim if dim == "model" else dim


def _plan(args: argparse.Namespace, variant: str, fraction: float, seed: int) -> Path:
    """Build (once) the learned plan of ``variant`` at ``fraction``; returns its path."""
    opts = LHF_VARIANTS[variant]
    path = args.out / "plans" / f"{variant}_f{fraction:g}_s{seed}.safetensors"
    if not path.is_file():
        src = _teacher(args, seed, _teacher_dim(args, opts))
        min_rows = max(1, args.min_table_rows, args.skip_rows if opts.get("skip") else 0)
        build_hash.main([
            "--teacher", str(src), "--fraction", str(fraction), "--min_table_rows", str(min_rows),
            "--num_hashes", str(opts.get("num_hashes", 1)),
            "--projection", opts.get("projection", "pca"),
            "--method_options", json.dumps(opts.get("method_options", {})),
            "--budget", args.budget,
            "--rare_count", str(args.rare_count if opts.get("rare_hash") else 0),
            "--out", str(path), "--restart",
        ])  # fmt: skip
    return path


def run_one(args: argparse.Namespace, method: str, fraction: float, seed: int) -> dict[str, Any]:
    """One training run (or its saved result); returns its results row."""
    path = args.out / "runs" / f"{method}_f{fraction:g}_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    flags = [*_common(args, seed), "--embedding_dim", str(args.embedding_dim)]
    flags += ["--epochs", str(args.epochs)]
    if method in LHF_VARIANTS and LHF_VARIANTS[method].get("mlet"):
        # both ways at once: sqrt(fraction) of the rows, sqrt(fraction) of the width
        side = fraction**0.5
        flags += ["--learned_hash", str(_plan(args, method, round(side, 6), seed))]
        flags += ["--mlet_fraction", str(side)]
        flags += ["--dense_arch_layer_sizes", f"64,{max(1, round(side * args.embedding_dim))}"]
    elif method in LHF_VARIANTS:  # the plan skips small tables itself
        flags += ["--learned_hash", str(_plan(args, method, fraction, seed))]
        if LHF_VARIANTS[method].get("init"):
            dim = _teacher_dim(args, LHF_VARIANTS[method])
            flags += ["--init_from", str(_teacher(args, seed, dim))]
    elif method != "none":
        flags += ["--compression", method, "--fraction", str(fraction)]
        flags += ["--min_table_rows", str(args.min_table_rows)]
        if method != "mlet":
            flags += ["--budget", args.budget]
    if method == "mlet":
        flags += ["--dense_arch_layer_sizes", f"64,{max(1, round(fraction * args.embedding_dim))}"]
    start = time.perf_counter()
    m = train.main(flags)
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
