"""Reporting helpers: choosing a run on validation, the plot of AUC against bytes."""

from __future__ import annotations

import warnings

import pytest

from torchrec_lhf import report
from torchrec_lhf.report import select_on_validation


def _row(val: float, auc: float) -> dict:
    return {"val_auc": val, "auc": auc, "rows": 3, "method": "m"}


@pytest.mark.parametrize(
    ("vals", "choice"), [((0.70, 0.71), "b"), ((0.72, 0.71), "a"), ((0.70, 0.70), "a")]
)
def test_the_higher_validation_auc_is_kept_the_first_on_a_tie(vals: tuple, choice: str) -> None:
    a, b = _row(vals[0], 0.81), _row(vals[1], 0.79)
    row = select_on_validation({"a": a, "b": b})
    assert row["choice"] == choice
    assert row["auc"] == (0.81 if choice == "a" else 0.79) and row["rows"] == 3
    assert row["candidates"] == {
        "a": {"val_auc": vals[0], "auc": 0.81},
        "b": {"val_auc": vals[1], "auc": 0.79},
    }
    assert "choice" not in a and "choice" not in b  # the candidates are not changed


def test_candidates_that_do_not_fit_are_left_out_of_the_choice() -> None:
    bad = {"method": "b", "infeasible": "too small"}
    row = select_on_validation({"a": _row(0.7, 0.8), "b": bad, "c": _row(0.6, 0.9)})
    assert row["choice"] == "a" and row["auc"] == 0.8
    assert row["candidates"]["b"] == {"infeasible": "too small"}
    # the first candidate does not fit: the others are still chosen from
    assert select_on_validation({"b": bad, "c": _row(0.6, 0.9)})["choice"] == "c"
    # none fits: the first one's row, as it is
    worse = {"method": "d", "infeasible": "smaller still"}
    assert select_on_validation({"b": bad, "d": worse}) == bad


@pytest.mark.parametrize(
    ("kib", "limits", "labels"),
    [
        # equal bytes (a pipeline run): a narrow range, widened to 4x about its middle
        ([22.09, 22.13], (11.055, 44.22), {"15", "20", "30"}),
        # a sweep over sizes: 1, 2, 5 times each power of ten, the range padded by 1.25x
        ([2.2, 22.1, 110.6], (1.76, 138.25), {"2", "5", "10", "20", "50", "100"}),
        # the Criteo head's sweep at 1% and 10%: 1, 2, 5 would leave 27 without a label
        # within 1.5x (20 is off the axis, 50 too far), so 3 and 7 join
        ([27.1, 272.4], (21.68, 340.5), {"30", "50", "70", "100", "200", "300"}),
    ],
)
def test_the_plot_labels_bytes_as_plain_numbers(
    tmp_path, monkeypatch, kib: list[float], limits: tuple | None, labels: set[str]
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    summary = [{"method": "none", "bytes": 226_624, "auc": 0.79}]
    summary += [{"method": "lhf", "bytes": k * 2**10, "auc": 0.78} for k in kib]
    figures: list = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its axis
    assert report.plot_auc_vs_bytes(summary, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    ax = figures[0].axes[0]
    if limits is not None:
        assert ax.get_xlim() == pytest.approx(limits, rel=1e-3)
    lo, hi = ax.get_xlim()
    shown = {t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi}
    assert shown == labels  # no "2.2 x 10^1" labels
    assert ax.get_xlabel() == "stored bytes: tables + stored index (KiB, log)"
    close(figures[0])


def test_a_plot_of_no_run_is_written_without_a_warning(tmp_path) -> None:
    """Where every run collapsed or did not fit, the sweep plots an empty summary: the
    figure says so, and matplotlib is not asked for a legend of nothing (it warned)."""
    pytest.importorskip("matplotlib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert report.plot_auc_vs_bytes([], tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
