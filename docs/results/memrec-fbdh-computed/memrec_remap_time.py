"""The remap alone of a memrec plan (old: dense permutations; new: computed): 26 Kaggle
tables capped at 1M ids, 10% of the rows, batch 4,096 one-hot (pooling 1) or 2,048 x 4;
the median of 200 calls after 20, 32 MB written between calls to evict the caches.
Run from a checkout's root: PYTHONPATH=. OMP_NUM_THREADS=1 python THIS_FILE POOLING [METHOD]"""

import json
import statistics
import sys
import time

import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

from benchmarks.remap import CRITEO_HEIGHTS
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.compression.methods import get_method

torch.set_num_threads(1)
pooling = int(sys.argv[1]) if len(sys.argv) > 1 else 1
batch = 4096 // max(1, pooling // 2)
heights = {f"t{i}": min(n, 1_000_000) for i, n in enumerate(CRITEO_HEIGHTS)}
plan = get_method(sys.argv[2] if len(sys.argv) > 2 else "memrec")(heights, fraction=0.1)
tables = [
    EmbeddingBagConfig(name=t, embedding_dim=16, num_embeddings=n, feature_names=[f"f_{t}"])
    for t, n in heights.items()
]
module = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, device="meta")
g = torch.Generator().manual_seed(0)
ids = torch.cat([torch.randint(0, n, (batch * pooling,), generator=g) for n in heights.values()])
lengths = torch.full((26 * batch,), pooling)
kjt = KeyedJaggedTensor(keys=[f"f_{t}" for t in heights], values=ids, lengths=lengths)
junk = torch.empty(8 * 2**20)
seconds = []
for i in range(220):
    junk.add_(1.0)
    start = time.perf_counter()
    module.remap(kjt)
    if i >= 20:
        seconds.append(time.perf_counter() - start)
out = {
    "pooling": pooling,
    "ids": ids.numel(),
    "remap_bytes": module.remap.remap_bytes(),
    "median_ms": 1e3 * statistics.median(seconds),
}
print(json.dumps(out))
