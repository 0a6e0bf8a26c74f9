"""The fused CPU remap (torchrec_lhf.modules.compact_kernel.fused_remap): range check or fold
and every feature's lookup (identity, dense, compact) in one pass, equal to the torch ops on
every id, used by the remap in eager CPU mode where the per-feature lengths are known."""

from __future__ import annotations

import pytest
import torch

from tests._compact import same_seed_plan
from tests.modules.test_compact_kernel import CAN_BUILD, _packed_table
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.hashing import mix_keyed, rows_of_mix, seed_keys
from torchrec_lhf.modules import compact_kernel, remap_lookup
from torchrec_lhf.modules.remap_ops import IDENTITY

pytestmark = pytest.mark.skipif(not CAN_BUILD, reason="needs a C++ compiler and ninja")


def _layout(packed: bool) -> tuple[dict, list[int]]:
    """Five internal features: uncompressed (50 ids), dense (300 ids into an int16 mapping
    region), and the three compact features of ``_packed_table`` (packed or not)."""
    compact3, key_offsets, heights3 = _packed_table(2, packed)
    g = torch.Generator().manual_seed(5)
    mapping = torch.randint(0, 40, (300,), generator=g, dtype=torch.int16)
    heights = [50, 300, *heights3.tolist()]
    pad = torch.zeros(2, dtype=torch.long)
    compact = compact3[:2] + [
        torch.cat([pad, compact3[2]]),
        torch.cat([pad, compact3[3]]),
        torch.cat([pad + 1, compact3[4]]),
        torch.tensor([False, False, True, True, True]),
        compact3[6],  # (no divided tail)
        compact3[7],  # (no probe salts)
    ]
    offset_J = torch.cat([torch.tensor([IDENTITY, 0]), key_offsets]).int()
    args = {
        "mapping": mapping,
        "offset_J": offset_J,
        "height_J": torch.tensor(heights),
        "compact": compact,
    }
    return args, heights


def _ids(heights: list[int], length_J: list[int], seed: int, *, wild: bool) -> torch.Tensor:
    """``length_J[j]`` ids of each feature: in range (with both edges), or with ``wild``
    also negative and too large ones (for the modulo policy)."""
    g = torch.Generator().manual_seed(seed)
    pieces = []
    for n, h in zip(length_J, heights):
        ids = (torch.rand(n, generator=g) * h).long()
        ids[:1], ids[1:2] = 0, h - 1
        if wild:
            ids[2::3] = torch.randint(-(2**40), 2**40, ids[2::3].shape, generator=g)
        pieces.append(ids)
    return torch.cat(pieces)


def _torch_ops(ids: torch.Tensor, length_J: list[int], args: dict, modulo: bool) -> torch.Tensor:
    """The scriptable torch ops of remap_lookup.map_ids (the lengths not given: no kernel)."""
    segments = (None, torch.tensor(length_J), None)
    return remap_lookup.map_ids(
        ids,
        segments,
        args["mapping"],
        args["offset_J"],
        args["height_J"],
        modulo,
        True,
        args["compact"],
    )


LENGTHS = {
    "blocks": [31, 33, 0, 20_000, 1],  # below, across and at block edges; an empty feature
    # at least twice as many ids as the table (5,000 and 40 ids): rows computed once a batch
    "small_tables": [31, 33, 10_000, 20_000, 100],
    "one_each": [1, 1, 1, 1, 1],
    "empty": [0, 0, 0, 0, 0],
}


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("modulo", [False, True], ids=["error", "modulo"])
@pytest.mark.parametrize("lengths", LENGTHS)
def test_fused_remap_equals_the_torch_ops(
    packed: bool, dtype: torch.dtype, modulo: bool, lengths: str
) -> None:
    args, heights = _layout(packed)
    length_J = LENGTHS[lengths]
    ids = _ids(heights, length_J, seed=len(lengths), wild=modulo)
    if dtype == torch.int32:
        ids = ids.clamp(-(2**31), 2**31 - 1).to(dtype)
    fused = compact_kernel.fused_remap(ids, length_J, modulo=modulo, **args)
    assert fused is not None and fused.dtype == dtype
    assert torch.equal(fused, _torch_ops(ids, length_J, args, modulo))
    if lengths in ("blocks", "small_tables"):  # every kind of lookup: heads and tails occur
        rows = fused[length_J[0] + length_J[1] :].long()
        tail_offset = torch.repeat_interleave(args["compact"][3][2:], torch.tensor(length_J[2:]))
        in_tail = rows >= tail_offset
        assert bool(in_tail.any()) and bool((~in_tail).any())


