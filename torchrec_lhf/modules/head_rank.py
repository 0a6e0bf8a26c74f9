"""The ranked heads of a remap: heads whose rows are their ids' ranks, held as 16-bit offsets.

Shapes: ``K`` ranked head ids of the module, ``D`` entries of their block directory, ``J``
internal features, ``P`` ids looked up.

A compact head whose rows are ``arange(K_t)`` (a row each, in id order: every filled
head; :meth:`~torchrec_lhf.plan_compact.CompactMapping.ranked`) needs no stored rows: an
id's row is its position among the table's head ids. Its ids are cut into blocks of
``RANK_BLOCK`` (``2**16``) consecutive ids; the module keeps each id's offset in its block
(``rank_offsets``, int16, all tables' heads one after the other) and, per table, the
position of each block's first head id followed by the end of the table's heads
(``rank_blocks``, int32). That is the plan's ranked form
(:func:`~torchrec_lhf.plan_compact.rank_index`): 2 bytes a head id and 4 a block, in memory
as on disk.

A lookup of id ``i`` of table ``t`` reads the bounds of its span (below) and bisects the
span's offsets for ``i``'s low 16 bits: a fixed number of steps (the largest span's bit
length: at most 13, 6 or 7 where heads are 1% of the ids) for every id, each a gather and a
few integer ops over the batch, no branch per id and no host read. Its row is the position
found less the table's first (``rank_base_J``).
Offsets are held as their value less ``2**15`` (``int16`` keeps their order); the
directory of a table has ``rank_blocks(N) + 1`` entries, and a feature's block index is
clamped to its last, empty, entry (ids beyond its last block, and the features that are
not ranked, find nothing and keep their tail row).

In memory only, a finer directory beside it: ``FINE`` entries per directory entry, the
position of the first head id of each ``RANK_BLOCK // FINE`` ids (4,096: a span), so that
a search starts in a sixteenth of a block (whose head ids the CPU kernel often finds
contiguous where the block's are not, and which the torch lookup bisects in fewer steps).
It costs 4 bytes per 4,096 ids of the table.
"""

import torch

from torchrec_lhf.plan_compact import RANK_BLOCK, ids_of_blocks, rank_blocks, rank_index

# NOTE: no ``from __future__ import annotations``: TorchScript reads the annotations.

_BIAS = 2**15
FINE = 16  # fine directory entries per block (sub-blocks of 2**12 ids)


