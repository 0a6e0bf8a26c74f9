"""Ranked heads in the fused CPU kernel (``torchrec_lhf::fused_remap_ranked`` and its bags
twin): every id's row equal to the torch ops' with contiguous and spread heads, with the
blocks summarized per batch and without (fewer ids than blocks), the operators' fallbacks
and schemas, the checks on a ranked feature, and the old two-pass operator's rows."""

from __future__ import annotations

import pytest
import torch

from tests.modules.test_compact_kernel import CAN_BUILD
from tests.modules.test_head_rank import _batch, _remap, _tables
from torchrec_lhf.modules import compact_kernel
from torchrec_lhf.modules.remap import FeatureRemap
from torchrec_lhf.modules.remap_lookup import map_ids
from torchrec_lhf.plan_compact import RANK_BLOCK, CompactMapping

pytestmark = pytest.mark.skipif(not CAN_BUILD, reason="needs a C++ compiler and ninja")


def _op_args(remap: FeatureRemap, ids: torch.Tensor, length_J: list[int], modulo: bool) -> tuple:
    """``fused_remap_ranked``'s arguments for ``remap``'s buffers."""
    c = remap._compact_tensors()
    assert len(c) == 14  # six compact tensors, the divisors and salts (empty), six ranked
    assert c[6].numel() == 0  # (the kernel reads a divided tail's divisor from its seed)
    assert c[7].numel() == 0  # (no two compact mappings share a seed)
    return (ids, length_J, remap.offset_J, remap.height_J, remap.mapping, *c[:6], *c[8:], modulo)


