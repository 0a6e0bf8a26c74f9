"""Compositional learned hashes: hash ``h >= 1`` splits what hashes ``0..h-1`` grouped.

Shapes: ``N`` ids of a table, ``D`` teacher dim, ``K`` ids clustered (the head), ``M`` rows
of one internal table, ``C`` cells.

With ``H`` independent hashes (``compose="independent"``) hash ``h`` clusters the ``h``-th
projection of the teacher's embeddings, so two ids that are close in every coordinate share
every row: their embeddings are equal, whatever ``H``. With ``compose="residual"`` hash 0
clusters as before, and hash ``h >= 1`` works within the **cells** of the previous hashes
(the ids that share all of rows ``0..h-1``, the ids the model cannot yet tell apart):

1. each id's **residual** is its embedding minus its cell's count-weighted mean (what the
   rows so far leave unexplained), projected on the residuals' first principal component;
2. the ids of each cell are ranked by that value and spread over the ``M`` rows of hash
   ``h``: rank ``r`` of a cell of ``s`` ids goes to row ``floor((2r + 1) M / (2s))``.

So row ``j`` of hash ``h`` is shared by the ids at the same relative position within their
cells (a learned quotient-remainder split), and the construction promises that **the ids
of a cell of at most** ``M`` **ids get distinct rows of hash** ``h``, hence distinct
combinations of rows: with ``H = 2`` and ``M_0 * M_1`` at least ``K`` and cells of hash 0
no larger than ``M_1``, every clustered id has an embedding of its own. Larger cells are cut
into ``M`` runs of consecutive ranks (quantiles of the residual). Everything is vectorized:
sorts, ``index_add_`` and ``unique``, no loop over ids or cells.

Example::

    >>> import torch
    >>> cells = torch.tensor([0, 0, 0, 1, 1])
    >>> split_cells(torch.tensor([0.3, -1.0, 2.0, 5.0, 4.0]), cells, 3).tolist()
    [1, 0, 2, 2, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from torchrec_lhf.clustering import project

COMPOSE_MODES = ("independent", "residual")


@dataclass(frozen=True)
class SplitResult:
    """A clustering result for :func:`~torchrec_lhf.hash_build.head_tail.cluster_hashes`."""

    cluster_of_id: torch.Tensor
    fallback_merges: int = 0
    steps: int = 0


def cell_ids(mappings: Sequence[torch.Tensor]) -> torch.Tensor:
    """The cell of each id: ids with the same row in every mapping share a cell.

    Args:
        mappings: ``h >= 1`` int tensors of shape ``(N,)`` (rows of hashes ``0..h-1``).

    Returns:
        int64 ``(N,)`` in ``[0, C)``.
    """
    codes_Nh = torch.stack([m.to(torch.int64) for m in mappings], dim=1)
    return torch.unique(codes_Nh, dim=0, return_inverse=True)[1]


def residual_values(
    embeddings_ND: torch.Tensor, counts_N: torch.Tensor | None, cells_N: torch.Tensor
) -> torch.Tensor:
    """Each id's embedding minus its cell's mean (weighted by ``counts + 1``), projected on
    the residuals' first principal component: float32 ``(N,)``."""
    weights_N = torch.ones(cells_N.shape[0], dtype=torch.float64, device=cells_N.device)
    if counts_N is not None:
        weights_N = weights_N + counts_N.to(torch.float64)
    num_cells = int(cells_N.max()) + 1 if cells_N.numel() else 0
    emb_ND = embeddings_ND.to(torch.float64)
    sums_CD = emb_ND.new_zeros(num_cells, emb_ND.shape[1])
    sums_CD.index_add_(0, cells_N, emb_ND * weights_N[:, None])
    mass_C = emb_ND.new_zeros(num_cells).index_add_(0, cells_N, weights_N)
    residual_ND = emb_ND - (sums_CD / mass_C[:, None])[cells_N]
    return project(residual_ND.to(torch.float32), "pca", 1)[0]


def split_cells(values_K: torch.Tensor, cells_K: torch.Tensor, rows: int) -> torch.Tensor:
    """Spread each cell's ids over ``rows`` rows by the rank of their value in the cell.

    Args:
        values_K: float ``(K,)``, the order within a cell (ties: by position).
        cells_K: int ``(K,)``, any cell labels.
        rows: ``M >= 1``.

    Returns:
        int64 ``(K,)`` in ``[0, M)``; ids of a cell of at most ``M`` ids get distinct rows.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    k = values_K.shape[0]
    cells_K = torch.unique(cells_K, return_inverse=True)[1]
    order_K = torch.argsort(values_K, stable=True)
    order_K = order_K[torch.argsort(cells_K[order_K], stable=True)]
    sorted_cells_K = cells_K[order_K]
    sizes_C = torch.bincount(cells_K)
    starts_C = torch.cumsum(sizes_C, 0) - sizes_C
    rank_K = torch.arange(k, device=cells_K.device) - starts_C[sorted_cells_K]
    rows_K = ((2 * rank_K + 1) * rows) // (2 * sizes_C[sorted_cells_K])
    out_K = torch.empty(k, dtype=torch.int64, device=cells_K.device)
    out_K[order_K] = rows_K
    return out_K


def residual_stage(
    embeddings_ND: torch.Tensor, counts_N: torch.Tensor | None
) -> Callable[
    [list[torch.Tensor], torch.Tensor | None], tuple[torch.Tensor, Callable[..., SplitResult]]
]:
    """The values and the "clustering" of hash ``h >= 1`` given the rows of hashes
    ``0..h-1`` (dense int mappings ``(N,)``) and the head that hash clusters (bool
    ``(N,)``, or ``None``: every id), for :func:`cluster_hashes`' ``compose``.

    The clustering it returns takes the head's values (in id order, as
    :func:`~torchrec_lhf.hash_build.head_tail.head_tail_mapping` passes them) and splits the
    head's cells with :func:`split_cells`; the residuals are computed over the head only.
    The head is the hash's own: ``tail_region="fill"`` extends it per hash (before, the
    stage kept the head before the extension, and an extended head's values did not match
    its cells: an IndexError, or another id's cell).
    """

    def stage(
        previous: list[torch.Tensor], head_N: torch.Tensor | None
    ) -> tuple[torch.Tensor, Callable[..., SplitResult]]:
        cells_N = cell_ids(previous).to(embeddings_ND.device)  # the rows come back on CPU
        n = cells_N.shape[0]
        if head_N is None:
            values_N, cells_K = residual_values(embeddings_ND, counts_N, cells_N), cells_N
        else:
            head_K = head_N.to(cells_N.device).nonzero().squeeze(1)
            cells_K = torch.unique(cells_N[head_K], return_inverse=True)[1]
            counts_K = None if counts_N is None else counts_N[head_K]
            values_N = torch.zeros(n, dtype=torch.float32, device=cells_N.device)
            if head_K.numel():
                values_N[head_K] = residual_values(embeddings_ND[head_K], counts_K, cells_K)

        def split(values_K: torch.Tensor, _counts: object, rows: int, **_: object) -> SplitResult:
            if values_K.shape[0] != cells_K.shape[0]:
                raise ValueError(
                    f"residual split: {values_K.shape[0]} values for a head of "
                    f"{cells_K.shape[0]} ids (the stage was given another head)"
                )
            return SplitResult(split_cells(values_K, cells_K, rows))

        return values_N, split

    return stage
