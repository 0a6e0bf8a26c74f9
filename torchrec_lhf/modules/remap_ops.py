"""The tensor math of the remap and combine: pure torch, scriptable, never a host sync.

:class:`~torchrec_lhf.modules.remap.FeatureRemap` hands a batch's tensors to
:func:`remap_values` from a ``@torch.fx.wrap`` function (one opaque FX node, as TorchRec's
``_mch_remap``), because it reads the KeyedJaggedTensor's keys on the host, which a
symbolic trace cannot; :class:`~torchrec_lhf.modules.combine.KeyedTensorCombine` traces
:func:`combine_values` op by op. Everything here compiles with TorchScript (TorchRec's
inference flow: ``symbolic_trace`` then ``torch.jit.script``) and imports torch only, so
``benchmarks/gpu_check.sh`` runs it on a CUDA machine without torchrec or fbgemm. (The
per-id lookup is :mod:`~torchrec_lhf.modules.remap_lookup`; its one FBGEMM op, taken only
in eager CPU mode when the caller passes ``array_offsets``, is not compiled.)

No host-device synchronization per batch:

* every output size is known on the host without reading a tensor: ``values.numel()``
  times the number of internal features each input key feeds, or the KJT's cached
  per-key lengths;
* the range check of the ``error`` policy reads no flag: an out-of-range id makes a
  one-element gather fail, whose output every lookup depends on
  (:func:`~torchrec_lhf.modules.remap_lookup.range_guard`): a device-side assert on CUDA,
  a ``ValueError`` naming feature, id and ``N`` in eager CPU mode (where the failed gather
  raises at once and the details can be read for free);
* key layouts are cached by the key order alone.

The one read left is TorchRec's: a layout where input keys feed different numbers of
internal features (a dropped key; one- and two-hash tables together), on a KJT without
cached per-key lengths, needs them for its output size (see :func:`needs_length_per_key`).
The caller then takes them from ``KeyedJaggedTensor.length_per_key()``: the very read
TorchRec's ``EmbeddingBagCollection.forward`` (``to_dict``) and sharded ``input_dist``
(``split``) make on every batch anyway. The output carries them on, so TorchRec does not
read again and a step reads no more than with a plain EBC.

Compact (head/tail) hash functions are looked up in the same pass: one SplitMix64 mix of
every id with its feature's tail seed gives both its tail row (the seeded tail hash, with
the offset and rows of the id's feature; see
:class:`~torchrec_lhf.plan_compact.CompactMapping`) and its probes into one static cuckoo
table of every compact internal feature's head (keys ``key offset + id``;
:mod:`~torchrec_lhf.modules.head_table`: three independent probes where a binary search
made ``log2 K`` dependent ones). Where some internal features are compact and others not
(an uncompressed table, a dense hash function), the compact lookup reads only the compact
features' ids: the runs of consecutive compact features
(:func:`~torchrec_lhf.modules.remap_lookup.compact_runs`) are contiguous slices of the
laid-out ids, whose bounds come from the per-key lengths on the host (TorchRec's own read,
above; carried on to the output), and their rows are spliced in. At the MLPerf heights,
where 8 of 26 tables are compressed, that is a third of the ids (the remap's time halved:
2.2 to 1.1 ms a batch of 4096). Called without the lengths, :func:`remap_values` runs the
compact lookup over every id and picks per feature.

Legend:
    F   keys of the input KeyedJaggedTensor;  J internal features
    B   batch size (stride)
    V   ids in the input batch;  P ids in the remapped batch
    C   columns of a KeyedTensor's values
    K   head ids of all compact internal features;  S slots of their cuckoo table
"""

import functools

import torch

from torchrec_lhf.modules import compact_kernel
from torchrec_lhf.modules.remap_lookup import lengths_mismatch, map_ids, map_ids_or_raise

# NOTE: no ``from __future__ import annotations``: TorchScript reads these functions'
# annotations as types. The functions spell out their constants: TorchScript reads no
# module globals.

