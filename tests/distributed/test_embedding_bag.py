"""Sharded learned-hash EBC == unsharded, at world size 2 on gloo, for every sharding type."""

from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import table_wise
from torchrec.optim.optimizers import in_backward_optimizer_filter

from tests._compact import to_compact
from tests._fixtures import placement, shard_on_cpu, three_tables, two_hash_plan
from tests._multiprocess import run_multiprocess
from tests.modules._host_reads import host_reads
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.compression.methods import fbdh_plan, memrec_plan, qr_plan
from torchrec_lhf.distributed.embedding_bag import (
    TESTED_SHARDING_TYPES,
    LearnedHashEmbeddingBagCollectionSharder,
    PlainEmbeddingBagCollectionSharder,
)
from torchrec_lhf.modules.embedding_bag import internal_table_configs

LR = 0.5
FUSED = EmbeddingComputeKernel.FUSED.value
BATCH = 3  # per rank


def _batch(seed: int, weighted: bool = False) -> KeyedJaggedTensor:
    """Ids of the four features for ``BATCH`` samples; ``weighted``: a weight per id in
    [-0.5, 1.5) (some negative, as a per-id weight may be)."""
    g = torch.Generator().manual_seed(seed)
    keys, heights = ["f3", "f0", "f1", "f2"], [12, 40, 40, 30]  # deliberately not in table order
    lengths = torch.randint(0, 4, (len(keys), BATCH), generator=g)
    values = torch.cat(
        [torch.randint(0, h, (int(lengths[i].sum()),), generator=g) for i, h in enumerate(heights)]
    )
    weights = torch.rand(values.numel(), generator=g) * 2 - 0.5 if weighted else None
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten(), weights=weights)


def _full(t: torch.Tensor | ShardedTensor | DTensor, rank: int) -> torch.Tensor | None:
    if isinstance(t, DTensor):
        return t.full_tensor()
    if isinstance(t, ShardedTensor):
        out = torch.empty(t.size()) if rank == 0 else None
        t.gather(dst=0, out=out)
        return out
    return t.detach().clone()


def _sharded_vs_unsharded(
    rank: int,
    world_size: int,
    sharding_type: str,
    combine: str,
    encoding: str,
    weighted: bool = False,
) -> None:
    torch.manual_seed(1)
    plan = two_hash_plan(combine)
    if encoding == "computed":  # QR: id mod m and id // m computed from the id (divided tail)
        plan = qr_plan({"t0": 40, "t1": 30}, fraction=0.4, combine=combine)
        assert _all_divided(plan)
    elif encoding == "memrec":  # three seeded hashes computed from the id, scaled_sum
        plan = memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3)
        assert plan.remap_bytes() == 0 and plan["t0"].combine == "scaled_sum"
    elif encoding == "fbdh":  # frequent ids as heads (table 0's ranked), hashed tails
        counts = {"t0": torch.arange(40) % 7, "t1": torch.arange(30) % 5}
        plan = fbdh_plan({"t0": 40, "t1": 30}, fraction=0.5, counts=counts, seed=3)
        assert plan["t0"].mappings[0].ranked(40) and plan["t0"].mappings[1].tail_offset == 0
    elif encoding == "compact":  # every hash function compact (head/tail)
        plan = to_compact(plan)
    elif encoding == "ranked":  # every head's rows its ranks: held ranked (head_rank)
        plan = to_compact(plan, ranked=True)
    reference = LearnedHashEmbeddingBagCollection(
        tables=three_tables(), plan=plan, is_weighted=weighted
    )
    assert reference.remap.has_ranked == (encoding in ("ranked", "fbdh"))
    model = sharded_copy(reference, plan, sharding_type, world_size)

    batches = [_batch(seed, weighted) for seed in range(world_size)]
    out = model(batches[rank]).wait()
    ref_out = reference(_concat(batches))
    assert out.keys() == ref_out.keys() == ["f0", "f1", "f2", "f3"]
    torch.testing.assert_close(out.values(), ref_out.values()[rank * BATCH : (rank + 1) * BATCH])

    # one training step: loss = weighted sum of outputs (fused SGD inside backward)
    w = torch.arange(out.values().shape[1], dtype=torch.float32) / 10
    (out.values() * w).sum().backward()
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    if dense:  # data-parallel tables are not fused: step them here
        torch.optim.SGD(dense.values(), lr=LR).step()
    # TorchRec divides embedding gradients by the world size (gradient division, as DDP
    # averages dense ones): the reference loss over the global batch is scaled to match.
    (ref_out.values() * w).sum().div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()

    assert_state_equals(model, reference.state_dict(), rank)

    # a negative length (f3's lengths still adding up to its ids) is refused on every rank
    # before the input dist's collectives, and the next batch is looked up as unsharded
    lengths = batches[rank].lengths().clone()
    lengths[1], lengths[2] = -1, lengths[2] + lengths[1] + 1
    bad = KeyedJaggedTensor(
        keys=batches[rank].keys(),
        values=batches[rank].values(),
        lengths=lengths,
        weights=batches[rank].weights_or_none(),
    )
    with pytest.raises(ValueError, match=r"lengths\[1\] = -1 \(feature 'f3', sample 1\) is neg"):
        model(bad)
    out = model(batches[rank]).wait()
    with torch.no_grad():
        expected = reference(_concat(batches)).values()[rank * BATCH : (rank + 1) * BATCH]
    torch.testing.assert_close(out.values(), expected)


