"""GPU check of the pure-torch parts: remap and combine speed, no host sync, clustering.

Runs where only torch is installed (no torchrec, no fbgemm): it exercises
:mod:`torchrec_lhf.modules.remap_ops` (the remap and combine math of the learned-hash
modules, which imports torch only) and ``benchmarks.clustering``. Start it through
``benchmarks/gpu_check.sh``, which makes ``torchrec_lhf``'s subpackages importable
without its top-level ``__init__`` (that one imports torchrec). Prints one JSON object.

Steps:

* ``sync``: the remap (one-hot, multi-hot, weighted, two hashes, an uneven layout with
  per-key lengths given, a compact head/tail layout; where the keys are the features in
  order, also the serving wrapper's remap of a request, ``request_rows``; a layout with
  divided tails, as QR's quotient) and the combine
  (sum, concat; forward and backward) under ``torch.cuda.set_sync_debug_mode("error")``,
  which raises on any host-device sync;
* ``remap``: seconds per batch of the remap of a Criteo-sized batch (26 features, ids
  capped at 1M per table), dense and compact (head/tail: the cuckoo table of the heads and
  the tail hash), one-hot and ``--pooling 4``, against the gather of the same
  rows by a plain lookup (``torch.nn.functional.embedding_bag`` of the internal rows);
* ``combine``: seconds per batch of the two-hash combine (sum and concat);
* ``operator``: the serving operator ``torchrec_lhf::fused_remap`` (its torch-ops fallback
  on CUDA) gives the rows the CPU gives (the C++ kernel where this machine builds it),
  dense, compact and with divided tails;
* ``remap_profile``: kernels launched per remap of a 4,096 batch (dense and compact,
  pooling 4) and the five costliest, from ``torch.profiler``: where the time goes when the
  remap is launch-bound;
* ``remap_compiled``: the same remaps under ``torch.compile`` (dynamic shapes): their time
  and whether the rows are equal (what fusing the remap's elementwise ops would give);
* ``kth_select``: the clustering's selection of the k-th smallest key
  (:func:`~torchrec_lhf.clustering.agglomerative.kth_smallest`) equals CPU ``kthvalue`` on
  10M keys with ties, and its time against CUDA ``kthvalue``;
* ``clustering``: ``python -m benchmarks.clustering --device cuda --json``, 1M and 10M ids;
* ``tests``: ``pytest tests/clustering`` (torch-only; its ``gpu`` tests run on CUDA).

Each step's result is also written to stderr as it finishes (one JSON line), so that a run
cut short keeps what it measured.

Usage::

    python -m benchmarks.gpu_check [--device cpu]   # --device cpu: a dry run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks._gpu_remap import (
    CRITEO_HEIGHTS,
    Tables,
    bench_combine,
    bench_remap,
    check_operator,
    compiled_remap,
    make_batch,
    profile_remap,
    timed,
)
from torchrec_lhf.cli import comma_list, int_at_least
from torchrec_lhf.clustering.agglomerative import kth_smallest
from torchrec_lhf.modules.remap_ops import combine_plan, combine_values


def check_sync(device: str) -> dict:
    """The remap and combine under ``set_sync_debug_mode("error")`` (CUDA) for each case."""
    heights = [min(h, 10_000) for h in CRITEO_HEIGHTS[:6]]
    cases: dict[str, str] = {}
    for name, num_hashes, pooling, weighted, reorder in [
        ("one_hot", 1, 1, False, False),
        ("multi_hot", 1, 0, False, True),
        ("weighted", 1, 0, True, True),
        ("two_hash", 2, 0, True, False),
        ("uneven_with_length_per_key", 1, 0, False, "drop"),
        ("compact_multi_hot", 1, 0, False, "compact"),
        ("divided_multi_hot", 1, 0, False, "divided"),  # QR's quotient: a division per id
    ]:
        compact = reorder if reorder in ("compact", "divided") else False
        tables = Tables(heights, num_hashes, device, compact=compact)
        batch = make_batch(heights, 64, pooling, weighted=weighted, device=device)
        if reorder == "drop":
            tables.drop_first()
            per_key = batch["lengths"].view(len(heights), -1).sum(1)
            batch["length_per_key"] = per_key.tolist()  # as a KJT that carries them
        elif reorder is True:
            tables.reverse()
        tables.remap(batch)  # warm-up: caches the key layout (one host-to-device copy)
        in_dims = [8] * 2 * len(heights)
        in_keys = [f"k{i}" for i in range(len(in_dims))]
        out = {}
        for combine in ("sum", "concat"):
            sources = [(in_keys[2 * i : 2 * i + 2], combine) for i in range(len(heights))]
            dims = [8 if combine == "sum" else 16] * len(heights)
            first, passes = combine_plan(in_keys, in_dims, dims, sources)
            out[combine] = (
                torch.tensor(first, device=device),
                [(m, torch.tensor(d, device=device), torch.tensor(s, device=device)) for m, d, s in passes],
            )  # fmt: skip
        pooled = torch.randn(64, sum(in_dims), device=device, requires_grad=True)
        try:
            identity = tables.sources == tables.keys  # (as a serving request's)
            with _sync_errors(device):
                tables.remap(batch)
                if identity:
                    tables.request(batch)
                for first_C, passes in out.values():
                    combine_values(pooled, first_C, passes).square().sum().backward()
            cases[name] = "ok"
        except RuntimeError as error:
            cases[name] = f"FAILED: {str(error).splitlines()[0]}"
    return {"cases": cases, "ok": all(v == "ok" for v in cases.values())}


@contextlib.contextmanager
def _sync_errors(device: str) -> Iterator[None]:
    """Any host-device sync inside raises (CUDA; nothing to check on CPU)."""
    if device != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_kth(device: str, num_keys: int) -> dict:
    """kth_smallest on ``device`` against CPU kthvalue (keys with ties), and its time."""
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, num_keys // 4, (num_keys,), generator=g).double()
    moved = keys.to(device)
    ks = [1, num_keys // 10, num_keys // 2, num_keys]
    equal = all(float(kth_smallest(moved, k)) == float(keys.kthvalue(k).values) for k in ks)
    k = num_keys // 10
    return {
        "ok": equal,
        "keys": num_keys,
        "kth_smallest_seconds": timed(lambda: kth_smallest(moved, k), device, 5, 1),
        "kthvalue_seconds": timed(lambda: moved.kthvalue(k), device, 5, 1),
    }


def run_tests() -> dict:
    """``pytest tests/clustering`` in a subprocess (its ``gpu`` tests need CUDA)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/clustering"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return {"ok": out.returncode == 0, "tail": out.stdout[-600:]}


