"""The remap's per-id lookup: raw id -> internal row, for ids already laid out per feature.

:func:`~torchrec_lhf.modules.remap_ops.remap_values` lays a batch's ids out per internal
feature and hands them here; :func:`map_ids` looks each one up in its feature's dense
mapping, compact (head/tail) mapping, or nowhere (an uncompressed table). Pure torch,
scriptable, no host read (see :mod:`~torchrec_lhf.modules.remap_ops`).

Why it is written the way it is (CPU, where the remap costs most; measured in
``benchmarks.remap``): every op is a pass over the batch's ``P`` ids, so the code keeps
the passes few and

* range-checks the ids with one reduction instead of a per-id flag: ``((N - 1 - id) | id)``
  is negative exactly when ``id`` is outside ``[0, N)``; its minimum (one value) picks an
  index that fails inside a gather of one element, whose (zero) output every lookup then
  depends on (a data dependency, which TorchScript keeps);
* never selects per id with ``torch.where`` on a condition that varies from id to id (a
  head hit or miss): on CPU that kernel branches, and the mispredictions made it 7x the cost
  of a predictable ``where``; the head lookup selects with bit masks instead;
  ``torch.where`` stays only on conditions constant over a feature's ids.

On CPU, where the host knows each internal feature's ids (TorchRec's per-key lengths),
:func:`map_ids` is one pass of a C++ kernel instead
(:func:`~torchrec_lhf.modules.compact_kernel.fused_rows`: range check, then every
feature's lookup; scripted, through its operator), except for eager dense-only modules that
FBGEMM's ``pruned_array_lookup`` takes. The torch ops below stay what CUDA, machines without
a compiler and batches whose lengths are not read run.

Legend:
    J   internal features;  P ids of the batch, laid out per internal feature
    S   slots of the compact heads' cuckoo table
"""

import torch

from torchrec_lhf.hashing import mix_keyed, seed_keys, tail_rows_divided, tail_rows_keyed
from torchrec_lhf.modules import compact_kernel, head_rank, head_table

# NOTE: no ``from __future__ import annotations``: TorchScript reads the annotations.


def lengths_mismatch(keys: list[str], num: int, held: int) -> str:
    """The message for lengths of features ``keys`` that add up to ``num`` ids where the
    batch holds ``held`` (one wording for the remap, eager and scripted, and the served
    model's request check)."""
    return (
        f"the lengths of features {keys} add up to {num} ids, but the batch holds {held}: "
        "the lengths and values disagree"
    )


def negative_length(lengths: torch.Tensor, keys: list[str], stride: int | list[int]) -> str:
    """The message for the first negative entry of ``lengths`` (``(F * B,)``, feature-major,
    ``B = stride``, features ``keys``; or, for a variable batch per feature, ``stride`` the
    list of each feature's ``B_f``), which has one (read on the host: the batch has
    failed). One wording for the remap and the served model's request check."""
    first = int(torch.nonzero(lengths < 0)[0, 0])
    strides = [stride] * len(keys) if isinstance(stride, int) else stride
    key, sample = 0, first
    while key < len(strides) - 1 and sample >= strides[key]:  # (the failed batch only)
        sample -= strides[key]
        key += 1
    return (
        f"lengths[{first}] = {int(lengths[first])} (feature '{keys[key]}', "
        f"sample {sample}) is negative; expected ids per feature and sample >= 0"
    )


def length_guard(lengths: torch.Tensor) -> torch.Tensor:
    """A zero of shape ``(1,)``, in ``lengths``' dtype, whose computation fails if a length
    is negative (as :func:`range_guard`; no host read). Add it to the lengths a lookup
    reads: its offsets would otherwise run backwards, out of bounds."""
    zero = torch.zeros(1, dtype=lengths.dtype, device=lengths.device)
    if lengths.numel() == 0:
        return zero
    return torch.gather(zero, 0, (lengths.min() < 0).long().view(1))  # index 1: out of bounds


