"""The old code's memrec plan and module at the MLPerf heights: peak RSS above the start.
Run from the root of a checkout of 6d1bf96: PYTHONPATH=. python THIS_FILE"""

import json

from torchrec import EmbeddingBagConfig

from benchmarks.clustering import _proc_status_kib, _reset_peak_rss
from benchmarks.modulo_memory import _heights
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.compression.methods import get_method

heights = _heights(1.0)
assert _reset_peak_rss()
before = _proc_status_kib("VmRSS") * 1024
plan = get_method("memrec")(heights, fraction=0.01)
tables = [
    EmbeddingBagConfig(name=t, embedding_dim=16, num_embeddings=n, feature_names=[f"f_{t}"])
    for t, n in heights.items()
]
module = LearnedHashEmbeddingBagCollection(tables=tables, plan=plan, device="meta")
peak = _proc_status_kib("VmHWM") * 1024 - before
out = {
    "plan_remap_bytes": plan.remap_bytes(),
    "module_remap_bytes": module.remap.remap_bytes(),
    "peak_rss_above_start_bytes": peak,
}
print(json.dumps(out))
