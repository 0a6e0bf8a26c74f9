"""QR's remap alone at the MLPerf Criteo 1TB heights (26 tables, 204M ids), its quotient
computed from the id or held dense (a row per id, as before 2026-12-04): one thread, 26
one-hot features at 4,096 samples of ids drawn uniformly over each table, 32 MB written
between calls to evict the caches, the median of 200 calls after 20.
Run from a checkout's root: PYTHONPATH=. OMP_NUM_THREADS=1 python THIS_FILE computed|dense"""

import json
import statistics
import sys
import time

import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

from benchmarks.modulo_memory import _heights
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection, TableHash
from torchrec_lhf.compression.methods import get_method

torch.set_num_threads(1)
flow = sys.argv[1]
heights = _heights(1.0)
plan = get_method("qr")(heights, fraction=0.01)
if flow == "dense":
    plan = HashPlan(
        [
            TableHash(
                t.name,
                t.num_embeddings,
                (t.mappings[0], t.dense_mapping(1)),
                t.heights,
                t.combine,
            )
            for t in plan
        ],
        metadata=plan.metadata,
    )
tables = [
    EmbeddingBagConfig(name=t, embedding_dim=16, num_embeddings=n, feature_names=[f"f_{t}"])
    for t, n in heights.items()
]
module = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, device="meta")
g = torch.Generator().manual_seed(0)
ids = torch.cat([torch.randint(0, n, (4096,), generator=g) for n in heights.values()])
lengths = torch.ones(ids.numel(), dtype=torch.long)
kjt = KeyedJaggedTensor(keys=[f"f_{t}" for t in heights], values=ids, lengths=lengths)
junk = torch.empty(8 * 2**20)
seconds = []
for i in range(220):
    junk.add_(1.0)
    start = time.perf_counter()
    out = module.remap(kjt)
    if i >= 20:
        seconds.append(time.perf_counter() - start)
print(
    json.dumps(
        {
            "flow": flow,
            "remap_bytes": module.remap.remap_bytes(),
            "median_us": 1e6 * statistics.median(seconds),
            "rows_checksum": int(out.values().long().sum()),
        }
    )
)