IDENTITY = -1  # offset of an internal feature whose table is not compressed


def key_layout(
    keys: list[str], sources: list[str], device: torch.device
) -> tuple[torch.Tensor, list[int], bool, int]:
    """Where each internal feature's ids come from, for the input key order ``keys``.

    Args:
        keys: the input KJT's keys (``F``).
        sources: the logical feature of each internal feature (``J``).
        device: where the index tensor goes.

    Returns:
        ``(src_J, src, identity, multiplicity)``: the input key index of each internal
        feature (a tensor on ``device`` and a list), whether that is ``0..F-1``, and how
        many internal features every input key feeds when that number is the same for all
        keys (0 when not).

    Raises:
        ValueError: a source feature is not among ``keys``.
    """
    index: dict[str, int] = {}
    for i, k in enumerate(keys):
        index[k] = i
    missing: list[str] = []
    for s in sources:
        if s not in index:
            missing.append(s)
    if len(missing) > 0:
        raise ValueError(f"input features {keys} lack {missing}, which this module embeds")
    src = [index[s] for s in sources]
    counts = [0] * len(keys)
    for s in src:
        counts[s] += 1
    multiplicity = counts[0] if len(counts) > 0 else 0
    for c in counts:
        if c != multiplicity:
            multiplicity = 0
    identity = src == list(range(len(keys)))
    return torch.tensor(src, dtype=torch.long, device=device), src, identity, multiplicity


@functools.lru_cache(maxsize=256)
def _cached_key_layout(
    keys: tuple[str, ...], sources: tuple[str, ...], device: torch.device
) -> tuple[torch.Tensor, list[int], bool, int]:
    # NOTE: eager only (scripted code recomputes it, which costs a small host-to-device
    # copy). The index tensor is copied to the device once per key order.
    return key_layout(list(keys), list(sources), device)


def _layout(
    keys: list[str], sources: list[str], device: torch.device
) -> tuple[torch.Tensor, list[int], bool, int]:
    if torch.jit.is_scripting() or torch.compiler.is_compiling():  # (no Python cache there)
        return key_layout(keys, sources, device)
    return _cached_key_layout(tuple(keys), tuple(sources), device)


