"""Synthetic click data with planted structure: the scale test and the offline demo.

Shape legend: ``N`` samples, ``F`` features, ``T`` ids of all tables together
(``sum(num_embeddings)``), ``G`` latent groups, ``D`` dense features.

The planted model: every id of every feature belongs to one of ``G`` latent groups
(uniformly at random). Popularity is Zipf(``zipf_exponent``) over a random
permutation of the ids, independent of the groups. A sample draws one id per
feature by popularity and ``D`` standard normal dense values; its click logit is

    base_logit + sum_f effect[f, group_f] + interaction[group_0, group_1] + dense @ w

with ``effect ~ N(0, group_scale)``, ``interaction ~ N(0, interaction_scale)`` (between
features 0 and 1) and ``w ~ N(0, dense_scale)``, and the label is a Bernoulli draw.
So ids of one group are interchangeable: a learned hash that puts each group in
one row loses nothing, while a random hash mixes groups.

Everything is vectorized over samples, features and ids (no Python loop per
feature, id or sample), so millions of ids and samples take seconds. The groups
depend only on ``(seed, num_embeddings, num_groups)``: :func:`synthetic_groups`
returns them without drawing samples. Splits: a permutation seeded by ``seed``,
cut 80 / 10 / 10 (the samples are i.i.d.; there is no time).
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from torchrec_lhf.cli import check_int, checked_fields, is_finite_number
from torchrec_lhf.data._util import exclusive_cumsum, seeded_permutation, split_by_order
from torchrec_lhf.data.dataset import RecDataset

logger = logging.getLogger(__name__)

_SAMPLE_SEED_OFFSET = 1_000_003  # the sample stream's generator is seeded apart from the groups'
BYTES_PER_ID = 76
"""Peak memory of :func:`make_synthetic` per id of all tables (73 measured at 5M and 20M
ids: the groups, popularity and permutation arrays over every id)."""
BYTES_PER_SAMPLE_FEATURE = 60
BYTES_PER_SAMPLE_DENSE = 20
"""Its peak memory per sample, per feature and per dense feature (measured per sample: 533
bytes with 8 features and 4 dense ones, 1,625 with 26 and 13; these give 560 and 1,820)."""


@dataclass(kw_only=True)
class SyntheticConfig:
    """How :func:`make_synthetic` draws a dataset. Defaults: small, seconds on a laptop."""

    num_samples: int = 50_000
    """Samples ``N``."""
    num_embeddings: Sequence[int] = field(
        default_factory=lambda: (1000, 5000, 20000, 2000, 500, 10000, 100, 50000)
    )
    """Table heights, one per feature (``F`` features)."""
    num_groups: int = 8
    """Latent groups ``G`` per feature."""
    zipf_exponent: float = 1.05
    """Popularity of the id of rank ``r`` (0-based) is proportional to ``(r + 1) ** -s``."""
    num_dense: int = 4
    """Dense features ``D`` (>= 1: DLRM's dense arch needs one)."""
    group_scale: float = 0.7
    """Standard deviation of the per-feature, per-group logit effects."""
    interaction_scale: float = 1.0
    """Standard deviation of the group-by-group interaction of features 0 and 1."""
    dense_scale: float = 0.3
    """Standard deviation of the dense weights."""
    base_logit: float = -1.0
    """Logit offset; sets the click rate (about 0.3 with the defaults)."""
    seed: int = 0
    """Seed of the groups, the effects, the samples and the split."""

    @checked_fields
    def __post_init__(self) -> None:
        for name, low in (("num_samples", 1), ("num_groups", 1), ("num_dense", 1), ("seed", 0)):
            check_int(name, getattr(self, name), low=low)
        heights = self.num_embeddings
        if (
            isinstance(heights, (str, bytes))
            or not isinstance(heights, Sequence)
            or not heights
            or any(
                isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in heights
            )
        ):
            raise ValueError(
                f"num_embeddings must be a non-empty list of ints >= 1, got {heights!r}"
            )
        if self.num_groups > min(heights):
            raise ValueError(
                f"num_groups must be in [1, min(num_embeddings)={min(heights)}], got {self.num_groups}"
            )
        for name in ("zipf_exponent", "group_scale", "interaction_scale", "dense_scale"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not is_finite_number(self.base_logit):
            raise ValueError(f"base_logit must be a finite number, got {self.base_logit!r}")


def peak_bytes(config: SyntheticConfig) -> int:
    """About the most memory :func:`make_synthetic` holds at once for ``config``: it draws
    arrays over every id of every table and over every sample."""
    per_sample = (
        BYTES_PER_SAMPLE_FEATURE * len(config.num_embeddings)
        + BYTES_PER_SAMPLE_DENSE * config.num_dense
    )
    return BYTES_PER_ID * sum(int(h) for h in config.num_embeddings) + per_sample * int(
        config.num_samples
    )


def _physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


CGROUP_ROOT = "/sys/fs/cgroup"
"""Where the control groups' files are mounted (Linux)."""


def _cgroup_limit(root: str = CGROUP_ROOT) -> int | None:
    """The memory limit of this process's control group (a container's, a job's) in bytes,
    or None where there is none or the system does not say.

    Reads cgroup v2 (``memory.max`` of the process's group, from ``/proc/self/cgroup``,
    then of the mount's root as containers see it) and v1 (``memory/memory.limit_in_bytes``).
    "max" and v1's page-rounded 2**63 mean no limit."""
    candidates = []
    try:
        with open("/proc/self/cgroup") as groups:
            for line in groups:
                if line.startswith("0::"):
                    candidates.append(
                        os.path.join(root, line[3:].strip().lstrip("/"), "memory.max")
                    )
    except OSError:
        pass
    candidates += [
        os.path.join(root, "memory.max"),
        os.path.join(root, "memory", "memory.limit_in_bytes"),
    ]
    for path in candidates:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            continue
        return limit if 0 < limit < 2**62 else None
    return None


def _usable_memory() -> int | None:
    """The bytes this process may use: the physical memory, or its control group's limit
    where that is lower; None where neither is known."""
    known = [m for m in (_physical_memory(), _cgroup_limit()) if m is not None]
    return min(known) if known else None


def check_fits(config: SyntheticConfig, memory: int | None = None) -> None:
    """Raises ValueError where ``config`` needs more memory than this process may use
    (``memory``: its bytes, by default the physical memory or, where lower, the memory limit
    of its container or job: :func:`_usable_memory`), before anything is drawn: the arrays
    would otherwise be allocated one by one until one fails, or the out-of-memory killer
    ends the process."""
    memory = _usable_memory() if memory is None else memory
    need = peak_bytes(config)
    if memory is None or need <= memory:
        return
    ids = sum(int(h) for h in config.num_embeddings)
    raise ValueError(
        f"the synthetic data would take about {need / 1e9:,.1f} GB ({ids:,} ids at about "
        f"{BYTES_PER_ID} bytes each, {int(config.num_samples):,} samples), more than the "
        f"{memory / 1e9:,.1f} GB this process may use (the machine's memory, or its "
        "container's limit where lower); expected fewer ids (num_embeddings) or samples "
        "(num_samples). For tables of the MLPerf heights and beyond, "
        "python -m apps.make_synthetic_criteo writes such data in chunks, with no array "
        "over the ids"
    )


def synthetic_groups(config: SyntheticConfig) -> list[torch.Tensor]:
    """The planted group of every id: per feature an int64 tensor ``(num_embeddings[f],)``."""
    gen = torch.Generator().manual_seed(config.seed)
    heights = [int(h) for h in config.num_embeddings]
    group_T = torch.randint(config.num_groups, (sum(heights),), generator=gen)
    return list(torch.split(group_T, heights))


def make_synthetic(config: SyntheticConfig | None = None) -> RecDataset:
    """Draw a dataset from the planted model of the module docstring.

    Args:
        config: sizes and scales; default ``SyntheticConfig()``.

    Returns:
        A ``RecDataset`` named ``"synthetic"`` with one-hot features ``cat_0..``,
        dense features ``dense_0..`` and the planted effects in ``info``.

    Raises:
        ValueError: ``config`` would take more memory than the machine has
            (:func:`check_fits`).
    """
    config = config or SyntheticConfig()
    check_fits(config)
    t0 = time.perf_counter()
    heights = [int(h) for h in config.num_embeddings]
    num_features, num_groups, n = len(heights), config.num_groups, config.num_samples
    group_T = torch.cat(synthetic_groups(config))
    gen = torch.Generator().manual_seed(config.seed + _SAMPLE_SEED_OFFSET)

    # Zipf popularity by rank, ranks -> ids by a random permutation within each table.
    height_F = torch.tensor(heights, dtype=torch.int64)
    offset_F = exclusive_cumsum(height_F)
    feature_T = torch.repeat_interleave(torch.arange(num_features), height_F)
    rank_T = torch.arange(feature_T.numel()) - offset_F[feature_T]
    weight_T = (rank_T + 1).double().pow(-config.zipf_exponent)
    cum_T = torch.cumsum(weight_T, 0)
    base_F = cum_T[offset_F] - weight_T[offset_F]
    total_F = cum_T[offset_F + height_F - 1] - base_F
    perm_key_T = torch.rand(feature_T.numel(), generator=gen, dtype=torch.float64) + feature_T
    rank_to_id_T = torch.argsort(perm_key_T) - offset_F[feature_T]  # permutation within each table

    u_NF = torch.rand(n, num_features, generator=gen, dtype=torch.float64)
    pos_NF = torch.searchsorted(cum_T, base_F + u_NF * total_F)
    pos_NF = torch.minimum(torch.maximum(pos_NF, offset_F), offset_F + height_F - 1)
    ids_NF = rank_to_id_T[pos_NF]
    group_NF = group_T[offset_F + ids_NF]

    effect_FG = torch.randn(num_features, num_groups, generator=gen, dtype=torch.float64)
    effect_FG *= config.group_scale
    inter_GG = torch.randn(num_groups, num_groups, generator=gen, dtype=torch.float64)
    inter_GG *= config.interaction_scale if num_features > 1 else 0.0
    w_D = torch.randn(config.num_dense, generator=gen, dtype=torch.float64) * config.dense_scale
    dense_ND = torch.randn(n, config.num_dense, generator=gen, dtype=torch.float64)

    logit_N = (
        config.base_logit + effect_FG[torch.arange(num_features), group_NF].sum(1) + dense_ND @ w_D
    )
    if num_features > 1:
        logit_N += inter_GG[group_NF[:, 0], group_NF[:, 1]]
    labels_N = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(logit_N)).float()

    logger.info(
        "synthetic: %d samples, tables %s, click rate %.3f in %.1fs",
        n,
        heights,
        float(labels_N.mean()),
        time.perf_counter() - t0,
    )
    return RecDataset(
        name="synthetic",
        feature_names=[f"cat_{f}" for f in range(num_features)],
        num_embeddings=heights,
        dense_names=[f"dense_{d}" for d in range(config.num_dense)],
        dense=dense_ND.float(),
        lengths=torch.ones(n, num_features, dtype=torch.int32),
        values=ids_NF.reshape(-1),
        labels=labels_N,
        splits=split_by_order(seeded_permutation(n, config.seed)),
        info={
            "source": "synthetic",
            "config": {
                k: (list(v) if k == "num_embeddings" else v) for k, v in vars(config).items()
            },
            "split": f"permutation seeded with {config.seed}, 80/10/10",
            "click_rate": float(labels_N.mean()),
            "effect": effect_FG.tolist(),
            "interaction": inter_GG.tolist(),
            "dense_weight": w_D.tolist(),
        },
    )