# one internal feature of height 2**62 at key offset 0, no dense mapping
_ONE_FEATURE = (torch.zeros(0, dtype=torch.int16), torch.tensor([0]), torch.tensor([2**62]))


def _tail(seed: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """The compact tensors of one head-less feature of tail seed ``seed`` (shape ``(1,)``)
    into ``rows`` rows from row 3 (its divisor held where the seed is one)."""
    from torchrec_lhf.hashing import tail_divisors

    return [
        torch.zeros(0, dtype=torch.long),  # no heads: every id is tail
        torch.zeros(0, dtype=torch.int32),
        seed,
        torch.tensor([3]),
        torch.tensor([rows]),
        torch.tensor([True]),
        tail_divisors(seed) if int(seed[0]) < -1 else torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),  # no probe salts
    ]


@pytest.mark.parametrize(
    "rows", [1, 2, 3, 4, 7, 40_000, 2**20, 2**31 - 1, 2**31 + 11, 2**40, 2**40 + 3]
)
@pytest.mark.parametrize("num_ids", [50_000, 40], ids=["many", "few"])
def test_tail_remainder_is_exact_for_any_divisor(rows: int, num_ids: int) -> None:
    """The kernel's remainder equals ``%`` on 62-bit values, whichever way it takes it: a
    mask (powers of two), a multiply (a feature of many ids) or a division (few ids)."""
    g = torch.Generator().manual_seed(rows % 1000)
    ids = torch.randint(0, 2**62, (num_ids,), generator=g)
    seed = torch.tensor([12345])
    fused = compact_kernel.fused_remap(ids, [ids.numel()], *_ONE_FEATURE, False, _tail(seed, rows))
    expected = rows_of_mix(mix_keyed(ids, seed_keys(seed).expand(ids.numel())), torch.tensor(rows))
    assert fused is not None and torch.equal(fused, expected + 3)


def test_out_of_range_id_fails_naming_feature_and_id() -> None:
    args, heights = _layout(True)
    length_J = [3, 3, 3, 3, 3]
    ids = _ids(heights, length_J, seed=0, wild=False)
    ids[7] = 300  # feature 2 (index 6..8): height 5,000, so in range; feature 1: 300 is not
    ids[4] = 300
    with pytest.raises(
        RuntimeError, match=r"internal feature 1: id 300 is out of range \[0, 300\)"
    ):
        compact_kernel.fused_remap(ids, length_J, modulo=False, **args)
    ids[4] = -1
    with pytest.raises(RuntimeError, match="internal feature 1: id -1"):
        compact_kernel.fused_remap(ids, length_J, modulo=False, **args)


def test_out_of_range_id_of_a_small_table_fails_naming_feature_and_id() -> None:
    """A compact feature of twice as many ids as its table (rows computed once a batch)
    still checks each id."""
    args, heights = _layout(True)
    length_J = [3, 3, 3, 3, 80]  # feature 4: 40 ids
    ids = _ids(heights, length_J, seed=0, wild=False)
    assert torch.equal(
        compact_kernel.fused_remap(ids, length_J, modulo=False, **args),
        _torch_ops(ids, length_J, args, False),
    )
    ids[-7] = 40
    with pytest.raises(RuntimeError, match=r"internal feature 4: id 40 is out of range \[0, 40\)"):
        compact_kernel.fused_remap(ids, length_J, modulo=False, **args)
    ids[-7] = -41
    folded = compact_kernel.fused_remap(ids, length_J, modulo=True, **args)
    assert torch.equal(folded, _torch_ops(ids, length_J, args, True))
    ids[-7] = 39  # (-41 folded into [0, 40))
    assert torch.equal(folded, compact_kernel.fused_remap(ids, length_J, modulo=False, **args))


def test_bad_lengths_and_mappings_are_refused() -> None:
    args, heights = _layout(True)
    ids = _ids(heights, [2] * 5, seed=0, wild=False)
    with pytest.raises(RuntimeError, match="the lengths add up to 9 ids, but the batch holds 10"):
        compact_kernel.fused_remap(ids, [2, 2, 2, 2, 1], modulo=False, **args)
    short = dict(args, mapping=args["mapping"][:100])
    with pytest.raises(RuntimeError, match="internal feature 1: its mapping"):
        compact_kernel.fused_remap(ids, [2] * 5, modulo=False, **short)


