"""The tail hash: SplitMix64 by hand, uniform rows, any int64 id, scriptable."""

from __future__ import annotations

import pytest
import torch

from torchrec_lhf.hashing import tail_hash

_M64 = (1 << 64) - 1


def _splitmix64(x: int, seed: int) -> int:
    """The reference, in Python's unbounded ints (unsigned 64-bit arithmetic by masking)."""
    x = (x + 0x9E3779B97F4A7C15 * (seed + 1)) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


@pytest.mark.parametrize("seed", [0, 5, 2**62 - 1])
def test_equals_splitmix64_by_hand_for_any_int64_id(seed: int) -> None:
    ids = [0, 1, 12345, 2**31 - 1, 2**31, 2**63 - 1, -1, -(2**63)]
    got = tail_hash(torch.tensor(ids), seed, 97).tolist()
    assert got == [(_splitmix64(i & _M64, seed) >> 2) % 97 for i in ids]


def test_rows_are_uniform_and_seeds_independent() -> None:
    ids = torch.arange(200_000)
    rows = tail_hash(ids, 3, 100)
    counts = torch.bincount(rows, minlength=100).double()
    assert int(rows.min()) == 0 and int(rows.max()) == 99
    # a multinomial of 2,000 per row has std ~44.7; 4.5 std is far beyond chance
    assert float((counts - 2000).abs().max()) < 200
    agree = (rows == tail_hash(ids, 4, 100)).double().mean()
    assert abs(float(agree) - 0.01) < 0.002


def test_scripts_and_traces_to_the_same_rows() -> None:
    ids = torch.randint(-(2**62), 2**62, (1000,))
    scripted = torch.jit.script(tail_hash)
    assert torch.equal(scripted(ids, 9, 1000), tail_hash(ids, 9, 1000))


def test_seeded_variant_equals_tail_hash_per_seed_and_rows() -> None:
    from torchrec_lhf.hashing import tail_hash_seeded

    ids = torch.tensor([0, 1, 2**31 + 3, 2**63 - 1, -1, -(2**63), 77, 78])
    seeds = torch.tensor([0, 5, 5, 2**62 - 1, 3, 3, 0, 1])
    rows = torch.tensor([97, 1, 10, 97, 2**31 - 1, 5, 97, 97])
    got = tail_hash_seeded(ids, seeds, rows)
    expected = [
        int(tail_hash(ids[i : i + 1], int(s), int(r))[0])
        for i, (s, r) in enumerate(zip(seeds, rows))
    ]
    assert got.tolist() == expected
    scripted = torch.jit.script(tail_hash_seeded)
    assert torch.equal(scripted(ids, seeds, rows), got)


def test_modulo_seed_is_the_hashing_trick() -> None:
    """``MODULO_SEED``: ``id mod rows`` (negatives into ``[0, rows)``), alone, seeded beside
    mixed seeds, and scripted."""
    from torchrec_lhf.hashing import MODULO_SEED, tail_hash_seeded

    ids = torch.tensor([0, 1, 7, 2**63 - 1, -1, -(2**63), 99])
    assert tail_hash(ids, MODULO_SEED, 7).tolist() == torch.remainder(ids, 7).tolist()
    seeds = torch.tensor([MODULO_SEED, 3, MODULO_SEED, 3, MODULO_SEED, 0, 5])
    rows = torch.tensor([7, 7, 5, 97, 2, 10, 97])
    expected = [
        int(tail_hash(ids[i : i + 1], int(s), int(r))[0])
        for i, (s, r) in enumerate(zip(seeds, rows))
    ]
    assert tail_hash_seeded(ids, seeds, rows).tolist() == expected
    assert expected[0] == 0 and expected[2] == 2 and expected[4] == 1
    assert (
        torch.jit.script(tail_hash)(ids, MODULO_SEED, 7).tolist() == tail_hash(ids, -1, 7).tolist()
    )


def test_a_negative_seed_divides() -> None:
    """``quotient_seed(d)``: ``(id // d) mod rows`` (floor division, negatives into
    ``[0, rows)``), alone, seeded beside mixed and modulo seeds, and scripted; a bad
    divisor is named."""
    from torchrec_lhf.hashing import MODULO_SEED, quotient_seed, tail_hash_seeded

    ids = torch.tensor([0, 1, 7, 2**62 - 1, -1, -(2**63), 99, 2**63 - 1])
    for d in (1, 3, 4, 2**62):
        expected = torch.remainder(torch.div(ids, d, rounding_mode="floor"), 5)
        assert tail_hash(ids, quotient_seed(d), 5).tolist() == expected.tolist()
    assert quotient_seed(1) == MODULO_SEED
    seeds = torch.tensor([quotient_seed(3), 3, MODULO_SEED, quotient_seed(2**62), 0, -7, 5, -2])
    rows = torch.tensor([7, 7, 5, 97, 2, 10, 97, 3])
    expected = [
        int(tail_hash(ids[i : i + 1], int(s), int(r))[0])
        for i, (s, r) in enumerate(zip(seeds, rows))
    ]
    assert tail_hash_seeded(ids, seeds, rows).tolist() == expected
    assert expected[0] == 0 and expected[2] == 2 and expected[6] != 99 % 97
    assert torch.jit.script(tail_hash_seeded)(ids, seeds, rows).tolist() == expected
    assert torch.jit.script(tail_hash)(ids, -3, 7).tolist() == tail_hash(ids, -3, 7).tolist()
    for bad in (0, -1, 2**62 + 1, True, 2.0):
        with pytest.raises(ValueError, match=f"divisor must be an int in .*got {bad!r}"):
            quotient_seed(bad)