def range_guard(ids_P: torch.Tensor, j_P: torch.Tensor, height_J: torch.Tensor) -> torch.Tensor:
    """A zero of shape ``(1,)`` whose computation fails if an id is outside ``[0, N)``.

    Add it to a per-feature tensor that the lookup reads: an out-of-range id then fails
    the batch (a gather's "out of bounds" error on CPU, a device-side assert on CUDA)
    before any lookup reads out of bounds, and nothing is read on the host.

    Args:
        ids_P: int64 raw ids, shape ``(P,)``.
        j_P: the internal feature of each id, shape ``(P,)``.
        height_J: int64 logical height ``N`` of each internal feature, shape ``(J,)``.

    Returns:
        int64 zeros of shape ``(1,)``.
    """
    zero = torch.zeros(1, dtype=torch.long, device=ids_P.device)
    if ids_P.numel() == 0:
        return zero
    # negative exactly where id < 0 (the sign bit) or id > N - 1 (N - 1 - id < 0, no overflow
    # for ids >= 0)
    low = (height_J - 1).index_select(0, j_P).sub_(ids_P).bitwise_or_(ids_P).min()
    return torch.gather(zero, 0, (low < 0).long().view(1))  # index 1 is out of bounds


def uniform_range_guard(
    ids_P: torch.Tensor, length_J: list[int], height_J: torch.Tensor
) -> torch.Tensor | None:
    """:func:`range_guard` where every internal feature has the same number of ids ``L``
    (one-hot, fixed pooling), or None where they differ (the host knows from ``length_J``).

    The ids are then a ``(J, L)`` view: a vectorized maximum per row, compared with ``N``
    on ``J`` values, and one minimum cost a part of a per-id check (CPU, 426K ids on a cold
    cache: 206 us against 585 for FBGEMM's bounds check and a minimum).

    Args:
        ids_P: int64 raw ids laid out per internal feature, shape ``(P,)``.
        length_J: the ids of each internal feature (host ints).
        height_J: int64 logical height ``N`` of each internal feature, shape ``(J,)``.
    """
    num = len(length_J)
    if num == 0:
        return None
    per = length_J[0]
    for n in length_J:
        if n != per:
            return None
    if per * num != ids_P.numel():
        return None
    zero = torch.zeros(1, dtype=torch.long, device=ids_P.device)
    if per == 0:
        return zero
    # NOTE: per row only the maximum; the minimum over all ids (int64 ``amin`` along a
    # dim is not vectorized on CPU: 8x ``amax``'s time)
    bad = (ids_P.view(num, per).amax(1) >= height_J).any().logical_or_(ids_P.min() < 0)
    return torch.gather(zero, 0, bad.long().view(1))  # index 1 is out of bounds


