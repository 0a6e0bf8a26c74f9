"""Reporting helpers: choosing a run on validation."""

from __future__ import annotations

import pytest

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