def _all_divided(plan: HashPlan) -> bool:
    """Whether every table of ``plan`` has a divided tail (a seed below -1: computed)."""
    return all(any(getattr(m, "tail_seed", 0) < -1 for m in t.mappings) for t in plan)


def sharded_copy(
    reference: LearnedHashEmbeddingBagCollection,
    plan: HashPlan,
    sharding_type: str,
    world_size: int,
) -> torch.nn.Module:
    """A DMP-sharded copy of ``reference`` (of :func:`three_tables` by ``plan``; its
    weighting and state), each internal table placed by ``sharding_type``, with fused SGD at ``LR``."""
    sharder = LearnedHashEmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
    )
    module = LearnedHashEmbeddingBagCollection(
        tables=three_tables(),
        plan=plan,
        device=torch.device("meta"),
        is_weighted=reference.is_weighted(),
    )
    names = [c.name for c in module.internal_embedding_bag_configs()]
    model = shard_on_cpu(
        module,
        sharder,
        {n: placement(sharding_type, i, world_size) for i, n in enumerate(names)},
        world_size,
    )
    model.load_state_dict({k: v.clone() for k, v in reference.state_dict().items()})
    return model


def assert_state_equals(model: torch.nn.Module, ref_state: dict, rank: int) -> None:
    """The sharded ``model``'s whole state (gathered on rank 0) equals ``ref_state``."""
    for key, value in model.state_dict().items():
        full = _full(value, rank)
        if rank == 0:
            torch.testing.assert_close(full, ref_state[key], msg=lambda m, key=key: f"{key}: {m}")
    assert set(model.state_dict()) == set(ref_state)


def _concat(batches: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    keys = batches[0].keys()
    per = [b.to_dict() for b in batches]
    values = torch.cat([torch.cat([p[k].values() for p in per]) for k in keys])
    lengths = torch.cat([torch.cat([p[k].lengths() for p in per]) for k in keys])
    weights = None
    if batches[0].weights_or_none() is not None:
        weights = torch.cat([torch.cat([p[k].weights() for p in per]) for k in keys])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights)


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("encoding", "weighted"),
    [
        ("dense", False),
        ("compact", False),
        ("ranked", False),
        ("compact", True),
        ("computed", False),
        ("memrec", False),
        ("fbdh", True),
    ],
)
@pytest.mark.parametrize("sharding_type", TESTED_SHARDING_TYPES)
def test_sharded_equals_unsharded(sharding_type: str, encoding: str, weighted: bool) -> None:
    """Outputs, one training step and the tables after it equal the unsharded collection's;
    ``weighted``: per-id weights (``is_weighted``) travel with the remapped ids through the
    input dist."""
    combine = "concat" if sharding_type in ("column_wise", "data_parallel") else "sum"
    run_multiprocess(
        _sharded_vs_unsharded,
        world_size=2,
        sharding_type=sharding_type,
        combine=combine,
        encoding=encoding,
        weighted=weighted,
    )


def test_sharder_rejects_untested_sharding_type() -> None:
    with pytest.raises(ValueError, match="table_column_wise"):
        LearnedHashEmbeddingBagCollectionSharder(sharding_types=["table_column_wise"])