def map_ids(
    ids_P: torch.Tensor,
    segments: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    has_identity: bool,
    compact: list[torch.Tensor],
    runs: list[tuple[int, int]] | None = None,
    length_J: list[int] | None = None,
) -> torch.Tensor:
    """``mapping[offset + id]`` for every id (the id itself where uncompressed, the head
    or tail row where compact), in the ids' dtype.

    Args as for :func:`~torchrec_lhf.modules.remap_ops.remap_values`; ``ids_P`` of shape
    ``(P,)``, laid out per internal feature; ``segments``: ``(j_P, per_key_J,
    array_offsets)``, the internal feature of each id (None: made here from
    ``per_key_J``), the ids of each internal feature and the optional regions for FBGEMM's
    ``pruned_array_lookup``; ``runs``: the runs ``[a, b)`` of consecutive compact internal
    features (as :func:`compact_runs` makes them) and ``length_J`` the ids of each internal
    feature on the host: with both, the compact lookup reads only the compact features' ids
    (contiguous slices of ``ids_P``), not every id.
    """
    j_opt, per_key_J, regions_J = segments
    on_cpu = ids_P.is_cpu
    if on_cpu and length_J is not None:
        # CPU with the per-feature lengths: range check and lookup in one kernel pass (eager
        # dense modules that FBGEMM's pruned_array_lookup takes keep it: benchmarks.remap's
        # figure; scripted, the kernel's operator, in place of about 25 interpreted ops)
        fused = compact_kernel.fused_rows(
            ids_P, length_J, mapping, offset_J, height_J, modulo, compact, regions_J
        )
        if fused is not None:
            return fused
    if regions_J is not None and not torch.jit.is_scripting() and on_cpu:
        return _pruned_array_lookup(
            ids_P, per_key_J, mapping, regions_J, height_J, modulo, length_J
        )
    if j_opt is None:
        j_P = torch.repeat_interleave(per_key_J.int(), output_size=ids_P.numel())
    else:
        j_P = j_opt
    # no table: every feature uncompressed, the ids checked or folded alone (check_ids)
    no_table = len(compact) == 0 and mapping.numel() == 0
    if modulo:
        ids_P = torch.remainder(ids_P, height_J.index_select(0, j_P))
        if no_table:
            return ids_P
    else:
        guard = None if length_J is None else uniform_range_guard(ids_P, length_J, height_J)
        if guard is None:
            guard = range_guard(ids_P, j_P, height_J)
        if no_table:
            return ids_P + guard.to(ids_P.dtype)
        offset_J = offset_J + guard.to(offset_J.dtype)
        if len(compact) > 0:
            compact = compact[:3] + [compact[3] + guard] + compact[4:]
    # with the runs and their lengths, the compact lookup reads only the compact runs' ids,
    # spliced in last; the other features' rows are made as always
    split = len(compact) > 0 and runs is not None and length_J is not None
    dense = len(compact) == 0 or mapping.numel() > 0  # some feature has a dense mapping
    rows_P = ids_P
    if dense or not split:
        offset_P = offset_J.index_select(0, j_P)
        key_P = ids_P.long() + offset_P
        # NOTE: the conditions of these where's are constant over each feature's ids (cheap)
        identity_P = offset_P == -1 if has_identity else None  # IDENTITY
        mixed = len(compact) > 0 and dense
        compact_P = compact[5].index_select(0, j_P) if mixed else None  # per id: compact?
        if dense:
            index_P = key_P
            if compact_P is not None:  # mixed: compact features' keys are no mapping index
                index_P = torch.where(compact_P, 0, index_P)
            if identity_P is not None:
                index_P = torch.where(identity_P, 0, index_P)
            rows_P = torch.gather(mapping, 0, index_P).to(ids_P.dtype)
        if len(compact) > 0 and not split:
            compact_rows_P = _compact_rows(ids_P, key_P, j_P, offset_J, compact)
            compact_rows_P = compact_rows_P.to(ids_P.dtype)
            if compact_P is not None:
                compact_rows_P = torch.where(compact_P, compact_rows_P, rows_P)
            rows_P = compact_rows_P
        if identity_P is not None:
            rows_P = torch.where(identity_P, ids_P, rows_P)
    if split:
        assert runs is not None and length_J is not None  # (for TorchScript's types)
        rows_P = _splice_compact(rows_P, ids_P, j_P, offset_J, compact, runs, length_J)
    return rows_P


def compact_runs(compact_J: list[bool]) -> list[tuple[int, int]] | None:
    """The runs ``[a, b)`` of consecutive compact internal features, or None where every
    feature is compact (the lookup then reads every id anyway) or none is."""
    runs: list[tuple[int, int]] = []
    for j, is_compact in enumerate(compact_J):
        if not is_compact:
            continue
        if runs and runs[-1][1] == j:
            runs[-1] = (runs[-1][0], j + 1)
        else:
            runs.append((j, j + 1))
    return None if not runs or all(compact_J) else runs


def _splice_compact(
    rows_P: torch.Tensor,
    ids_P: torch.Tensor,
    j_P: torch.Tensor,
    offset_J: torch.Tensor,
    compact: list[torch.Tensor],
    runs: list[tuple[int, int]],
    length_J: list[int],
) -> torch.Tensor:
    """``rows_P`` with the compact runs' rows looked up and put in place.

    The runs' ids are contiguous slices of ``ids_P`` whose bounds the host knows from
    ``length_J`` (no read of a tensor): ``C`` ids in all, looked up at once.
    """
    start_J = [0]
    for n in length_J:
        start_J.append(start_J[-1] + n)
    bounds = [(start_J[a], start_J[b]) for a, b in runs]
    ids_C = torch.cat([ids_P[s:e] for s, e in bounds])
    j_C = torch.cat([j_P[s:e] for s, e in bounds])
    rows_C = _compact_rows(ids_C, None, j_C, offset_J, compact).to(ids_P.dtype)
    pieces: list[torch.Tensor] = []
    done = 0
    c = 0
    for s, e in bounds:
        pieces.append(rows_P[done:s])
        pieces.append(rows_C[c : c + e - s])
        c += e - s
        done = e
    pieces.append(rows_P[done:])
    return torch.cat(pieces)


