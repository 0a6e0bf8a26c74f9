"""GPU check of the pure-torch parts: remap and combine speed, no host sync, clustering.

Runs where only torch is installed (no torchrec, no fbgemm): it exercises
:mod:`torchrec_lhf.modules.remap_ops` (the remap and combine math of the learned-hash
modules, which imports torch only) and ``benchmarks.clustering``. Start it through
``benchmarks/gpu_check.sh``, which makes ``torchrec_lhf``'s subpackages importable
without its top-level ``__init__`` (that one imports torchrec). Prints one JSON object.

Steps:

* ``sync``: the remap (one-hot, multi-hot, weighted, two hashes, an uneven layout with
  per-key lengths given) and the combine (sum, concat; forward and backward) under
  ``torch.cuda.set_sync_debug_mode("error")``, which raises on any host-device sync (and a
  compact head/tail layout, multi-hot);
* ``remap``: seconds per batch of the remap of a Criteo-sized batch (26 features, ids
  capped at 1M per table), dense and compact (head/tail: the cuckoo table of the heads and
  the tail hash), one-hot and ``--pooling 4``, against the gather of the same
  rows by a plain lookup (``torch.nn.functional.embedding_bag`` of the internal rows);
* ``combine``: seconds per batch of the two-hash combine (sum and concat);
* ``clustering``: ``python -m benchmarks.clustering --device cuda --json``, small sizes.

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

from torchrec_lhf.hashing import mix_keyed, seed_keys
from torchrec_lhf.modules import head_table
from torchrec_lhf.modules.remap_ops import combine_plan, combine_values, remap_values

CRITEO_HEIGHTS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]  # fmt: skip


class Tables:
    """A learned-hash layout as remap_values takes it: H hash functions per table."""

    def __init__(
        self, heights: list[int], num_hashes: int, device: str, seed: int = 0, compact: bool = False
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.heights = heights
        self.keys = [f"f{i}" for i in range(len(heights))]
        self.sources: list[str] = []
        offsets, rows, pieces = [], [], []
        for i, n in enumerate(heights):
            m = max(1, n // 10)
            for _ in range(num_hashes):
                self.sources.append(self.keys[i])
                offsets.append(sum(p.numel() for p in pieces))
                rows.append(m)
                pieces.append(torch.randint(0, m, (n,), generator=g, dtype=torch.int32))
        self.rows = rows
        self.mapping = torch.cat(pieces).to(device)
        self.offset_J = torch.tensor(offsets, dtype=torch.int32, device=device)
        self.height_J = torch.tensor(
            [heights[self.keys.index(s)] for s in self.sources], device=device
        )
        self.compact: list[torch.Tensor] = []
        if compact:
            self._make_compact(pieces, rows, device)

    def _make_compact(self, pieces: list[torch.Tensor], rows: list[int], device: str) -> None:
        """Head/tail instead of dense: each internal feature's smallest 10% of ids (the
        frequent ones of :func:`make_batch`) in the cuckoo table, the others hashed."""
        seeds_J = torch.arange(len(pieces), dtype=torch.int64) + 11
        keys, head_rows, xs = [], [], []
        for j, (piece, offset) in enumerate(zip(pieces, self.offset_J.tolist())):
            ids_K = torch.arange(max(1, piece.numel() // 10))
            keys.append(offset + ids_K)
            head_rows.append(piece[ids_K])
            xs.append(mix_keyed(ids_K, seed_keys(seeds_J[j : j + 1]).expand(ids_K.numel())))
        slot_keys, slot_rows = head_table.build(
            torch.cat(keys).to(torch.int32), torch.cat(head_rows).to(torch.int32), torch.cat(xs)
        )
        num_j = len(pieces)
        self.compact = [
            t.to(device)
            for t in (
                slot_keys,
                slot_rows,
                seeds_J,
                torch.zeros(num_j, dtype=torch.int64),
                torch.tensor(rows, dtype=torch.int64),
                torch.ones(num_j, dtype=torch.bool),
            )
        ]
        self.mapping = self.mapping[:0]  # no dense mapping left

    def reverse(self) -> None:
        """Reverse the internal features: a layout that is not the identity."""
        self.sources = self.sources[::-1]
        self.offset_J, self.height_J = self.offset_J.flip(0), self.height_J.flip(0)

    def drop_first(self) -> None:
        """Drop the first internal feature: an input key the tables do not read."""
        self.sources = self.sources[1:]
        self.offset_J, self.height_J = self.offset_J[1:], self.height_J[1:]

    def remap(self, batch: dict) -> tuple:
        return remap_values(
            self.keys,
            batch["values"],
            batch["lengths"],
            batch["weights"],
            batch.get("length_per_key"),
            self.sources,
            self.mapping,
            self.offset_J,
            self.height_J,
            False,
            False,
            self.compact,
        )


def make_batch(
    heights: list[int], batch: int, pooling: int, *, weighted: bool, device: str, seed: int = 1
) -> dict:
    """Key-major raw ids: ``pooling`` ids per bag (0 = random 0..3), Zipf-like skew."""
    g = torch.Generator().manual_seed(seed)
    if pooling > 0:
        lengths = torch.full((len(heights), batch), pooling)
    else:
        lengths = torch.randint(0, 4, (len(heights), batch), generator=g)
    values = torch.cat(
        [
            (torch.rand(int(lengths[i].sum()), generator=g) ** 3 * h).long().clamp_max(h - 1)
            for i, h in enumerate(heights)
        ]
    )
    return {
        "values": values.to(device),
        "lengths": lengths.flatten().to(device),
        "weights": torch.rand(values.shape, generator=g).to(device) if weighted else None,
        "length_per_key": None,
    }


def _timed(step: Callable[[], object], device: str, iters: int = 30, warmup: int = 5) -> float:
    """Median seconds of ``step`` (CUDA events on CUDA)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


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
    ]:
        tables = Tables(heights, num_hashes, device, compact=reorder == "compact")
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
            with _sync_errors(device):
                tables.remap(batch)
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