def _layout(few: bool, wild: bool) -> tuple[FeatureRemap, torch.Tensor, list[int], torch.Tensor]:
    """The four tables of test_head_rank (ranked heads spread over blocks and a full
    contiguous block, a cuckoo head, a dense table), a batch with every head id and its
    neighbours (``few``: two ids a feature, fewer than a ranked feature's blocks), and the
    rows the plans give (``wild``: ids off by multiples of N, for the modulo policy)."""
    tables = _tables()
    remap = _remap(tables)
    kjt, expected = _batch(tables)
    ids, length_J = kjt.values(), kjt.length_per_key()
    if few:
        parts = torch.split(ids, length_J)
        rows = torch.split(expected, length_J)
        pick = [torch.tensor([len(p) // 3, len(p) - 5]) for p in parts]  # a head id, a tail one
        ids = torch.cat([p[i] for p, i in zip(parts, pick)])
        expected = torch.cat([r[i] for r, i in zip(rows, pick)])
        length_J = [2] * len(parts)
    if wild:
        heights = torch.repeat_interleave(remap.height_J, torch.tensor(length_J))
        shift = torch.arange(ids.numel()) % 5 - 2  # -2 to 2 times N
        ids = ids + shift * heights
    return remap, ids, length_J, expected


def _ranked(
    name: str, n: int, head: torch.Tensor, *, tail_seed: int, tail_rows: int
) -> tuple[CompactMapping, FeatureRemap]:
    """A table of ``n`` ids whose sorted ``head`` ids own rows 0.. in order (a ranked head),
    the others hashed into ``tail_rows`` rows after them, and its remap."""
    mapping = CompactMapping(
        head, torch.arange(head.numel(), dtype=torch.int32), tail_seed=tail_seed,
        tail_offset=head.numel(), tail_rows=tail_rows,
    )  # fmt: skip
    return mapping, _remap([(name, n, mapping)])


def _torch_rows(remap: FeatureRemap, ids: torch.Tensor, modulo: bool) -> torch.Tensor:
    """The torch ops' rows (head_rank's bisection in each id's span, as on CUDA)."""
    segments = (None, torch.tensor([ids.numel()]), None)
    return map_ids(
        ids, segments, remap.mapping, remap.offset_J, remap.height_J, modulo, True,
        remap._compact_tensors(),
    )  # fmt: skip


@pytest.mark.parametrize("few", [False, True], ids=["summarized", "per_id"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("modulo", [False, True], ids=["error", "modulo"])
def test_fused_ranked_lookup_equals_the_plans_rows(few: bool, dtype, modulo: bool) -> None:  # noqa: ANN001
    remap, ids, length_J, expected = _layout(few, wild=modulo)
    ids = ids.to(dtype)
    args = _op_args(remap, ids, length_J, modulo)
    compact = remap._compact_tensors()
    rows = compact_kernel.fused_remap(ids, length_J, *args[4:5], *args[2:4], modulo, compact)
    assert rows is not None and rows.dtype == dtype
    assert torch.equal(rows.long(), expected)
    assert torch.equal(torch.ops.torchrec_lhf.fused_remap_ranked(*args).long(), expected)


@pytest.mark.parametrize("modulo", [False, True], ids=["error", "modulo"])
def test_the_ranked_operators_fallbacks_agree(monkeypatch, modulo: bool) -> None:  # noqa: ANN001
    """The C++ operators and their fallbacks where the kernel is not built (the torch ops,
    with head_rank's bisection), the bags operator from per-bag lengths too."""
    remap, ids, length_J, expected = _layout(False, wild=modulo)
    args = _op_args(remap, ids, length_J, modulo)
    bags = torch.tensor([n - n // 2 for n in length_J] + [n // 2 for n in length_J])
    bags = bags.view(2, -1).t().reshape(-1)  # two bags a feature, feature-major
    bag_args = (ids, bags, *args[2:])
    assert torch.equal(torch.ops.torchrec_lhf.fused_remap_ranked_bags(*bag_args), expected)
    monkeypatch.setattr(compact_kernel, "_module", lambda: None)
    assert torch.equal(compact_kernel._fallback_ranked(*args), expected)
    assert torch.equal(compact_kernel._fallback_ranked_bags(*bag_args), expected)


def test_the_ranked_operators_pass_torch_library_opcheck() -> None:
    remap, ids, length_J, _ = _layout(True, wild=False)
    args = _op_args(remap, ids, length_J, False)
    torch.library.opcheck(torch.ops.torchrec_lhf.fused_remap_ranked, args)
    bags = torch.tensor(length_J)
    torch.library.opcheck(torch.ops.torchrec_lhf.fused_remap_ranked_bags, (ids, bags, *args[2:]))
    names = [f"f{j}" for j in range(len(length_J))]
    torch.library.opcheck(
        torch.ops.torchrec_lhf.fused_remap_ranked_bags, (ids, bags, *args[2:], names)
    )


@pytest.mark.parametrize("fallback", [False, True], ids=["kernel", "fallback-torch"])
def test_the_ranked_bags_operator_names_the_features_it_is_given(monkeypatch, fallback) -> None:  # noqa: ANN001
    """As the plain bags operator (``test_fused_remap.py``): with ``names``, a negative
    length and an id out of range name the feature, not its index."""
    remap, ids, length_J, expected = _layout(False, wild=False)
    args = _op_args(remap, ids, length_J, False)
    names = [f"f{j}" for j in range(len(length_J))]
    call = torch.ops.torchrec_lhf.fused_remap_ranked_bags
    if fallback:
        monkeypatch.setattr(compact_kernel, "_module", lambda: None)
        call = compact_kernel._fallback_ranked_bags
    bags = torch.tensor(length_J)  # one bag a feature
    assert torch.equal(call(ids, bags, *args[2:], names), expected)
    j = max(range(len(length_J)), key=lambda k: length_J[k])  # a feature with ids
    negative = bags.clone()
    negative[j] = -1
    with pytest.raises(RuntimeError, match=rf"lengths\[{j}\] = -1 \(feature 'f{j}', sample 0\)"):
        call(ids, negative, *args[2:], names)
    wild = ids.clone()
    n = int(args[3][j])  # feature j's N
    wild[sum(length_J[:j])] = n
    match = rf"feature 'f{j}': id {n} is out of range \[0, {n}\)"
    with pytest.raises((RuntimeError, ValueError), match=match):
        call(wild, bags, *args[2:], names)


def test_the_two_pass_operator_of_older_models_gives_the_same_rows(monkeypatch) -> None:  # noqa: ANN001
    """Models scripted before the one-pass operator call ``fused_remap`` then
    ``rank_overlay``: still registered, with the same rows, in C++ and in its torch
    fallback (blocks bisected: the module's steps count a span's, 13, and the full block of
    2**16 ids needs 17)."""
    remap, ids, length_J, expected = _layout(False, wild=False)
    args = _op_args(remap, ids, length_J, False)
    rows = torch.ops.torchrec_lhf.fused_remap(*args[:11], False)
    ranked = args[11:16]
    out = torch.ops.torchrec_lhf.rank_overlay(ids, length_J, rows, *ranked, remap.height_J, False)
    assert torch.equal(out, expected)
    assert remap.rank_steps.numel() == 13
    monkeypatch.setattr(compact_kernel, "_module", lambda: None)
    out = compact_kernel._rank_overlay_fallback(
        ids, length_J, rows, *ranked, remap.height_J, False
    )  # fmt: skip
    assert torch.equal(out, expected)


def test_a_ranked_feature_is_checked() -> None:
    remap, ids, length_J, _ = _layout(True, wild=False)
    args = list(_op_args(remap, ids, length_J, False))
    ranked_j = int(torch.nonzero(args[14] > 0)[0, 0])  # (last: the ranked features)
    not_compact = args[10].clone()
    not_compact[ranked_j] = False
    bad = [*args[:10], not_compact, *args[11:]]
    with pytest.raises(RuntimeError, match=f"internal feature {ranked_j} has a ranked head"):
        torch.ops.torchrec_lhf.fused_remap_ranked(*bad)
    far = args[13].clone()
    far[ranked_j] = args[11].numel()
    bad = [*args[:13], far, *args[14:]]
    with pytest.raises(RuntimeError, match=f"internal feature {ranked_j}: its directory"):
        torch.ops.torchrec_lhf.fused_remap_ranked(*bad)


@pytest.mark.parametrize("modulo", [False, True], ids=["error", "modulo"])
def test_skewed_blocks_are_searched_beyond_the_interpolated_guess(modulo: bool) -> None:
    """Blocks whose head ids bunch at their ends (an interpolated guess hundreds of entries
    off: the search falls back to the whole block), ids dense then sparse, and a block of
    one id: every id of the table, and then few at a time (no block summaries), gets the
    plan's row."""
    n = 3 * RANK_BLOCK + 11
    head = torch.cat(
        [
            torch.arange(0, 3000),  # block 0: a dense run, then a sparse run to its end
            torch.arange(3000, RANK_BLOCK, 97),
            torch.arange(RANK_BLOCK + 5, RANK_BLOCK + 900, 3),  # block 1: a run at each end
            torch.arange(2 * RANK_BLOCK - 700, 2 * RANK_BLOCK),
            torch.tensor([3 * RANK_BLOCK + 7]),  # block 3: one id
        ]
    )
    mapping, remap = _ranked("skewed", n, head, tail_seed=3, tail_rows=13)
    assert remap.has_ranked
    ids = torch.arange(n)
    expected = mapping.rows(ids)
    if modulo:
        ids = ids + (torch.arange(n) % 3 - 1) * n
    for part in (ids, ids[::9000]):
        length = [part.numel()]
        rows = compact_kernel.fused_remap(
            part, length, remap.mapping, remap.offset_J, remap.height_J, modulo,
            remap._compact_tensors(),
        )  # fmt: skip
        want = expected if part.numel() == n else expected[::9000]
        assert rows is not None and torch.equal(rows, want)
        assert torch.equal(_torch_rows(remap, part, modulo), want)
    assert int((expected < head.numel()).sum()) == head.numel()  # every head id found


@pytest.mark.parametrize("spans", ["spread", "tiny"])
def test_spread_heads_are_counted_in_windows_about_the_guess(spans: str) -> None:
    """Heads drawn at random, at a density from 0.5% to 60% per sixteenth of a block (the
    kernel searches an id's position in a window about its interpolated guess), the
    module's last offsets in a searched span (windows at the offsets' end), spans of fewer
    offsets than a window followed by the next block's (smaller) ones; ``tiny``: one
    searched span and fewer offsets in all than a window spans (64). Every id, then a few,
    gets the plan's row."""
    g = torch.Generator().manual_seed(5)
    n = 2 * RANK_BLOCK + 5000
    if spans == "tiny":
        head = torch.arange(3, 4000, 97)  # one searched span of 42 ids
    else:
        span = RANK_BLOCK // 16
        density = torch.rand(n // span + 1, generator=g) ** 2 * 0.6 + 0.005
        density[-2:] = 0.3  # the last spans: searched, their windows at the offsets' end
        head = (torch.rand(n, generator=g) < density[torch.arange(n) // span]).nonzero()[:, 0]
    mapping, remap = _ranked("spread", n, head, tail_seed=7, tail_rows=17)
    assert remap.has_ranked and (remap.rank_offsets.numel() < 64) == (spans == "tiny")
    ids = torch.arange(n)
    expected = mapping.rows(ids)
    for part, want in ((ids, expected), (ids[::4099], expected[::4099])):
        rows = compact_kernel.fused_remap(
            part, [part.numel()], remap.mapping, remap.offset_J, remap.height_J, False,
            remap._compact_tensors(),
        )  # fmt: skip
        assert rows is not None and torch.equal(rows, want)
        assert torch.equal(_torch_rows(remap, part, False), want)
    assert int((expected < head.numel()).sum()) == head.numel()  # every head id found


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.97])
def test_heads_spread_at_one_density_get_the_plans_rows(density: float) -> None:
    """Heads spread at random at one density, from 1% of the ids (about 41 a searched span
    of 4,096 ids) to 97% (a span's window a small part of it): every id of the table, and
    ids drawn with repeats, get the plan's rows, in the error and the modulo policies."""
    g = torch.Generator().manual_seed(11)
    n = 3 * RANK_BLOCK + 123
    head = (torch.rand(n, generator=g) < density).nonzero()[:, 0]
    mapping, remap = _ranked("spread", n, head, tail_seed=5, tail_rows=29)
    assert remap.has_ranked
    drawn = torch.randint(0, n, (20_000,), generator=g)
    for ids in (torch.arange(n), drawn):
        expected = mapping.rows(ids)
        for modulo in (False, True):
            part = ids + (torch.arange(ids.numel()) % 3 - 1) * n if modulo else ids
            rows = compact_kernel.fused_remap(
                part, [part.numel()], remap.mapping, remap.offset_J, remap.height_J, modulo,
                remap._compact_tensors(),
            )  # fmt: skip
            assert rows is not None and torch.equal(rows, expected)
    assert int((mapping.rows(torch.arange(n)) < head.numel()).sum()) == head.numel()
