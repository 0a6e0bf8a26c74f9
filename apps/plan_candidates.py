"""The learned hash's candidate plans, chosen among on validation by ``apps.pipeline``.

Under ``--budget bytes`` by default (``--half_select``), and with ``--head_select``,
``--rows_select`` or ``--width_select``, the pipeline builds more than one plan for the
learned hash (:func:`candidate_builds`), trains each (a training whose plan and settings
equal an earlier one's is not run again: :func:`same_plans`, keyed by
:func:`training_fingerprint`) and keeps the one of highest validation AUC
(:func:`torchrec_lhf.report.select_on_validation`). ``benchmarks.rare_ids`` reuses the
same key for its own candidates.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from apps.dlrm.config import TrainConfig
from torchrec_lhf.compression.budget import fraction_at_width, half_width, mlet_width
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.hash_build.head_tail import ROW_ALLOCATIONS

logger = logging.getLogger(__name__)

MLET_SUFFIX = "-mlet"
"""``width_select``'s candidates at the sqrt split's width, trained as MLET at it."""
HALF_SUFFIX = "-half"
"""``half_select``'s and ``width_select``'s candidates at half the width, trained as MLET
at it."""
CANDIDATE_PREFIX = "lhf-"
"""The trainings of the learned hash's other candidate plans are named ``lhf-<candidate>``
(:func:`candidate_builds`; ``--head_select``'s is ``lhf-frequency``)."""


def other_allocation(row_allocation: str) -> str:
    """``rows_select``'s alternative to ``row_allocation``: ``counts`` for ``size`` and
    ``size`` for ``counts``."""
    return "counts" if row_allocation == "size" else "size"


def candidate_builds(
    build_config: BuildConfig,
    *,
    head_select: bool = False,
    rows_select: bool = False,
    width_select: bool = False,
    half_select: bool = False,
    half_rows: str | None = None,
) -> dict[str, BuildConfig]:
    """The learned hash's candidate plans, name -> build, written next to the build's plan
    as ``plan_<name>.safetensors``.

    Args:
        build_config: the learned hash's own build: ``clustered``, first, so that it wins
            ties.
        head_select: also each clustered candidate with no head clustered (rows by
            frequency alone): ``frequency``, ``frequency-<other allocation>``.
        rows_select: also ``clustered-<other allocation>``, the byte budget's rows shared
            the other way (:func:`other_allocation`).
        width_select: also the clustered ones at narrower widths (:func:`narrow_widths`),
            their rows fitted to the bytes left: at the sqrt split's, ``clustered-mlet``,
            ``clustered-<other allocation>-mlet``; at half the width, ``clustered-half``,
            ``clustered-<other allocation>-half``.
        half_select: also the clustered ones at half the width alone (``clustered-half``,
            ...): ``apps.pipeline``'s default under a byte budget.
        half_rows: without ``rows_select``, how the plan at half the width shares the
            byte budget's rows (``size`` or ``counts``; None: as ``build_config``); where it
            differs from the build's, that candidate is ``clustered-<half_rows>-half``.
            Where the build's head and tail cannot share rows that way (``counts`` needs a
            filled head by counts: :func:`shares_rows_by`), it shares them as the build
            does. With ``rows_select`` both allocations are candidates at every width.

    Raises:
        ValueError: ``half_rows`` is neither None, ``size`` nor ``counts``.

    Returns:
        Candidate name -> its build config, ``clustered`` first.
    """
    if half_rows not in (None, *ROW_ALLOCATIONS):
        raise ValueError(f"half_rows must be one of {ROW_ALLOCATIONS} or None, got {half_rows!r}")
    folder = Path(build_config.out).parent
    builds = {"clustered": build_config}
    if rows_select:
        alt = other_allocation(build_config.row_allocation)
        builds[f"clustered-{alt}"] = dataclasses.replace(
            build_config,
            row_allocation=alt,
            out=folder / f"plan_clustered-{alt}.safetensors",
            work_dir=None,
        )
    clustered = list(builds.items())
    if head_select:
        for name, build in clustered:
            freq = name.replace("clustered", "frequency")
            builds[freq] = build.frequency_only(folder / f"plan_{freq}.safetensors")
    if width_select or half_select:  # narrower widths, the rows fitted to the bytes left
        for suffix, width in narrow_widths(build_config, sqrt=width_select).items():
            sources = clustered
            own = (None, build_config.row_allocation)
            if suffix == HALF_SUFFIX and not rows_select and half_rows not in own:
                if shares_rows_by(build_config, half_rows):
                    alt = dataclasses.replace(build_config, row_allocation=half_rows)
                    sources = [(f"clustered-{half_rows}", alt)]
                else:
                    logger.info(
                        "the plan at half the width shares its rows by %r: its head and tail "
                        "cannot by %r (half_rows)",
                        build_config.row_allocation,
                        half_rows,
                    )
            for name, build in sources:
                narrow = name + suffix
                builds[narrow] = dataclasses.replace(
                    build,
                    embedding_dim=width,
                    fraction=fraction_at_width(build.fraction, build.embedding_dim, width),
                    out=folder / f"plan_{narrow}.safetensors",
                    work_dir=None,
                )
    return builds


def shares_rows_by(build_config: BuildConfig, row_allocation: str) -> bool:
    """Whether ``build_config``'s head and tail can share a byte budget's rows by
    ``row_allocation`` (``counts`` gives a row each to the most frequent ids, which needs a
    head by counts and ``tail_region="fill"``; ``size`` always can)."""
    try:
        dataclasses.replace(build_config.head_tail(), row_allocation=row_allocation)
    except ValueError:
        return False
    return True


def narrow_widths(build_config: BuildConfig, *, sqrt: bool = True) -> dict[str, int]:
    """The narrower widths of ``width_select`` (``sqrt``) or ``half_select``, candidate
    suffix -> width: :data:`MLET_SUFFIX` at the sqrt split's
    (:func:`~torchrec_lhf.compression.budget.mlet_width`; only with ``sqrt``) and
    :data:`HALF_SUFFIX` at half the width, each only where it is narrower than the build's
    and the rows it buys stay within the full tables
    (:func:`~torchrec_lhf.compression.budget.fraction_at_width` at most 1: at half the
    width, fractions up to 0.5), the half only where it differs from the sqrt split's.

    Example::

        >>> build = BuildConfig(
        ...     teacher="t", out="p", fraction=0.1, budget="bytes", embedding_dim=16
        ... )
        >>> narrow_widths(build)
        {'-mlet': 5, '-half': 8}
        >>> narrow_widths(build, sqrt=False)
        {'-half': 8}
        >>> narrow_widths(dataclasses.replace(build, fraction=0.25))  # both 8
        {'-mlet': 8}
        >>> narrow_widths(dataclasses.replace(build, fraction=0.6))  # 1.2 of the rows at 8
        {'-mlet': 12}
    """
    if build_config.fraction is None or build_config.embedding_dim is None:
        raise ValueError(
            "width_select and half_select fit narrower plans to a byte budget's fraction at "
            "a known width, "
            f"got fraction={build_config.fraction!r}, embedding_dim={build_config.embedding_dim!r}"
        )
    dim = build_config.embedding_dim
    widths = {MLET_SUFFIX: mlet_width(build_config.fraction, dim)} if sqrt else {}
    widths[HALF_SUFFIX] = half_width(dim)
    out: dict[str, int] = {}
    for suffix, width in widths.items():
        fits = fraction_at_width(build_config.fraction, dim, width) <= 1  # the full rows
        if 1 <= width < dim and fits and width not in out.values():
            out[suffix] = width
    return out


def same_plans(trains: dict[str, TrainConfig]) -> dict[str, str]:
    """The candidate trainings (``lhf-<candidate>``) whose plan equals an earlier one's
    (:meth:`HashPlan.fingerprint`: the same mappings; the builds' options may differ, e.g.
    a frequency-only plan where no table clusters its head anyway) and whose other settings
    are the same: candidate -> the earlier training. Trainings are deterministic per seed,
    so such a candidate's result is the earlier one's and is not trained again."""
    seen: dict[str, str] = {}
    same: dict[str, str] = {}
    for method, train_config in trains.items():
        if train_config.learned_hash is None or not (
            method == "lhf" or method.startswith(CANDIDATE_PREFIX)
        ):
            continue
        fingerprint = training_fingerprint(train_config)
        if fingerprint in seen:
            same[method] = seen[fingerprint]
        else:
            seen[fingerprint] = method
    return same


def training_fingerprint(train_config: TrainConfig) -> str:
    """What decides a learned-hash training's result: its plan's mappings
    (:meth:`HashPlan.fingerprint`) and every other setting (the plan's path and the metrics
    file aside). Equal fingerprints, equal (deterministic) trainings."""
    from torchrec_lhf import HashPlan

    assert train_config.learned_hash is not None
    rest = dataclasses.replace(train_config, learned_hash=None, metrics_json=None)
    return f"{HashPlan.load(train_config.learned_hash).fingerprint()} {rest!r}"