def bench_remap(device: str, batch_size: int) -> dict:
    """Remap seconds per batch against a plain pooled lookup of the same rows."""
    heights = [min(h, 1_000_000) for h in CRITEO_HEIGHTS]
    results = {}
    for encoding, pooling in (("dense", 1), ("dense", 4), ("compact", 1), ("compact", 4)):
        tables = Tables(heights, 1, device, compact=encoding == "compact")
        batch = make_batch(heights, batch_size, pooling, weighted=False, device=device)
        rows, lengths, _, _ = tables.remap(batch)
        offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        weight = torch.randn(sum(tables.rows), 64, device=device)
        row_offset = torch.tensor([0, *tables.rows[:-1]], device=device).cumsum(0)
        flat = rows + torch.repeat_interleave(row_offset, lengths.view(len(heights), -1).sum(1))
        lookup = _timed(
            lambda f=flat, w=weight, o=offsets[:-1]: torch.nn.functional.embedding_bag(
                f, w, o, mode="sum"
            ),
            device,
        )
        remap = _timed(lambda b=batch, t=tables: t.remap(b), device)
        results[f"{encoding}_pooling_{pooling}"] = {
            "remap_seconds": remap,
            "lookup_seconds": lookup,
            "remap_over_lookup": remap / lookup,
            "ids": batch["values"].numel(),
        }
    return results


def bench_combine(device: str, batch_size: int) -> dict:
    in_dims = [32] * 52
    in_keys = [f"k{i}" for i in range(52)]
    values = torch.randn(batch_size, sum(in_dims), device=device)
    results = {}
    for combine, dim in (("sum", 32), ("concat", 64)):
        sources = [(in_keys[2 * i : 2 * i + 2], combine) for i in range(26)]
        first, passes = combine_plan(in_keys, in_dims, [dim] * 26, sources)
        first_C = torch.tensor(first, device=device)
        passes_t = [
            (m, torch.tensor(d, device=device), torch.tensor(s, device=device))
            for m, d, s in passes
        ]
        results[combine] = _timed(
            lambda f=first_C, p=passes_t: combine_values(values, f, p), device
        )
    return results


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
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--clustering_ids", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"gpu_check": "skipped", "reason": "CUDA is not available (try --device cpu)"}
        print(json.dumps(result))
        return result
    result = {
        "gpu_check": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "sync": check_sync(args.device),
        "remap": bench_remap(args.device, args.batch_size),
        "combine_seconds": bench_combine(args.device, args.batch_size),
        "clustering": bench_clustering(args.device, args.clustering_ids),
    }
    result["ok"] = result["sync"]["ok"] and result["clustering"]["ok"]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
