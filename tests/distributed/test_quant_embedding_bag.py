"""Quantized learned-hash EBC through TorchRec's inference sharding (one CPU rank):
sharded == unsharded quantized, FX-traced and scripted == eager."""

# NOTE: no ``from __future__ import annotations``: FX copies _Pooled.forward's annotations
# into its generated code, where TorchScript needs real types.

import dataclasses

import pytest
import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.distributed.types import ParameterSharding, ShardingEnv

from tests._fixtures import three_tables, two_hash_plan
from tests._vbe import vbe_batch
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.distributed.quant_embedding_bag import (
    QuantLearnedHashEmbeddingBagCollectionSharder,
    ShardedQuantLearnedHashEmbeddingBagCollection,
)
from torchrec_lhf.inference import (
    quantize_for_inference,
    script_for_inference,
    shard_for_inference,
)
from torchrec_lhf.modules.quant import QuantLearnedHashEmbeddingBagCollection


class _Pooled(nn.Module):
    """A collection as a model of plain tensors (TorchRec shards children, not the root)."""

    def __init__(self, ebc: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.ebc = ebc
        self.keys = keys

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths)
        return self.ebc(kjt).values()


def _model(combine: str) -> _Pooled:
    torch.manual_seed(0)
    tables = three_tables(dims=(8, 8, 4))
    plan = two_hash_plan(combine)
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    # NOTE: the input's key order differs from the tables' (the remap reorders)
    return _Pooled(ebc, ["f3", "f2", "f1", "f0"]).eval()


def _inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    lengths = torch.randint(0, 3, (4 * batch,), generator=g)  # multi-hot, some empty
    heights = torch.tensor([12, 30, 40, 40]).repeat_interleave(batch)
    values = torch.cat(
        [torch.randint(0, int(h), (int(n),), generator=g) for h, n in zip(heights, lengths)]
    )
    return values, lengths


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_sharded_quantized_equals_unsharded(combine: str) -> None:
    model = _model(combine)
    quantized = quantize_for_inference(model, dtype="int8")
    assert isinstance(quantized.ebc, QuantLearnedHashEmbeddingBagCollection)
    batch = _inputs(5)
    expected = quantized(*batch)
    torch.testing.assert_close(expected, model(*batch), atol=0.02, rtol=0)  # int8 rows
    sharded = shard_for_inference(quantized, _inputs(2))
    assert isinstance(sharded.ebc, ShardedQuantLearnedHashEmbeddingBagCollection)
    assert [c.name for c in sharded.ebc.embedding_bag_configs()] == ["t0", "t1", "t2"]
    internal = [c.name for c in sharded.ebc.internal_embedding_bag_configs()]
    assert internal == ["t0", "t1__h0", "t1__h1", "t2"]
    for b in (1, 5, 8):
        batch = _inputs(b)
        torch.testing.assert_close(sharded(*batch), quantized(*batch), atol=0, rtol=0)
    # a variable batch per feature is refused by name (FBGEMM's inference kernel would read
    # its offsets as garbage), before the remap
    vbe, _ = vbe_batch(seed=0)
    with pytest.raises(ValueError, match=r"variable batch per feature \(VBE\), which TorchRec"):
        sharded.ebc(vbe)


