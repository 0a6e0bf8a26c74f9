"""Count-aware shrinkage of the teacher's values (empirical Bayes), before the clustering.

Shapes: ``N`` ids of a table, ``D`` teacher dim.

A teacher trained on the student's rows memorizes what it saw of each id: an id seen ``n``
times carries its true effect plus label noise that shrinks only like ``1 / sqrt(n)``, and
clustering by raw values groups low-count ids by that noise. Shrinkage pulls each id's
embedding toward a prior by ``n / (n + k)``::

    e'_i = prior + n_i / (n_i + k) * (e_i - prior)

so an id seen ``k`` times keeps half of its distance to the prior, an id never seen sits on
it, and the clustering's order changes where a low-count id's raw value was extreme. The
prior is the count-weighted mean embedding of the table's tail (ids seen at least once but
not in the head: what a low-count id looks like on average), or of all its seen ids when
there is no tail. ``k = 0`` leaves the values unchanged (the paper's build).
"""

from __future__ import annotations

import math

import torch


def check_shrinkage(k: float, what: str = "value_shrinkage") -> float:
    """``k`` as a float, or ValueError naming the bad value (a finite number >= 0)."""
    if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {k!r}")
    return float(k)


def shrink_embeddings(
    embeddings_ND: torch.Tensor,
    counts_N: torch.Tensor | None,
    k: float,
    head_N: torch.Tensor | None = None,
    *,
    table: str = "?",
) -> torch.Tensor:
    """Each id's embedding pulled toward the prior by ``n / (n + k)`` (module docstring).

    Vectorized over the table (no loop per id).

    Args:
        embeddings_ND: the teacher's embeddings, shape ``(N, D)``.
        counts_N: access counts, shape ``(N,)``, on the training rows.
        k: the shrinkage strength (pseudo-count of the prior); 0 returns ``embeddings_ND``.
        head_N: bool ``(N,)``, the head (the prior is the count-weighted mean of the seen ids
            outside it); ``None``: every id is head, the prior is over all seen ids.
        table: the table's name, for messages.

    Returns:
        The shrunk embeddings, shape ``(N, D)``, in ``embeddings_ND``'s dtype and device.

    Raises:
        ValueError: a bad ``k``, no counts, or counts of another shape or negative.

    Example::

        >>> emb = torch.tensor([[0.0], [4.0], [100.0]])  # prior (1 * 0 + 3 * 4) / 4 = 3
        >>> shrink_embeddings(emb, torch.tensor([1, 3, 0]), 1.0).squeeze(1).tolist()
        [1.5, 3.75, 3.0]
    """
    k = check_shrinkage(k)
    if k == 0:
        return embeddings_ND
    if not (
        isinstance(embeddings_ND, torch.Tensor)
        and embeddings_ND.dim() == 2
        and embeddings_ND.is_floating_point()
    ):
        raise ValueError(f"table {table!r}: embeddings must be a floating 2-D tensor (N, D)")
    if counts_N is None:
        raise ValueError(f"table {table!r}: value_shrinkage={k} needs access counts, got None")
    n = embeddings_ND.shape[0]
    if tuple(counts_N.shape) != (n,):
        raise ValueError(
            f"table {table!r}: counts of shape {tuple(counts_N.shape)}, expected ({n},)"
        )
    counts64_N = counts_N.to(device=embeddings_ND.device, dtype=torch.float64)
    if bool((counts64_N < 0).any()):
        raise ValueError(f"table {table!r}: negative access counts")
    emb64_ND = embeddings_ND.to(torch.float64)
    prior_D = _prior(emb64_ND, counts64_N, head_N)
    keep_N = counts64_N / (counts64_N + k)
    out_ND = prior_D + keep_N.unsqueeze(1) * (emb64_ND - prior_D)
    return out_ND.to(embeddings_ND.dtype)


def _prior(
    emb64_ND: torch.Tensor, counts64_N: torch.Tensor, head_N: torch.Tensor | None
) -> torch.Tensor:
    """The count-weighted mean embedding of the tail's seen ids (else of all seen ids, else
    the plain mean), shape ``(D,)``."""
    weights_N = counts64_N
    if head_N is not None:
        tail_N = counts64_N * (~head_N.to(counts64_N.device)).to(counts64_N.dtype)
        if float(tail_N.sum()) > 0:
            weights_N = tail_N
    total = float(weights_N.sum())
    if total <= 0:  # nothing seen: every id goes to the plain mean
        return emb64_ND.mean(0)
    return (weights_N.unsqueeze(1) * emb64_ND).sum(0) / total
