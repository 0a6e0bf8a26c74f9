"""The quality sweep's reports: paired statistics, markdown tables and the plot.

Rows are the sweep's results (``benchmarks.quality``): one per run, with ``method``,
``fraction`` (of the rows, or of the full fp32 table bytes under ``budget="bytes"``),
``seed``, ``auc``, ``logloss``, ``ne`` and the bytes the model stores; or, for a method that
cannot fit a byte budget, ``infeasible`` (the reason) instead of metrics.

Statistics (see :func:`summarize`): per method and size the mean and std over seeds, and
the difference from the full model (``none``) paired by seed (same data order and initial
MLPs) with its standard error. Runs whose test AUC is below :data:`COLLAPSED_AUC` are
*collapsed* (training failed, e.g. rare ids hashed on held-out data): they are listed
apart with their count and never averaged in.

Example::

    >>> rows = [{"method": "none", "fraction": 1.0, "seed": s, "auc": 0.8, "logloss": 0.5}
    ...         for s in range(2)]
    >>> rows += [{"method": "qr", "fraction": 0.1, "seed": s, "auc": a, "logloss": 0.6}
    ...          for s, a in enumerate([0.78, 0.52])]
    >>> summary, collapsed, infeasible = summarize(rows)
    >>> summary[1]["seeds"], summary[1]["delta_auc"], [r["seed"] for r in collapsed]
    (1, -0.020000000000000018, [1])
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from torchrec_lhf._io import atomic_write, atomic_write_json
from torchrec_lhf.report import plot_auc_vs_bytes

COLLAPSED_AUC = 0.55
"""Runs below this test AUC are collapsed: reported apart, not averaged."""
METRICS = ("auc", "logloss", "ne")
"""Per-run metrics summarized and paired against the full model (``ne``: normalized
entropy, when the runs have it)."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _paired(values: dict[int, float], full: dict[int, float]) -> tuple[float | None, float | None]:
    """Mean and standard error of ``value - full`` over the seeds both have."""
    deltas = [v - full[s] for s, v in values.items() if s in full]
    if not deltas:
        return None, None
    se = statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else None
    return statistics.fmean(deltas), se


