"""The remap step: raw ids of logical features -> rows of the internal (compressed) tables.

Legend:
    F   logical features of the input KeyedJaggedTensor
    J   internal features (one per logical feature and hash function)
    B   batch size (stride)
    V   ids in the input batch;  P ids in the remapped batch (V * H for uniform H)
    C   columns of a KeyedTensor (sum of embedding dims)

The internal features and the packing of the mappings into flat buffers (dense: one buffer
of uint8, int16 or int32 rows; compact: one key and one row buffer of the heads) are
:mod:`~torchrec_lhf.modules.remap_layout`'s. The heads are held as a static cuckoo table
built from them, or, where a table's head rows are its ids' ranks, as 16-bit offsets in
blocks (:mod:`~torchrec_lhf.modules.head_rank`; the state shows them all sorted), beside
each internal feature's tail hash
(``tail_seed_J``, ``tail_offset_J``, ``tail_rows_J``). The remap of a batch is a handful of
vectorized ops, one gather and (with compact mappings) three probes of one hash table,
whatever the number of features.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_lhf.hashing import mix_keyed, seed_keys, tail_divisors
from torchrec_lhf.modules import compact_kernel, head_rank, head_table
from torchrec_lhf.modules.remap_layout import (  # noqa: F401 (the module's names, as before)
    MAPPING_DTYPES,
    InternalFeature,
    MappingPacker,
    check_internal_names,
    hashed_name,
    mapping_dtype,
)
from torchrec_lhf.modules.remap_lookup import (
    array_offsets,
    compact_runs,
    length_guard,
    negative_length,
)
from torchrec_lhf.modules.remap_ops import (
    IDENTITY,
    check_weights,
    needs_length_per_key,
    remap_values,
    request_ids,
    request_rows,
    source_index,
)
from torchrec_lhf.modules.remap_state import heads_from_state, heads_to_state
from torchrec_lhf.plan_compact import rank_blocks, ranks_pay

torch.fx.wrap("request_rows")  # one opaque node in a trace (it tests the ids' device)
torch.fx.wrap("request_ids")

OUT_OF_RANGE_POLICIES = ("error", "modulo")


@torch.fx.wrap
def remap_features(
    features: KeyedJaggedTensor,
    feature_names: list[str],
    sources: list[str],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    has_identity: bool,
    compact: list[torch.Tensor],
    array_offsets: torch.Tensor | None = None,
    runs: list[tuple[int, int]] | None = None,
    read_lengths_on_cpu: bool = True,
) -> KeyedJaggedTensor:
    """:func:`~torchrec_lhf.modules.remap_ops.remap_values` of a KeyedJaggedTensor. One
    opaque node in a symbolic trace (it reads the keys on the host); TorchScript compiles
    it. Args as for ``remap_values``, plus the internal ``feature_names`` and
    ``read_lengths_on_cpu``: for ids on the CPU, take the per-key lengths (TorchRec's own
    read, carried on) where they save work; elsewhere only where the output needs them.

    A variable batch per feature (VBE: ``stride_per_key_per_rank`` and ``inverse_indices``,
    as TorchRec's EBC takes them) is carried to the internal features: each takes its
    source's batch size and inverse indices.

    Raises:
        ValueError: a variable batch per feature without inverse indices, per-id weights
            other than one float per id, (eager, CPU) a negative length
            (elsewhere the lengths' guard fails: an index error, or a device-side assert on
            CUDA), or see ``remap_values`` (ids not of an integer dtype among them).
    """
    keys = features.keys()
    vbe = features.variable_stride_per_key()
    stride_per_key: list[int] | None = None
    if vbe:
        if features.inverse_indices_or_none() is None:
            raise ValueError(
                f"features {keys} have a variable batch per feature (stride_per_key_per_rank) "
                "but no inverse_indices: expected both, as TorchRec's EmbeddingBagCollection "
                "takes them (the inverse indices expand each feature's bags to the batch)"
            )
        stride_per_key = features.stride_per_key()
    weights = features.weights_or_none()
    if weights is not None:
        check_weights(weights, features.values(), keys)
    on_cpu = read_lengths_on_cpu and features.values().is_cpu
    # a negative length would reach the lookup's offsets, which then read out of bounds
    # (TorchRec's own EBC crashes): a guard on the lengths (no host read) fails first, at
    # once on CPU (named in eager mode; scripted, the kernel's operator names it, and the
    # guard runs where the operator does not), elsewhere before the lookup reads the
    # lengths it is added to
    length_check: torch.Tensor | None = None
    # scripted or compiled (torch.compile): the operators' paths, no host read of the lengths
    traced = torch.jit.is_scripting() or torch.compiler.is_compiling()
    if not on_cpu:
        length_check = length_guard(features.lengths())
    elif not torch.jit.is_scripting():  # (TorchScript compiles no call in this branch)
        if not torch.compiler.is_compiling():
            refuse_negative_lengths(features)
    if on_cpu and keys == sources:  # DLRM's layout on CPU: the kernel's pass, nothing else
        length_per_key: list[int] | None = None
        if traced and not vbe:
            # scripted (serving) or compiled: the operator sums each feature's bags itself
            # (TorchScript's per-key lengths cost more than the whole lookup of a one-sample
            # request; torch.compile would break its graph on their host read)
            length_per_key = features.length_per_key_or_none()
            rows_P = compact_kernel.fused_rows_of_bags(
                features.values(), features.lengths(), mapping, offset_J, height_J, modulo,
                compact, sources,
            )  # fmt: skip
        else:
            # eager: the per-key lengths (TorchRec's input_dist reads them anyway; the output
            # carries them on)
            length_per_key = features.length_per_key()
            rows_P = compact_kernel.fused_rows(
                features.values(), length_per_key, mapping, offset_J, height_J, modulo,
                compact, array_offsets,
            )  # fmt: skip
        if rows_P is not None:
            return internal_features(
                features, feature_names, sources, rows_P, features.lengths(),
                features.weights_or_none(), length_per_key,
            )  # fmt: skip
    if length_check is None and traced:  # (CPU: the operator did not run)
        length_check = length_guard(features.lengths())
    length_per_key = features.length_per_key_or_none()
    if length_per_key is None and (
        vbe or needs_length_per_key(keys, sources) or (on_cpu and (len(compact) > 0 or not modulo))
    ):
        # TorchRec's own host read of the per-key lengths (its EBC forward and input_dist
        # make it anyway; the output carries it on). On CPU it also saves work: the one
        # kernel pass (compact_kernel), or most of the range check where every feature
        # has as many ids (remap_lookup.uniform_range_guard).
        length_per_key = features.length_per_key()
    rows_P, lengths, weights_P, length_per_key = remap_values(
        keys,
        features.values(),
        features.lengths(),
        features.weights_or_none(),
        length_per_key,
        sources,
        mapping,
        offset_J,
        height_J,
        modulo,
        has_identity,
        compact,
        array_offsets,
        runs,
        stride_per_key,
    )
    if length_check is not None:
        lengths = lengths + length_check
    return internal_features(
        features, feature_names, sources, rows_P, lengths, weights_P, length_per_key
    )


def internal_features(
    features: KeyedJaggedTensor,
    feature_names: list[str],
    sources: list[str],
    rows_P: torch.Tensor,
    lengths: torch.Tensor,
    weights_P: torch.Tensor | None,
    length_per_key: list[int] | None,
) -> KeyedJaggedTensor:
    """The internal features' KeyedJaggedTensor of a remapped batch: ``features``' batch
    size, or with a variable batch per feature (VBE) each internal feature's source's
    ``stride_per_key_per_rank`` and inverse indices (keyed by the internal names, as
    TorchRec's EBC and its sharded input dist look them up)."""
    if not features.variable_stride_per_key():
        return KeyedJaggedTensor(
            keys=feature_names,
            values=rows_P,
            lengths=lengths,
            weights=weights_P,
            stride=features.stride(),
            length_per_key=length_per_key,
        )
    if torch.jit.is_scripting():
        # NOTE: TorchRec's stride_per_key_per_rank fails scripted (its tolist() of an int32
        # tensor); a served request comes from one rank
        per_rank = [[stride] for stride in features.stride_per_key()]
    else:
        per_rank = features.stride_per_key_per_rank()
    inverse_keys, inverse = features.inverse_indices()
    named: dict[str, int] = {}
    for i, key in enumerate(inverse_keys):
        named[key] = i
    for source in sources:
        if source not in named:
            raise ValueError(
                f"inverse_indices name features {inverse_keys}, not '{source}': expected "
                "every feature of the batch"
            )
    # each internal feature's source among the keys and its row of the inverse indices
    # (cached per key order in eager mode: no copy to the device per batch)
    _, src = source_index(features.keys(), sources, inverse.device)
    rows_J, _ = source_index(inverse_keys, sources, inverse.device)
    return KeyedJaggedTensor(
        keys=feature_names,
        values=rows_P,
        lengths=lengths,
        weights=weights_P,
        stride_per_key_per_rank=[per_rank[j] for j in src],
        length_per_key=length_per_key,
        inverse_indices=(feature_names, inverse.index_select(0, rows_J)),
    )


@torch.fx.wrap
def refuse_variable_batch(features: KeyedJaggedTensor, collection: str) -> KeyedJaggedTensor:
    """``features``, unless they have a variable batch per feature (VBE), which
    ``collection`` (named in the message) does not take. One node of a trace.

    Raises:
        ValueError: a variable batch per feature, naming the features and ``collection``.
    """
    if features.variable_stride_per_key():
        raise ValueError(
            f"features {features.keys()} have a variable batch per feature (VBE), which "
            f"{collection} does not take: expected one batch size for every feature (expand "
            "the batch by its inverse_indices first)"
        )
    return features


@torch.jit.unused
def refuse_negative_lengths(features: KeyedJaggedTensor) -> None:
    """:func:`~torchrec_lhf.modules.remap_lookup.length_guard` of a batch, its failure
    named on the CPU (the host reads only then: the batch has failed; on CUDA the guard's
    device-side assert, no host read). For collections that hand raw ids to TorchRec's,
    whose offsets then run backwards: out of bounds, a garbage bag or a crash. (Call it
    where ``torch.fx.wrap`` makes it one node of a trace.)

    Raises:
        ValueError: a negative length, naming its feature and sample.
    """
    lengths = features.lengths()
    try:
        length_guard(lengths)
    except RuntimeError as failure:
        strides = (
            features.stride_per_key() if features.variable_stride_per_key() else features.stride()
        )
        message = negative_length(lengths, features.keys(), strides)
        raise ValueError(message) from failure


class FeatureRemap(nn.Module):
    """Maps a KeyedJaggedTensor of raw ids to the internal features of a learned hash.

    Args:
        features: the internal features, in the order the internal tables expect them.
        mapping: flat int16 or int32 buffer of the dense hash functions, shape
            ``(sum N_t * H_t,)`` over them.
        compact: ``(head_keys_K, head_rows_K)`` of the compact hash functions (see
            :class:`MappingPacker`), or None when there are none.
        out_of_range: ``"error"`` (ValueError naming feature, id and N on CPU; a
            device-side assert on CUDA, where reading the ids would stall the GPU) or
            ``"modulo"`` (fold raw ids into ``[0, N)`` first, negatives included).

    Example::

        >>> import torch
        >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        >>> remap = FeatureRemap(
        ...     [InternalFeature("f", "f", 0, 4)], torch.tensor([2, 0, 1, 0], dtype=torch.int32)
        ... )
        >>> kjt = KeyedJaggedTensor(["f"], torch.tensor([0, 3, 2]), lengths=torch.tensor([2, 1]))
        >>> remap(kjt).values().tolist()
        [2, 0, 1]
    """

    def __init__(
        self,
        features: list[InternalFeature],
        mapping: torch.Tensor,
        *,
        compact: tuple[torch.Tensor, torch.Tensor] | None = None,
        out_of_range: str = "error",
    ) -> None:
        super().__init__()
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise ValueError(
                f"out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {out_of_range!r}"
            )
        if mapping.dtype not in MAPPING_DTYPES or mapping.dim() != 1:
            raise ValueError(
                f"mapping must be a 1-D tensor of {MAPPING_DTYPES}, got {mapping.dtype} {tuple(mapping.shape)}"
            )
        self.out_of_range = out_of_range
        self.features = list(features)
        self.feature_names = [f.name for f in self.features]
        self.sources = [f.source for f in self.features]
        self.has_identity = any(f.offset == IDENTITY for f in self.features)
        self.has_compact = compact is not None
        # the compact lookup reads only these features' ids (remap_lookup.compact_runs)
        self.compact_runs = compact_runs([f.tail is not None for f in self.features])
        # on CPU (where a host read is no sync) take TorchRec's per-key lengths in the remap
        # when they save work; tests turn it off to check the device path on CPU
        self.read_lengths_on_cpu = True
        # set while a serving wrapper remaps the request's tensors itself (request_rows;
        # torchrec_lhf.inference.script_for_inference): forward then passes its input on
        self.hoisted = False
        self.register_buffer("mapping", mapping, persistent=True)
        # int32 offsets halve the remap's memory traffic on CPU (see remap_ops._map_ids)
        ends = [f.offset + f.num_embeddings for f in self.features]
        offset_dtype = torch.int32 if max([mapping.numel(), *ends]) < 2**31 else torch.long
        tails = [f.tail or (0, 0, 1) for f in self.features]  # a harmless hash when dense
        for name, column, persistent in (
            ("offset_J", torch.tensor([f.offset for f in features], dtype=offset_dtype), False),
            ("height_J", torch.tensor([f.num_embeddings for f in features]), False),
            ("compact_J", torch.tensor([f.tail is not None for f in features]), False),
            # the compact mappings are state (persistent) only where there are any, so
            # that a dense module's state dict stays as it was
            ("tail_seed_J", torch.tensor([t[0] for t in tails]), self.has_compact),
            ("tail_offset_J", torch.tensor([t[1] for t in tails]), self.has_compact),
            ("tail_rows_J", torch.tensor([t[2] for t in tails]), self.has_compact),
        ):
            self.register_buffer(name, column.to(mapping.device), persistent=persistent)
        self._set_divisors(self.tail_seed_J)
        # NOTE: the heads are held only in their lookup's forms: the cuckoo table (1/LOAD of
        # their size) and, for heads whose rows are their ranks, the ranked blocks
        # (head_rank: 2 bytes an id); the state dict shows them sorted (``head_keys``,
        # ``head_rows``: the plan's form), through the two hooks below.
        head_keys, head_rows = compact or (torch.zeros(0, dtype=torch.int32),) * 2
        self.rank_ranges = sorted(
            {(f.offset, f.num_embeddings) for f in self.features if f.tail is not None}
        )
        self.has_ranked = False
        self._set_heads(head_keys, head_rows, mapping.device)
        # the dense lookup in one FBGEMM op where it applies (remap_lookup.array_offsets)
        regions = (
            None if self.has_compact else array_offsets([f.offset for f in self.features], mapping)
        )
        self.has_array_offsets = regions is not None
        empty = torch.zeros(0, dtype=torch.long, device=mapping.device)
        self.register_buffer(
            "array_offsets", empty if regions is None else regions, persistent=False
        )
        # check_ids's arguments: every feature read as uncompressed, no table
        self.register_buffer(
            "unmapped_J", torch.full_like(self.offset_J, IDENTITY), persistent=False
        )
        self.register_buffer("no_mapping", mapping.new_zeros(0), persistent=False)
        self.register_buffer("no_table", empty.clone(), persistent=False)
        if self.has_compact:
            self.register_state_dict_post_hook(heads_to_state)
            self.register_load_state_dict_pre_hook(heads_from_state)

    @property
    def head_keys(self) -> torch.Tensor:
        """The compact heads' keys (``key offset + id``), sorted, shape ``(K,)``."""
        return self._sorted_heads()[0]

    @property
    def head_rows(self) -> torch.Tensor:
        """The rows of :attr:`head_keys`, shape ``(K,)``."""
        return self._sorted_heads()[1]

    def _sorted_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        slot_keys, slot_rows = self.slot_keys, self.slot_rows
        if slot_rows.numel() == 0 and slot_keys.numel() > 0:  # the packed form
            slot_keys, slot_rows = head_table.unpack(slot_keys)
        used_S = slot_keys >= 0
        keys_K, rows_K = slot_keys[used_S], slot_rows[used_S]
        if self.has_ranked:
            ranked_keys, ranked_rows = head_rank.sorted_heads(
                self.rank_block_starts, self.rank_offsets, self.rank_ranges, self.rank_dir_T
            )
            keys_K = torch.cat([keys_K.cpu(), ranked_keys.to(keys_K.dtype)])
            rows_K = torch.cat([rows_K.cpu(), ranked_rows.to(self.head_row_dtype)])
        keys_K, order_K = torch.sort(keys_K)
        return keys_K, rows_K[order_K]

    def _set_divisors(self, seed_J: torch.Tensor) -> None:
        """Hold each tail's divisor (:func:`~torchrec_lhf.hashing.tail_divisors`) where a
        tail is divided (QR's quotient, seeds below -1), else an empty tensor: the torch
        lookup then takes no division per id. (Re)registers the buffer."""
        divided = self.has_compact and bool((seed_J < -1).any())
        divisor_J = tail_divisors(seed_J) if divided else seed_J.new_zeros(0)
        self.register_buffer("tail_divisor_J", divisor_J.to(self.mapping.device), persistent=False)

    def _set_heads(self, keys_K: torch.Tensor, rows_K: torch.Tensor, device: torch.device) -> None:
        """Hold sorted head keys and rows in their lookup's forms, on ``device``: ranked
        (:mod:`~torchrec_lhf.modules.head_rank`) where a table's rows are its ranks and that
        pays (:func:`~torchrec_lhf.plan_compact.ranks_pay`, as the plan counts it), the
        cuckoo table (:meth:`_head_table`) for the rest. (Re)registers the buffers."""
        keys_K, rows_K = keys_K.cpu(), rows_K.cpu()
        self.head_row_dtype = rows_K.dtype
        offsets_T, seeds_T, salts_T = self._probe_salts()
        salt_of = dict(zip(offsets_T.tolist(), salts_T.tolist()))
        salt_J = [salt_of[f.offset] if f.tail is not None else 0 for f in self.features]
        # (empty where no compact mappings share a seed: the lookup then XORs nothing)
        salt = torch.tensor(salt_J if any(salt_J) else [], dtype=torch.int64)
        self.register_buffer("probe_salt_J", salt.to(device), persistent=False)
        ranked = []
        cuckoo_K = torch.ones(keys_K.numel(), dtype=torch.bool)
        for offset, n in self.rank_ranges:
            lo, hi = (
                int(x)
                for x in torch.searchsorted(keys_K.long(), torch.tensor([offset, offset + n]))
            )
            is_ranked = ranks_pay(hi - lo, n) and torch.equal(
                rows_K[lo:hi].long(), torch.arange(hi - lo)
            )
            ranked.append(is_ranked)
            if is_ranked:
                cuckoo_K[lo:hi] = False
        slot_keys, slot_rows = self._head_table(
            keys_K[cuckoo_K], rows_K[cuckoo_K], offsets_T, seeds_T, salts_T
        )
        self.register_buffer("slot_keys", slot_keys.to(device), persistent=False)
        self.register_buffer("slot_rows", slot_rows.to(device), persistent=False)
        self.has_ranked = any(ranked)
        blocks, offsets, dir_T, steps, fine = head_rank.build(keys_K, self.rank_ranges, ranked)
        self.rank_dir_T = dir_T
        where = {
            r: (d, rank_blocks(r[1]) if k else 0)
            for r, d, k in zip(self.rank_ranges, dir_T, ranked)
        }
        empty = (blocks.numel() - 2, 0)
        per_J = [
            where[(f.offset, f.num_embeddings)] if f.tail is not None else empty
            for f in self.features
        ]
        for name, value in (
            ("rank_block_starts", blocks),
            ("rank_offsets", offsets),
            ("rank_dir_J", torch.tensor([d for d, _ in per_J], dtype=torch.long)),
            ("rank_last_J", torch.tensor([b for _, b in per_J], dtype=torch.long)),
            # its shape is the bisection's steps in a span (a host value, no read)
            ("rank_steps", torch.zeros(steps, dtype=torch.int8)),
            ("rank_fine", fine),  # (the spans' directory: the kernel's, the torch lookup's)
        ):
            self.register_buffer(name, value.to(device), persistent=False)

    def _probe_salts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each compact mapping's key offset (ascending), tail seed (as held: a loaded
        state's) and probe salt (:func:`~torchrec_lhf.modules.head_table.probe_salts`),
        int64 ``(T,)`` each."""
        seed_J = self.tail_seed_J.tolist()
        compact = {f.offset: seed_J[j] for j, f in enumerate(self.features) if f.tail is not None}
        offsets_T = torch.tensor(sorted(compact), dtype=torch.int64)
        seeds_T = torch.tensor([compact[o] for o in sorted(compact)], dtype=torch.int64)
        return offsets_T, seeds_T, head_table.probe_salts(offsets_T, seeds_T)

    def _head_table(
        self,
        keys_K: torch.Tensor,
        rows_K: torch.Tensor,
        offsets_T: torch.Tensor,
        seeds_T: torch.Tensor,
        salts_T: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cuckoo table of the heads (:mod:`~torchrec_lhf.modules.head_table`), built
        from sorted head keys and rows and the compact mappings' key offsets, seeds and
        probe salts (:meth:`_probe_salts`), on the host: ``(slot_keys, slot_rows)``, or
        the packed entries and an empty ``slot_rows``."""
        keys_K, rows_K = keys_K.cpu(), rows_K.cpu()
        if keys_K.numel() == 0:
            return keys_K, rows_K
        # each key's mapping (the one with the largest key offset <= key): the probes come
        # from the same mix as the tail hash, XORed with the mapping's salt
        t_K = torch.searchsorted(offsets_T, keys_K.long(), right=True) - 1
        x_K = mix_keyed(keys_K.long() - offsets_T[t_K], seed_keys(seeds_T)[t_K])
        slot_keys, slot_rows = head_table.build(keys_K, rows_K, x_K ^ salts_T[t_K])
        # NOTE: int32 keys and rows are held packed (same bytes, one read a probe); the
        # slot_rows buffer is then empty
        packed = head_table.pack(slot_keys, slot_rows)
        return (slot_keys, slot_rows) if packed is None else (packed, slot_rows[:0])

    def remap_bytes(self) -> int:
        """Bytes the remap holds in memory: its persistent buffers (the dense mapping, the
        tail hashes), the cuckoo table of the compact heads and their ranked blocks."""
        table = self.slot_keys.nbytes + self.slot_rows.nbytes if self.has_compact else 0
        if self.has_ranked:
            table += self.rank_block_starts.nbytes + self.rank_offsets.nbytes
            table += self.rank_fine.nbytes
        held = [
            t for name, t in self.named_buffers() if name not in self._non_persistent_buffers_set
        ]
        return table + sum(t.numel() * t.element_size() for t in held)

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Remap ``features`` (raw ids) to the internal features (internal rows).

        Traceable, scriptable and without a host-device sync: see
        :mod:`torchrec_lhf.modules.remap_ops`.

        Args:
            features: keys include every source feature (extra keys are dropped), lengths
                of shape ``(F * B,)``.

        Returns:
            KeyedJaggedTensor with keys ``self.feature_names`` and stride ``B``.
        """
        if self.hoisted:  # (a Python test: a trace made meanwhile has no remap here)
            return features
        return remap_features(
            features,
            self.feature_names,
            self.sources,
            self.mapping,
            self.offset_J,
            self.height_J,
            self.out_of_range == "modulo",
            self.has_identity,
            self._compact_tensors(),
            self.array_offsets if self.has_array_offsets else None,
            self.compact_runs,
            self.read_lengths_on_cpu,
        )

    def check_ids(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """``features``' ids, unchanged, after :meth:`forward`'s range check (or, with
        ``out_of_range="modulo"``, folded into ``[0, N)``), keyed by the internal features,
        for a lookup that remaps raw ids itself (FBGEMM's ``pruned_array_lookup``, which
        reads out of bounds on an id outside its table). One internal feature per source.

        Args:
            features: keys include every source feature (extra keys are dropped), lengths
                of shape ``(F * B,)``.

        Returns:
            KeyedJaggedTensor with keys ``self.feature_names`` and stride ``B``.

        Raises:
            ValueError: (eager, CPU) an id outside ``[0, N)``, naming its feature, the id
                and ``N``; scripted on CPU a RuntimeError naming the feature's index; on
                CUDA a device-side assert (no host read).
        """
        if self.hoisted:  # (a serving wrapper checks the request's ids: request_rows)
            return features
        return remap_features(
            features,
            self.feature_names,
            self.sources,
            self.no_mapping,
            self.unmapped_J,
            self.height_J,
            self.out_of_range == "modulo",
            True,
            [],
            None,
            None,
            self.read_lengths_on_cpu,
        )

    def _compact_tensors(self) -> list[torch.Tensor]:
        """The compact lookup's tensors as ``remap_values`` takes them (empty: none)."""
        if not self.has_compact:
            return []
        tensors = [
            self.slot_keys,
            self.slot_rows,
            self.tail_seed_J,
            self.tail_offset_J,
            self.tail_rows_J,
            self.compact_J,
            self.tail_divisor_J,
            self.probe_salt_J,
        ]
        if self.has_ranked:  # (the ranked heads' lookup: remap_lookup._compact_rows)
            tensors += [
                self.rank_block_starts,
                self.rank_offsets,
                self.rank_dir_J,
                self.rank_last_J,
                self.rank_steps,
                self.rank_fine,
            ]
        return tensors

    @torch.jit.unused
    def request_reads_lengths(self, ids_only: bool = False) -> bool:
        """Whether :meth:`request_rows` reads a CPU request's lengths itself (one operator
        call: :func:`~torchrec_lhf.modules.compact_kernel.reads_head_rows`), refusing a
        negative one or lengths that do not add up to its int32 or int64 ids (the
        operator's RuntimeError, the feature by index): a serving wrapper then need not
        read them too."""
        return ids_only or compact_kernel.reads_head_rows(self._compact_tensors())

    @torch.jit.unused
    def request_rows(
        self, values: torch.Tensor, lengths: torch.Tensor, ids_only: bool = False
    ) -> torch.Tensor:
        """:meth:`forward`'s rows for a request whose keys are ``self.sources`` in order,
        from its raw tensors (:func:`~torchrec_lhf.modules.remap_ops.request_rows`; a
        serving wrapper traces this in place of :meth:`forward`), or with ``ids_only``
        :meth:`check_ids`'s ids (in place of that).

        Args:
            values: raw ids, key-major, shape ``(V,)``.
            lengths: ids per bag, shape ``(J * B,)``.
            ids_only: the ids checked (or folded), not mapped.

        Returns:
            The rows, shape ``(V,)``; the lengths stay as they are.
        """
        if ids_only:
            return request_ids(
                values, lengths, self.sources, self.unmapped_J, self.height_J, self.no_mapping,
                self.no_table, self.out_of_range == "modulo",
            )  # fmt: skip
        return request_rows(
            values,
            lengths,
            self.sources,
            self.mapping,
            self.offset_J,
            self.height_J,
            self.out_of_range == "modulo",
            self.has_identity,
            self._compact_tensors(),
            self.array_offsets if self.has_array_offsets else None,
            self.compact_runs,
        )
