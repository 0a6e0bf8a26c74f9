"""Reporting helpers shared by the pipeline app and the benchmarks."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchrec_lhf._io import atomic_write

logger = logging.getLogger(__name__)


def select_on_validation(candidates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The result row of the candidate of highest ``val_auc`` (the first on a tie) among
    those that fit, chosen as a hyperparameter is: the test split is not looked at.

    Args:
        candidates: name -> a trained run's row (with ``val_auc`` and ``auc``), or a row
            with ``infeasible`` (the run could not be built, e.g. its plan does not fit a
            byte budget).

    Returns:
        A copy of the chosen row with ``choice`` (its name) and ``candidates`` (name ->
        ``val_auc`` and ``auc``, or ``infeasible``); a copy of the first row where none
        fits.

    Example::

        >>> rows = {"a": {"val_auc": 0.70, "auc": 0.71}, "b": {"val_auc": 0.72, "auc": 0.69}}
        >>> select_on_validation(rows)["choice"]
        'b'
    """
    fit = [n for n, row in candidates.items() if "infeasible" not in row]
    if not fit:
        return dict(next(iter(candidates.values())))
    choice = max(fit, key=lambda n: candidates[n]["val_auc"])  # NOTE: first of ties
    return dict(
        candidates[choice],
        choice=choice,
        candidates={
            n: {"infeasible": r["infeasible"]}
            if "infeasible" in r
            else {"val_auc": r["val_auc"], "auc": r["auc"]}
            for n, r in candidates.items()
        },
    )


def _plain_log_ticks(ax: Any, xs: list[float]) -> None:
    """Plain numbers on a log x axis instead of matplotlib's overlapping scientific labels.

    The axis spans ``xs`` padded by 1.25x on either side, or 4x about their middle where
    they span less. Ticks at 1, 2, 5 times each power of ten; at 1, 2, 3, 5, 7 where that
    leaves a point of ``xs`` without a tick within a factor 1.5 of it (a sweep from 27 to
    272 KiB had none below 50); at 1, 1.5, 2, 3, 5, 7 where ``xs`` span less than a decade
    (or the others still leave one: these never do, no two being more than 1.43x apart).
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    if not xs or min(xs) <= 0:
        return
    lo, hi = min(xs), max(xs)
    if hi / lo < 4:
        mid = (lo * hi) ** 0.5
        left, right = mid / 2, mid * 2
    else:
        left, right = lo / 1.25, hi * 1.25
    ax.set_xlim(left, right)
    choices = [(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)]
    if hi / lo >= 10:
        choices = [(1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0)] + choices
    first, last = math.floor(math.log10(left)), math.ceil(math.log10(right))
    for subs in choices:
        ticks = [
            t
            for k in range(first, last + 1)
            for t in (s * 10.0**k for s in subs)
            if left <= t <= right
        ]
        if all(any(x / 1.5 <= t <= x * 1.5 for t in ticks) for x in xs):
            break
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_auc_vs_bytes(summary: list[dict[str, Any]], path: str | Path, title: str) -> bool:
    """Test AUC against stored bytes, a line per method, like Figure 3 of the paper.

    Args:
        summary: rows with ``method``, ``bytes`` (what the model stores: its tables, stored
            index and extra parameters; a remap computed from the id is not stored),
            ``auc`` and optionally ``auc_std`` (error bars); method ``none`` (the full
            model) is drawn as a horizontal reference line.
        path: the PNG to write (atomically).
        title: the plot's title.

    Returns:
        False (and a warning) when matplotlib is not installed, else True.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summary:
        by_method[s["method"]].append(s)
    for method, ss in by_method.items():
        ss = sorted(ss, key=lambda s: s["bytes"])
        x = [s["bytes"] / 2**10 for s in ss]
        y, e = [s["auc"] for s in ss], [s.get("auc_std", 0.0) for s in ss]
        if method == "none":
            ax.axhline(y[0], color="k", ls="--", lw=1, label=f"none ({x[0]:.0f} KiB)")
        else:
            ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=2, label=method)
    ax.set_xscale("log")
    _plain_log_ticks(ax, [s["bytes"] / 2**10 for s in summary if s["method"] != "none"])
    ax.set_xlabel("stored bytes: tables + stored index (KiB, log)")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if summary:
        ax.legend(fontsize=8)
    else:  # (every run collapsed or did not fit: a legend of nothing warns)
        ax.text(0.5, 0.5, "no run to draw: see the runs listed apart", ha="center",
                transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return True
