"""A static cuckoo hash table of the compact heads: three independent probes, not a search.

Shapes: ``K`` head entries, ``S`` slots (``S >= K``), ``P`` ids looked up.

The heads of the compact (head/tail) hash functions are stored sorted (``head_keys``,
``head_rows``: the plan's form, and what the module's state dict shows). Looking ids up in
them by binary search (``torch.searchsorted``) costs ``log2 K`` dependent, cache-missing
reads per id: on CPU it was most of a compact remap's time (the remap benchmark's 213K ids:
8.0 ms against 4.0 ms for this table, medians of 3 runs). The module holds the heads only
as this table (``1 / LOAD`` of their size). This table replaces the search by
``NUM_CHOICES`` independent probes: entry ``k`` sits in one of the slots :func:`slots_of`
gives for its mixed hash ``x_k``, and a lookup reads the ``NUM_CHOICES`` candidate slots
and keeps the one whose key matches (with bit masks, not ``torch.where``: hits and misses
alternate from id to id, and ``torch.where``'s CPU kernel then mispredicts its branch).

``x`` is the SplitMix64 mix that the tail hash computes anyway (see
:mod:`torchrec_lhf.hashing`), so the probe costs no extra hashing of the ids; each choice
takes a different 32-bit window of ``x``, scaled into ``[0, S)`` by a multiply and a
shift (Lemire's "fastrange"; no division). That mix depends on the id and the tail's seed
only, so the same id in the heads of two hash functions of one seed (a plan may give every
table the hashing trick's tail, ``MODULO_SEED``) would have the same slots in both, and more
than ``NUM_CHOICES`` such entries could not be placed at all: each hash function XORs its
probe salt (:func:`probe_salts`) into ``x`` for its slots, 0 for the first of each seed
(so that a module whose hash functions' seeds all differ probes as it always did).

Construction is the parallel random-walk cuckoo insertion of Alcantara et al. ("Real-time
parallel hashing on the GPU", 2009): every entry not yet placed writes itself into its
current choice, one writer per slot wins (by a per-round hash priority, so the table is
deterministic), evicted and losing entries move to their next choice, until all are placed
(then the capacity grows by 10% and it starts over, which the load below almost never
needs). It runs once, when the module is built or loaded, vectorized over the entries.

Packed form (:func:`pack`): where keys and rows are both int32 (and the keys below
``PACKED_EMPTY``), a slot is one int64 ``key << 32 | row``, in the same bytes as the two
int32 arrays. A probe then reads key and row at once: three random reads an id instead of
four, and ``entry ^ (key << 32)`` is the row exactly where the key matches (``>= 2**32``
elsewhere), so the smallest of the three is the answer. :func:`lookup` takes either form.
"""

import torch

from torchrec_lhf.hashing import mix64

NUM_CHOICES = 3
"""Probes per lookup; 3-choice cuckoo tables fill to ~91% before insertion fails."""
LOAD = 0.8
"""Entries per slot the table is built at (slots = entries / LOAD)."""
_MAX_ROUNDS = 500
_MAX_GROWTHS = 20
_EMPTY = -1
PACKED_EMPTY = 2**31 - 1
"""The key of an empty slot in the packed form (real keys are below it)."""


def probe_salts(offsets_T: torch.Tensor, seeds_T: torch.Tensor) -> torch.Tensor:
    """What each compact hash function XORs into its ids' mixed hashes for their probe slots
    (not their tail rows): 0 for the first hash function of each tail seed, by key offset,
    and a SplitMix64 mix of its key offset for the others, which share a seed with an
    earlier one (see the module docstring).

    Args:
        offsets_T: the ``T`` compact hash functions' key offsets, distinct, int64 ``(T,)``.
        seeds_T: their tail seeds, int64 ``(T,)``.

    Returns:
        int64 ``(T,)``.
    """
    order_T = torch.argsort(offsets_T)
    seeds_sorted = seeds_T[order_T]
    seeds_G, group_T = torch.unique(seeds_sorted, return_inverse=True)
    # the position (in offset order) of each seed's first hash function
    first_G = torch.full((seeds_G.numel(),), len(group_T))
    first_G.scatter_reduce_(0, group_T, torch.arange(len(group_T)), "amin")
    later_T = first_G[group_T] != torch.arange(len(group_T))
    salts = torch.where(later_T, mix64(offsets_T[order_T], 0x5A17), 0)
    return torch.empty_like(salts).scatter_(0, order_T, salts)


def slots_of(x_P: torch.Tensor, num_slots: int) -> list[torch.Tensor]:
    """The ``NUM_CHOICES`` candidate slots of each mixed hash.

    Args:
        x_P: int64 mixed hashes (SplitMix64 output), shape ``(P,)``.
        num_slots: ``S``, at most ``2**31``.

    Returns:
        ``NUM_CHOICES`` int64 tensors of shape ``(P,)`` in ``[0, S)``.
    """
    return list(_slots(x_P, num_slots).unbind(0))


