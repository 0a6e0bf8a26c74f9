"""A seeded hash of raw ids that needs no stored table: the tail of a head/tail hash plan.

Shape legend: ``V`` ids.

:func:`tail_hash` maps int64 raw ids (any value, negatives and ids near ``2**63``
included) to rows ``[0, rows)`` with the SplitMix64 finalizer (Steele et al., "Fast
splittable pseudorandom number generators", 2014) keyed by a seed: every output bit
depends on every input bit, so consecutive ids spread over the rows, and two seeds give
independent hashes. It is plain int64 torch arithmetic (multiplication wraps modulo
``2**64``), the same on CPU and CUDA, traceable by ``torch.fx`` and compiled by TorchScript.
A negative seed ``-d`` (:func:`quotient_seed`) computes ``(id // d) mod rows`` instead: the
hashing trick (``d = 1``, :data:`MODULO_SEED`) and QR's quotient, stored as nothing per id.

Example::

    >>> import torch
    >>> rows = tail_hash(torch.arange(6), seed=7, rows=4)
    >>> rows.tolist() == tail_hash(torch.arange(6), seed=7, rows=4).tolist()
    True
    >>> bool(((rows >= 0) & (rows < 4)).all())
    True
"""

from __future__ import annotations

import torch

# NOTE: SplitMix64's constants are written inline as signed int64 literals (the same bits
# as the usual unsigned 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB):
# TorchScript cannot read module-level ints.


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values: ``>>`` on int64 is arithmetic."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def mix64(ids_V: torch.Tensor, seed: int) -> torch.Tensor:
    """SplitMix64 of ``ids + (seed + 1) * golden``: int64 ``(V,)`` with uniform bits.

    Args:
        ids_V: integer ids, shape ``(V,)`` (converted to int64).
        seed: any int in ``[0, 2**62)``.

    Returns:
        int64 tensor of shape ``(V,)`` (negative values are the high-bit-set half).
    """
    x = ids_V.to(torch.int64)
    # NOTE: the product is taken in int64 tensors, which wrap modulo 2**64 (Python ints do not)
    return _finalize_(x + torch.full_like(x, seed + 1) * -7046029254386353131)


