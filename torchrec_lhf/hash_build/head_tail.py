"""The head and the tail of a table: which ids earn a learned row, and where the others go.

Shapes: ``N`` ids of a table, ``K`` head ids, ``M`` rows of one internal table.

In huge tables most ids are rare, and a teacher trained on the student's data memorizes
what it saw of them: clustering them by those values groups ids by their training labels.
So only the **head** (ids seen at least ``min_count`` times, or the most frequent
ids covering ``mass`` of the accesses, counted on the training split) is clustered; the
**tail** is hashed by a seeded hash (:func:`torchrec_lhf.hashing.tail_hash`), into a tail
region of ``round(tail_fraction * M)`` rows of its own, or into all ``M`` rows
(``tail_fraction=0``). A head of no more ids than its rows gets a row per id (there is
nothing to cluster); with ``tail_region="fill"`` (the build's default) such a head is first
extended by the next most frequent ids seen in training until its rows are used
(:func:`fill_head`): rows go to the ids that earn them, and the ids added are never
clustered. Only the head needs storing: see the compact encoding of
:class:`~torchrec_lhf.plan.CompactMapping`.

``HeadTail()`` (no threshold) is the paper's build: every id is clustered.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan_compact import CompactMapping, choose_encoding, row_dtype

ENCODINGS = ("auto", "dense", "compact")
TAIL_REGIONS = ("fixed", "mass", "fit", "fill")
ROW_ALLOCATIONS = ("size", "counts")


@dataclass(frozen=True, kw_only=True)
class HeadTail:
    """How a table's ids split into a clustered head and a hashed tail.

    Args:
        min_count: ids seen at least this often are the head (0: no count threshold).
        mass: or the most frequent ids that cover this share of the accesses, in ``(0, 1]``.
        tail_fraction: share of each internal table's rows reserved for the tail, in
            ``[0, 1)``; 0 hashes the tail into all rows, over the head's.
        encoding: ``"dense"`` (a row per id), ``"compact"`` (head ids and rows, tail
            computed) or ``"auto"`` (the smaller of the two).
        tail_region: ``"fixed"`` (the tail gets ``round(tail_fraction * M)`` rows),
            ``"mass"`` (its share of the table's training accesses, so a table whose tail is
            rarely read keeps nearly all rows for the head; ``tail_fraction`` is then unused)
            or ``"fit"`` (as ``fixed``, but a head of fewer ids than its region's rows keeps
            a row per id and the tail gets every other row: no row left unused), or
            ``"fill"`` (as ``fixed``, but a head of fewer ids than its region's rows is
            extended by the next most frequent ids seen in training, a row each, until it
            fills the region).
        row_allocation: how a byte budget's rows are shared by the compressed tables
            (:func:`~torchrec_lhf.hash_build.byte_budget.learned_rows_for_bytes`): ``"size"``
            (in proportion to their ids) or ``"counts"`` (a row each for the most frequent
            ids of all of them together, so that a table whose ids are seen more keeps more
            rows; needs ``tail_region="fill"``).
        index_share: under a byte budget, the most of it the stored remap may take, in
            ``(0, 1]``: where the head at ``min_count`` stores more, its count threshold is
            raised until it does not
            (:func:`~torchrec_lhf.hash_build.byte_budget.fit_head_to_bytes`); ``None``: the
            head is ``min_count``'s whatever it stores (a budget below it cannot be met).
            No effect on a head by ``mass`` or on the paper's build (no head).
        fill_share: under a byte budget, the most of it the stored remap may take once
            the ``fill`` region's extension is counted, in ``(0, 1]``: where it stores
            more, the extension keeps only the ids seen at least ``fill_min_count`` times,
            raised until it does not
            (:func:`~torchrec_lhf.hash_build.byte_budget.fit_fill_to_bytes`), and the rows
            it leaves go to the tail; ``None``: the extension fills its region. Never
            touches the clustered head (``index_share`` does).
        fill_min_count: the ``fill`` extension adds only ids seen at least this often
            (1: any id seen in training). Set by the byte fit of ``fill_share``; above 1,
            the head region's rows the extension leaves unused go to the tail.
    """

    min_count: int = 0
    mass: float | None = None
    tail_fraction: float = 0.0
    encoding: str = "auto"
    tail_region: str = "fixed"
    row_allocation: str = "size"
    index_share: float | None = None
    fill_share: float | None = None
    fill_min_count: int = 1

    def __post_init__(self) -> None:
        mc = self.min_count
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 0:
            raise ValueError(f"head min_count must be an int >= 0, got {mc!r}")
        m = self.mass
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, int | float) or not 0 < m <= 1
        ):
            raise ValueError(f"head mass must be a number in (0, 1], got {m!r}")
        if mc and m is not None:
            raise ValueError(f"give one of head min_count ({mc}) and head mass ({m}), not both")
        tf = self.tail_fraction
        if isinstance(tf, bool) or not isinstance(tf, int | float) or not 0 <= tf < 1:
            raise ValueError(f"tail_fraction must be a number in [0, 1), got {tf!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.tail_region not in TAIL_REGIONS:
            raise ValueError(f"tail_region must be one of {TAIL_REGIONS}, got {self.tail_region!r}")
        if self.row_allocation not in ROW_ALLOCATIONS:
            raise ValueError(
                f"row_allocation must be one of {ROW_ALLOCATIONS}, got {self.row_allocation!r}"
            )
        if self.row_allocation == "counts" and (self.tail_region != "fill" or not self.splits):
            raise ValueError(
                "row_allocation 'counts' gives a row each to the most frequent ids, which "
                f"needs a head by counts and tail_region 'fill', got min_count={mc!r}, "
                f"mass={m!r}, tail_region={self.tail_region!r}"
            )

        share = self.index_share
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1
        ):
            raise ValueError(f"index_share must be a number in (0, 1] or None, got {share!r}")
        share = self.fill_share
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1
        ):
            raise ValueError(f"fill_share must be a number in (0, 1] or None, got {share!r}")
        if share is not None and (self.tail_region != "fill" or not mc):
            raise ValueError(
                f"fill_share={share} caps the fill region's extension of a head by counts, "
                f"which needs tail_region 'fill' and min_count > 0, got tail_region="
                f"{self.tail_region!r}, min_count={mc!r}"
            )
        fmc = self.fill_min_count
        if isinstance(fmc, bool) or not isinstance(fmc, int) or fmc < 1:
            raise ValueError(f"fill_min_count must be an int >= 1, got {fmc!r}")
        if fmc > 1 and self.tail_region != "fill":
            raise ValueError(
                f"fill_min_count={fmc} limits the fill region's extension, which needs "
                f"tail_region 'fill', got {self.tail_region!r}"
            )

    @property
    def splits(self) -> bool:
        """Whether a head is chosen at all (else every id is clustered: the paper)."""
        return bool(self.min_count) or self.mass is not None

    def head(self, counts_N: torch.Tensor | None, table: str) -> torch.Tensor | None:
        """The head as bool ``(N,)``, or ``None`` when every id is head.

        Raises:
            ValueError: a threshold is set but there are no counts.
        """
        if not self.splits:
            return None
        if counts_N is None:
            raise ValueError(f"table {table!r}: a head by access counts needs counts, got None")
        if self.min_count:
            return counts_N >= self.min_count
        order_N = torch.argsort(-counts_N.to(torch.float64), stable=True)
        cum_N = torch.cumsum(counts_N[order_N].to(torch.float64), 0)
        total = float(cum_N[-1]) if cum_N.numel() else 0.0
        # the fewest ids whose accesses reach the mass; ids never seen are never head
        k = int(torch.searchsorted(cum_N, self.mass * total * (1 - 1e-12)).item()) + 1
        head_N = torch.zeros_like(counts_N, dtype=torch.bool)
        head_N[order_N[: min(k, counts_N.numel())]] = True
        return head_N & (counts_N > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "head_min_count": self.min_count,
            "head_mass": self.mass,
            "tail_fraction": self.tail_fraction,
            "encoding": self.encoding,
            # NOTE: named only when not the default, so earlier plans keep their fingerprints
            **({"tail_region": self.tail_region} if self.tail_region != "fixed" else {}),
            **({"row_allocation": self.row_allocation} if self.row_allocation != "size" else {}),
            **({"index_share": self.index_share} if self.index_share is not None else {}),
            **({"fill_share": self.fill_share} if self.fill_share is not None else {}),
            **({"fill_min_count": self.fill_min_count} if self.fill_min_count != 1 else {}),
        }


def encode_head_tail(
    mapping_N: torch.Tensor,
    head_N: torch.Tensor,
    layout: dict[str, int],
    height: int,
    spec: HeadTail,
    seed: int,
) -> torch.Tensor | CompactMapping:
    """The mapping as ``spec.encoding`` says: compact, or the smaller of dense and compact."""
    head_K = head_N.nonzero().squeeze(1).cpu()
    tail = (seed, layout["tail_offset"], layout["tail_rows"])
    if spec.encoding == "compact":
        rows_K = mapping_N[head_K].to(row_dtype(height))
        return CompactMapping(
            head_K, rows_K, tail_seed=tail[0], tail_offset=tail[1], tail_rows=tail[2]
        )
    return choose_encoding(mapping_N, head_K, *tail, height)


def tail_seed(table: str, h: int) -> int:
    """The tail hash's seed of hash function ``h`` of a table (stable across runs)."""
    return zlib.crc32(f"{table}/tail/{h}".encode())