def _compact_rows(
    ids_P: torch.Tensor,
    key_P: torch.Tensor | None,
    j_P: torch.Tensor,
    offset_J: torch.Tensor,
    compact: list[torch.Tensor],
) -> torch.Tensor:
    """Head row (a probe of the cuckoo table of ``key = offset + id``, or the rank in a
    ranked head: :mod:`~torchrec_lhf.modules.head_rank`) or tail hash row of every id, as
    int64; ``key_P`` made here when None. (Where the host knows each
    feature's ids on CPU, :func:`map_ids` runs the kernel instead.)"""
    if key_P is None:
        key_P = ids_P.long() + offset_J.index_select(0, j_P)
    slot_keys_S, slot_rows_S, seed_J, tail_offset_J, tail_rows_J = compact[:5]
    keys_P = seed_keys(seed_J).index_select(0, j_P)  # J seeds keyed once, not P
    x_P = mix_keyed(ids_P, keys_P)
    tail_rows_P = tail_rows_J.index_select(0, j_P)
    divisor_J = compact[6]
    if divisor_J.numel() > 0:  # some tail divided (QR's quotient): a division per id more
        rows_P = tail_rows_divided(ids_P, x_P, divisor_J.index_select(0, j_P), tail_rows_P)
    else:
        rows_P = tail_rows_keyed(ids_P, x_P, keys_P, tail_rows_P)
    rows_P = rows_P.add_(tail_offset_J.index_select(0, j_P))
    if slot_keys_S.numel() > 0:
        # the head: a static cuckoo table probed at slots taken from the same mixed hash
        # (salted where compact mappings share a seed: head_table.probe_salts)
        salt_J = compact[7]
        probe_P = x_P if salt_J.numel() == 0 else x_P ^ salt_J.index_select(0, j_P)
        rows_P = head_table.lookup(
            key_P.to(slot_keys_S.dtype), probe_P, slot_keys_S, slot_rows_S, rows_P
        )
    if len(compact) > 8:  # ranked heads (rows = ranks): a bisection in each id's span
        blocks_D, offsets_R, dir_J, last_J, steps_S, fine_F = compact[8:14]
        rows_P = head_rank.lookup(
            ids_P.long(), j_P, blocks_D, offsets_R, dir_J, last_J, steps_S, rows_P, fine_F
        )
    return rows_P


def array_offsets(offset_J: list[int], mapping: torch.Tensor) -> torch.Tensor | None:
    """The dense mapping's regions as FBGEMM's ``pruned_array_lookup`` takes them.

    That op maps id ``i`` of feature ``j`` to ``mapping[regions[j] + i]`` where
    ``regions[j + 1] > regions[j]``, and passes it through where they are equal. So it
    applies when the compressed features' offsets increase with ``j`` (no two features
    share a table), the mapping is int32 and fbgemm_gpu is loaded.

    Args:
        offset_J: each internal feature's offset into the mapping, ``-1`` (``IDENTITY``)
            for an uncompressed table; all features dense.
        mapping: the flat mapping.

    Returns:
        int64 ``(J + 1,)`` on ``mapping``'s device, or None where the op does not apply.
    """
    if mapping.dtype != torch.int32 or not _has_array_lookup():
        return None
    regions = [mapping.numel()] * (len(offset_J) + 1)
    for j in range(len(offset_J) - 1, -1, -1):
        if offset_J[j] == -1:  # IDENTITY: an empty region, the id passes through
            regions[j] = regions[j + 1]
        elif offset_J[j] < regions[j + 1]:
            regions[j] = offset_J[j]
        else:  # a feature sharing its table's region with the next one
            return None
    return torch.tensor(regions, dtype=torch.long, device=mapping.device)


def _has_array_lookup() -> bool:
    """Whether FBGEMM's ``pruned_array_lookup`` is registered (fbgemm_gpu is imported)."""
    try:
        torch.ops.fbgemm.pruned_array_lookup  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


