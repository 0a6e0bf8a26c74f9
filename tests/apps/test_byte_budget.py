"""``--budget bytes`` in the DLRM app: every method's model, as built, stores at most the
budget's bytes and not far under it (MovieLens-100K's table heights, dim 16)."""

from __future__ import annotations

import pytest
import torch

from apps.dlrm.config import TrainConfig
from apps.dlrm.model import build_model, mch_rows_for_bytes, table_configs, table_stats
from tests._fixtures import MOVIELENS_HEIGHTS
from torchrec_lhf.compression.budget import BudgetTooSmall, byte_budget, width_for_bytes
from torchrec_lhf.compression.methods import make_plan
from torchrec_lhf.hash_build.head_tail import HeadTail
from torchrec_lhf.hash_build.plan_builder import build_plan

ML = MOVIELENS_HEIGHTS
D = 16
ROW = 4 * D


def _stats(config: TrainConfig, plan=None, world_size: int = 1) -> dict[str, int]:
    tables = table_configs(list(ML), list(ML.values()), D)
    model = build_model(
        config,
        tables,
        num_dense=0 + 1,
        plan=plan,
        dense_device=torch.device("meta"),
        world_size=world_size,
    )
    return table_stats(model, full_dim=D, plan=plan)


def _config(**kw) -> TrainConfig:
    return TrainConfig(embedding_dim=D, min_table_rows=0, budget="bytes", **kw)


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.05])
@pytest.mark.parametrize("method", ["modulo", "qr", "fbdh", "memrec", "mch", "lhf"])
def test_every_method_fits_the_bytes_and_is_not_far_under(method: str, fraction: float) -> None:
    budget = byte_budget(ML, fraction, D)
    counts = {k: torch.arange(n, 0, -1) % 40 for k, n in ML.items()}
    counts["zip"] = torch.full((ML["zip"],), 40)  # every id in the head: dense is smaller
    plan = None
    if method == "lhf":
        gen = torch.Generator().manual_seed(0)
        emb = {k: torch.randn(n, 4, generator=gen) for k, n in ML.items()}
        plan = build_plan(
            emb, counts, fraction=fraction, budget="bytes", embedding_dim=D,
            head_tail=HeadTail(min_count=30, encoding="auto"),
        )  # fmt: skip
        config = TrainConfig(embedding_dim=D)
    elif method == "mch":
        config = _config(compression="mch", fraction=fraction)
    else:
        config = _config(compression=method, fraction=fraction)
        if method == "qr" and fraction == 0.05:  # below qr's least size: 2 sqrt(N) a table
            with pytest.raises(BudgetTooSmall, match="table 'item'"):
                make_plan(method, ML, fraction=fraction, budget="bytes", embedding_dim=D)
            return
        plan = make_plan(
            method, ML, fraction=fraction, budget="bytes", embedding_dim=D, min_table_rows=0,
            counts=counts if method == "fbdh" else None,
        )  # fmt: skip
    stats = _stats(config, plan)
    assert stats["total_bytes"] <= budget
    # not far under: a few rows (qr: its steps of m + ceil(N / m), a table at a time)
    assert stats["total_bytes"] > budget - (8 if method == "qr" else 3) * len(ML) * ROW
    assert stats["total_bytes"] == stats["table_bytes"] + stats["index_bytes"]
    if method in ("modulo", "qr", "memrec"):
        assert stats["index_bytes"] == 0 < stats["remap_bytes"]  # materialized, not stored
    if method == "lhf":  # the remap as the plan encodes it (in memory, a compact head
        # also has its lookup table: remap_bytes)
        assert stats["index_bytes"] == plan.remap_bytes() <= stats["remap_bytes"]
        assert {e for t in plan for e in t.encodings} == {"compact", "dense"}
    if method == "mch":  # a sorted raw id and a row, int64 each, per managed row
        managed = stats["rows"] - sum(n for t, n in ML.items() if n < 0)
        assert stats["index_bytes"] == 16 * managed == stats["remap_bytes"]


def test_mch_rows_for_bytes_by_hand() -> None:
    # 3,541 ids x 64 bytes at 10% = 22,662 bytes; a managed row costs 64 + 16 = 80:
    # 283 rows at most
    rows = mch_rows_for_bytes(ML, 0.1, embedding_dim=D, min_table_rows=0, world_size=1)
    assert 282 <= sum(rows.values()) <= 283
    assert 80 * sum(rows.values()) <= 22_662
    with pytest.raises(BudgetTooSmall, match=r"8 \w*|table '\w+' alone stores 80 bytes"):
        mch_rows_for_bytes(ML, 0.001, embedding_dim=D, min_table_rows=0, world_size=1)


@pytest.mark.parametrize(("fraction", "width"), [(0.25, 4), (0.3, 4), (0.1, 1), (1.0, 16)])
def test_mlet_width_fits_the_bytes(fraction: float, width: int) -> None:
    config = _config(compression="mlet", fraction=fraction)
    assert config.model_dim == width and config.mlet_fraction == width / D
    stats = _stats(config)
    assert stats["total_bytes"] == width * 4 * sum(ML.values()) <= byte_budget(ML, fraction, D)
    assert stats["extra_bytes"] == 0  # the projections collapse into the tables


def test_budget_bytes_errors() -> None:
    with pytest.raises(BudgetTooSmall, match=r"dim 1 of 16\) store 1/16 = 0.0625 .* 0.05"):
        _config(compression="mlet", fraction=0.05)
    with pytest.raises(BudgetTooSmall, match="dim 1 of 16"):
        width_for_bytes(0.01, 16)
    assert [width_for_bytes(f, 16) for f in (0.0625, 0.1, 0.125, 1.0)] == [1, 1, 2, 16]
    with pytest.raises(ValueError, match="--mlet_fraction 0.5 with --compression 'modulo'"):
        _config(compression="modulo", fraction=0.1, mlet_fraction=0.5)
    with pytest.raises(ValueError, match="needs a method that drops rows"):
        TrainConfig(budget="total", compression="mlet", fraction=0.5)
    with pytest.raises(ValueError, match="budget 'bytes' needs embedding_dim"):
        make_plan("modulo", ML, fraction=0.1, budget="bytes")
