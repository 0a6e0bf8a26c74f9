"""benchmarks/compile_breaks.py: the counts it prints, against TorchRec's EBC in the same run."""

from __future__ import annotations

import torch

from benchmarks import compile_breaks as bench


def test_counts_every_plan_both_orders_against_torchrecs_collection(capsys) -> None:  # noqa: ANN001
    result = bench.main(["--json"])
    assert set(result["plain_ebc"]) == set(bench.ORDERS) == {"in_order", "reordered"}
    assert set(result["learned_hash"]) == set(bench.plans())
    plain = max(result["plain_ebc"].values())
    for counts in result["learned_hash"].values():
        for order in bench.ORDERS:
            assert 0 <= counts[order]["remap"] <= plain  # the remap breaks no more than it
            assert counts[order]["collection"] >= counts[order]["remap"]
    # one hash a table and the keys in the tables' order: the remap in one graph
    assert result["learned_hash"]["one_hash_dense"]["in_order"]["remap"] == 0
    assert result["learned_hash"]["one_hash_ranked"]["in_order"]["remap"] == 0
    assert '"plain_ebc"' in capsys.readouterr().out


def test_fresh_batches_have_no_cached_lengths() -> None:
    kjt = bench.fresh_batch(bench.ORDERS["reordered"])
    assert kjt.keys() == ["f3", "f0", "f1", "f2"] and kjt.length_per_key_or_none() is None
    assert int(kjt.values().max()) < 40 and kjt.lengths().numel() == 12
    for name, plan in bench.plans().items():
        module = bench.LearnedHashEmbeddingBagCollection(tables=bench.tables(), plan=plan)
        assert module(kjt).values().shape == (3, 32), name
    torch._dynamo.reset()