def test_fp32_tables_serve_the_float_model_exactly() -> None:
    model = _model("sum")
    sharded = shard_for_inference(quantize_for_inference(model, dtype="fp32"), _inputs(2))
    batch = _inputs(6)
    torch.testing.assert_close(sharded(*batch), model(*batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_traced_and_scripted_equal_eager(combine: str) -> None:
    sharded = shard_for_inference(quantize_for_inference(_model(combine)), _inputs(2))
    scripted = script_for_inference(sharded)
    for b in (1, 4, 9):
        batch = _inputs(b)
        torch.testing.assert_close(scripted(*batch), sharded(*batch), atol=0, rtol=0)


def test_sharder_offers_the_tested_types_and_internal_tables() -> None:
    quantized = quantize_for_inference(_model("sum")).ebc
    sharder = QuantLearnedHashEmbeddingBagCollectionSharder()
    assert sharder.sharding_types("cpu") == ["table_wise"]
    assert sorted(sharder.shardable_parameters(quantized)) == ["t0", "t1__h0", "t1__h1", "t2"]
    row_wise = ParameterSharding(sharding_type="row_wise", compute_kernel="quant", ranks=[0])
    with pytest.raises(ValueError, match="'t0': sharding type 'row_wise' is not supported"):
        sharder.shard(quantized, {"t0": row_wise}, ShardingEnv.from_local(1, 0))


def _one_hash_model(*, shared: bool) -> _Pooled:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    plan = HashPlan.from_mappings(
        {
            "t0": torch.randint(0, 10, (40,), generator=g),
            "t1": torch.randint(0, 8, (30,), generator=g),
        },
        heights={"t0": 10, "t1": 8},
    )
    tables = three_tables(dims=(8, 8, 4))
    if not shared:
        tables[0] = dataclasses.replace(tables[0], feature_names=["f0"])
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan)
    keys = ["f3", "f2", "f1", "f0"] if shared else ["f3", "f2", "f0"]
    return _Pooled(ebc, keys).eval()


def _one_feature_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, lengths = _inputs(batch)
    keep = torch.ones(values.numel(), dtype=torch.bool)
    start = int(lengths[: 2 * batch].sum())  # drop key f1 (the third of f3, f2, f1, f0)
    keep[start : start + int(lengths[2 * batch : 3 * batch].sum())] = False
    return values[keep], torch.cat([lengths[: 2 * batch], lengths[3 * batch :]])


def test_one_dense_hash_per_table_remaps_inside_fbgemm() -> None:
    model = _one_hash_model(shared=False)
    quantized = quantize_for_inference(model, dtype="int8")  # remaps with its own buffers
    sharded = shard_for_inference(
        quantize_for_inference(model, dtype="int8"), _one_feature_inputs(2)
    )
    assert sharded.ebc.remap_in_kernel
    tbes = [m for m in sharded.modules() if isinstance(m, IntNBitTableBatchedEmbeddingBagsCodegen)]
    remapped = {spec[0] for tbe in tbes for spec in tbe.embedding_specs}
    assert remapped == {"t0", "t1", "t2"}
    # t0's 40 and t1's 30 ids have rows; t2 (uncompressed) none
    assert sum(tbe.index_remappings_array.numel() for tbe in tbes) == 40 + 30
    scripted = script_for_inference(sharded)
    for b in (1, 5, 8):
        batch = _one_feature_inputs(b)
        expected = quantized(*batch)
        torch.testing.assert_close(sharded(*batch), expected, atol=0, rtol=0)
        torch.testing.assert_close(scripted(*batch), expected, atol=0, rtol=0)


@pytest.mark.parametrize("kernel", [True, False])
def test_ids_are_range_checked_before_fbgemm_remaps_them(kernel: bool) -> None:
    """FBGEMM's ``pruned_array_lookup`` reads its remapping array at the raw id unchecked:
    before, an id past a table gave an error naming a garbage row, another id's row, or a
    segmentation fault. Compressed (t0: f0, t1: f2) and uncompressed (t2: f3) features,
    the CPU kernel's check and the torch ops'."""
    model = _one_hash_model(shared=False)
    sharded = shard_for_inference(quantize_for_inference(model), _one_feature_inputs(2))
    assert sharded.ebc.remap_in_kernel
    sharded.ebc.remap.read_lengths_on_cpu = kernel
    values, lengths = _one_feature_inputs(6)  # keys f3, f2, f0 (heights 12, 30, 40)
    per_key = lengths.view(3, 6).sum(1).tolist()
    starts = [0, per_key[0], per_key[0] + per_key[1]]
    for key, name, height in ((0, "f3", 12), (1, "f2", 30), (2, "f0", 40)):
        for bad in (height, height + 1, 10**12, -1):
            wrong = values.clone()
            wrong[starts[key]] = bad
            with pytest.raises(
                ValueError, match=rf"feature '{name}': id {bad} is out of range \[0, {height}\)"
            ):
                sharded(wrong, lengths)
    torch.testing.assert_close(sharded(values, lengths), model(values, lengths), atol=0.02, rtol=0)


def test_two_hashes_or_shared_tables_keep_the_remap_outside_the_kernel() -> None:
    sharded = shard_for_inference(quantize_for_inference(_model("sum")), _inputs(2))
    assert not sharded.ebc.remap_in_kernel
    model = _one_hash_model(shared=True)  # t0 read by f0 and f1
    quantized = quantize_for_inference(model)
    sharded = shard_for_inference(quantize_for_inference(model), _inputs(2))
    assert not sharded.ebc.remap_in_kernel
    batch = _inputs(5)
    torch.testing.assert_close(sharded(*batch), quantized(*batch), atol=0, rtol=0)


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_sum_and_mean_tables_interleaved_shard_as_they_quantize(combine: str) -> None:
    """A MEAN table between SUM ones (TorchRec's quantized EBC groups them by pooling type):
    the quantized model stays close to the float one (it did not, before) and the sharded
    one equals it."""
    from torchrec.modules.embedding_configs import PoolingType

    torch.manual_seed(0)
    pooling = (PoolingType.SUM, PoolingType.MEAN, PoolingType.SUM)
    tables = [
        dataclasses.replace(t, pooling=p) for t, p in zip(three_tables(dims=(8, 8, 4)), pooling)
    ]
    ebc = LearnedHashEmbeddingBagCollection(tables=tables, plan=two_hash_plan(combine))
    model = _Pooled(ebc, ["f3", "f2", "f1", "f0"]).eval()
    quantized = quantize_for_inference(model, dtype="int8")
    batch = _inputs(5)
    torch.testing.assert_close(quantized(*batch), model(*batch), atol=0.02, rtol=0)
    sharded = shard_for_inference(quantized, _inputs(2))
    for b in (1, 5, 8):
        batch = _inputs(b)
        torch.testing.assert_close(sharded(*batch), quantized(*batch), atol=0, rtol=0)
