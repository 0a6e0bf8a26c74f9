"""The compression-method registry: registration, the common checks, the metadata."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf import HashPlan, TableHash
from torchrec_lhf.compression import registry
from torchrec_lhf.compression.methods import (  # registers the built-ins
    get_method,
    list_methods,
    make_plan,
    register_method,
)


def test_registry_lists_the_builtin_methods() -> None:
    assert {"none", "modulo", "qr", "fbdh", "memrec", "lhf"} <= set(list_methods())
    assert list_methods() == sorted(list_methods())


def test_register_rejects_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError, match="'qr' is already registered"):
        register_method("qr", lambda num_embeddings, *, fraction: HashPlan([]))
    with pytest.raises(ValueError, match="non-empty string"):
        register_method("", lambda num_embeddings, *, fraction: HashPlan([]))
    with pytest.raises(ValueError, match="'nope'.*registered"):
        get_method("nope")


def test_registered_method_gets_checked_args_and_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # register in a copy
    seen = {}

    def halve(num_embeddings, *, fraction, seed, offset: int = 0):
        seen.update(seed=seed, offset=offset)
        return HashPlan.from_mappings({"t": torch.arange(4) // 2 + offset})

    register_method("test_halve", halve)
    plan = make_plan("test_halve", {"t": 4}, fraction=0.5, seed=3, offset=1)
    assert seen == {"seed": 3, "offset": 1}
    assert plan.metadata["method"] == "test_halve" and plan.metadata["options"] == {"offset": 1}
    assert plan.metadata["rows_fraction"] == {"t": 0.75}  # heights default to max + 1 = 3
    with pytest.raises(ValueError, match=r"unknown options \['offst'\]; it accepts \['offset'\]"):
        make_plan("test_halve", {"t": 4}, fraction=0.5, offst=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, "fraction must be in \\(0, 1\\], got 0.0"),
        ({"fraction": 1.5}, "got 1.5"),
        ({"fraction": 0.5, "min_table_rows": -1}, "min_table_rows must be an int >= 0, got -1"),
        ({"fraction": 0.5, "seed": -2}, "seed must be an int >= 0, got -2"),
        (
            {"fraction": 0.5, "counts": {"t": torch.ones(3)}},
            "counts of table 't' must have shape \\(10,\\)",
        ),
        ({"fraction": 0.5, "counts": {"t": -torch.ones(10)}}, "finite and >= 0"),
    ],
)
def test_bad_common_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_method("modulo")({"t": 10}, **kwargs)


def test_bad_heights() -> None:
    with pytest.raises(ValueError, match="table 't' num_embeddings must be an int >= 1, got 0"):
        get_method("qr")({"t": 0}, fraction=0.5)


def test_a_new_methods_stored_index_counts_without_special_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # register in a copy
    monkeypatch.setattr(registry, "_STORED_INDEX", dict(registry._STORED_INDEX))

    def stored(num_embeddings, *, fraction):  # a per-id index, as cce's, in its plan
        plan = make_plan("modulo", num_embeddings, fraction=fraction)
        return HashPlan(  # the hashing trick's rows held dense: an index per id
            [TableHash(t.name, t.num_embeddings, (t.dense_mapping(0),), t.heights) for t in plan],
            metadata=plan.metadata,
        )

    register_method("stored", stored)  # default: what the plan stores (int16 per id)
    register_method("free", stored, stored_index=registry.computed_from_the_id)
    sizes = {"a": 1000}  # 16,000 bytes at dim 4; 20% = 3,200
    s = make_plan("stored", sizes, fraction=0.2, budget="bytes", embedding_dim=4)
    f = make_plan("free", sizes, fraction=0.2, budget="bytes", embedding_dim=4)
    # the stored index (uint8 under 256 rows: 1,000 bytes) leaves 2,200 bytes: 137 rows;
    # without it, 200 rows
    assert (s["a"].num_rows, f["a"].num_rows) == (137, 200)
    assert s.metadata["bytes"] == {"tables": 2192, "index": 1000, "extras": 0, "total": 3192}
    assert registry.index_bytes(f) == {"a": 0} and registry.index_bytes(s) == {"a": 1000}
    assert s.metadata["row_fraction"] == pytest.approx(0.137, abs=0.0005)