def test_map_ids_uses_it_with_lengths_and_not_without(monkeypatch) -> None:  # noqa: ANN001
    args, heights = _layout(True)
    length_J = [10, 10, 10, 10, 10]
    ids = _ids(heights, length_J, seed=1, wild=False)
    calls = []
    saved = compact_kernel.fused_remap

    def counting(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return saved(*a, **k)

    monkeypatch.setattr(remap_lookup.compact_kernel, "fused_remap", counting)
    segments = (None, torch.tensor(length_J), None)
    common = (args["mapping"], args["offset_J"], args["height_J"], False, True, args["compact"])
    with_lengths = remap_lookup.map_ids(ids, segments, *common, None, length_J)
    assert calls == [1]
    without = remap_lookup.map_ids(ids, segments, *common)
    assert calls == [1] and torch.equal(with_lengths, without)


@pytest.mark.parametrize("divisor", [2, 3, 7, 2**20, 2**31 + 11, 2**40 + 3, 2**62])
@pytest.mark.parametrize("num_ids", [50_000, 40], ids=["many", "few"])
def test_divided_tail_is_exact_for_any_divisor(divisor: int, num_ids: int) -> None:
    """A divided tail (``quotient_seed(d)``): the kernel's quotient equals ``//`` on 62-bit
    ids, whichever way it takes it (a shift for powers of two, a multiply for a feature
    of many ids, a division for few), then the remainder by the rows; the torch ops too."""
    from torchrec_lhf.hashing import quotient_seed

    g = torch.Generator().manual_seed(divisor % 1000)
    ids = torch.randint(0, 2**62, (num_ids,), generator=g)
    ids[:4] = torch.tensor([0, divisor - 1, min(divisor, 2**62 - 1), 2**62 - 1])  # (boundaries)
    seed = torch.tensor([quotient_seed(divisor)])
    for rows in (5, 2**16, 2**61 + 1):
        compact = _tail(seed, rows)
        fused = compact_kernel.fused_remap(ids, [ids.numel()], *_ONE_FEATURE, False, compact)
        expected = torch.div(ids, divisor, rounding_mode="floor") % rows + 3
        assert fused is not None and torch.equal(fused, expected)
        segments = (None, torch.tensor([ids.numel()]), None)
        torch_ops = remap_lookup.map_ids(ids, segments, *_ONE_FEATURE, False, False, compact)
        assert torch.equal(torch_ops, expected)


def _operator_args(modulo: bool) -> tuple:
    args, heights = _layout(True)
    length_J = LENGTHS["blocks"]
    ids = _ids(heights, length_J, seed=3, wild=modulo)
    c = args["compact"]
    return (ids, length_J, args["offset_J"], args["height_J"], args["mapping"], *c[:6], modulo)


@pytest.mark.parametrize("modulo", [False, True], ids=["error", "modulo"])
def test_the_operator_and_its_torch_ops_fallback_agree(monkeypatch, modulo: bool) -> None:  # noqa: ANN001
    """``torchrec_lhf::fused_remap`` (what scripted remaps call; the C++ kernel here) and
    its fallback where the kernel is not built (the torch ops) agree, with and without
    compact features."""
    op_args = _operator_args(modulo)
    ids, length_J, offset_J, height_J = op_args[:4]
    direct = torch.ops.torchrec_lhf.fused_remap(*op_args)
    monkeypatch.setattr(compact_kernel, "_module", lambda: None)
    assert torch.equal(compact_kernel._fallback(*op_args), direct)
    dense_only = (*op_args[:5], *[torch.zeros(0, dtype=torch.long)] * 6, modulo)
    dense_ids = ids[: length_J[0] + length_J[1]]  # the identity and the dense feature only
    dense_args = (dense_ids, [*length_J[:2]], offset_J[:2], height_J[:2], *dense_only[4:])
    expected = direct[: dense_ids.numel()]
    assert torch.equal(compact_kernel._fallback(*dense_args), expected)
    monkeypatch.undo()
    assert torch.equal(torch.ops.torchrec_lhf.fused_remap(*dense_args), expected)


def test_the_operator_passes_torch_library_opcheck() -> None:
    """Schema, fake (meta) function and dispatch of the operator are consistent
    (``torch.export``/``torch.compile`` trace it through its fake function)."""
    for modulo in (False, True):
        torch.library.opcheck(torch.ops.torchrec_lhf.fused_remap, _operator_args(modulo))


def _bags(length_J: list[int], stride: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-bag lengths ``(J * stride,)`` whose sums per feature are ``length_J``."""
    bags = []
    for n in length_J:
        part = [n // stride] * stride
        part[-1] += n - sum(part)
        bags += part
    return torch.tensor(bags, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("modulo", [False, True], ids=["error", "modulo"])
def test_the_bags_operator_sums_the_bags_and_agrees(monkeypatch, dtype, modulo: bool) -> None:  # noqa: ANN001
    """``fused_remap_bags`` (per-bag lengths, as a request's) gives ``fused_remap``'s rows,
    in C++ and in its fallback."""
    op_args = _operator_args(modulo)
    ids, length_J, tables = op_args[0], op_args[1], op_args[2:]
    bags = _bags(length_J, 3, dtype)
    expected = torch.ops.torchrec_lhf.fused_remap(*op_args)
    assert torch.equal(torch.ops.torchrec_lhf.fused_remap_bags(ids, bags, *tables), expected)
    monkeypatch.setattr(compact_kernel, "_module", lambda: None)
    assert torch.equal(compact_kernel._fallback_bags(ids, bags, *tables), expected)


@pytest.mark.parametrize("fallback", [False, True], ids=["kernel", "fallback"])
def test_bad_bag_lengths_are_refused(monkeypatch, fallback: bool) -> None:  # noqa: ANN001
    op_args = _operator_args(False)
    ids, length_J, tables = op_args[0], op_args[1], op_args[2:]
    call = torch.ops.torchrec_lhf.fused_remap_bags
    if fallback:
        monkeypatch.setattr(compact_kernel, "_module", lambda: None)
        call = compact_kernel._fallback_bags
    bags = _bags(length_J, 3, torch.int64)
    with pytest.raises(RuntimeError, match="14 entries are not a batch of 5 features"):
        call(ids, bags[:-1], *tables)
    more = sum(length_J) + 1
    with pytest.raises(RuntimeError, match=f"the lengths add up to {more} ids, but the batch hold"):
        call(ids, torch.cat([bags[:-1], bags[-1:] + 1]), *tables)
    negative = bags.clone()
    negative[4], negative[5] = -1, negative[5] + negative[4] + 1
    # (3 samples a feature: bag 4 is internal feature 1's second)
    match = r"lengths\[4\] = -1 \(internal feature 1, sample 1\) is negative; expected ids"
    with pytest.raises(RuntimeError, match=match):
        call(ids, negative, *tables)
    with pytest.raises(RuntimeError, match="tensor of integers, got (torch.float32|Float)"):
        call(ids, bags.float(), *tables)


NAMES = ["clicks", "views", "ads", "pages", "users"]  # the logical feature of each of the 5


@pytest.mark.parametrize("path", ["kernel", "fallback-kernel", "fallback-torch"])
def test_the_bags_operator_names_the_features_it_is_given(monkeypatch, path: str) -> None:  # noqa: ANN001
    """With ``names`` (what a served model passes), a negative length and an id out of range
    name the feature; before, and still without ``names`` (a model scripted before them),
    only its index. ``fallback-kernel``: the fallback where the kernel can be built calls the
    operator again; ``fallback-torch``: where it cannot, the torch ops."""
    op_args = _operator_args(False)
    ids, length_J, tables = op_args[0], op_args[1], op_args[2:]
    bags = _bags(length_J, 3, torch.int64)
    expected = torch.ops.torchrec_lhf.fused_remap(*op_args)
    call = torch.ops.torchrec_lhf.fused_remap_bags
    if path != "kernel":
        call = compact_kernel._fallback_bags
    if path == "fallback-torch":
        monkeypatch.setattr(compact_kernel, "_module", lambda: None)
    assert torch.equal(call(ids, bags, *tables, NAMES), expected)
    negative = bags.clone()
    negative[4], negative[5] = -1, negative[5] + negative[4] + 1
    with pytest.raises(RuntimeError, match=r"lengths\[4\] = -1 \(feature 'views', sample 1\)"):
        call(ids, negative, *tables, NAMES)
    with pytest.raises(RuntimeError, match=r"lengths\[4\] = -1 \(internal feature 1, sample 1\)"):
        call(ids, negative, *tables)
    height_J = tables[1]
    wild = ids.clone()
    n = int(height_J[3])
    wild[sum(length_J[:3])] = n  # feature 3's first id (feature 2 has none), one past its N
    match = rf"feature 'pages': id {n} is out of range \[0, {n}\)"
    with pytest.raises((RuntimeError, ValueError), match=match):
        call(wild, bags, *tables, NAMES)
    with pytest.raises(RuntimeError, match=r"names has 2 entries; expected one per internal featu"):
        call(ids, bags, *tables, NAMES[:2])


def test_a_model_scripted_without_names_still_calls_the_bags_operator() -> None:
    """A served model exported before ``names`` calls the operator without them: its
    TorchScript source, compiled again on load, takes the schema's default."""

    def old_call(ids: torch.Tensor, bags: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
        return torch.ops.torchrec_lhf.fused_remap_bags(
            ids, bags, tables[0], tables[1], tables[2], tables[3], tables[4], tables[5],
            tables[6], tables[7], tables[8], False,
        )  # fmt: skip

    op_args = _operator_args(False)
    ids, length_J, tables = op_args[0], op_args[1], list(op_args[2:-1])
    scripted = torch.jit.script(old_call)
    expected = torch.ops.torchrec_lhf.fused_remap(*op_args)
    assert torch.equal(scripted(ids, _bags(length_J, 3, torch.int64), tables), expected)


def test_the_bags_operator_passes_torch_library_opcheck() -> None:
    for modulo in (False, True):
        op_args = _operator_args(modulo)
        bags = _bags(op_args[1], 3, torch.int64)
        torch.library.opcheck(
            torch.ops.torchrec_lhf.fused_remap_bags, (op_args[0], bags, *op_args[2:])
        )
        torch.library.opcheck(
            torch.ops.torchrec_lhf.fused_remap_bags, (op_args[0], bags, *op_args[2:], NAMES)
        )


def test_the_operators_take_the_probe_salts(monkeypatch) -> None:  # noqa: ANN001
    """Hash functions that share a seed and head ids (``same_seed_plan``) have their probes
    salted: the operators (the one-pass and the bags one, their fallbacks where the kernel
    is not built) find every head with the salts and miss heads without them."""
    configs, plan = same_seed_plan()
    remap = LearnedHashEmbeddingBagCollection(tables=configs, plan=plan).remap
    c = remap._compact_tensors()
    assert len(c) == 14 and c[7].numel() == len(remap.features)  # ranked heads, salted
    g = torch.Generator().manual_seed(2)
    length_J = [int(n) for n in torch.randint(20, 60, (len(remap.features),), generator=g)]
    # most ids in the heads (0 to 599), whose lookups the salts steer
    ids = torch.randint(0, 700, (sum(length_J),), generator=g)
    source_of = {f"f{i}": t for i, t in enumerate(plan)}
    expected = []
    for f, piece in zip(remap.features, ids.split(length_J)):
        table = source_of[f.source]
        h = int(f.name.rpartition("__h")[2]) if "__h" in f.name else 0
        expected.append(table.mappings[h].rows(piece))
    expected = torch.cat(expected)
    args = (ids, length_J, remap.offset_J, remap.height_J, remap.mapping, *c[:6], *c[8:], False)
    op = torch.ops.torchrec_lhf.fused_remap_ranked
    assert torch.equal(op(*args, c[7]), expected)
    assert not torch.equal(op(*args), expected)  # unsalted probes miss the salted heads
    bags = torch.tensor(length_J)  # one bag a feature
    bag_args = (ids, bags, *args[2:])
    assert torch.equal(
        torch.ops.torchrec_lhf.fused_remap_ranked_bags(*bag_args, None, c[7]), expected
    )
    torch.library.opcheck(op, (*args, c[7]))
    torch.library.opcheck(torch.ops.torchrec_lhf.fused_remap_ranked_bags, (*bag_args, None, c[7]))
    monkeypatch.setattr(compact_kernel, "_module", lambda: None)
    assert torch.equal(compact_kernel._fallback_ranked(*args, c[7]), expected)
    assert torch.equal(compact_kernel._fallback_ranked_bags(*bag_args, None, c[7]), expected)