def _sharded_step_host_reads(rank: int, world_size: int, learned: bool) -> int:
    """TorchRec's allowed host reads in one sharded step (any other read raises)."""
    sharder_cls = (
        LearnedHashEmbeddingBagCollectionSharder if learned else EmbeddingBagCollectionSharder
    )
    sharder = sharder_cls(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    plan = two_hash_plan("sum")
    if learned:
        module = LearnedHashEmbeddingBagCollection(
            tables=three_tables(), plan=plan, device=torch.device("meta")
        )
        batch = _batch(seed=0)
    else:
        reference = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan)
        module = EmbeddingBagCollection(
            tables=reference.internal_embedding_bag_configs(), device=torch.device("meta")
        )
        batch = reference.remap(_batch(seed=0))
        batch = KeyedJaggedTensor(keys=batch.keys(), values=batch.values(), lengths=batch.lengths())
    names = [c.name for c in internal_table_configs(module)]
    per_param = {n: table_wise(rank=0, compute_kernel=FUSED) for n in names}
    model = shard_on_cpu(module, sharder, per_param, world_size)
    model(batch).wait()  # the first step creates TorchRec's input dists
    batch = KeyedJaggedTensor(keys=batch.keys(), values=batch.values(), lengths=batch.lengths())
    with host_reads(allow_torchrec=True) as reads:
        model(batch).wait().values().sum().backward()
    return len(reads.allowed)


@pytest.mark.distributed
def test_sharded_step_reads_no_more_than_plain_ebc() -> None:
    """World size 1 on gloo: the remap in input_dist and the combine add no host read."""
    (learned,) = run_multiprocess(_sharded_step_host_reads, world_size=1, learned=True)
    (plain,) = run_multiprocess(_sharded_step_host_reads, world_size=1, learned=False)
    assert learned <= plain, (learned, plain)


def _plain_sharded_vs_unsharded(rank: int, world_size: int, sharding_type: str) -> None:
    """A plain EBC sharded by :class:`PlainEmbeddingBagCollectionSharder`: forward and one
    fused SGD step equal the unsharded collection's."""
    torch.manual_seed(1)
    reference = EmbeddingBagCollection(tables=three_tables())
    sharder = PlainEmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
    )
    module = EmbeddingBagCollection(tables=three_tables(), device=torch.device("meta"))
    names = [c.name for c in module.embedding_bag_configs()]
    per_param = {n: placement(sharding_type, i, world_size) for i, n in enumerate(names)}
    model = shard_on_cpu(module, sharder, per_param, world_size)
    model.load_state_dict({k: v.clone() for k, v in reference.state_dict().items()})
    batches = [_batch(seed) for seed in range(world_size)]
    out = model(batches[rank]).wait()
    ref_out = reference(_concat(batches))
    torch.testing.assert_close(out.values(), ref_out.values()[rank * BATCH : (rank + 1) * BATCH])
    w = torch.arange(out.values().shape[1], dtype=torch.float32) / 10
    (out.values() * w).sum().backward()
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    if dense:  # (table_row_wise's test placement is on the dense kernel: not fused)
        torch.optim.SGD(dense.values(), lr=LR).step()
    (ref_out.values() * w).sum().div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    assert_state_equals(model, reference.state_dict(), rank)


@pytest.mark.distributed
@pytest.mark.parametrize("sharding_type", ["row_wise", "table_row_wise"])
def test_the_plain_sharder_shards_row_wise_on_cpu(sharding_type: str) -> None:
    """TorchRec's EBC sharder offers row_wise and table_row_wise on CUDA only: a plain
    model restricted to them (the DLRM app's full baseline or teacher with
    ``--sharding_types row_wise``) failed to plan on CPU. Offered here, it shards."""
    assert sharding_type not in EmbeddingBagCollectionSharder().sharding_types("cpu")
    assert sharding_type in PlainEmbeddingBagCollectionSharder().sharding_types("cpu")
    cuda = EmbeddingBagCollectionSharder().sharding_types("cuda")
    assert PlainEmbeddingBagCollectionSharder().sharding_types("cuda") == cuda
    run_multiprocess(_plain_sharded_vs_unsharded, world_size=2, sharding_type=sharding_type)
