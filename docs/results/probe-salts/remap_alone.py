"""The remap alone of ``benchmarks.remap``'s module: the median of 200 calls, in ms (JSON).

Run from the project root: ``OMP_NUM_THREADS=1 PYTHONPATH=. python
docs/results/probe-salts/remap_alone.py --encoding compact --pooling P --batch_size B``
(``benchmarks.remap``'s flags); 64 MB are written between calls, as a training step evicts
the caches.
"""

import json
import statistics
import sys
import time

import torch

from benchmarks.remap import _fresh, _inputs, _order, _tables, parse_args
from torchrec_lhf import LearnedHashEmbeddingBagCollection

args = parse_args(sys.argv[1:])
heights, logical, small, plan = _tables(args)
raw = _inputs(
    heights, args.batch_size, args.pooling, seed=1, order=_order(heights, args.scatter_ids)
)
lhf = LearnedHashEmbeddingBagCollection(tables=logical, plan=plan)
for _ in range(20):
    lhf.remap(_fresh(raw))
seconds = []
evict = torch.empty(8 * 2**20, dtype=torch.long)
for _ in range(200):
    evict.add_(1)
    kjt = _fresh(raw)
    start = time.perf_counter()
    lhf.remap(kjt)
    seconds.append(time.perf_counter() - start)
print(json.dumps({"pooling": args.pooling, "median_ms": 1e3 * statistics.median(seconds)}))