def source_index(
    keys: list[str], sources: list[str], device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """The index in ``keys`` of each internal feature's source, as int64 ``(J,)`` on
    ``device`` and as a list (:func:`key_layout`'s, cached per key order in eager mode)."""
    src_J, src, _, _ = _layout(keys, sources, device)
    return src_J, src


def needs_length_per_key(keys: list[str], sources: list[str]) -> bool:
    """Whether :func:`remap_values` needs the per-key lengths for input keys ``keys``."""
    _, _, identity, multiplicity = _layout(keys, sources, torch.device("cpu"))
    return not identity and multiplicity == 0


def check_id_dtype(values: torch.Tensor, keys: list[str]) -> None:
    """Raise ValueError unless ``values`` (the ids of features ``keys``) are integers.

    Without it, float ids fail inside the embedding kernel without naming a feature, and
    bool ids read rows 0 and 1.
    """
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(
            f"the ids of features {keys} are {_dtype_text(values, 'not integers')}; expected "
            "an integer dtype (torch.int64 or torch.int32)"
        )


def _dtype_text(tensor: torch.Tensor, scripted: str) -> str:
    """``tensor``'s dtype for a message (``torch.float32``), or ``scripted`` under
    TorchScript, which prints a dtype as its number."""
    if torch.jit.is_scripting():
        return scripted
    return str(tensor.dtype)


def check_weights(weights: torch.Tensor, values: torch.Tensor, keys: list[str]) -> None:
    """Raise ValueError unless ``weights``, the per-id weights of features ``keys``, are one
    float per id of ``values`` (metadata only: no host read). Without it, a weight too few
    failed as an index out of bounds naming nothing, and integer weights as a mismatch of
    the tables' and the weights' types."""
    if weights.dim() != 1 or weights.numel() != values.numel():
        raise ValueError(
            f"the weights of features {keys} have shape {list(weights.shape)}, but the batch "
            f"holds {values.numel()} ids: expected one weight per id"
        )
    if not weights.is_floating_point():
        raise ValueError(
            f"the weights of features {keys} are {_dtype_text(weights, 'not floating point')};"
            " expected a float dtype (torch.float32)"
        )


def remap_values(
    keys: list[str],
    values_V: torch.Tensor,
    lengths: torch.Tensor,
    weights_V: torch.Tensor | None,
    length_per_key: list[int] | None,
    sources: list[str],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    has_identity: bool,
    compact: list[torch.Tensor] | None = None,
    array_offsets: torch.Tensor | None = None,
    runs: list[tuple[int, int]] | None = None,
    stride_per_key: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[int] | None]:
    """Raw ids of the logical features -> rows of the internal tables.

    Args:
        keys: the input keys (``F``); they include every source, others are dropped.
        values_V: raw ids, key-major, shape ``(V,)``.
        lengths: ids per bag, shape ``(F * B,)``.
        weights_V: per-id weights or None, shape ``(V,)``.
        length_per_key: the input's ids per key if known on the host (required when
            :func:`needs_length_per_key`), else None.
        sources: the logical feature of each internal feature (``J``).
        mapping: the flat int16/int32 mapping buffer of the dense hash functions.
        offset_J: start of each internal feature's mapping (``IDENTITY`` if its table is
            uncompressed; its key offset if compact), shape ``(J,)``; int32 when both
            fit in 2**31.
        height_J: int64 logical height ``N`` of each internal feature, shape ``(J,)``.
        modulo: fold ids into ``[0, N)`` first; otherwise out-of-range ids fail.
        has_identity: some internal feature is uncompressed (offset ``IDENTITY``).
        compact: empty or None without compact hash functions, else ``[slot_keys_S,
            slot_rows_S, tail_seed_J, tail_offset_J, tail_rows_J, compact_J, divisor_J,
            salt_J]``: the cuckoo table of all heads (keys int32 or int64, ``-1`` empty;
            rows int16/int32; see :func:`~torchrec_lhf.modules.head_table.build`), the
            int64 tail hash of each internal feature, which internal features are compact
            (bool), each tail's divisor (:func:`~torchrec_lhf.hashing.tail_divisors`; empty
            where no tail is divided) and each feature's probe salt
            (:func:`~torchrec_lhf.modules.head_table.probe_salts`; empty where no compact
            mappings share a seed), then the ranked heads' six tensors where there are any
            (:mod:`~torchrec_lhf.modules.head_rank`).
        array_offsets: optional, for a CPU batch in eager mode: the mapping's regions as
            FBGEMM's ``pruned_array_lookup`` takes them, shape ``(J + 1,)`` (see
            :func:`~torchrec_lhf.modules.remap_lookup.array_offsets`); the dense lookup is
            then that one op.
        runs: optional runs of consecutive compact internal features
            (:func:`~torchrec_lhf.modules.remap_lookup.compact_runs`); with
            ``length_per_key``, the compact lookup reads only their ids.
        stride_per_key: for a variable batch per feature (VBE), each key's batch size
            ``B_f`` (``lengths`` then has ``sum B_f`` entries, and ``length_per_key`` is
            required); None: every key has ``B = len(lengths) / F``.

    Returns:
        ``(rows_P, lengths_JB, weights_P, length_per_key_J)`` of the internal features,
        the last None when the input's is.

    Raises:
        ValueError: ids not of an integer dtype (naming the features), a missing source
            feature, no ``length_per_key`` where it is needed, or (eager, CPU, not
            ``modulo``) an id outside ``[0, N)``, naming feature, id, ``N``.
    """
    # NOTE: one function, not a chain of helpers: TorchScript compiles it as the serving
    # model's remap, and the steps share many tensors; it is mostly the docstring above.
    # (The kernel's fast paths take int32 and int64 ids only and leave the others here.)
    check_id_dtype(values_V, keys)
    if keys == sources:  # one internal feature per input key, in order (DLRM's layout)
        # NOTE: no layout to make: scripted code (which cannot cache it) saves a loop over
        # the keys, most of a small batch's remap
        src: list[int] = []  # (used where not the identity)
        src_J, identity, multiplicity = values_V.new_zeros(0), True, 1
    else:
        src_J, src, identity, multiplicity = _layout(keys, sources, values_V.device)
    num_keys = len(keys)
    stride = lengths.numel() // num_keys if num_keys > 0 else 0
    if stride_per_key is not None and length_per_key is None:
        raise ValueError("a variable batch per feature (VBE) needs length_per_key")
    if length_per_key is not None and (values_V.is_cpu or stride_per_key is not None):
        # known on the host (TorchRec's read): no pass over the lengths (a copy on CUDA)
        per_key_F = host_ints(length_per_key, lengths.dtype, lengths.device)
    else:
        # NOTE: in the lengths' dtype: an int32 sum is 4x faster on CPU than one into int64
        per_key_F = lengths.view(num_keys, stride).sum(1, dtype=lengths.dtype)
    if identity:
        num = values_V.numel()
        ids_P = values_V
        per_key_J = per_key_F
        out_lengths = lengths
        j_P: torch.Tensor | None = None  # made where needed (FBGEMM's lookup needs none)
    else:
        if length_per_key is not None:
            if sum(length_per_key) != values_V.numel():  # (host ints: no sync)
                raise ValueError(lengths_mismatch(keys, sum(length_per_key), values_V.numel()))
            length_per_key = [length_per_key[s] for s in src]
            num = sum(length_per_key)
        elif multiplicity > 0:
            num = multiplicity * values_V.numel()  # every key feeds `multiplicity` features
        else:
            raise ValueError(
                f"input keys {keys} feed the internal features unevenly: pass length_per_key"
            )
        per_key_J = per_key_F[src_J]
        j_P = torch.repeat_interleave(per_key_J.int(), output_size=num)
        # position of every output id in the input values
        shift_J = (torch.cumsum(per_key_F, 0) - per_key_F)[src_J] - (
            torch.cumsum(per_key_J, 0) - per_key_J
        )
        pos_P = torch.arange(num, device=values_V.device) + shift_J.index_select(0, j_P)
        ids_P = values_V[pos_P]
        weights_V = None if weights_V is None else weights_V[pos_P]
        if stride_per_key is None:
            out_lengths = lengths.view(num_keys, stride)[src_J].reshape(-1)
        else:  # each internal feature's bags: its source's run of lengths
            out_lengths = gather_runs(lengths, stride_per_key, src, src_J)
    tables = [] if compact is None else compact
    segments = (j_P, per_key_J, array_offsets)
    if torch.jit.is_scripting():
        rows_P = map_ids(
            ids_P,
            segments,
            mapping,
            offset_J,
            height_J,
            modulo,
            has_identity,
            tables,
            runs,
            length_per_key,
        )
    else:
        rows_P = map_ids_or_raise(
            ids_P,
            segments,
            mapping,
            offset_J,
            height_J,
            has_identity,
            sources,
            tables,
            runs,
            length_per_key,
            modulo=modulo,
        )
    return rows_P, out_lengths, weights_V, length_per_key


def host_ints(values: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host ints as a tensor on ``device``; off the CPU through pinned memory, so that the
    copy does not wait for the device (a copy from pageable memory synchronizes)."""
    out = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return out
    return out.pin_memory().to(device, non_blocking=True)


def gather_runs(
    data: torch.Tensor, run_lengths: list[int], src: list[int], src_J: torch.Tensor
) -> torch.Tensor:
    """The runs ``src[0], src[1], ...`` of ``data`` (cut into consecutive runs of
    ``run_lengths``), concatenated: one gather, no loop over the runs.

    Args:
        data: shape ``(sum(run_lengths),)``.
        run_lengths: host ints, one per run (``F``).
        src: which run goes out at each place (``J``), indices into ``run_lengths``.
        src_J: ``src`` on ``data``'s device, int64.

    Returns:
        Shape ``(sum(run_lengths[s] for s in src),)``.
    """
    size_F = host_ints(run_lengths, torch.long, data.device)
    size_J = size_F[src_J]
    total = 0
    for s in src:
        total += run_lengths[s]
    shift_J = (torch.cumsum(size_F, 0) - size_F)[src_J] - (torch.cumsum(size_J, 0) - size_J)
    j_L = torch.repeat_interleave(
        torch.arange(len(src), device=data.device), size_J, output_size=total
    )
    return data[torch.arange(total, device=data.device) + shift_J[j_L]]


def request_rows(
    values_V: torch.Tensor,
    lengths: torch.Tensor,
    sources: list[str],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    has_identity: bool,
    compact: list[torch.Tensor],
    array_offsets: torch.Tensor | None = None,
    runs: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """The rows of a request whose keys are ``sources`` in order (a serving wrapper's
    ``(values, lengths)``, before any KeyedJaggedTensor is made): every internal feature
    reads one key, so the lengths stay as they are. On CPU the kernel's operator, which
    sums each feature's bags itself; elsewhere (or where it does not apply)
    :func:`remap_values`. See :func:`torchrec_lhf.inference.script_for_inference`.

    Args:
        values_V: raw ids, key-major, shape ``(V,)``.
        lengths: ids per bag, shape ``(J * B,)``.
        sources, the rest: as for :func:`remap_values` (``sources`` its ``keys`` too).

    Returns:
        The rows, shape ``(V,)``, in ``values_V``'s dtype.
    """
    if values_V.is_cpu:
        rows_V = compact_kernel.fused_rows_of_bags(
            values_V, lengths, mapping, offset_J, height_J, modulo, compact, sources
        )
        if rows_V is not None:
            return rows_V
    return remap_values(
        sources, values_V, lengths, None, None, sources, mapping, offset_J, height_J, modulo,
        has_identity, compact, array_offsets, runs,
    )[0]  # fmt: skip


def request_ids(
    values_V: torch.Tensor,
    lengths: torch.Tensor,
    sources: list[str],
    unmapped_J: torch.Tensor,
    height_J: torch.Tensor,
    no_mapping: torch.Tensor,
    no_table: torch.Tensor,
    modulo: bool,
) -> torch.Tensor:
    """:func:`request_rows` of a remap with no table: a request's ids, range-checked (or
    folded with ``modulo``), for a lookup that maps raw ids itself. On CPU one operator
    call with nothing made per call
    (:func:`~torchrec_lhf.modules.compact_kernel.checked_ids_of_bags`), elsewhere
    :func:`request_rows`' (on CUDA: no host read).

    Args:
        values_V, lengths, sources, height_J, modulo: as for :func:`request_rows`.
        unmapped_J: ``IDENTITY`` for every internal feature, shape ``(J,)``.
        no_mapping: an empty mapping; ``no_table``: an empty int64 tensor.

    Returns:
        The ids, shape ``(V,)``.
    """
    if values_V.is_cpu:
        ids_V = compact_kernel.checked_ids_of_bags(
            values_V, lengths, unmapped_J, height_J, no_mapping, no_table, modulo, sources
        )
        if ids_V is not None:
            return ids_V
    return request_rows(
        values_V, lengths, sources, no_mapping, unmapped_J, height_J, modulo, True, []
    )


def combine_plan(
    in_keys: list[str],
    in_dims: list[int],
    out_dims: list[int],
    sources: list[tuple[list[str], str]],
) -> tuple[list[int], list[tuple[bool, list[int], list[int]]]]:
    """The column plan of :func:`combine_values` (host lists; built once per module).

    One gather fills every output column from the first internal table (all of them, for
    concat; each column's first, for sum_concat); pass ``h`` then adds or multiplies in
    internal table ``h`` (of each column), for all features at once: the number of ops
    depends on the largest ``H``, not on the features.

    Args:
        in_keys: internal embedding names, in the internal KeyedTensor's order.
        in_dims: their dims.
        out_dims: the logical embeddings' dims, in output order.
        sources: for each logical embedding, ``(internal keys, combine)``; ``combine`` is
            one of ``sum``, ``concat``, ``mult``, ``scaled_sum``, ``sum_concat`` (columns of
            ``k`` consecutive keys of one dim, ``k`` = their dims' total over the output dim).

    Returns:
        ``(first_C, passes)`` as :func:`combine_values` takes them (as lists).

    Raises:
        ValueError: keys that do not form columns of one dim adding up to the output dim.
    """
    col = dict(zip(in_keys, (sum(in_dims[:i]) for i in range(len(in_dims)))))
    dim = dict(zip(in_keys, in_dims))
    first: list[int] = []
    by_pass: list[dict[str, tuple[list[int], list[int]]]] = []
    out_col = 0
    for (keys, mode), out_dim in zip(sources, out_dims):
        if mode == "concat" or len(keys) == 1:
            first.extend(c for k in keys for c in range(col[k], col[k] + dim[k]))
            out_col += out_dim
            continue
        per_column = sum(dim[k] for k in keys) // out_dim if mode == "sum_concat" else len(keys)
        columns = [keys[i : i + per_column] for i in range(0, len(keys), per_column or 1)]
        widths = [dim[c[0]] if mode == "sum_concat" else out_dim for c in columns]
        if sum(widths) != out_dim or any(dim[k] != w for c, w in zip(columns, widths) for k in c):
            raise ValueError(
                f"{mode} of {keys} (dims {[dim[k] for k in keys]}) does not form columns of "
                f"one dim each that add up to {out_dim}"
            )
        for column, width in zip(columns, widths):
            first.extend(range(col[column[0]], col[column[0]] + width))
            for h, k in enumerate(column[1:], start=1):
                last = h == len(column) - 1
                op = "mul" if mode == "mult" or (mode == "scaled_sum" and last) else "add"
                while len(by_pass) < h:
                    by_pass.append({"add": ([], []), "mul": ([], [])})
                dst, src = by_pass[h - 1][op]
                dst.extend(range(out_col, out_col + width))
                src.extend(range(col[k], col[k] + width))
            out_col += width
    assert len(first) == out_col == sum(out_dims), "combine layout mismatch"
    passes = [(op == "mul", dst, src) for ops in by_pass for op, (dst, src) in ops.items() if dst]
    return first, passes


def combine_values(
    values_BC: torch.Tensor,
    first_C: torch.Tensor,
    passes: list[tuple[bool, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Internal pooled embeddings -> logical ones (see ``KeyedTensorCombine``).

    Args:
        values_BC: the internal KeyedTensor's values, shape ``(B, C_in)``.
        first_C: the input column of each output column's first term, shape ``(C_out,)``.
        passes: ``(multiply, dst, src)``: output columns ``dst`` are added (multiplied)
            by input columns ``src``, in order.

    Returns:
        The logical values, shape ``(B, C_out)``.
    """
    out_BC = values_BC.index_select(1, first_C)
    for multiply, dst, src in passes:
        if multiply:
            term = out_BC.index_select(1, dst) * values_BC.index_select(1, src)
            out_BC = out_BC.index_copy(1, dst, term)
        else:
            out_BC = out_BC.index_add(1, dst, values_BC.index_select(1, src))
    return out_BC
