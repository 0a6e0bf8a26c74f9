"""The sharders' checks of the sharding types they are asked for (distributed/sharding_types.py)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.sharding_plan import data_parallel, table_wise
from torchrec.distributed.types import ParameterSharding

from tests._fixtures import shard_on_cpu, three_tables, two_hash_plan
from tests._multiprocess import run_multiprocess
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.sharding_types import (
    check_fused_dims,
    check_fused_placements,
    check_placements,
    requested_types,
)
from torchrec_lhf.modules.embedding_bag import internal_table_configs

DENSE = EmbeddingComputeKernel.DENSE.value
FUSED = EmbeddingComputeKernel.FUSED.value


def test_requested_types() -> None:
    offered = ["table_wise", "row_wise"]
    assert requested_types(None, offered, "x") == offered
    assert requested_types(["row_wise"], offered, "x") == ["row_wise"]
    with pytest.raises(ValueError, match=r"'column_wise' is not supported for x; expected one of"):
        requested_types(["row_wise", "column_wise"], offered, "x")
    with pytest.raises(ValueError, match="sharding_types is empty"):
        requested_types([], offered, "x")
    with pytest.raises(ValueError, match="sharding_types is empty"):  # the pooled sharder too
        LearnedHashEmbeddingBagCollectionSharder(sharding_types=[])


def test_check_placements_names_the_table() -> None:
    params = {
        "t0": ParameterSharding(sharding_type="row_wise", compute_kernel=FUSED),
        "t1__h1": ParameterSharding(sharding_type="data_parallel", compute_kernel="dense"),
    }
    check_placements(params, ["row_wise", "data_parallel"])
    with pytest.raises(ValueError, match=r"table 't1__h1': sharding type 'data_parallel' is not"):
        check_placements(params, ["row_wise"])


def test_check_fused_dims_names_the_table_and_passes_data_parallel() -> None:
    check_fused_dims({"t": 8, "u__h0": 4}, ["row_wise"])
    check_fused_dims({"t": 6}, ["data_parallel"])  # (the dense kernel takes any dim)
    with pytest.raises(ValueError, match=r"table 't' has dim 6, but .* multiples of 4"):
        check_fused_dims({"u": 4, "t": 6}, ["table_wise", "data_parallel"])
    match = r"table 'u__h1' \(an internal table of 'u'; its plan sets its dim\) has dim 3"
    with pytest.raises(ValueError, match=match):
        check_fused_dims({"u__h0": 4, "u__h1": 3}, ["row_wise"])


def _shard_concat_at_dim_6(rank: int, world_size: int, kernel: str) -> str:
    """``t1``'s concat plan splits dim 6 into 3 + 3; its tables placed on ``kernel``."""
    tables = three_tables(dims=(8, 6, 8))
    module = LearnedHashEmbeddingBagCollection(
        tables=tables, plan=two_hash_plan("concat"), device=torch.device("meta")
    )
    sharder = LearnedHashEmbeddingBagCollectionSharder()
    per_param = {
        c.name: data_parallel()
        if kernel == DENSE and c.embedding_dim == 3
        else table_wise(rank=0, compute_kernel=FUSED)
        for c in internal_table_configs(module)
    }
    try:
        shard_on_cpu(module, sharder, per_param, world_size)
    except Exception as e:  # (the type and message go back to the test)
        return f"{type(e).__name__}: {e}"
    return "sharded"


@pytest.mark.distributed
def test_the_sharder_names_a_concat_part_a_fused_table_cannot_have() -> None:
    """Before, TorchRec asserted where it built the kernel (``AssertionError: table t1__h0
    has local_cols=3 not divisible by 4 ... adjusting min_partition``); the sharder now
    names the table and the cause. Placed data_parallel (dense kernel), the parts shard."""
    (fused,) = run_multiprocess(_shard_concat_at_dim_6, world_size=1, kernel=FUSED)
    assert fused.startswith("ValueError: table 't1__h0' (an internal table of 't1'"), fused
    assert "has dim 3" in fused
    (dense,) = run_multiprocess(_shard_concat_at_dim_6, world_size=1, kernel=DENSE)
    assert dense == "sharded"


def _placed(sharding_type: str, kernel: str, widths: list[int]) -> ParameterSharding:
    """A placement of a 10-row table in column shards of ``widths`` (none: no spec)."""
    offsets = [sum(widths[:i]) for i in range(len(widths))]
    shards = [
        ShardMetadata(shard_offsets=[0, o], shard_sizes=[10, w], placement=f"rank:{r}/cpu")
        for r, (o, w) in enumerate(zip(offsets, widths))
    ]
    spec = EnumerableShardingSpec(shards) if shards else None
    return ParameterSharding(sharding_type, kernel, list(range(len(widths))), spec)


