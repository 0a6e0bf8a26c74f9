"""Row-wise sharded managed collisions == unsharded, at world size 2 on gloo (CPU).

Hand-made state: table ``t0`` (20 ids, 6 rows) and ``t1`` (30 ids, 8 rows) are managed,
``t2`` (5 ids) stays full. Row-wise over 2 ranks, rank ``r`` manages the ids of its half of
the id range with its half of the rows, the last of which is its miss row:

    t0: ids 0..9 -> rows 0..2 (3 -> 1, 7 -> 0, miss 2); ids 10..19 -> rows 3..5 (12 -> 4, 15 -> 3, miss 5)
    t1: ids 0..14 -> rows 0..3 (1, 4, 9 -> 0, 1, 2, miss 3); 15..29 -> rows 4..7 (16, 20, 29 -> 4, 5, 6, miss 7)
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from tests._multiprocess import run_multiprocess
from torchrec_lhf.distributed.gather import copy_into
from torchrec_lhf.distributed.mch import CheckedShardedManagedCollisionEBC, ManagedCollisionSharder
from torchrec_lhf.modules.mch import MCHEmbeddingBagCollection

MAX = torch.iinfo(torch.int64).max
ZCH = {"t0": 6, "t1": 8}
MC = "managed._managed_collision_collection._managed_collision_modules"
FUSED = EmbeddingComputeKernel.FUSED.value


def _tables() -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=20, feature_names=["f0"]),
        EmbeddingBagConfig(name="t1", embedding_dim=4, num_embeddings=30, feature_names=["f1"]),
        EmbeddingBagConfig(name="t2", embedding_dim=4, num_embeddings=5, feature_names=["f2"]),
    ]


def _state(module: MCHEmbeddingBagCollection) -> dict[str, torch.Tensor]:
    """The hand-made state of the module docstring (random weights)."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if k.endswith(".weight"):
            state[k] = torch.randn(v.shape, generator=g)
    held = {
        "t0": ([3, 7, MAX, 12, 15, MAX], [1, 0, 2, 4, 3, 5]),
        "t1": ([1, 4, 9, MAX, 16, 20, 29, MAX], list(range(8))),
    }
    for t, (ids, rows) in held.items():
        state[f"{MC}.{t}._mch_sorted_raw_ids"] = torch.tensor(ids)
        state[f"{MC}.{t}._mch_remapped_ids_mapping"] = torch.tensor(rows)
        state[f"{MC}.{t}._mch_counts"] = torch.ones(len(ids), dtype=torch.int64)
    return state


def _kjt(f0: list[list[int]], f1: list[list[int]], f2: list[list[int]]) -> KeyedJaggedTensor:
    bags = [*f0, *f1, *f2]
    return KeyedJaggedTensor(
        keys=["f0", "f1", "f2"],
        values=torch.tensor([i for bag in bags for i in bag], dtype=torch.int64),
        lengths=torch.tensor([len(bag) for bag in bags]),
    )


def _int32(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=kjt.keys(), values=kjt.values().int(), lengths=kjt.lengths().int()
    )


# Hits only, two samples per rank.
HITS = [
    _kjt([[3, 15], [7]], [[1, 29], [20]], [[0], [4, 1]]),
    _kjt([[12], [3, 7, 12]], [[4, 9, 16], []], [[2], [3]]),
]


def _shard(module: MCHEmbeddingBagCollection, world_size: int) -> DistributedModelParallel:
    fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.1}
    mc_sharder = ManagedCollisionSharder(fused_params=fused)
    ebc_sharder = EmbeddingBagCollectionSharder(fused_params=fused)
    common = dict(local_size=world_size, world_size=world_size, device_type="cpu")
    plan = ShardingPlan(
        {
            "managed": construct_module_sharding_plan(
                module.managed,
                per_param_sharding={t: row_wise(compute_kernel=FUSED) for t in ZCH},
                sharder=mc_sharder,
                **common,
            ),
            "full": construct_module_sharding_plan(
                module.full,
                per_param_sharding={"t2": table_wise(rank=1, compute_kernel=FUSED)},
                sharder=ebc_sharder,
                **common,
            ),
        }
    )
    return DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        plan=plan,
        sharders=[mc_sharder, ebc_sharder],
        device=torch.device("cpu"),
    )


def _reference_and_sharded(world_size: int) -> tuple:
    """The unsharded module in eval mode, the hand-made state, and the sharded module
    holding that state."""
    reference = MCHEmbeddingBagCollection(_tables(), zch_sizes=ZCH)
    state = _state(reference)
    reference.load_state_dict(state)  # re-sorts each table's held ids
    reference.eval()
    module = MCHEmbeddingBagCollection(
        _tables(), zch_sizes=ZCH, world_size=world_size, device=torch.device("meta")
    )
    model = _shard(module, world_size)
    for key, t in model.state_dict().items():
        copy_into(key, t, state[key])
    return reference, state, model


