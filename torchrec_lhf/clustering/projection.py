"""Projection of a teacher's embeddings to the 1-D values each hash function clusters.

Shapes: ``N`` ids, ``D`` teacher dim, ``H`` hash functions.

Specs:
    ``"dim:k"``: hash ``h`` uses teacher coordinate ``k + h`` (the paper's "cluster
    dimensions": with ``dim:0``, coordinate ``h`` gives hash function ``h``).
    ``"dim:k0,k1,..."``: hash ``h`` uses coordinate ``k_h`` (exactly ``H`` coordinates).
    ``"pca"``: hash ``h`` uses the ``h``-th principal component of the centered embeddings
    (sign fixed so that the component's largest-magnitude loading is positive).
"""

from __future__ import annotations

import torch

PROJECTIONS = ("pca", "dim:k", "dim:k0,k1,...")
_CHUNK_ROWS = 1 << 20  # bounds the float64 working copy to 8 * D MiB


def project(embeddings_ND: torch.Tensor, spec: str = "pca", num_hashes: int = 1) -> torch.Tensor:
    """1-D values per hash function.

    Args:
        embeddings_ND: floating tensor of shape ``(N, D)``, finite.
        spec: ``"pca"``, ``"dim:k"`` or ``"dim:k0,k1,..."`` (see the module docstring).
        num_hashes: ``H >= 1``.

    Returns:
        float32 tensor of shape ``(H, N)`` on the embeddings' device.

    Raises:
        ValueError: bad shape, dtype, non-finite values, unknown spec, or a coordinate or
            component count beyond ``D``.

    Example::

        >>> import torch
        >>> from torchrec_lhf.clustering import project
        >>> emb = torch.tensor([[0.0, 5.0], [1.0, 7.0], [2.0, 6.0]])
        >>> project(emb, "dim:1").tolist()
        [[5.0, 7.0, 6.0]]
    """
    if not isinstance(embeddings_ND, torch.Tensor) or embeddings_ND.dim() != 2:
        got = (
            tuple(embeddings_ND.shape)
            if isinstance(embeddings_ND, torch.Tensor)
            else type(embeddings_ND)
        )
        raise ValueError(f"embeddings must be a 2-D tensor (N, D), got {got}")
    if not embeddings_ND.is_floating_point():
        raise ValueError(f"embeddings must be floating, got {embeddings_ND.dtype}")
    n, d = embeddings_ND.shape
    if n < 1 or d < 1:
        raise ValueError(f"embeddings must have N >= 1 rows and D >= 1 columns, got {(n, d)}")
    if isinstance(num_hashes, bool) or not isinstance(num_hashes, int) or num_hashes < 1:
        raise ValueError(f"num_hashes must be an int >= 1, got {num_hashes!r}")
    if not bool(torch.isfinite(embeddings_ND).all()):
        raise ValueError("embeddings must be finite, found NaN or inf")
    if not isinstance(spec, str):
        raise ValueError(f"projection spec must be a string like {PROJECTIONS}, got {spec!r}")
    check_projection(spec, num_hashes, d)
    if spec == "pca":
        return _pca(embeddings_ND, num_hashes)
    dims = _parse_dims(spec, num_hashes, d)
    return embeddings_ND[:, dims].t().to(torch.float32).contiguous()


def check_projection(spec: str, num_hashes: int, dim: int) -> None:
    """Raises ValueError where :func:`project` would refuse ``spec`` with ``num_hashes``
    hash functions for a teacher of dim ``dim``: before a teacher is trained (a pipeline
    knows its teacher's dim)."""
    if spec == "pca":
        if num_hashes > dim:
            raise ValueError(
                f"pca with num_hashes={num_hashes} needs teacher dim >= {num_hashes}, got {dim}"
            )
    elif isinstance(spec, str) and spec.startswith("dim:"):
        _parse_dims(spec, num_hashes, dim)
    else:
        raise ValueError(f"unknown projection {spec!r}; expected one of {PROJECTIONS}")


def _parse_dims(spec: str, num_hashes: int, d: int) -> list[int]:
    try:
        dims = [int(x) for x in spec[len("dim:") :].split(",")]
    except ValueError:
        raise ValueError(
            f"projection {spec!r}: expected 'dim:k' or 'dim:k0,k1,...' with integers"
        ) from None
    if len(dims) == 1:
        dims = [dims[0] + h for h in range(num_hashes)]
    elif len(dims) != num_hashes:
        raise ValueError(
            f"projection {spec!r} names {len(dims)} coordinates for num_hashes={num_hashes}"
        )
    if min(dims) < 0 or max(dims) >= d:
        raise ValueError(
            f"projection {spec!r} with num_hashes={num_hashes} uses coordinates {dims}, "
            f"but the teacher dim is {d} (valid: 0..{d - 1})"
        )
    return dims


def _pca(embeddings_ND: torch.Tensor, num_hashes: int) -> torch.Tensor:
    n, d = embeddings_ND.shape
    chunks = embeddings_ND.split(_CHUNK_ROWS)
    mean_D = sum(c.to(torch.float64).sum(0) for c in chunks) / n
    cov_DD = torch.zeros(d, d, dtype=torch.float64, device=embeddings_ND.device)
    for c in chunks:
        centered = c.to(torch.float64) - mean_D
        cov_DD += centered.t() @ centered
    _, vectors_DD = torch.linalg.eigh(cov_DD / n)  # eigenvalues ascending
    comps_DH = vectors_DD[:, -num_hashes:].flip(1)
    # Deterministic sign: the largest-magnitude loading of each component is positive.
    lead_H = comps_DH.abs().argmax(0)
    comps_DH = comps_DH * torch.sign(comps_DH.gather(0, lead_H[None]))
    out_HN = torch.empty(num_hashes, n, dtype=torch.float32, device=embeddings_ND.device)
    start = 0
    for c in chunks:
        out_HN[:, start : start + c.shape[0]] = ((c.to(torch.float64) - mean_D) @ comps_DH).t()
        start += c.shape[0]
    return out_HN
