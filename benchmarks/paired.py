"""Paired differences from a baseline method: a markdown table from finished runs.

Reads the quality sweep's ``results.json`` (a list of runs, :mod:`benchmarks.quality`) or
reports of :mod:`benchmarks.rare_ids` (one JSON per seed), pairs every method's runs with
the baseline's runs of the same seed and size (a baseline of one size, such as the full
model ``none``, pairs with every size), and prints per method and size the seeds paired,
the mean test AUC and the mean differences of AUC, logloss and NE (normalized entropy,
where the runs record it) from the baseline ± their standard errors. Runs with test AUC
below :data:`~benchmarks.quality_report.COLLAPSED_AUC` are left out and counted::

    python -m benchmarks.paired --baseline lhf-headtail docs/results/leakfree-movielens/results.json
    python -m benchmarks.paired --baseline lhf docs/results/rare-ids-bytes/leakfree_f0.01_s*.json
    python -m benchmarks.paired --baseline none docs/results/movielens-bytes/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.quality_report import COLLAPSED_AUC
from torchrec_lhf.cli import FlagError, check_input_path, run_command


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Runs ``{"method", "fraction", "seed", "auc", "logloss"}`` from sweep results or
    rare-ids reports; infeasible methods (no ``auc``) are dropped.

    Raises:
        ValueError: a file that is not JSON, or neither, or a run without the fields above,
            naming the file (and the run).
    """
    runs: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not JSON ({e}); expected a sweep's results.json") from None
        if isinstance(data, list):
            if not all(isinstance(r, dict) for r in data):
                raise ValueError(f"{path}: a run that is not a JSON object; expected runs")
            found = [r for r in data if "auc" in r]
        elif isinstance(data, dict) and data.get("benchmark") == "rare_ids":
            cfg = data.get("config", {})
            found = [
                {"method": m, "fraction": cfg.get("fraction"), "seed": cfg.get("seed"), **r}
                for m, r in dict(data.get("results", {})).items()
                if isinstance(r, dict) and "auc" in r
            ]
        else:
            raise ValueError(f"{path}: neither a sweep's results.json nor a rare_ids report")
        for i, run in enumerate(found):
            missing = [k for k in RUN_FIELDS if run.get(k) is None]
            if missing:
                raise ValueError(f"{path}: run {i} ({run.get('method')!r}) has no {missing}")
        runs += found
    return runs


RUN_FIELDS = ("method", "fraction", "seed", "auc")
"""What a run needs to be paired (``logloss`` and ``ne`` are paired where both have them)."""


def paired_table(runs: list[dict[str, Any]], baseline: str) -> str:
    """The markdown table (module docstring); sizes largest first, methods by name.

    Args:
        runs: as :func:`load_runs` gives them.
        baseline: the method every run is paired with, seed by seed: its run of the same
            size, or, where it was run at one size only (the full model), that one.

    Raises:
        ValueError: no run of ``baseline``.
    """
    by: dict[tuple[str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        seeds = by[(r["method"], r["fraction"])]
        if r["seed"] in seeds:  # (the same file twice, or two runs of one seed: one was lost)
            raise ValueError(
                f"two runs of {r['method']!r} at size {r['fraction']:g} with seed {r['seed']}"
                "; expected one run per method, size and seed"
            )
        seeds[r["seed"]] = r
    if not any(m == baseline for m, _ in by):
        raise ValueError(
            f"no runs of the baseline {baseline!r}; methods: {sorted({m for m, _ in by})}"
        )
    base_sizes = [size for m, size in by if m == baseline]
    only = by[(baseline, base_sizes[0])] if len(base_sizes) == 1 else {}
    lines = [
        f"| method | size | seeds | test AUC | AUC - `{baseline}` | logloss - `{baseline}` "
        f"| NE - `{baseline}` | collapsed |",
        "|---|---:|---:|---:|---|---|---|---:|",
    ]
    for (method, size), seeds in sorted(by.items(), key=lambda x: (-x[0][1], x[0][0])):
        ok = {s: r for s, r in seeds.items() if r["auc"] >= COLLAPSED_AUC}
        ref_runs = by.get((baseline, size), only)
        ref = {s: r for s, r in ref_runs.items() if r["auc"] >= COLLAPSED_AUC}
        pairs = sorted(s for s in ok if s in ref)
        mean = statistics.fmean(r["auc"] for r in ok.values()) if ok else float("nan")
        cells = [
            _diff([ok[s][k] - ref[s][k] for s in pairs if k in ok[s] and k in ref[s]])
            for k in ("auc", "logloss", "ne")
        ]
        if method == baseline:
            cells = ["-", "-", "-"]
        lines.append(
            f"| `{method}` | {size:g} | {len(pairs)} | {mean:.4f} | {' | '.join(cells)} "
            f"| {len(seeds) - len(ok)} |"
        )
    return "\n".join(lines)


def _diff(deltas: list[float]) -> str:
    if len(deltas) < 2:
        return "-" if not deltas else f"{deltas[0]:+.4f}"
    se = statistics.stdev(deltas) / len(deltas) ** 0.5
    return f"{statistics.fmean(deltas):+.4f} ± {se:.4f}"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__)
    p.add_argument("--baseline", required=True, help="the method every other is paired with")
    p.add_argument("paths", nargs="+", type=Path, help="results.json or rare_ids reports")
    args = p.parse_args(argv)
    for path in args.paths:
        check_input_path("PATH", path, expected="a sweep's results.json or a rare_ids report")
    try:
        table = paired_table(load_runs(args.paths), args.baseline)
    except ValueError as e:
        raise FlagError(str(e)) from None
    print(table)  # noqa: T201
    return table


if __name__ == "__main__":
    run_command(main)
