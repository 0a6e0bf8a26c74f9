"""The remap's speed on a device, for :mod:`benchmarks.gpu_check`: a learned-hash layout
of the Criteo heights, batches, the remap against a plain lookup of the same rows, a
profile of its kernels, the remap under ``torch.compile``, the serving operator against
CPU, and the two-hash combine. Imports torch and torchrec_lhf's torch-only modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from torchrec_lhf.hashing import mix_keyed, seed_keys, tail_divisors
from torchrec_lhf.modules import compact_kernel, head_table
from torchrec_lhf.modules.remap_ops import (
    combine_plan,
    combine_values,
    remap_values,
    request_rows,
)

CRITEO_HEIGHTS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]  # fmt: skip


class Tables:
    """A learned-hash layout as remap_values takes it: H hash functions per table."""

    def __init__(
        self,
        heights: list[int],
        num_hashes: int,
        device: str,
        seed: int = 0,
        compact: bool | str = False,
    ) -> None:
        """``compact``: head/tail mappings instead of dense; ``"divided"``: every other
        feature's tail divided (``(id // d) mod rows``, as QR's quotient)."""
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
            self._make_compact(pieces, rows, device, divided=compact == "divided")

    def _make_compact(
        self, pieces: list[torch.Tensor], rows: list[int], device: str, divided: bool
    ) -> None:
        """Head/tail instead of dense: each internal feature's smallest 10% of ids (the
        frequent ones of :func:`make_batch`) in the cuckoo table, the others hashed (with
        ``divided``, every other feature's tail divided by ``j + 2``)."""
        seeds_J = torch.arange(len(pieces), dtype=torch.int64) + 11
        if divided:
            seeds_J[1::2] = -(torch.arange(1, len(pieces), 2) + 2)  # hashing.quotient_seed
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
                tail_divisors(seeds_J) if divided else torch.zeros(0, dtype=torch.int64),
                torch.zeros(0, dtype=torch.int64),  # no probe salts: the seeds differ
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

    def request(self, batch: dict) -> torch.Tensor:
        """The serving wrapper's remap of a request (keys = sources, in order)."""
        return request_rows(
            batch["values"], batch["lengths"], self.sources, self.mapping, self.offset_J,
            self.height_J, False, False, self.compact,
        )  # fmt: skip

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


def timed(step: Callable[[], object], device: str, iters: int = 30, warmup: int = 5) -> float:
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
        lookup = timed(
            lambda f=flat, w=weight, o=offsets[:-1]: torch.nn.functional.embedding_bag(
                f, w, o, mode="sum"
            ),
            device,
        )
        remap = timed(lambda b=batch, t=tables: t.remap(b), device)
        results[f"{encoding}_pooling_{pooling}"] = {
            "remap_seconds": remap,
            "lookup_seconds": lookup,
            "remap_over_lookup": remap / lookup,
            "ids": batch["values"].numel(),
        }
    return results


def check_operator(device: str) -> dict:
    """``torchrec_lhf::fused_remap`` and ``fused_remap_bags`` on ``device`` against
    ``fused_remap`` on CPU (the C++ kernel where it builds here, else the same fallback),
    dense and compact."""
    heights = [min(h, 100_000) for h in CRITEO_HEIGHTS]
    result: dict = {"cpu_kernel_built": compact_kernel.available()}
    encodings = ("dense", "compact", "divided")
    for encoding in encodings:
        tables = Tables(heights, 1, "cpu", compact=encoding != "dense" and encoding)
        batch = make_batch(heights, 512, 0, weighted=False, device="cpu")
        length_J = batch["lengths"].view(len(heights), -1).sum(1).tolist()
        t = compact_kernel._tables(tables.mapping, tables.compact)
        args = (tables.offset_J, tables.height_J, tables.mapping, *t)
        cpu = torch.ops.torchrec_lhf.fused_remap(batch["values"], length_J, *args, False)
        moved = [a.to(device) for a in args]
        ids = batch["values"].to(device)
        out = torch.ops.torchrec_lhf.fused_remap(ids, length_J, *moved, False)
        bags = torch.ops.torchrec_lhf.fused_remap_bags(  # (the per-bag lengths' operator)
            ids, batch["lengths"].to(device), *moved, False
        )
        result[encoding] = {
            "equal": bool(torch.equal(out.cpu(), cpu)),
            "bags_equal": bool(torch.equal(bags.cpu(), cpu)),
            "ids": ids.numel(),
            "seconds": timed(
                lambda i=ids, n=length_J, m=moved: torch.ops.torchrec_lhf.fused_remap(
                    i, n, *m, False
                ),
                device,
            ),
        }
    result["ok"] = all(result[e]["equal"] and result[e]["bags_equal"] for e in encodings)
    return result


def _remap_cases(device: str, batch_size: int) -> Iterator[tuple[str, Tables, dict]]:
    heights = [min(h, 1_000_000) for h in CRITEO_HEIGHTS]
    for encoding in ("dense", "compact"):
        tables = Tables(heights, 1, device, compact=encoding == "compact")
        yield encoding, tables, make_batch(heights, batch_size, 4, weighted=False, device=device)


def profile_remap(device: str, batch_size: int = 4096, calls: int = 10) -> dict:
    """Kernels (CUDA) or aten ops (CPU) per remap call, and the five costliest."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    result = {}
    for encoding, tables, batch in _remap_cases(device, batch_size):
        for _ in range(3):
            tables.remap(batch)
        with profile(activities=[activity]) as prof:
            for _ in range(calls):
                tables.remap(batch)
            if device == "cuda":
                torch.cuda.synchronize()
        events = [
            e
            for e in prof.events()
            if (e.device_type.name == "CUDA")
            == (device == "cuda")  # kernels and copies on CUDA; ops on CPU
            and (device == "cuda" or e.name.startswith("aten::"))
        ]
        totals: dict[str, float] = {}
        for e in events:
            us = e.device_time_total if device == "cuda" else e.cpu_time_total
            totals[e.name[:80]] = totals.get(e.name[:80], 0.0) + us / calls
        top = sorted(totals.items(), key=lambda kv: -kv[1])[:5]
        result[encoding] = {
            "events_per_call": len(events) / calls,
            "top_us_per_call": {k: round(v, 1) for k, v in top},
        }
    return result


def compiled_remap(device: str, batch_size: int = 4096) -> dict:
    """The remap under ``torch.compile(dynamic=True)``: seconds and equality to eager."""
    result: dict = {}
    for encoding, tables, batch in _remap_cases(device, batch_size):
        try:
            step = torch.compile(lambda b, t=tables: t.remap(b)[0], dynamic=True)
            t0 = time.perf_counter()
            rows = step(batch)
            compile_seconds = time.perf_counter() - t0
            result[encoding] = {
                "equal": bool(torch.equal(rows, tables.remap(batch)[0])),
                "compile_seconds": compile_seconds,
                "compiled_seconds": timed(lambda b=batch, s=step: s(b), device),
                "eager_seconds": timed(lambda b=batch, t=tables: t.remap(b), device),
            }
        except Exception as error:  # noqa: BLE001 (reported: the check goes on)
            result[encoding] = {"error": f"{type(error).__name__}: {error}"[:1500]}
    return result


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
        results[combine] = timed(lambda f=first_C, p=passes_t: combine_values(values, f, p), device)
    return results
