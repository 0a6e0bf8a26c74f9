"""The built-in baseline plans, checked by hand."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.compression.baselines import compressed_rows, modulo_plan
from torchrec_lhf.plan import HashPlan


def test_modulo_plan_by_hand() -> None:
    plan = modulo_plan({"a": 7, "b": 4}, fraction=0.5)
    # a: M = round(3.5) = 4 (Python rounds half to even), b: M = 2
    assert plan.table_names == ["a", "b"]
    assert plan["a"].heights == (4,) and plan["b"].heights == (2,)
    assert plan["a"].mappings[0].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert plan["b"].mappings[0].tolist() == [0, 1, 0, 1]
    assert plan["a"].mappings[0].dtype == torch.int32
    assert plan.metadata["method"] == "modulo" and plan.metadata["fraction"] == 0.5


def test_modulo_plan_keeps_small_tables_full_and_at_least_one_row() -> None:
    plan = modulo_plan({"big": 10, "small": 3}, fraction=0.01, min_table_rows=5)
    assert plan.table_names == ["big"]
    assert plan["big"].heights == (1,)
    assert plan["big"].mappings[0].tolist() == [0] * 10


def test_modulo_plan_fraction_one_is_the_identity() -> None:
    plan = modulo_plan({"t": 5}, fraction=1.0)
    assert plan["t"].mappings[0].tolist() == [0, 1, 2, 3, 4]


def test_modulo_plan_round_trips(tmp_path) -> None:
    plan = modulo_plan({"t": 9}, fraction=0.3)
    plan.save(tmp_path / "p.safetensors")
    assert HashPlan.load(tmp_path / "p.safetensors") == plan


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_is_named(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        modulo_plan({"t": 9}, fraction=fraction)


def test_bad_heights_are_named() -> None:
    with pytest.raises(ValueError, match="'t'.*got 0"):
        modulo_plan({"t": 0}, fraction=0.5)
    with pytest.raises(ValueError, match="min_table_rows"):
        modulo_plan({"t": 3}, fraction=0.5, min_table_rows=-1)
    assert compressed_rows(10, 0.25) == 2
