"""The sharders' checks of the sharding types they are asked for (distributed/sharding_types.py)."""

from __future__ import annotations

import pytest
from torchrec.distributed.types import ParameterSharding

from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder
from torchrec_lhf.distributed.sharding_types import check_placements, requested_types


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
        "t0": ParameterSharding(sharding_type="row_wise", compute_kernel="fused"),
        "t1__h1": ParameterSharding(sharding_type="data_parallel", compute_kernel="dense"),
    }
    check_placements(params, ["row_wise", "data_parallel"])
    with pytest.raises(ValueError, match=r"table 't1__h1': sharding type 'data_parallel' is not"):
        check_placements(params, ["row_wise"])