def build(
    keys_K: torch.Tensor,
    ranges: list[tuple[int, int]],
    ranked: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, list[int], int, torch.Tensor]:
    """The ranked form of the heads of the key ranges marked ``ranked`` (their rows are
    their ranks: only the keys are needed).

    Args:
        keys_K: every compact head key (``key offset + id``), sorted, ``(K,)``.
        ranges: per compact table, ``(key offset, N)``, by key offset.
        ranked: per range, whether it is held ranked.

    Returns:
        ``(rank_blocks_D, rank_offsets_R, dir_start_T, steps, fine_F)``: the concatenated
        directories (int32) with one empty entry last, the biased offsets (int16), the
        index of each range's directory in it (of the last, empty, entry where the range is
        not ranked), the bisection's steps in a span (the largest span's bit length), and
        the fine directory (int32, ``FINE`` entries per directory entry: ``fine_F[FINE * d
        + s]`` is the position of the first head id of entry ``d``'s block at or above its
        ``s``-th sixteenth; an end entry's are all its position).
    """
    keys_K = keys_K.long()
    dirs: list[torch.Tensor] = []
    fines: list[torch.Tensor] = []
    offsets: list[torch.Tensor] = []
    starts: list[int] = []
    size, done, steps = 0, 0, 0
    for (offset, n), is_ranked in zip(ranges, ranked):
        if not is_ranked:
            starts.append(-1)
            continue
        lo, hi = (int(x) for x in torch.searchsorted(keys_K, torch.tensor([offset, offset + n])))
        ids = keys_K[lo:hi] - offset
        blocks, low = rank_index(ids, n)  # (the plan's ranked form)
        starts.append(size)
        dirs.append(blocks.long() + done)
        bounds = torch.arange(blocks.numel() * FINE) * (RANK_BLOCK // FINE)
        fines.append(torch.searchsorted(ids, bounds) + done)
        size += blocks.numel()
        offsets.append((low.long() & (RANK_BLOCK - 1)) - _BIAS)
        longest = int(fines[-1].diff().max()) if fines[-1].numel() > 1 else 0  # (a span's)
        steps = max(steps, longest.bit_length())
        done += hi - lo
    dirs.append(torch.tensor([done, done]))  # the empty entry that unranked features read
    fines.append(torch.full((2 * FINE,), done))
    starts = [size if s < 0 else s for s in starts]
    blocks_D = torch.cat(dirs).to(torch.int32)
    offsets_R = torch.cat(offsets).to(torch.int16) if offsets else torch.zeros(0, dtype=torch.int16)
    fine_F = torch.cat(fines).to(torch.int32)
    return blocks_D, offsets_R, starts, steps, fine_F


def sorted_heads(
    blocks_D: torch.Tensor,
    offsets_R: torch.Tensor,
    ranges: list[tuple[int, int]],
    dir_start_T: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranked heads as sorted keys and rows (int64), the inverse of :func:`build`."""
    keys: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]
    rows: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]
    blocks = blocks_D.long().cpu()
    low = offsets_R.long().cpu() + _BIAS
    for (offset, n), start in zip(ranges, dir_start_T):
        if start == blocks.numel() - 2:  # the empty entry: not ranked
            continue
        d = blocks[start : start + rank_blocks(n) + 1]
        first, count = int(d[0]), int(d[-1] - d[0])
        keys.append(offset + ids_of_blocks(d - first, low[first : first + count]))
        rows.append(torch.arange(count))
    return torch.cat(keys), torch.cat(rows)


def lookup(
    ids_P: torch.Tensor,
    j_P: torch.Tensor,
    blocks_D: torch.Tensor,
    offsets_R: torch.Tensor,
    dir_J: torch.Tensor,
    last_block_J: torch.Tensor,
    steps_S: torch.Tensor,
    default_P: torch.Tensor,
    fine_F: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rank of every id found in its feature's ranked head, ``default_P`` where none.

    Args:
        ids_P: raw ids in ``[0, N)`` of their feature, int64 ``(P,)``.
        j_P: their internal feature, ``(P,)``.
        blocks_D: the block directories (:func:`build`), int32 ``(D,)``.
        offsets_R: the biased block offsets, int16 ``(R,)`` (``R >= 1``).
        dir_J: int64 ``(J,)``, each feature's directory start (the empty entry: none).
        last_block_J: int64 ``(J,)``, the index of each feature's last (end) directory entry
            relative to its start (0 for the empty entry).
        steps_S: a tensor of ``S`` elements, ``S`` the bisection's steps (its shape, not its
            values: known on the host without a read): enough for a span where ``fine_F``
            is given (:func:`build`'s), else for a block (17 do for any).
        default_P: int64 rows where not found (the tail's), ``(P,)``.
        fine_F: the fine directory (:func:`build`'s, int32 ``(FINE * D,)`` or more: what
            follows is not read): each id is bisected in its span, not its whole block.

    Returns:
        int64 rows ``(P,)``.
    """
    # NOTE: literals, not the module's constants (TorchScript compiles no global ints):
    # 16 = RANK_BLOCK_BITS, 65535 = RANK_BLOCK - 1, 32768 = _BIAS (tests check they agree)
    start_P = dir_J.index_select(0, j_P)
    block_P = torch.minimum(ids_P.bitwise_right_shift(16), last_block_J.index_select(0, j_P))
    block_P = block_P.add_(start_P)
    if fine_F is None:
        base_P = blocks_D.index_select(0, block_P).long()
        n_P = blocks_D.index_select(0, block_P + 1).long().sub_(base_P)
    else:  # 16 = FINE, 12 = its span's bits: the span's first position, then the next's
        span_P = block_P.mul(16).add_(ids_P.bitwise_right_shift(12).bitwise_and_(15))
        base_P = fine_F.index_select(0, span_P).long()
        n_P = fine_F.index_select(0, span_P + 1).long().sub_(base_P)
    target_P = ids_P.bitwise_and(65535).sub_(32768).to(torch.int16)
    last = offsets_R.numel() - 1
    for _ in range(steps_S.numel()):
        # branchless bisection: keep base where offsets[base + half] > target, else move up
        half_P = n_P.bitwise_right_shift(1)
        probe_P = (base_P + half_P).clamp_(max=last)
        up_P = offsets_R.index_select(0, probe_P).le(target_P)
        n_P = n_P.sub_(half_P)
        base_P = base_P.add_(half_P.mul_(up_P))
    found_P = offsets_R.index_select(0, base_P.clamp(max=last)).eq(target_P).logical_and_(n_P > 0)
    row_P = base_P.sub_(blocks_D.index_select(0, start_P).long())
    mask_P = found_P.to(default_P.dtype).neg_()  # all ones where found (a bit-mask select)
    return row_P.bitwise_xor_(default_P).bitwise_and_(mask_P).bitwise_xor_(default_P)


def overlay(
    ids_P: torch.Tensor,
    j_P: torch.Tensor,
    rows_P: torch.Tensor,
    ranked: list[torch.Tensor],
    height_J: torch.Tensor,
    modulo: bool,
) -> torch.Tensor:
    """``rows_P`` (the CPU kernel's, which holds no ranked head: their ids got their tail
    rows) with the ranked heads' ids at their ranks.

    Args:
        ids_P: the raw ids, ``(P,)`` (in range: the kernel checked them, or ``modulo``).
        j_P: their internal feature, ``(P,)``.
        rows_P: their rows, in the ids' dtype, ``(P,)``.
        ranked: ``[blocks_D, offsets_R, dir_J, last_J, steps_S]`` (:func:`lookup`).
        height_J: int64 ``N`` per internal feature (``modulo`` folds the ids by it).
        modulo: fold the ids into ``[0, N)`` first.
    """
    ids_P = ids_P.long()
    if modulo:
        ids_P = torch.remainder(ids_P, height_J.index_select(0, j_P))
    blocks_D, offsets_R, dir_J, last_J, steps_S = (
        ranked[0],
        ranked[1],
        ranked[2],
        ranked[3],
        ranked[4],
    )
    # (no fine directory here: a block's bisection, of the steps any block needs, since
    # ``steps_S`` may count a span's, as a module built since the fine lookup holds)
    steps_S = torch.empty(max(17, steps_S.numel()), dtype=torch.int8)
    out_P = lookup(ids_P, j_P, blocks_D, offsets_R, dir_J, last_J, steps_S, rows_P.long())
    return out_P.to(rows_P.dtype)
