"""Criteo-1TB-shaped synthetic data, written as ``day_{N}_{dense,sparse,labels}.npy`` in chunks.

Shape legend: ``N`` rows of a chunk, ``F`` = 26 features, ``G`` latent groups, ``D`` = 13
dense features.

The planted model of :mod:`torchrec_lhf.data.synthetic` (same parameters and defaults,
:class:`~torchrec_lhf.data.synthetic.SyntheticConfig`'s), at the MLPerf heights times
``scale`` (each at least 1) and for any number of rows, in memory bounded by one chunk:
every id belongs to one of ``G`` groups, popularity is Zipf over a permutation of the ids
independent of the groups, and a row's click logit is ``base_logit + sum_f effect[f,
group_f] + interaction[group_0, group_1] + dense @ w`` with ``D`` standard normal dense
values. NOTE: ``synthetic.py`` draws each id's group and its Zipf permutation as arrays
over all ids (8 bytes per id: 1.6 GB at the full heights) and ``SyntheticConfig`` caps the
groups at the smallest table (3 ids here), so this module derives them per id instead:
the group is a seeded 64-bit mix of ``(feature, id)`` modulo ``G``, the permutation an
affine bijection ``id = (a_f * rank + b_f) mod height_f``, and a rank is drawn by the
inverse of the continuous Zipf CDF (exact up to the discretization of the head).

Determinism: the output depends only on the config; the random stream of each block
of :data:`BLOCK_ROWS` rows is seeded by ``(seed, day, block)``.

Example::

    >>> import tempfile
    >>> from torchrec_lhf.data.criteo_npy import load_criteo_npy
    >>> out = tempfile.mkdtemp()
    >>> cfg = SyntheticCriteoConfig(scale=1e-4, days=2, rows_per_day=100)
    >>> write_synthetic_criteo(out, cfg)[:3]
    [4000, 4, 2]
    >>> load_criteo_npy(out).num_batches("train", batch_size=10)
    10
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.cli import check_int, checked_fields, is_finite_number
from torchrec_lhf.data.criteo_convert import write_npy_parts
from torchrec_lhf.data.criteo_npy import META_FILE, MLPERF_NUM_EMBEDDINGS
from torchrec_lhf.data.synthetic import SyntheticConfig

logger = logging.getLogger(__name__)

BLOCK_ROWS = 1 << 16
"""Rows drawn at once (about 40 MB of scratch); also the unit of the random streams."""

NUM_DENSE = 13
MAX_HEIGHT = math.isqrt(2**63 - 1)
"""The largest table: ``a * rank`` of the rank -> id bijection (both below the height) must
fit int64 (3,037,000,499 ids, 75.9 times the largest MLPerf table)."""
_PLANTED = {f.name: f.default for f in fields(SyntheticConfig)}
_EFFECTS_STREAM = 2**32 - 1  # NOTE: the planted effects' stream, apart from every (day, block)
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64 constants


@dataclass(kw_only=True)
class SyntheticCriteoConfig:
    """What :func:`write_synthetic_criteo` writes; planted-model defaults are ``SyntheticConfig``'s."""

    scale: float = 0.001
    """Table heights are the MLPerf heights times this (rounded, at least 1)."""
    days: int = 3
    """Day files ``day_0 .. day_{days-1}`` (>= 2: the last day is val / test)."""
    rows_per_day: int = 100_000
    """Rows of each day file."""
    num_groups: int = field(default=_PLANTED["num_groups"])
    """Latent groups ``G`` per feature."""
    zipf_exponent: float = field(default=_PLANTED["zipf_exponent"])
    """Popularity of the id of rank ``r`` (0-based) is about proportional to ``(r + 1) ** -s``."""
    group_scale: float = field(default=_PLANTED["group_scale"])
    """Standard deviation of the per-feature, per-group logit effects."""
    interaction_scale: float = field(default=_PLANTED["interaction_scale"])
    """Standard deviation of the group-by-group interaction of features 0 and 1."""
    dense_scale: float = field(default=_PLANTED["dense_scale"])
    """Standard deviation of the dense weights."""
    base_logit: float = field(default=_PLANTED["base_logit"])
    """Logit offset; sets the click rate."""
    seed: int = 0
    """Seed of the groups, permutations, effects and rows."""

    @checked_fields
    def __post_init__(self) -> None:
        if not (is_finite_number(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        try:
            check_int("days", self.days, low=2)
        except ValueError as error:
            raise ValueError(f"{error} (the last day is val / test)") from None
        for name, low in (("rows_per_day", 1), ("num_groups", 1), ("seed", 0)):
            check_int(name, getattr(self, name), low=low)
        for name in ("zipf_exponent", "group_scale", "interaction_scale", "dense_scale"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not is_finite_number(self.base_logit):
            raise ValueError(f"base_logit must be a finite number, got {self.base_logit!r}")
        largest = max(self.num_embeddings)
        if largest > MAX_HEIGHT:
            raise ValueError(
                f"scale {self.scale!r} makes the largest table {largest:,} ids; expected at "
                f"most {MAX_HEIGHT:,} (a scale of at most "
                f"{MAX_HEIGHT / max(MLPERF_NUM_EMBEDDINGS):.1f}): a table's rank -> id "
                "bijection multiplies two of its ids in int64"
            )

    @property
    def num_embeddings(self) -> list[int]:
        """The table heights: ``max(1, round(mlperf_height * scale))``."""
        return [max(1, round(h * self.scale)) for h in MLPERF_NUM_EMBEDDINGS]


@dataclass(frozen=True)
class _Planted:
    """The model's parameters: effects ``(F, G)``, interaction ``(G, G)``, dense weights
    ``(D,)`` and each table's bijection rank -> id (``a_F``, ``b_F``)."""

    heights_F: np.ndarray
    effect_FG: np.ndarray
    inter_GG: np.ndarray
    w_D: np.ndarray
    a_F: np.ndarray
    b_F: np.ndarray


def _planted(config: SyntheticCriteoConfig) -> _Planted:
    rng = np.random.default_rng([config.seed, _EFFECTS_STREAM])
    num_features, g = len(MLPERF_NUM_EMBEDDINGS), config.num_groups
    heights_F = np.asarray(config.num_embeddings, dtype=np.int64)
    effect_FG = rng.standard_normal((num_features, g)) * config.group_scale
    inter_GG = rng.standard_normal((g, g)) * config.interaction_scale
    w_D = rng.standard_normal(NUM_DENSE) * config.dense_scale
    b_F = rng.integers(0, heights_F)
    a_F = rng.integers(0, heights_F) + 1  # in [1, height]
    for f, h in enumerate(heights_F.tolist()):  # NOTE: a loop per table, not per id
        while math.gcd(int(a_F[f]), h) != 1:
            a_F[f] = a_F[f] % h + 1
    return _Planted(heights_F, effect_FG, inter_GG, w_D, a_F, b_F)


def _group_of(ids: np.ndarray, feature: np.ndarray, config: SyntheticCriteoConfig) -> np.ndarray:
    """The planted group (int64 in ``[0, G)``) of ids ``ids`` of features ``feature``
    (broadcast together): splitmix64 of ``(feature, id, seed)``."""
    salt = (config.seed * _MIX[0]) % 2**64
    z = ids.astype(np.uint64) + (feature.astype(np.uint64) << np.uint64(40)) + np.uint64(salt)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[1])
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[2])
    z ^= z >> np.uint64(31)
    return (z % np.uint64(config.num_groups)).astype(np.int64)


def planted_groups(config: SyntheticCriteoConfig, feature: int) -> torch.Tensor:
    """The planted group of every id of ``feature``: int64 ``(num_embeddings[feature],)``."""
    ids = np.arange(config.num_embeddings[feature], dtype=np.int64)
    return torch.from_numpy(_group_of(ids, np.asarray(feature), config))


def _zipf_ranks(u_NF: np.ndarray, heights_F: np.ndarray, s: float) -> np.ndarray:
    """Ranks in ``[0, height_f)`` by the inverse continuous CDF of ``x ** -s`` on ``[1, h + 1)``."""
    top_F = heights_F.astype(np.float64) + 1.0
    if s == 0:
        x_NF = 1.0 + u_NF * heights_F
    elif abs(s - 1.0) < 1e-9:
        x_NF = np.exp(u_NF * np.log(top_F))
    else:
        x_NF = (1.0 + u_NF * (top_F ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s))
    return np.clip(np.floor(x_NF).astype(np.int64) - 1, 0, heights_F - 1)


def _draw_block(config: SyntheticCriteoConfig, planted: _Planted, day: int, block: int, n: int):
    """``n`` rows: dense ``(n, 13)`` float32, ids ``(n, 26)`` int64, labels ``(n,)`` int32."""
    rng = np.random.default_rng([config.seed, day, block])
    ranks_NF = _zipf_ranks(
        rng.random((n, planted.heights_F.size)), planted.heights_F, config.zipf_exponent
    )
    ids_NF = (planted.a_F * ranks_NF + planted.b_F) % planted.heights_F
    group_NF = _group_of(ids_NF, np.arange(ids_NF.shape[1]).reshape(1, -1), config)
    dense_ND = rng.standard_normal((n, NUM_DENSE))
    logit_N = config.base_logit + dense_ND @ planted.w_D
    logit_N += planted.effect_FG[np.arange(group_NF.shape[1]), group_NF].sum(1)
    logit_N += planted.inter_GG[group_NF[:, 0], group_NF[:, 1]]
    labels_N = rng.random(n) < 1.0 / (1.0 + np.exp(-logit_N))
    return dense_ND.astype(np.float32), ids_NF, labels_N.astype(np.int32)


def write_synthetic_criteo(out_dir: str | os.PathLike, config: SyntheticCriteoConfig) -> list[int]:
    """Write ``day_{0..days-1}_{dense,sparse,labels}.npy`` and ``criteo_npy.json`` to ``out_dir``.

    Each file is written chunk by chunk into a memory map under a temporary name and moved
    into place when complete; ``criteo_npy.json`` records the heights (so that
    ``criteo-npy:DIR`` reads them) and the config.

    Returns:
        The table heights ``config.num_embeddings``.
    """
    out = Path(out_dir)
    planted = _planted(config)
    num_blocks = -(-config.rows_per_day // BLOCK_ROWS)
    with tqdm(
        total=config.days * config.rows_per_day, desc="synthetic criteo", mininterval=5.0
    ) as bar:
        for day in range(config.days):  # NOTE: loops per day and per block of rows
            with write_npy_parts(out, f"day_{day}", config.rows_per_day) as arrays:
                for block in range(num_blocks):
                    lo = block * BLOCK_ROWS
                    hi = min(config.rows_per_day, lo + BLOCK_ROWS)
                    dense, ids, labels = _draw_block(config, planted, day, block, hi - lo)
                    arrays.write("dense", lo, dense)
                    arrays.write("sparse", lo, ids)
                    arrays.write("labels", lo, labels)
                    bar.update(hi - lo)
    meta = {
        "num_embeddings_per_feature": config.num_embeddings,
        "source": "synthetic-criteo",
        "config": asdict(config),
        "effect": planted.effect_FG.tolist(),
        "interaction": planted.inter_GG.tolist(),
        "dense_weight": planted.w_D.tolist(),
    }
    atomic_write_json(out / META_FILE, meta)
    logger.info(
        "synthetic criteo -> %s: %d days x %d rows, %d ids",
        out,
        config.days,
        config.rows_per_day,
        sum(config.num_embeddings),
    )
    return config.num_embeddings