def head_tail_mapping(
    cluster: Callable[..., Any],
    values_N: torch.Tensor,
    counts_N: torch.Tensor | None,
    head_N: torch.Tensor,
    height: int,
    *,
    spec: HeadTail,
    seed: int,
    options: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, int], Any]:
    """One internal table's mapping: the head clustered (or a row each), the tail hashed.

    Args:
        cluster: a registered clustering.
        values_N: the 1-D values of the table's ids, shape ``(N,)``.
        counts_N: access counts ``(N,)``, or ``None``.
        head_N: bool ``(N,)``, the head.
        height: ``M``, the internal table's rows.
        spec: the head/tail settings.
        seed: the tail hash's seed.
        options: passed to the clustering.

    Returns:
        ``(mapping_N, layout, result)``: int64 rows ``(N,)``; ``layout`` with
        ``head_rows``, ``tail_offset``, ``tail_rows``; the clustering's result or ``None``.
    """
    n = values_N.shape[0]
    head_K = head_N.nonzero().squeeze(1)
    num_tail = n - head_K.numel()
    share = spec.tail_fraction
    if spec.tail_region == "mass" and counts_N is not None:
        total = float(counts_N.sum())
        share = float(counts_N[~head_N].sum()) / total if total > 0 else 0.0
    head_rows = head_region(height, share) if num_tail else height
    tail_rows = height - head_rows
    fit = spec.tail_region == "fit" or (spec.tail_region == "fill" and spec.fill_min_count > 1)
    if fit and num_tail and head_K.numel() < head_rows and share:
        # a row per head id; the head's other rows would stay unused: the tail takes them
        # (also those a fill limited by ``fill_min_count`` leaves)
        head_rows = head_K.numel()
        tail_rows = height - head_rows
    tail_offset, tail_span = (
        (head_rows, tail_rows) if tail_rows and tail_rows < height else (0, height)
    )
    mapping_N = tail_offset + tail_hash(torch.arange(n, device=values_N.device), seed, tail_span)
    result = None
    if head_K.numel() <= head_rows:  # a row per head id, in id order
        mapping_N[head_K] = torch.arange(head_K.numel(), device=values_N.device)
    else:
        counts_K = None if counts_N is None else counts_N[head_K]
        result = cluster(values_N[head_K], counts_K, head_rows, **options)
        mapping_N[head_K] = result.cluster_of_id.to(mapping_N.dtype)
    layout = {"head_rows": head_rows, "tail_offset": tail_offset, "tail_rows": tail_span}
    return mapping_N, layout, result


