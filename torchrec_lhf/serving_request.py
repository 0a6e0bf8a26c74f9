"""The served model's request check: a malformed request named before the model reads it.

A scripted serving model (:class:`~torchrec_lhf.inference.ScoringModule`) takes three plain
tensors, so nothing upstream has checked that they agree. Without this check a request
whose lengths do not add up to its ids fails inside FBGEMM with an index that names
nothing, or, where they add up to fewer, scores without a word, the extra ids ignored; a
negative length is read as an empty bag; a dense input of the wrong width fails as a
matrix product; an id outside a plain quantized table (which TorchRec builds with FBGEMM's
bounds check off) scores a row read from memory outside it.

:func:`check_request` is one opaque node in a symbolic trace (``torch.fx.wrap`` where it
is called) that TorchScript compiles into the served model. It reads tensor shapes and
dtypes and, for a request on the CPU, the lengths' minimum and sum (two reductions over
``F * B`` ints: 4% of a one-sample request to ``benchmarks.serve``'s model, 0.5% from
batch 64 on) and, where plain tables read some features, those ids
(:func:`ids_out_of_range`: 11% of a one-sample plain request, 2.3% at batch 1,024).
``check_lengths=False`` skips the lengths and ids, as a learned hash's serving wrapper
does where its remap's operator reads them (``inference.RemapOnRequest``). On other
devices only the metadata is read, so that serving there adds no host-device sync.
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
    limits: torch.Tensor | None = None,
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
            ``values``' size, and the ids ``limits`` bounds. False: shapes and dtypes only.
        limits: ``(F,)`` int64 (:func:`id_limits`), where the model reads some
            features' ids as rows of tables with no check of their own (FBGEMM's quantized
            tables, which TorchRec builds with no bounds check: an id outside a table read
            memory outside it). On the CPU, with ``check_lengths``: each such id in
            ``[0, height)``.
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
    if limits is not None and total > 0:
        message = ids_out_of_range(values, lengths, limits, feature_names)
        if message:
            raise ValueError(message)


def _unsigned_order(x: torch.Tensor) -> torch.Tensor:
    """``x`` (int64) XOR ``-2**63``: int64 values in the order of their bits read as
    uint64 (negative ones above all others), so that one signed compare is an unsigned
    one. (Its own function: TorchScript takes no module-level int.)"""
    return x ^ (-9223372036854775807 - 1)  # (-2**63; TorchScript reads 2**63 as a float)


def id_limits(heights: torch.Tensor) -> torch.Tensor:
    """The request check's form of per-feature table heights (``(F,)`` int64, ``<= 0``:
    not checked): ``height - 1`` (the largest id) in unsigned order
    (:func:`_unsigned_order`), so that one compare refuses an id above it and, read
    unsigned, a negative one; an unchecked feature's limit is the largest unsigned value,
    which no id exceeds."""
    return _unsigned_order(torch.where(heights > 0, heights - 1, -1))


def ids_out_of_range(
    values: torch.Tensor, lengths: torch.Tensor, limits: torch.Tensor, feature_names: list[str]
) -> str:
    """The message for the first id of a request outside its feature's ``[0, height)``
    (``limits``: :func:`id_limits`), or ``""``: a sum over the lengths, and a repeat, a
    XOR, a compare and an ``any`` over the ids (no loop; 8 us of a 26-id request).

    Args:
        values: ``(V,)`` ids of a request whose ``(F * B,)`` ``lengths`` add up to ``V``.
        lengths: its lengths, feature-major.
        limits: ``(F,)`` int64.
        feature_names: the ``F`` features.
    """
    per_feature_F = lengths.view(len(feature_names), -1).sum(1)
    limit_V = torch.repeat_interleave(limits, per_feature_F, output_size=values.numel())
    bad_V = torch.gt(_unsigned_order(values.long()), limit_V)
    if not bool(bad_V.any()):
        return ""
    first = int(torch.nonzero(bad_V)[0, 0])
    feature = int(torch.searchsorted(per_feature_F.cumsum(0), first, right=True))
    height = int(_unsigned_order(limit_V[first])) + 1
    return (
        f"feature '{feature_names[feature]}': id {int(values[first])} is out of range "
        f"[0, {height}) ({int(bad_V.sum())} such ids in the request)"
    )


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