def test_check_fused_placements_reads_the_tables_and_their_shards_widths() -> None:
    """A dim-12 table split column-wise over two ranks is two shards of width 6, which
    TorchRec's fused kernel rejects: named with the widths. A dim-6 table is named on a
    fused kernel and passes on data_parallel's dense one."""
    dims = {"t": 12, "u": 6}
    check_fused_placements({"t": _placed("column_wise", FUSED, [8, 4])}, dims)
    check_fused_placements({"u": _placed("data_parallel", DENSE, [])}, dims)
    with pytest.raises(ValueError, match=r"table 't' \(dim 12\) is placed column_wise in "):
        check_fused_placements({"t": _placed("column_wise", FUSED, [6, 6])}, dims)
    with pytest.raises(ValueError, match=r"table 'u' has dim 6, but .*\['table_wise'\]"):
        check_fused_placements({"u": _placed("table_wise", FUSED, [6])}, dims)


# ------------------------------------------------------------- empty row shards on the CPU
def _one_row_table(rank: int, world_size: int, kind: str, layout: str) -> str:
    """A collection with a table of 1 row (a learned-hash plan, or a plain table),
    row-wise over 2 ranks: ``[1, 0]`` rows. ``alone``: it is ``t0`` and the other tables
    are table-wise on rank 0, so rank 1's row-wise kernel holds its empty shard alone;
    ``first`` / ``last``: it is ``t0`` / ``t2`` and all tables are row-wise, so the empty
    shard comes first / last in rank 1's kernel (of the tables ``t0``, ``t1``, ``t2``).
    Returns the sharders' refusal, or ``"ran"`` after three training steps."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec import EmbeddingBagCollection
    from torchrec.distributed.sharding_plan import row_wise

    from tests._fixtures import sequence_tables
    from tests.distributed.test_embedding_bag import _batch
    from torchrec_lhf import HashPlan, LearnedHashEmbeddingCollection
    from torchrec_lhf.distributed.embedding import LearnedHashEmbeddingCollectionSharder
    from torchrec_lhf.distributed.embedding_bag import PlainEmbeddingBagCollectionSharder

    fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1}
    meta = torch.device("meta")
    small, ids = ("t2", 12) if layout == "last" else ("t0", 40)
    plan = HashPlan.from_mappings({small: torch.zeros(ids, dtype=torch.int32)})
    if kind == "plain":
        heights = (40, 30, 1) if layout == "last" else (1, 30, 12)
        module = EmbeddingBagCollection(tables=three_tables(heights=heights), device=meta)
        sharder = PlainEmbeddingBagCollectionSharder(fused_params=fused)
        names = ["t0", "t1", "t2"]
    elif kind == "sequence":
        module = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan, device=meta)
        sharder = LearnedHashEmbeddingCollectionSharder(fused_params=fused)
        names = [c.name for c in module.internal_embedding_configs()]
    else:
        module = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan, device=meta)
        sharder = LearnedHashEmbeddingBagCollectionSharder(fused_params=fused)
        names = [c.name for c in internal_table_configs(module)]
    placements = {
        n: table_wise(rank=0, compute_kernel=FUSED)
        if layout == "alone" and not n.startswith(small)
        else row_wise(compute_kernel=FUSED)
        for n in names
    }
    try:
        model = shard_on_cpu(module, sharder, placements, world_size)
    except ValueError as e:
        return str(e)
    for step in range(3):
        out = model(_batch(rank + 2 * step)).wait()
        values = (
            out.values() if kind != "sequence" else torch.cat([v.values() for v in out.values()])
        )
        values.sum().backward()
    return "ran"


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["learned", "plain", "sequence"])
def test_a_kernel_with_an_empty_row_shard_is_refused_on_every_rank(kind: str) -> None:
    """Before, rank 1 failed inside FBGEMM's CPU kernel: the first lookup of a kernel of the
    empty shard alone ("weights[0] must be a GPU or MTIA tensor", rank 0 then with a closed
    connection), or, with the empty shard last in the kernel, the backward at random steps
    ("... more than 2B rows"); first in the kernel, before a table of another dim, it
    updated that table in part (seen in a random search, not in this layout)."""
    for layout in ("alone", "first", "last"):
        messages = run_multiprocess(_one_row_table, world_size=2, kind=kind, layout=layout)
        assert messages[0] == messages[1], layout
        small = "t2" if layout == "last" else "t0"
        assert f"rank 1 would hold empty row shards of tables ['{small}" in messages[0]
        assert "add table_wise to the sharding types" in messages[0]