@torch.jit.unused
def _pruned_array_lookup(
    ids_P: torch.Tensor,
    per_key_J: torch.Tensor,
    mapping: torch.Tensor,
    regions_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    length_J: list[int] | None = None,
) -> torch.Tensor:
    """:func:`map_ids` of a dense module in FBGEMM's ops: ``mapping[regions_J[j] + id]``
    (the id where a region is empty), after a range check (``error``: the
    :func:`uniform_range_guard` where every feature has as many ids and ``length_J`` is
    given, else FBGEMM's bounds check) or a fold (``modulo``).

    NOTE: eager CPU only (not compiled by TorchScript). The ops take per-bag offsets
    ``(J * B + 1,)`` but read only each feature's ids, so one "bag" per feature does. The
    bounds check (FATAL: a RuntimeError at the first id outside ``[0, N)``) reads the ids
    in place, with no per-id temporary: on a cold cache, after a training step's embedding
    traffic, that is half the cost of :func:`range_guard`'s; it lets id ``-1`` (FBGEMM's
    "pruned row") through, which the minimum catches.
    """
    offsets_J = torch.zeros(per_key_J.numel() + 1, dtype=ids_P.dtype, device=ids_P.device)
    torch.cumsum(per_key_J, 0, out=offsets_J[1:])
    if modulo:
        ids_P = torch.remainder(
            ids_P, torch.repeat_interleave(height_J, per_key_J, output_size=ids_P.numel())
        )
        offsets_J = offsets_J.to(ids_P.dtype)
    elif ids_P.numel() > 0:
        guard = None if length_J is None else uniform_range_guard(ids_P, length_J, height_J)
        if guard is not None:  # every feature has as many ids: the cheap check
            regions_J = regions_J + guard
        else:
            # a negative id fails the one-element gather (no host read; as in range_guard)
            zero = torch.zeros(1, dtype=regions_J.dtype, device=ids_P.device)
            regions_J = regions_J + torch.gather(zero, 0, (ids_P.min() < 0).long().view(1))
            warning = torch.zeros(1, dtype=torch.long)
            torch.ops.fbgemm.bounds_check_indices(height_J, ids_P, offsets_J, 0, warning)  # FATAL
    return torch.ops.fbgemm.pruned_array_lookup(ids_P, offsets_J, mapping, regions_J)


def map_ids_or_raise(
    ids_P: torch.Tensor,
    segments: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    has_identity: bool,
    sources: list[str],
    compact: list[torch.Tensor],
    runs: list[tuple[int, int]] | None = None,
    length_J: list[int] | None = None,
    *,
    modulo: bool = False,
) -> torch.Tensor:
    """:func:`map_ids` in eager mode, with a descriptive error where it fails (only then:
    a good batch pays nothing).

    Raises:
        ValueError: lengths that do not add up to the ids (naming the features), or (not
            ``modulo``) an id outside ``[0, N)``, naming its feature, the id and ``N``. On
            CPU the range guard fails at once; on CUDA it is a device-side assert instead
            (run on CPU, or with ``CUDA_LAUNCH_BLOCKING=1``, to find the id).
    """
    try:
        return map_ids(
            ids_P,
            segments,
            mapping,
            offset_J,
            height_J,
            modulo,
            has_identity,
            compact,
            runs,
            length_J,
        )
    except (RuntimeError, IndexError) as error:  # the guard's gather, a lookup's
        failure = error
    # NOTE: reading values on the host is fine here: the batch has failed already.
    num = int(segments[1].sum())
    if num != ids_P.numel():  # lengths that disagree with the values fail the lookup's size
        keys = list(dict.fromkeys(sources))
        raise ValueError(lengths_mismatch(keys, num, ids_P.numel())) from failure
    if modulo:  # every id was folded into range: the lookup's own error
        raise failure
    j_P = segments[0]
    if j_P is None:
        j_P = torch.repeat_interleave(segments[1].int(), output_size=ids_P.numel())
    bad_P = (ids_P < 0) | (ids_P >= height_J[j_P.long()])
    if not bool(bad_P.any()):
        raise failure  # not an out-of-range id: the lookup's own error
    first = int(bad_P.nonzero()[0, 0])
    j = int(j_P[first])
    raise ValueError(
        f"feature {sources[j]!r}: id {int(ids_P[first])} is out of range "
        f"[0, {int(height_J[j])}) ({int(bad_P.sum())} such ids in the batch); "
        "pass out_of_range='modulo' to fold ids"
    )
