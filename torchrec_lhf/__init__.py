"""torchrec_lhf: learned hash functions for TorchRec embedding tables."""

from torchrec_lhf.modules.embedding import LearnedHashEmbeddingCollection
from torchrec_lhf.modules.embedding_bag import (
    LearnedHashEmbeddingBagCollection,
    apply_hash_plan,
)
from torchrec_lhf.plan import HashPlan, TableHash

__all__ = [
    "HashPlan",
    "LearnedHashEmbeddingBagCollection",
    "LearnedHashEmbeddingBagCollectionSharder",
    "LearnedHashEmbeddingCollection",
    "LearnedHashEmbeddingCollectionSharder",
    "TableHash",
    "apply_hash_plan",
    "build_plan",
]


def __getattr__(name: str):
    # Lazy: the sharder pulls in torchrec.distributed, the builder the clustering code.
    if name == "LearnedHashEmbeddingBagCollectionSharder":
        from torchrec_lhf.distributed.embedding_bag import LearnedHashEmbeddingBagCollectionSharder

        return LearnedHashEmbeddingBagCollectionSharder
    if name == "LearnedHashEmbeddingCollectionSharder":
        from torchrec_lhf.distributed.embedding import LearnedHashEmbeddingCollectionSharder

        return LearnedHashEmbeddingCollectionSharder
    if name == "build_plan":
        from torchrec_lhf.hash_build.plan_builder import build_plan

        return build_plan
    raise AttributeError(f"module 'torchrec_lhf' has no attribute {name!r}")
