"""PipelinedMLET: the same output as the MLET collection, with the projection traceable apart."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.train_pipeline.tracing import Tracer

from torchrec_lhf.distributed.mlet import PipelinedMLET
from torchrec_lhf.modules.mlet import MultiLayerEmbeddingBagCollection


def _mlet() -> MultiLayerEmbeddingBagCollection:
    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=7, feature_names=["f0"]),
        EmbeddingBagConfig(name="t1", embedding_dim=4, num_embeddings=5, feature_names=["f1"]),
    ]
    return MultiLayerEmbeddingBagCollection(tables=tables, inner_dim_fraction=0.5)


def _kjt() -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=["f0", "f1"],
        values=torch.tensor([0, 6, 3, 1, 4, 2]),
        lengths=torch.tensor([2, 1, 1, 2]),
    )


def test_pipelined_mlet_matches_the_collection() -> None:
    mlet = _mlet()
    expected = mlet(_kjt())
    inner = mlet.inner
    pipelined = PipelinedMLET(mlet)
    assert pipelined.inner is inner  # the sharded part is a child of its own
    out = pipelined(_kjt())
    assert out.keys() == expected.keys()
    torch.testing.assert_close(out.values(), expected.values())
    assert [c.embedding_dim for c in pipelined.embedding_bag_configs()] == [4, 4]


def test_the_projection_holds_no_embedding_tables() -> None:
    """The pipeline's tracer keeps ``mlet`` a leaf: it must own no table of its own."""
    pipelined = PipelinedMLET(_mlet())
    names = [n for n, _ in pipelined.mlet.named_parameters()]
    assert names and not any("embedding_bags" in n for n in names)
    # As TrainPipelineSparseDist traces it: the sharded child and the table-free child leaves
    graph = Tracer(leaf_modules=["inner", "mlet"]).trace(pipelined)
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    assert called == {"inner", "mlet"}


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("lengths", [[2, 1, -1, 2], [2, -1, 2, 1]])
def test_a_negative_length_is_refused_before_the_inner_collection_reads_it(
    pipelined: bool, lengths: list[int]
) -> None:
    """Before, the inner plain EBC read backwards offsets: where the lengths add up to the
    ids ([2, -1, 2, 1]) a bag pooled garbage without a word, else FBGEMM's error named
    nothing."""
    module = PipelinedMLET(_mlet()) if pipelined else _mlet()
    bad = KeyedJaggedTensor(
        keys=["f0", "f1"], values=torch.tensor([0, 6, 3, 1, 4, 2]), lengths=torch.tensor(lengths)
    )
    where = lengths.index(-1)
    feature, sample = ("f0", where) if where < 2 else ("f1", where - 2)
    with pytest.raises(
        ValueError, match=rf"lengths\[{where}\] = -1 \(feature '{feature}', sample {sample}\)"
    ):
        module(bad)
    assert module(_kjt()).values().shape == (2, 8)
