"""The served model's request check: a malformed request named before the model reads it.

A scripted serving model (:class:`~torchrec_lhf.inference.ScoringModule`) takes three plain
tensors, so nothing upstream has checked that they agree. Without this check a request
whose lengths do not add up to its ids fails inside FBGEMM with an index that names
nothing, or, where they add up to fewer, scores without a word, the extra ids ignored; a
negative length is read as an empty bag; a dense input of the wrong width fails as a
matrix product.

:func:`check_request` is one opaque node in a symbolic trace (``torch.fx.wrap`` where it
is called) that TorchScript compiles into the served model. It reads tensor shapes and
dtypes and, for a request on the CPU, the lengths' minimum and sum (two reductions over
``F * B`` ints: 4% of a one-sample request to ``benchmarks.serve``'s model, 0.5% from
batch 64 on; ``check_lengths=False`` skips them, as a learned hash's serving wrapper does
where its remap's operator reads them: ``inference.RemapOnRequest``); on other devices
only the metadata, so that serving there adds no host-device sync.
"""

# NOTE: no ``from __future__ import annotations``: TorchScript compiles check_request.

import torch

from torchrec_lhf.modules.remap_lookup import lengths_mismatch, negative_length
from torchrec_lhf.modules.remap_ops import check_id_dtype


def check_request(
    dense: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    feature_names: list[str],
    num_dense: int | None = None,
    check_lengths: bool = True,
) -> None:
    """Raise ValueError, naming the value and what was expected, unless the request is well
    formed.

    Args:
        dense: ``(B, num_dense)`` dense features, floating point.
        values: ``(sum lengths,)`` raw ids, int64 or int32 (FBGEMM's widths).
        lengths: ``(F * B,)`` int64 or int32 ids per feature and sample, feature-major (as
            a KeyedJaggedTensor's), ``F = len(feature_names)``; each ``>= 0``.
        feature_names: the request's sparse features, in order.
        num_dense: the dense width the model takes; None skips that check.
        check_lengths: read the lengths (on the CPU): each ``>= 0``, and adding up to
            ``values``' size. False: shapes and dtypes only.
    """
    if dense.dim() != 2:
        raise ValueError(
            f"dense must be 2-D (batch, dense features), got shape {list(dense.shape)}"
        )
    if not dense.is_floating_point():
        raise ValueError(
            "dense features are not floating point; expected a float dtype (torch.float32)"
        )
    batch = dense.size(0)
    if num_dense is not None and dense.size(1) != num_dense:
        raise ValueError(
            f"dense has {dense.size(1)} features a sample (shape {list(dense.shape)}); "
            f"expected {num_dense}"
        )
    if values.dim() != 1:
        raise ValueError(
            f"values must be 1-D (every feature's ids, feature-major), got shape "
            f"{list(values.shape)}"
        )
    check_id_dtype(values, feature_names)
    if values.dtype != torch.int64 and values.dtype != torch.int32:
        # (FBGEMM's kernels take no other width; TorchScript prints a dtype as its number)
        raise ValueError(
            f"the ids of features {feature_names} are integers of another width; expected "
            "torch.int64 or torch.int32"
        )
    if lengths.dim() != 1:
        raise ValueError(
            f"lengths must be 1-D (ids per feature and sample), got shape {list(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError("lengths are not integers; expected an integer dtype (torch.int64)")
    if lengths.dtype != torch.int64 and lengths.dtype != torch.int32:
        raise ValueError(
            "lengths are integers of another width; expected torch.int64 or torch.int32"
        )
    num_features = len(feature_names)
    if lengths.numel() != num_features * batch:
        names = ", ".join(feature_names)
        raise ValueError(
            f"lengths has {lengths.numel()} entries; expected {num_features * batch}: "
            f"{num_features} features [{names}] x {batch} samples (dense's rows), "
            "feature-major"
        )
    if not check_lengths or not lengths.is_cpu or lengths.numel() == 0:
        return  # (no host read off the CPU: a sync a request)
    if int(lengths.min()) < 0:
        raise ValueError(negative_length(lengths, feature_names, batch))
    total = int(lengths.sum())
    if total != values.numel():
        raise ValueError(lengths_mismatch(feature_names, total, values.numel()))


def at_least_one_sample(
    dense: torch.Tensor, lengths: torch.Tensor, num_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dense, lengths)`` as given where the request has samples; for an empty one
    (``B = 0``), one sample of zeros with an empty bag per feature. (FBGEMM's in-kernel
    remap, ``pruned_array_lookup``, refuses a batch of no samples; its caller scores this
    one and keeps none of it. No copy where ``B > 0``.)

    Args:
        dense: ``(B, D)`` dense features of a request :func:`check_request` passed.
        lengths: ``(F * B,)`` its lengths.
        num_features: ``F``.

    Returns:
        ``dense`` ``(max(B, 1), D)`` and ``lengths`` ``(F * max(B, 1),)``.
    """
    if dense.size(0) > 0:
        return dense, lengths
    return dense.new_zeros(1, dense.size(1)), lengths.new_zeros(num_features)


def scores_of(scores: torch.Tensor, batch: int) -> torch.Tensor:
    """The scores of a request of ``batch`` samples: ``scores`` ``(max(batch, 1),)`` of
    :func:`at_least_one_sample`'s request, the one of an empty request dropped."""
    if batch > 0:
        return scores
    return scores[:0]