def summarize(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per method and size: means, stds and paired differences from the full model.

    Args:
        rows: the sweep's results rows.

    Returns:
        ``(summary, collapsed, infeasible)``: one dict per method and size (sorted: the
        full model first, then by method and decreasing size) with ``seeds``, ``auc``,
        ``auc_std``, ``logloss``, ``logloss_std``, ``ne``, ``ne_std`` (None without NE),
        ``delta_<metric>`` and ``delta_<metric>_se`` (paired by seed with the full model's
        non-collapsed runs), ``bytes`` (mean stored bytes), ``index_bytes``,
        ``row_fraction``, ``bytes_fraction`` and ``collapsed`` (their count); the collapsed
        runs; the runs that could not fit their budget.
    """
    check_rows(rows)
    infeasible = [r for r in rows if r.get("infeasible")]
    done = [r for r in rows if not r.get("infeasible")]
    collapsed = [r for r in done if r["auc"] < COLLAPSED_AUC]
    kept = [r for r in done if r["auc"] >= COLLAPSED_AUC]
    full = {
        m: {r["seed"]: r[m] for r in kept if r["method"] == "none" and r.get(m) is not None}
        for m in METRICS
    }
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in kept:
        groups[(r["method"], r["fraction"])].append(r)
    num_collapsed: dict[tuple[str, float], int] = defaultdict(int)
    for r in collapsed:
        num_collapsed[(r["method"], r["fraction"])] += 1
    out = []
    for (method, fraction), rs in groups.items():
        s: dict[str, Any] = {"method": method, "fraction": fraction, "seeds": len(rs)}
        for m in METRICS:
            values = {r["seed"]: r[m] for r in rs if r.get(m) is not None}
            mean, std = _mean_std(list(values.values())) if values else (None, None)
            delta, se = _paired(values, full[m])
            s.update({m: mean, f"{m}_std": std, f"delta_{m}": delta, f"delta_{m}_se": se})
        s.update(
            bytes=round(statistics.fmean(_stored(r) for r in rs)),
            index_bytes=round(statistics.fmean(r.get("index_bytes", r.get("remap_bytes", 0)) for r in rs)),
            remap_computable=rs[0].get("remap_computable"),
            row_fraction=_mean_of(rs, "row_fraction"),
            bytes_fraction=_mean_of(rs, "bytes_fraction"),
            collapsed=num_collapsed.get((method, fraction), 0),
        )  # fmt: skip
        out.append(s)
    for key, n in num_collapsed.items():  # every run of a size collapsed: a row still says so
        if key not in groups:
            out.append({"method": key[0], "fraction": key[1], "seeds": 0, "collapsed": n})
    out.sort(key=lambda s: (s["method"] != "none", s["method"], -s["fraction"]))
    return out, collapsed, infeasible


def check_rows(rows: Any, source: str = "the runs") -> None:
    """Check that ``rows`` are sweep runs, one per method, size and seed.

    Each summary pairs and averages a method's runs by seed, so a second run of one seed (a
    results.json merged from two sweeps, a run pasted twice) would count twice in the seeds
    and once in the means.

    Raises:
        ValueError: not a list of objects, a run without ``method``, ``fraction`` and
            ``seed`` (and ``auc`` unless ``infeasible``), or two runs of one method, size and
            seed, naming ``source`` and the run.
    """
    if not isinstance(rows, list):
        raise ValueError(f"{source}: expected a list of runs, got {type(rows).__name__}")
    seen: dict[tuple[Any, Any, Any], int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: run {i} is {row!r}; expected a JSON object")
        needed = ("method", "fraction", "seed") + (() if row.get("infeasible") else ("auc",))
        missing = [k for k in needed if row.get(k) is None]
        if missing:
            raise ValueError(f"{source}: run {i} ({row.get('method')!r}) has no {missing}")
        key = (row["method"], row["fraction"], row["seed"])
        if not (
            isinstance(key[0], str)
            and isinstance(key[1], int | float)
            and isinstance(key[2], int)
            and not isinstance(key[1], bool)
            and not isinstance(key[2], bool)
        ):
            raise ValueError(
                f"{source}: run {i} has method {key[0]!r}, fraction {key[1]!r} and seed "
                f"{key[2]!r}; expected a string, a number and an int"
            )
        if key in seen:
            raise ValueError(
                f"{source}: runs {seen[key]} and {i} are both {key[0]!r} at size {key[1]} "
                f"with seed {key[2]}; expected one run per method, size and seed"
            )
        seen[key] = i


def _stored(row: dict[str, Any]) -> int:
    """A run's stored bytes (older rows: tables + materialized remap)."""
    return row.get("total_bytes", row.get("bytes", 0))


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _pm(value: float | None, err: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text if err is None else f"{text} ± {err:.4f}"


def markdown(summary: list[dict[str, Any]], *, budget: str = "table") -> str:
    """The headline table: per method and size, metrics, paired differences, bytes.

    Args:
        summary: from :func:`summarize`.
        budget: ``"bytes"`` names the size column as a fraction of the full table bytes.
    """
    size = "bytes budget" if budget == "bytes" else "fraction"
    lines = [
        f"| method | {size} | seeds | test AUC | AUC - full (paired) | test logloss "
        "| logloss - full | NE | NE - full | stored bytes (index) | rows kept | collapsed |",
        "|---|---:|---:|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for s in summary:
        if not s["seeds"]:
            lines.append(
                f"| {s['method']} | {s['fraction']:g} | 0 | | | | | | | | | {s['collapsed']} |"
            )
            continue
        full = s["method"] == "none"
        star = "*" if s.get("remap_computable") else ""
        rows_kept = "" if s.get("row_fraction") is None else f"{s['row_fraction']:.3f}"
        lines.append(
            f"| {s['method']} | {s['fraction']:g} | {s['seeds']} | "
            f"{_pm(s['auc'], s['auc_std'])} | "
            f"{'' if full else _pm(s['delta_auc'], s['delta_auc_se'], True)} | "
            f"{_pm(s['logloss'], s['logloss_std'])} | "
            f"{'' if full else _pm(s['delta_logloss'], s['delta_logloss_se'], True)} | "
            f"{_pm(s['ne'], s['ne_std'])} | "
            f"{'' if full else _pm(s['delta_ne'], s['delta_ne_se'], True)} | "
            f"{s['bytes']:,} ({s['index_bytes']:,}{star}) | {rows_kept} | {s['collapsed']} |"
        )
    lines.append(
        "\nMean ± std over the seeds that did not collapse; `- full`: the mean over seeds of "
        "the run's value minus the full model's of the same seed, ± its standard error. "
        "Stored bytes: fp32 tables as saved + the stored index (in parentheses: a learned "
        "remap, mch's ids, fbdh's frequent ids; `*`: a hash computed from the id, nothing "
        "stored) + extra parameters. Rows kept: compressed rows over the full model's."
    )
    return "\n".join(lines) + "\n"


def apart_markdown(collapsed: list[dict[str, Any]], infeasible: list[dict[str, Any]]) -> str:
    """The runs not averaged: collapsed (test AUC below :data:`COLLAPSED_AUC`) and those
    that could not fit their byte budget."""
    lines = [f"\nCollapsed runs (test AUC < {COLLAPSED_AUC}), not averaged: {len(collapsed)}\n"]
    lines += [
        f"- {r['method']} at {r['fraction']:g}, seed {r['seed']}: AUC {r['auc']:.4f}"
        + (f" ({r['cause']})" if r.get("cause") else "")
        for r in collapsed
    ]
    reasons = {(r["method"], r["fraction"]): r["infeasible"] for r in infeasible}
    lines.append(f"\nBudgets a method cannot fit (every seed): {len(reasons)}\n")
    lines += [f"- {m} at {f:g}: {why}" for (m, f), why in reasons.items()]
    return "\n".join(lines) + "\n"


def pivot_markdown(summary: list[dict[str, Any]]) -> str:
    """Test AUC (mean over seeds) as a method x size table; bold: the best compressed
    method of each size (``none`` is the full model at every size)."""
    summary = [s for s in summary if s.get("seeds")]
    fractions = sorted({s["fraction"] for s in summary if s["method"] != "none"}, reverse=True)
    cell = {(s["method"], s["fraction"]): s["auc"] for s in summary}
    best = {
        f: max((a for (m, g), a in cell.items() if g == f and m != "none"), default=None)
        for f in fractions
    }
    if not fractions:  # the full model alone, or no finished run at all
        full = cell.get(("none", 1.0))
        return (
            "" if full is None else f"| method | AUC |\n|---|---:|\n| none (full) | {full:.4f} |\n"
        )
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
    summary, collapsed, infeasible = summarize(rows)
    budget = next((r.get("budget") for r in rows if r["method"] != "none"), "table")
    size = "bytes budget" if budget == "bytes" else "fraction"
    with atomic_write(out / "results.md", "w") as f:
        if budget == "bytes":
            f.write(
                "At equal bytes: each method fitted to the fraction of the full model's fp32 "
                "table bytes (tables, stored index and extras counted).\n\n"
            )
        f.write(markdown(summary, budget=budget or "table"))
        f.write(apart_markdown(collapsed, infeasible))
        f.write(f"\nTest AUC, mean over seeds (bold: the best compressed method per {size}):\n\n")
        f.write(pivot_markdown(summary))
    dataset = next((r["dataset"] for r in rows if r.get("dataset")), "")
    plot_auc_vs_bytes(
        [s for s in summary if s.get("seeds")],
        out / "results.png",
        f"{dataset}: test AUC against stored bytes",
    )
    return summary
