"""MLET under ``TrainPipelineSparseDist``: the sharded inner collection split from the projection.

Use :class:`PipelinedMLET` in place of a
:class:`~torchrec_lhf.modules.mlet.MultiLayerEmbeddingBagCollection` in any model trained
through TorchRec's train pipelines (the DLRM app does).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf.modules.mlet import MultiLayerEmbeddingBagCollection, hands_raw_ids
from torchrec_lhf.modules.remap import refuse_negative_lengths

torch.fx.wrap("refuse_negative_lengths")  # one opaque node where the train pipeline traces


class PipelinedMLET(nn.Module):
    """An MLET collection split so that TrainPipelineSparseDist can pipeline it.

    The pipeline FX-traces every module that holds a sharded module; MLET's projection
    step reads the inner KeyedTensor's keys, which a trace cannot. Here the inner
    collection (sharded) is a child of its own and the MLET module, its inner collection
    swapped for an identity, only projects: it holds no sharded module, so the tracer
    keeps it as a leaf. The output equals ``mlet(features)``.

    Args:
        mlet: the MLET collection (its ``inner`` is moved here).
    """

    def __init__(self, mlet: MultiLayerEmbeddingBagCollection) -> None:
        super().__init__()
        self.inner = mlet.inner
        mlet.inner = _PassKeyedTensor()
        self.mlet = mlet

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The logical table configs (dims ``d``)."""
        return self.mlet.embedding_bag_configs()

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Args: features: raw ids. Returns: the pooled ``(B, sum d)`` embeddings."""
        if hands_raw_ids(self.inner):
            refuse_negative_lengths(features)
        return self.mlet(self.inner(features))


class _PassKeyedTensor(nn.Module):
    """Stands in for MLET's inner collection: its input is already the pooled KeyedTensor."""

    def forward(self, pooled: KeyedTensor) -> KeyedTensor:
        return pooled

    def is_weighted(self) -> bool:
        return False