def _sharded_vs_unsharded(rank: int, world_size: int) -> None:
    reference, state, model = _reference_and_sharded(world_size)
    # the managed tables keep exactly their rows, split in halves over the ranks
    w0 = model.state_dict()["managed._embedding_module.embedding_bags.t0.weight"]
    assert tuple(w0.shape) == (6, 4)
    assert [s.tensor.shape[0] for s in w0.local_shards()] == [3]

    # 1. eval: the same ids, rows and pooled embeddings as unsharded (hits only)
    model.eval()
    out = model(HITS[rank])
    ref = reference(_concat(HITS))
    assert out.keys() == ref.keys() == ["f0", "f1", "f2"]
    torch.testing.assert_close(out.values(), ref.values()[2 * rank : 2 * rank + 2])
    # int32 ids and lengths (TorchRec's MCH remap failed on them): the same
    narrow = _int32(HITS[rank])
    torch.testing.assert_close(model(narrow).values(), out.values(), atol=0, rtol=0)
    # a negative length is refused by the sharded module's input dist itself (which the
    # train pipeline runs before the forward): TorchRec's read it out of bounds
    managed = model.module.managed
    assert isinstance(managed, CheckedShardedManagedCollisionEBC)
    lengths = HITS[rank].lengths().clone()
    lengths[0], lengths[1] = -1, lengths[1] + lengths[0] + 1
    bad = KeyedJaggedTensor(keys=HITS[rank].keys(), values=HITS[rank].values(), lengths=lengths)
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 \(feature 'f0', sample 0\)"):
        managed.input_dist(managed.create_context(), bad)
    torch.testing.assert_close(model(HITS[rank]).values(), out.values(), atol=0, rtol=0)

    # 2. misses: each rank has a miss row of its own (unsharded: one, row 5)
    w0_full = state["managed._embedding_module.embedding_bags.t0.weight"]
    misses = _kjt([[5], [18]], [[], []], [[], []])
    got = model(misses).to_dict()["f0"]
    torch.testing.assert_close(got, torch.stack([w0_full[2], w0_full[5]]))
    torch.testing.assert_close(
        reference(misses).to_dict()["f0"], torch.stack([w0_full[5], w0_full[5]])
    )

    # 3. training admits id 8 into rank 0's block, evicting id 7 (row 0, the least used):
    # its Adagrad state is zeroed (FBGEMM has no CPU kernel for that; our sharder does it)
    # and its weights re-initialized; every other row keeps both.
    managed = model.module.managed
    mch0 = managed._managed_collision_collection._managed_collision_modules["t0"]
    tbe, index = managed._table_to_tbe_and_index["t0"]  # t0's fused module on this rank
    for table_states in tbe.split_optimizer_states():
        for s in table_states:
            s.fill_(5.0)
    weights_before = managed._embedding_module.embedding_bags["t0"].weight.clone()
    model.train()
    batch = (
        _kjt([[8], [3]], [[], []], [[], []]) if rank == 0 else _kjt([[12], []], [[], []], [[], []])
    )
    model(batch).values()
    (t0_state,) = tbe.split_optimizer_states()[int(index)]  # row-wise Adagrad: one per row
    weights = model.module.managed._embedding_module.embedding_bags["t0"].weight
    if rank == 0:
        assert mch0._mch_sorted_raw_ids.tolist() == [3, 8, MAX]
        assert mch0._mch_remapped_ids_mapping.tolist() == [1, 0, 2]
        assert t0_state.tolist() == [0.0, 5.0, 5.0]
        assert not torch.equal(weights[0], weights_before[0])
        torch.testing.assert_close(weights[1:], weights_before[1:])
    else:
        assert mch0._mch_sorted_raw_ids.tolist() == [12, 15, MAX]
        assert t0_state.tolist() == [5.0, 5.0, 5.0]
        torch.testing.assert_close(weights, weights_before)


def _concat(kjts: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    """The global batch: rank 0's samples, then rank 1's."""
    per_key = [kjt.to_dict() for kjt in kjts]
    keys = kjts[0].keys()
    values = torch.cat([d[k].values() for k in keys for d in per_key])
    lengths = torch.cat([d[k].lengths() for k in keys for d in per_key])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


@pytest.mark.distributed
def test_row_wise_sharded_mch_matches_unsharded() -> None:
    run_multiprocess(_sharded_vs_unsharded, world_size=2)


def _unequal_batches(rank: int, world_size: int) -> None:
    reference, _, model = _reference_and_sharded(world_size)
    model.eval()  # (no admission or eviction: the hand-made ids stay)
    # rank 0 scores two samples, rank 1 three: hits only
    batches = [HITS[0], _kjt([[12], [3, 7, 12], [15]], [[4, 9, 16], [], [1]], [[2], [3], []])]
    out = model(batches[rank])
    ref = reference(_concat(batches))
    rows = slice(0, 2) if rank == 0 else slice(2, 5)
    torch.testing.assert_close(out.values(), ref.values()[rows])
    weights = model.module.managed._embedding_module.embedding_bags["t0"].weight
    before = weights.clone()
    out.values().sum().backward()  # the fused Adagrad step, in the backward
    # rank 0 holds t0's rows 0..2 (ids 7, 3 and the miss row), rank 1 rows 3..5 (15, 12,
    # miss): every held id was read on some rank, the miss rows never
    changed = (weights != before).any(dim=1).tolist()
    assert changed == [True, True, False]


@pytest.mark.distributed
def test_row_wise_sharded_mch_trains_on_batches_of_unequal_sizes() -> None:
    """Ranks of two and three samples: the outputs equal the unsharded module's and the
    backward updates the rows read (before: gloo refused the backward's all-gather of the
    ranks' unequal gradients)."""
    run_multiprocess(_unequal_batches, world_size=2)
