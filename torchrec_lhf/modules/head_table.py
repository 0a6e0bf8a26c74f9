"""A static cuckoo hash table of the compact heads: two gathers a probe instead of a search.

Shapes: ``K`` head entries, ``S`` slots (``S >= K``), ``P`` ids looked up.

The heads of the compact (head/tail) hash functions are stored sorted (``head_keys``,
``head_rows``: the plan's form, and what the module's state dict shows). Looking ids up in
them by binary search (``torch.searchsorted``) costs ``log2 K`` dependent, cache-missing
reads per id: on CPU it was most of a compact remap's time (the remap benchmark's 213K ids:
8.0 ms against 4.0 ms for this table, medians of 3 runs). The module holds the heads only
as this table (``1 / LOAD`` of their size). This table replaces the search by ``NUM_CHOICES`` independent probes: entry ``k`` sits in one of
the slots :func:`slots_of` gives for its mixed hash ``x_k``, and a lookup reads the
``NUM_CHOICES`` candidate slots and keeps the one whose key matches.

``x`` is the SplitMix64 mix that the tail hash computes anyway (see
:mod:`torchrec_lhf.hashing`), so the probe costs no extra hashing of the ids; each choice
takes a different 32-bit window of ``x``, scaled into ``[0, S)`` by a multiply and a
shift (Lemire's "fastrange"; no division).

Construction is the parallel random-walk cuckoo insertion of Alcantara et al. ("Real-time
parallel hashing on the GPU", 2009): every entry not yet placed writes itself into its
current choice, one writer per slot wins (by a per-round hash priority, so the table is
deterministic), evicted and losing entries move to their next choice, until all are placed
(then the capacity grows by 10% and it starts over, which the load below almost never
needs). It runs once, when the module is built or loaded, vectorized over the entries.
"""

import torch

NUM_CHOICES = 3
"""Probes per lookup; 3-choice cuckoo tables fill to ~91% before insertion fails."""
LOAD = 0.8
"""Entries per slot the table is built at (slots = entries / LOAD)."""
_MAX_ROUNDS = 500
_MAX_GROWTHS = 20
_EMPTY = -1


def slots_of(x_P: torch.Tensor, num_slots: int) -> list[torch.Tensor]:
    """The ``NUM_CHOICES`` candidate slots of each mixed hash.

    Args:
        x_P: int64 mixed hashes (SplitMix64 output), shape ``(P,)``.
        num_slots: ``S``, at most ``2**31``.

    Returns:
        ``NUM_CHOICES`` int64 tensors of shape ``(P,)`` in ``[0, S)``.
    """
    # NOTE: the mix's bits are uniform and independent, so each choice reads its own
    # 32-bit window of x (bits 0-31, 32-63, 16-47) and scales it into [0, S) by a multiply
    # and a shift ((u * S) >> 32 with u < 2**32 and S <= 2**31 fits int64): no division,
    # no extra hashing. A slot is set mostly by its window's top bits, which differ.
    out: list[torch.Tensor] = []
    for shift in [0, 32, 16]:
        u = x_P.bitwise_right_shift(shift) if shift > 0 else x_P.clone()
        u = u.bitwise_and_(4294967295).mul_(num_slots)
        out.append(u.bitwise_right_shift_(32))
    return out


def lookup(
    key_P: torch.Tensor,
    x_P: torch.Tensor,
    slot_keys_S: torch.Tensor,
    slot_rows_S: torch.Tensor,
    default_P: torch.Tensor,
) -> torch.Tensor:
    """The row of every key found in the table, ``default_P`` where it is not.

    Args:
        key_P: the ids' keys (``key offset + id``), shape ``(P,)``, of ``slot_keys_S``'s dtype.
        x_P: their mixed hashes, int64 ``(P,)``.
        slot_keys_S: the table's keys (``-1``: empty), int32 or int64 ``(S,)``.
        slot_rows_S: the table's rows, ``(S,)``.
        default_P: int64 rows of the ids not in the table (their tail rows), ``(P,)``.

    Returns:
        int64 rows ``(P,)``.
    """
    slots = slots_of(x_P, slot_keys_S.numel())
    slot_P = slots[0]
    hit_P = slot_keys_S.index_select(0, slot_P) == key_P
    for other_P in slots[1:]:
        other_hit_P = slot_keys_S.index_select(0, other_P) == key_P
        slot_P = torch.where(other_hit_P, other_P, slot_P)
        hit_P = hit_P.logical_or_(other_hit_P)
    return torch.where(hit_P, slot_rows_S.index_select(0, slot_P).to(default_P.dtype), default_P)


