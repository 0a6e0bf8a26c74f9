"""HashPlan: construction, validation, equality, summary (save/load: test_plan_io)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrec_lhf import HashPlan, TableHash


def _plan() -> HashPlan:
    return HashPlan.from_multi_mappings(
        {
            "t0": [torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 0, 1])],
            "t1": [torch.tensor([0, 0, 3])],
        },
        combine={"t0": "concat"},
        heights={"t1": [5]},
        metadata={"method": "test"},
    )


def test_from_mappings_defaults_height_to_max_plus_one() -> None:
    plan = HashPlan.from_mappings({"t": torch.tensor([3, 0, 1])})
    t = plan["t"]
    assert (t.num_embeddings, t.heights, t.num_hashes, t.combine) == (3, (4,), 1, "sum")
    assert t.mappings[0].dtype == torch.int32
    assert plan.metadata["format_version"] == 3 and "created" in plan.metadata


def test_equality_ignores_metadata_but_not_content() -> None:
    a, b = _plan(), _plan()
    b.metadata["created"] = "another day"
    assert a == b and a.fingerprint() == b.fingerprint()
    c = HashPlan.from_multi_mappings(
        {
            "t0": [torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 0, 1])],
            "t1": [torch.tensor([0, 0, 3])],
        },
        combine="sum",
        heights={"t1": [5]},
    )
    assert a != c and a.fingerprint() != c.fingerprint()  # combine differs
    d = HashPlan.from_mappings({"t0": torch.tensor([0, 2, 1, 1])})
    assert a != d


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(mappings=(torch.tensor([0, 5], dtype=torch.int32),), heights=(5,)),
            r"values must be in \[0, 5\), found range \[0, 5\]",
        ),
        (dict(mappings=(torch.tensor([0, 1], dtype=torch.int64),), heights=(2,)), "1-D int32"),
        (
            dict(mappings=(torch.tensor([0, 1, 0], dtype=torch.int32),), heights=(2,)),
            "3 entries, expected num_embeddings=2",
        ),
        (
            dict(mappings=(torch.tensor([0, 1], dtype=torch.int32),), heights=(2, 3)),
            "1 mappings but 2 heights",
        ),
        (
            dict(mappings=(torch.tensor([0, 1], dtype=torch.int32),), heights=(2,), combine="max"),
            "combine must be one of",
        ),
        (dict(mappings=(), heights=()), "at least one hash function"),
    ],
)
def test_table_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TableHash("t", 2, **kwargs)


def test_rejects_negative_and_float_mappings_and_duplicates() -> None:
    with pytest.raises(ValueError, match=r"found \[-1, 1\]"):
        HashPlan.from_mappings({"t": torch.tensor([-1, 1])})
    with pytest.raises(ValueError, match="integer tensor, got torch.float32"):
        HashPlan.from_mappings({"t": torch.tensor([0.0, 1.0])})
    t = HashPlan.from_mappings({"t": torch.tensor([0, 1])})["t"]
    with pytest.raises(ValueError, match=r"duplicate table names: \['t'\]"):
        HashPlan([t, t])


@pytest.mark.parametrize(
    ("mapping", "match"),
    [  # before: RuntimeError "Could not infer dtype of NoneType", TypeError "new(): invalid
        # data type 'str'", ValueError "expected sequence of length 1", RuntimeError (complex)
        (None, r"table 't': mapping must be a 1-D integer tensor .* got NoneType"),
        ("abc", r"table 't': mapping must be a 1-D integer tensor .* got str"),
        ([[0], [1, 2]], r"table 't': mapping must be a 1-D integer tensor .* got list"),
        (torch.tensor([1j]), r"table 't': mapping must be an integer tensor, got torch.complex64"),
    ],
)
def test_a_mapping_that_is_not_a_tensor_of_ints_is_named(mapping: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HashPlan.from_mappings({"t": mapping})
    assert HashPlan.from_mappings({"t": [0, 2]})["t"].heights == (3,)  # (a list is taken)


def test_summary_bytes() -> None:
    rows = {r["table"]: r for r in _plan().summary(embedding_dim=8)}
    t0 = rows["t0"]
    # concat of 2 internal tables of heights 3 and 2, dims 4 + 4
    assert (t0["num_embeddings"], t0["rows"], t0["num_hashes"]) == (4, 5, 2)
    assert t0["table_bytes"] == 4 * (3 * 4 + 2 * 4)
    assert t0["full_table_bytes"] == 4 * 4 * 8
    assert t0["remap_bytes"] == 4 * 2  # uint8 entries (heights under 256)
    assert rows["t1"]["table_bytes"] == 4 * 5 * 8
    assert "t0" in _plan().format_summary(8)


def test_summary_dims_by_table_name_are_checked() -> None:
    """A mapping may name more tables than the plan (a model's), not fewer: before, a
    misspelled name left that table's byte columns None without a word."""
    plan = _plan()
    rows = {r["table"]: r for r in plan.summary({"t0": 8, "t1": 2, "other": 16})}
    assert rows["t0"]["table_bytes"] == 4 * (3 * 4 + 2 * 4)
    assert rows["t1"]["full_table_bytes"] == 4 * 3 * 2  # (t1: 3 ids)
    assert plan.summary(np.int64(8))[1]["table_bytes"] == 4 * 5 * 8  # numpy ints are ints
    with pytest.raises(
        ValueError, match=r"no dim for plan tables \['t1'\]; .* got names \['t0', 't_1'\]"
    ):
        plan.summary({"t0": 8, "t_1": 8})
    for bad in (0, -4, 2.5, True, "8"):
        with pytest.raises(ValueError, match=rf"embedding_dim must be an int >= 1, got {bad!r}"):
            plan.format_summary(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"embedding_dim\['t1'\] must be an int >= 1, got 0"):
        plan.summary({"t0": 8, "t1": 0})