def _finalize_(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer of int64 values (wrapping multiplications), in place on ``x``.

    NOTE: in place because each op is a pass over the batch's ids, and on CPU a fresh
    tensor of a large batch costs page faults on top of the pass.
    """
    x.bitwise_xor_(_shift_right(x, 30)).mul_(-4658895280553007687)
    x.bitwise_xor_(_shift_right(x, 27)).mul_(-7723592293110705685)
    return x.bitwise_xor_(_shift_right(x, 31))


def _top62(x: torch.Tensor) -> torch.Tensor:
    # NOTE: the top 62 bits, taken as a non-negative int64, need no sign fix-up before
    # ``%``, and the modulo bias is below 2**-31 for any rows < 2**31.
    return (x >> 2).bitwise_and_((1 << 62) - 1)


MODULO_SEED = -1
"""The tail seed that makes :func:`tail_hash` the hashing trick, ``id mod rows`` (no mixing:
consecutive ids take consecutive rows). A plan's tail of this seed is computed from the id
as any other, so the hashing trick stores nothing per id."""


def quotient_seed(divisor: int) -> int:
    """The tail seed that makes :func:`tail_hash` ``(id // divisor) mod rows``: ``-divisor``
    (a negative seed is a divisor; :data:`MODULO_SEED` is the divisor 1). QR's quotient
    ``id // m`` over ``ceil(N / m)`` rows is such a tail, computed from the id.

    Args:
        divisor: an int in ``[1, 2**62]``.

    Raises:
        ValueError: ``divisor`` out of range.
    """
    if isinstance(divisor, bool) or not isinstance(divisor, int) or not 1 <= divisor <= 2**62:
        raise ValueError(f"divisor must be an int in [1, 2**62], got {divisor!r}")
    return -divisor


def tail_hash(ids_V: torch.Tensor, seed: int, rows: int) -> torch.Tensor:
    """Rows ``[0, rows)`` of raw ids by a seeded SplitMix64 hash, or with a negative seed
    ``-d`` (:func:`quotient_seed`) by ``(id // d) mod rows``: :data:`MODULO_SEED` (``d = 1``)
    is ``id mod rows``.

    Args:
        ids_V: integer ids, shape ``(V,)``.
        seed: the hash's seed (stored in the plan), in ``[0, 2**62)``, or a divisor's
            ``-d`` in ``[-2**62, -1]``.
        rows: how many rows, ``>= 1``.

    Returns:
        int64 rows of shape ``(V,)``.
    """
    if seed < 0:  # a divided tail (TorchScript reads no module-level ints)
        ids = ids_V.to(torch.int64)
        if seed != -1:  # (MODULO_SEED: the id itself)
            ids = torch.div(ids, -seed, rounding_mode="floor")
        return torch.remainder(ids, rows)
    return _top62(mix64(ids_V, seed)).remainder_(rows)


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """What each seed adds to an id before the finalizer, ``(seed + 1) * golden`` (int64,
    wrapping): computed once per seed for :func:`mix_keyed`."""
    return (seeds.to(torch.int64) + 1) * -7046029254386353131


def mix_keyed(ids_V: torch.Tensor, keys_V: torch.Tensor) -> torch.Tensor:
    """:func:`mix64` with the seeds given as their :func:`seed_keys`: int64 ``(V,)``."""
    return _finalize_(ids_V.to(torch.int64) + keys_V)


def rows_of_mix(x_V: torch.Tensor, rows_V: torch.Tensor) -> torch.Tensor:
    """The tail rows ``[0, rows)`` of mixed hashes ``x_V`` (``x_V`` is left as it is)."""
    return _top62(x_V).remainder_(rows_V)


def tail_rows_keyed(
    ids_V: torch.Tensor, x_V: torch.Tensor, keys_V: torch.Tensor, rows_V: torch.Tensor
) -> torch.Tensor:
    """The tail rows of ids ``ids_V`` whose mixed hashes are ``x_V`` (:func:`mix_keyed` by
    seed keys ``keys_V``): :func:`rows_of_mix`, and ``id mod rows`` where the key is
    :data:`MODULO_SEED`'s (0, the only seed whose key is 0). Divided tails (seeds below
    -1) need :func:`tail_rows_divided`."""
    # one remainder for both kinds: the id where the key is 0, the mixed hash's top bits
    # elsewhere (a compare and a select more than rows_of_mix)
    return torch.where(keys_V == 0, ids_V.to(torch.int64), _top62(x_V)).remainder_(rows_V)


def tail_divisors(seeds: torch.Tensor) -> torch.Tensor:
    """Each seed's divisor ``d`` (a negative seed ``-d``, :func:`quotient_seed`), 0 where it
    is a hash's seed: int64 of the seeds' shape, for :func:`tail_rows_divided`."""
    seeds = seeds.to(torch.int64)
    return torch.where(seeds < 0, -seeds, torch.zeros_like(seeds))


def tail_rows_divided(
    ids_V: torch.Tensor, x_V: torch.Tensor, divisors_V: torch.Tensor, rows_V: torch.Tensor
) -> torch.Tensor:
    """:func:`tail_rows_keyed` for every kind of tail: ``(id // d) mod rows`` where the
    divisor ``d`` (:func:`tail_divisors`) is positive, the mixed hash's row where it is 0.
    A division per id more than :func:`tail_rows_keyed`: taken only where some tail is
    divided (QR's quotient)."""
    ids = ids_V.to(torch.int64)
    quotient = torch.div(ids, divisors_V.clamp(min=1), rounding_mode="floor")
    return torch.where(divisors_V > 0, quotient, _top62(x_V)).remainder_(rows_V)


def tail_hash_seeded(
    ids_V: torch.Tensor, seeds_V: torch.Tensor, rows_V: torch.Tensor
) -> torch.Tensor:
    """:func:`tail_hash` with a seed and a row count per id (one call for many tables).

    ``tail_hash_seeded(ids, full(s), full(r)) == tail_hash(ids, s, r)``: the remap hashes
    the tails of every compact internal feature of a batch at once.

    Args:
        ids_V: integer ids, shape ``(V,)``.
        seeds_V: int64 seeds in ``[0, 2**62)`` or divisors' ``-d`` (:func:`quotient_seed`;
            :data:`MODULO_SEED` too), shape ``(V,)``.
        rows_V: int64 row counts ``>= 1``, shape ``(V,)``.

    Returns:
        int64 rows of shape ``(V,)``, each in ``[0, rows_V[i])``.
    """
    x_V = mix_keyed(ids_V, seed_keys(seeds_V))
    return tail_rows_divided(ids_V, x_V, tail_divisors(seeds_V), rows_V)
