"""The quantized learned-hash EmbeddingCollection through TorchRec's inference sharding
(one CPU rank): sharded == unsharded quantized, traced and scripted == eager."""

# NOTE: no ``from __future__ import annotations``: FX copies _Sequence.forward's annotations
# into its generated code, where TorchScript needs real types.

import pytest
import torch
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from tests._compact import to_compact
from tests._fixtures import sequence_batch, sequence_tables, two_hash_plan
from torchrec_lhf import HashPlan, LearnedHashEmbeddingCollection
from torchrec_lhf.compression.methods import memrec_plan
from torchrec_lhf.distributed.quant_embedding import (
    QuantLearnedHashEmbeddingCollectionSharder,
    ShardedQuantLearnedHashEmbeddingCollection,
)
from torchrec_lhf.inference import (
    quantize_for_inference,
    script_for_inference,
    shard_for_inference,
)
from torchrec_lhf.modules.quant import QuantLearnedHashEmbeddingCollection

KEYS = ["f3", "f0", "f2", "f1"]  # sequence_batch's key order


class _Sequence(nn.Module):
    """A learned-hash sequence collection beside a plain one, as a model of plain tensors
    (TorchRec shards children, not the root): every per-id embedding, feature by feature."""

    def __init__(self, plan: HashPlan) -> None:
        super().__init__()
        self.ec = LearnedHashEmbeddingCollection(tables=sequence_tables(), plan=plan)
        self.plain = EmbeddingCollection(tables=[_plain_table()])

    def forward(
        self, values: torch.Tensor, lengths: torch.Tensor, g_values: torch.Tensor
    ) -> torch.Tensor:
        out = self.ec(KeyedJaggedTensor(keys=KEYS, values=values, lengths=lengths))
        g = KeyedJaggedTensor(keys=["g"], values=g_values, lengths=torch.ones_like(g_values))
        plain = self.plain(g)["g"].values()
        per_id = [out["f0"].values(), out["f1"].values(), out["f2"].values(), out["f3"].values()]
        return torch.cat([*per_id, plain])


def _plain_table() -> EmbeddingConfig:
    return EmbeddingConfig(name="u", embedding_dim=8, num_embeddings=5, feature_names=["g"])


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kjt = sequence_batch(seed)
    return kjt.values(), kjt.lengths(), torch.arange(seed + 1) % 5


def _plan(encoding: str) -> HashPlan:
    if encoding == "memrec":
        return memrec_plan({"t0": 40, "t1": 30}, fraction=0.3, seed=3)
    plan = two_hash_plan("sum")
    return to_compact(plan, ranked=True) if encoding == "ranked" else plan


@pytest.mark.parametrize("encoding", ["dense", "ranked", "memrec"])
def test_sharded_quantized_equals_unsharded_and_scripts(encoding: str) -> None:
    torch.manual_seed(0)
    model = _Sequence(_plan(encoding)).eval()
    quantized = quantize_for_inference(model, dtype="int8")
    assert isinstance(quantized.ec, QuantLearnedHashEmbeddingCollection)
    batch = _inputs(5)
    expected = quantized(*batch)
    torch.testing.assert_close(expected, model(*batch), atol=0.02, rtol=0)  # int8 rows
    sharded = shard_for_inference(quantized, _inputs(2))
    assert isinstance(sharded.ec, ShardedQuantLearnedHashEmbeddingCollection)
    assert [c.name for c in sharded.ec.embedding_configs()] == ["t0", "t1", "t2"]
    internal = [c.name for c in quantized.ec.internal_embedding_configs()]
    assert [c.name for c in sharded.ec.internal_embedding_configs()] == internal
    scripted = script_for_inference(sharded)
    for seed in (1, 5, 8):
        batch = _inputs(seed)
        torch.testing.assert_close(sharded(*batch), quantized(*batch), atol=0, rtol=0)
        torch.testing.assert_close(scripted(*batch), quantized(*batch), atol=0, rtol=0)


def test_fp32_tables_serve_the_float_model_exactly() -> None:
    torch.manual_seed(0)
    model = _Sequence(_plan("ranked")).eval()
    sharded = shard_for_inference(quantize_for_inference(model, dtype="fp32"), _inputs(2))
    batch = _inputs(3)
    torch.testing.assert_close(script_for_inference(sharded)(*batch), model(*batch))


def test_sharder_offers_table_wise_and_the_internal_tables() -> None:
    torch.manual_seed(0)
    quantized = quantize_for_inference(_Sequence(_plan("dense")).eval(), dtype="int8")
    sharder = QuantLearnedHashEmbeddingCollectionSharder()
    assert sharder.sharding_types("cpu") == ["table_wise"]
    assert sorted(sharder.shardable_parameters(quantized.ec)) == ["t0", "t1__h0", "t1__h1", "t2"]
    assert sharder.module_type is QuantLearnedHashEmbeddingCollection