def _slots(x_P: torch.Tensor, num_slots: int) -> torch.Tensor:
    """:func:`slots_of` as one int64 tensor of shape ``(NUM_CHOICES, P)``."""
    # NOTE: the mix's bits are uniform and independent, so each choice reads its own
    # 32-bit window of x (bits 0-31, 32-63, 16-47) and scales it into [0, S) by a multiply
    # and a shift ((u * S) >> 32 with u < 2**32 and S <= 2**31 fits int64): no division,
    # no extra hashing. A slot is set mostly by its window's top bits, which differ. The
    # windows go into one tensor, so that the mask, multiply and shift are one op each.
    u_CP = torch.empty((3, x_P.numel()), dtype=torch.long, device=x_P.device)
    u_CP[0].copy_(x_P)
    torch.bitwise_right_shift(x_P, 32, out=u_CP[1])
    torch.bitwise_right_shift(x_P, 16, out=u_CP[2])
    return u_CP.bitwise_and_(4294967295).mul_(num_slots).bitwise_right_shift_(32)


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
        slot_keys_S: the table's keys (``-1``: empty), int32 or int64 ``(S,)``; or its
            packed int64 entries (:func:`pack`), with an empty ``slot_rows_S``.
        slot_rows_S: the table's rows, ``(S,)``, or empty (packed).
        default_P: int64 rows of the ids not in the table (their tail rows), ``(P,)``.

    Returns:
        int64 rows ``(P,)``.
    """
    if slot_rows_S.numel() == 0 and slot_keys_S.numel() > 0:
        return _lookup_packed(key_P, x_P, slot_keys_S, default_P)
    slot_CP = _slots(x_P, slot_keys_S.numel())
    hit_CP = slot_keys_S.index_select(0, slot_CP.view(-1)).view(slot_CP.shape) == key_P
    # a key sits in one slot (which two choices may share): the largest slot hit is it
    # (0 when none hits; its row is then read and discarded)
    slot_P = slot_CP.mul_(hit_CP).amax(0)
    row_P = slot_rows_S.index_select(0, slot_P).to(default_P.dtype)
    # NOTE: a bit-mask select, not torch.where: hits and misses alternate from id to id,
    # and torch.where's CPU kernel then mispredicts its branch (see remap_lookup)
    hit_P = hit_CP[0].logical_or(hit_CP[1]).logical_or_(hit_CP[2])  # (any(0) is slow on CPU)
    mask_P = hit_P.to(default_P.dtype).neg_()  # all ones where hit
    return row_P.bitwise_xor_(default_P).bitwise_and_(mask_P).bitwise_xor_(default_P)


def _lookup_packed(
    key_P: torch.Tensor, x_P: torch.Tensor, entries_S: torch.Tensor, default_P: torch.Tensor
) -> torch.Tensor:
    """:func:`lookup` in a packed table (``entries_S``: int64 ``key << 32 | row``)."""
    slot_CP = _slots(x_P, entries_S.numel())
    d_CP = entries_S.index_select(0, slot_CP.view(-1)).view(slot_CP.shape)
    d_CP = d_CP.bitwise_xor_(key_P.long().bitwise_left_shift(32))  # the row where the key matches
    # the row if any choice matches, else >= 2**32 (NOTE: not amin(0), 100x slower on CPU)
    m_P = torch.minimum(d_CP[0], d_CP[1])
    m_P = torch.minimum(m_P, d_CP[2], out=m_P)
    mask_P = m_P.bitwise_right_shift(32).sub_(1).bitwise_right_shift_(63)  # all ones where hit
    return m_P.bitwise_xor_(default_P).bitwise_and_(mask_P).bitwise_xor_(default_P)


def pack(slot_keys_S: torch.Tensor, slot_rows_S: torch.Tensor) -> torch.Tensor | None:
    """The packed form of a table (int64 ``key << 32 | row``; empty slots key
    ``PACKED_EMPTY``), or None where it does not apply (not both int32, or a key
    ``>= PACKED_EMPTY``). Runs on the host, once per table."""
    if slot_keys_S.dtype != torch.int32 or slot_rows_S.dtype != torch.int32:
        return None
    if slot_keys_S.numel() == 0 or int(slot_keys_S.max()) >= PACKED_EMPTY:
        return None
    keys_S = torch.where(slot_keys_S < 0, PACKED_EMPTY, slot_keys_S).long()
    return keys_S.bitwise_left_shift_(32).bitwise_or_(slot_rows_S.long())


def unpack(entries_S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot_keys_S, slot_rows_S)`` (int32; empty key ``-1``) of a packed table."""
    keys_S = entries_S.bitwise_right_shift(32).int()
    return torch.where(keys_S == PACKED_EMPTY, _EMPTY, keys_S), entries_S.int()


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