def bench_clustering(device: str, num_ids: int) -> dict:
    cmd = [
        sys.executable, "-m", "benchmarks.clustering", "--device", device,
        "--num-ids", str(num_ids), "--num-clusters", str(num_ids // 10), "--json",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"ok": False, "stderr_tail": out.stderr[-2000:]}
    return {"ok": True, **json.loads(out.stdout)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ints = comma_list(int_at_least(1), "ints >= 1", unique=True)  # (steps keyed by value)
    parser.add_argument("--batch_sizes", type=ints, default=[4096, 65536], help="remap and combine")
    parser.add_argument("--clustering_ids", type=ints, default=[1_000_000, 10_000_000])
    args = parser.parse_args(argv)
    batch_sizes = args.batch_sizes
    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"gpu_check": "skipped", "reason": "CUDA is not available (try --device cpu)"}
        print(json.dumps(result))
        return result
    result: dict = {
        "gpu_check": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    steps: list[tuple[str, Callable[[], object]]] = [
        ("sync", lambda: check_sync(args.device)),
        ("operator", lambda: check_operator(args.device)),
        *[(f"remap_batch_{b}", lambda b=b: bench_remap(args.device, b)) for b in batch_sizes],
        *[(f"combine_seconds_batch_{b}", lambda b=b: bench_combine(args.device, b)) for b in batch_sizes],
        ("remap_profile", lambda: profile_remap(args.device, batch_sizes[0])),
        ("remap_compiled", lambda: compiled_remap(args.device, batch_sizes[0])),
        ("kth_select", lambda: check_kth(args.device, args.clustering_ids[-1])),
        *[
            (f"clustering_{n}", lambda n=n: bench_clustering(args.device, n))
            for n in args.clustering_ids
        ],
        ("tests", run_tests),
    ]  # fmt: skip
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            result[name] = step()
        except Exception as error:  # noqa: BLE001 (reported, and the next step runs)
            result[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
        print(json.dumps({"step": name, "wall_seconds": time.perf_counter() - t0, name: result[name]}), file=sys.stderr, flush=True)  # fmt: skip
    result["ok"] = all(v.get("ok", True) for k, v in result.items() if isinstance(v, dict))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