def build(
    keys_K: torch.Tensor, rows_K: torch.Tensor, x_K: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cuckoo table of the entries ``(keys_K, rows_K)`` with mixed hashes ``x_K``.

    Args:
        keys_K: distinct non-negative keys, int32 or int64 ``(K,)``.
        rows_K: their rows, ``(K,)``.
        x_K: their mixed hashes (as :func:`lookup` gets them), int64 ``(K,)``.

    Returns:
        ``(slot_keys_S, slot_rows_S)`` of ``keys_K``'s and ``rows_K``'s dtypes; empty slots
        hold key ``-1``.

    Raises:
        ValueError: duplicate or negative keys (no table can hold them).
    """
    k = keys_K.numel()
    if k and int(keys_K.min()) < 0:
        raise ValueError(f"head keys must be distinct and >= 0, got key {int(keys_K.min())}")
    sorted_K = torch.sort(keys_K).values
    repeated = sorted_K[1:][sorted_K[1:] == sorted_K[:-1]]
    if repeated.numel():
        raise ValueError(
            f"head keys must be distinct and >= 0, got key {int(repeated[0])} more than once"
        )
    num_slots = max(NUM_CHOICES, int(k / LOAD) + 1)
    for _ in range(_MAX_GROWTHS):
        owner_S = _insert(x_K, num_slots)
        if owner_S is not None:
            break
        num_slots = int(num_slots * 1.1) + 1
    else:  # only if more than NUM_CHOICES keys share one mixed hash: a broken mix
        raise RuntimeError(f"no cuckoo table of {num_slots} slots holds these {k} keys")
    used_S = owner_S >= 0
    slot_keys_S = torch.full((num_slots,), _EMPTY, dtype=keys_K.dtype)
    slot_rows_S = torch.zeros(num_slots, dtype=rows_K.dtype)
    slot_keys_S[used_S] = keys_K[owner_S[used_S]]
    slot_rows_S[used_S] = rows_K[owner_S[used_S]]
    return slot_keys_S, slot_rows_S


def _insert(x_K: torch.Tensor, num_slots: int) -> torch.Tensor | None:
    """Which entry owns each slot (``-1``: empty), or None if insertion did not converge."""
    k = x_K.numel()
    choices_CK = torch.stack(slots_of(x_K, num_slots))
    owner_S = torch.full((num_slots,), _EMPTY, dtype=torch.int64)
    choice_K = torch.zeros(k, dtype=torch.int64)
    waiting_W = torch.arange(k)
    for round_ in range(_MAX_ROUNDS):
        if waiting_W.numel() == 0:
            return owner_S
        slot_W = choices_CK[choice_K[waiting_W], waiting_W]
        # a per-round priority (high bits) above the entry index (low 31 bits): one
        # deterministic winner per slot; waiting entries evict a slot's owner
        priority_W = ((waiting_W + round_ * k) * -7046029254386353131 >> 33) & 0x7FFFFFFF
        bid_S = torch.full((num_slots,), -1, dtype=torch.int64)
        bid_S.scatter_reduce_(0, slot_W, (priority_W << 31) | waiting_W, "amax")
        won_S = bid_S >= 0
        evicted = owner_S[won_S]
        owner_S[won_S] = bid_S[won_S] & 0x7FFFFFFF
        lost_W = waiting_W[owner_S[slot_W] != waiting_W]
        evicted = evicted[evicted >= 0]
        waiting_W = torch.cat([lost_W, evicted])
        choice_K[waiting_W] = (choice_K[waiting_W] + 1) % NUM_CHOICES
    return None if waiting_W.numel() else owner_S