def head_region(height: int, tail_fraction: float) -> int:
    """The rows of a ``fixed`` head region: ``height`` less ``round(tail_fraction * height)``
    (at least one tail row and one head row where there is a tail share; a table of one row
    is all head)."""
    tail_rows = round(tail_fraction * height)
    if tail_fraction:
        tail_rows = min(max(tail_rows, 1), height - 1)
    return height - tail_rows


def fill_head(
    head_N: torch.Tensor,
    counts_N: torch.Tensor,
    height: int,
    tail_fraction: float,
    min_count: int = 1,
) -> torch.Tensor:
    """``head_N`` extended by the most frequent other ids seen in training (ties by id),
    at least ``min_count`` times, until it has as many ids as the head region's rows
    (``tail_region="fill"``)."""
    room = head_region(height, tail_fraction) - int(head_N.sum())
    if room <= 0:
        return head_N
    score_N = torch.where(head_N | (counts_N < min_count), -1, counts_N.to(torch.int64))
    order_N = torch.argsort(-score_N, stable=True)[:room]
    extra_N = torch.zeros_like(head_N)
    extra_N[order_N] = score_N[order_N] > 0
    return head_N | extra_N


def cluster_hashes(
    cluster: Callable[..., Any],
    values_HN: torch.Tensor,
    counts_N: torch.Tensor | None,
    heights: list[int],
    head_N: torch.Tensor | None,
    spec: HeadTail,
    name: str,
    options: Mapping[str, Any],
    compose: Callable[
        [list[torch.Tensor], torch.Tensor | None], tuple[torch.Tensor, Callable[..., Any]]
    ]
    | None = None,
) -> tuple[list[torch.Tensor], list[dict[str, int]], int, int]:
    """One clustering per hash function: hash ``h`` clusters the ids by ``values_HN[h]``.

    With a head (``head_N``), only the head is clustered and the tail hashed
    (:func:`~torchrec_lhf.hash_build.head_tail.head_tail_mapping`). With ``compose`` (see
    :func:`~torchrec_lhf.hash_build.compose.residual_stage`), hash ``h >= 1`` takes its
    values and its clustering from ``compose(rows of hashes 0..h-1, its head)`` instead.

    Returns:
        ``(mappings, layouts, fallback_merges, steps)``: per hash the mapping (int32 CPU
        ``(N,)`` into ``[0, heights[h])``, or a :class:`CompactMapping` as ``spec.encoding``
        says), the head rows and tail region, and the clusterings' fallback merges and
        steps, summed.
    """
    mappings, layouts, fallback_merges, steps, rows = [], [], 0, 0, []
    for h, height in enumerate(heights):
        if head_N is not None and spec.tail_region == "fill" and counts_N is not None:
            head_N = fill_head(head_N, counts_N, height, spec.tail_fraction, spec.fill_min_count)
        if compose is not None and h:  # (given this hash's head, after the fill)
            values_N, cluster_h = compose(rows, head_N)  # NOTE: values_HN has hash 0's only
        else:
            values_N, cluster_h = values_HN[h], cluster
        if head_N is None:
            result = cluster_h(values_N, counts_N, height, **options)
            mapping_N = result.cluster_of_id
            layout = {"head_rows": height, "tail_offset": 0, "tail_rows": 0}
        else:
            mapping_N, layout, result = head_tail_mapping(
                cluster_h,
                values_N,
                counts_N,
                head_N,
                height,
                spec=spec,
                seed=tail_seed(name, h),
                options=dict(options),
            )
        mapping_N = mapping_N.to(device="cpu", dtype=torch.int32)
        rows.append(mapping_N)
        if head_N is not None and spec.encoding != "dense":
            mapping_N = encode_head_tail(
                mapping_N, head_N, layout, height, spec, tail_seed(name, h)
            )
        mappings.append(mapping_N)
        layouts.append(layout)
        if result is not None:
            fallback_merges += result.fallback_merges
            steps += result.steps
    return mappings, layouts, fallback_merges, steps
