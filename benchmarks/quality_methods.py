"""The quality sweep's methods (:mod:`benchmarks.quality`).

Methods:

* ``none`` (the full model, fraction 1.0), ``modulo``, ``qr``, ``fbdh``, ``memrec``, ``mlet``
  and ``mch`` (TorchRec's managed collisions; not among the defaults) (``--compression``);
* ``cce`` (``--compression cce``: clustered compositional embeddings, re-clustered during
  training, the app's ``--cce_columns``), ``cce-c1`` and ``cce-c2`` (1 and 2 columns; see
  :data:`CCE_VARIANTS`); its stored clustered indices count in its bytes;
* ``lhf`` and its ablations: a teacher per seed and teacher dim (``apps.teacher.run``), a
  plan per fraction (``apps.build_hash.run``), then training with ``--learned_hash``.
  Variants (see :data:`LHF_VARIANTS`): ``lhf`` (the paper: frequency for filtering and
  weighting, one table, teacher dim ``--teacher_dim``, PCA), ``lhf-nofilter`` (no frequency
  filter), ``lhf-noweight`` (plain means), ``lhf-nofreq`` (neither), ``lhf-h2`` (two
  internal tables, summed), ``lhf-dim0`` (projection ``dim:0``), ``lhf-t2`` (teacher dim 2,
  its tables data_parallel: FBGEMM's fused tables need widths divisible by 4),
  ``lhf-skip`` (tables under ``--skip_rows`` ids stay full); and changes of ours:
  ``lhf-mlet`` (the learned plan at ``sqrt(fraction)`` of the rows, trained as MLET at
  ``sqrt(fraction)`` of the width, so about ``fraction`` of the bytes; under ``--bytes`` the
  width ``floor(sqrt(fraction) * D)`` and the rows fitted to the bytes left, the remap
  counted), ``lhf-headtail-mlet`` (the same with the build's head/tail defaults),
  ``lhf-headtail-half`` / ``lhf-headtail-counts-half`` (the build's defaults / with rows by
  counts at half the width, the rows the rest of the fraction;
  ``lhf-headtail-counts-half-noclust``: that with no id clustered), ``lhf-t16`` (a
  teacher at the model's dim, ``--embedding_dim``), ``lhf-init`` (that teacher, and the
  compressed tables start at its cluster centroids: ``--init_from``), and
  ``lhf-rarehash`` (``apps.build_hash --head_min_count``): ids seen fewer than
  ``--head_min_count`` times are left out of the clustering and hashed into the
  same rows (same bytes). The teacher memorizes the labels of rare ids, so clustering them
  by teacher value makes compressed rows that memorize labels (see docs/RESULTS.md);
  hashing them breaks that. ``lhf-headtail``: the build's defaults (that head, extended by
  the next most frequent ids, a row each, where rows are left; the tail hashed into a
  region of its own of 5% of the rows); ``lhf-headtail-fill5``: the same, named
  (``-fill2``: a 2% tail region; ``-fill1row``: one tail row per table, as ``mch``'s miss
  row); ``lhf-headtail-h2``: the defaults with two hash functions per table, summed;
  ``lhf-headtail-counts``: the defaults with ``--row_allocation counts`` (under ``--bytes``,
  the rows shared by the tables as their ids' access counts say, not by their sizes);
  ``lhf-headtail-share<s>``: the defaults with ``--index_share s`` (the head's threshold
  raised until the stored remap is at most ``s`` of a byte budget);
  ``lhf-headtail-fixed``: the defaults before 2026-11-30 (:data:`FIXED`: a 70% tail region,
  no extension), which the variants below keep; ``lhf-headtail-mass`` / ``-fit``
  (``--tail_region mass`` / ``fit``: the tail region sized by its traffic, or given the rows
  a small head leaves). Leak-free values for that head: ``lhf-shrink<k>``
  (``--value_shrinkage k``: each id's teacher embedding pulled toward the tail's mean by
  ``n / (n + k)``), ``lhf-window`` (a held-out teacher trained on the first half of the
  training rows, ``apps.teacher --train_window 0.5``, counts over all of them) and
  ``lhf-window-shrink10`` (both); ``lhf-paper-shrink<k>``: the paper's build (every id
  clustered) with that shrinkage. Compositional hashes (two internal tables, summed, with
  that head): ``lhf-h2-headtail`` (independent: hash ``h`` clusters projection ``h``),
  ``lhf-compose`` (``--compose residual``: hash 1 splits the ids hash 0 put together, by
  their residuals; :mod:`torchrec_lhf.hash_build.compose`) and ``lhf-compose-paper`` (that,
  every id clustered). The head/tail defaults moved: ``lhf-headtail-tail0.5`` /
  ``-tail0.85`` (``--tail_fraction``), ``lhf-headtail-head2x`` / ``-head0.5x`` (twice / half
  ``--head_min_count``); ``lhf-headtail-noclust``: the defaults with no id clustered
  (``BuildConfig.frequency_only``: every row but the tail's goes to the most frequent ids,
  one each, as ``mch``'s do); ``lhf-headtail-counts-noclust``: both (rows shared by
  counts, none clustered).

  Chosen on validation (:data:`SELECTED`): ``lhf-headtail-select`` trains ``lhf-headtail``
  and ``lhf-headtail-noclust`` (each its own run) and reports, per seed and size, the one of
  higher validation AUC (``apps.pipeline --head_select --no-half_select``);
  ``lhf-headtail-select3`` among those two and ``lhf-headtail-counts-half``
  (``apps.pipeline --head_select`` under ``--budget bytes``); ``lhf-headtail-select4`` chooses
  the same way among those two and ``lhf-headtail-counts`` and
  ``lhf-headtail-counts-noclust`` (``apps.pipeline --head_select --rows_select``);
  ``lhf-headtail-select6`` among those four and the two learned hashes trained as MLET,
  ``lhf-headtail-mlet`` and ``lhf-headtail-counts-mlet`` (the latter with rows by counts);
  ``lhf-headtail-select8`` among those six and the two at half the width,
  ``lhf-headtail-half`` and ``lhf-headtail-counts-half`` (``apps.pipeline --head_select
  --rows_select --width_select``); ``lhf-headtail-select2-counts`` between
  ``lhf-headtail`` and ``lhf-headtail-counts-half``: what ``apps.pipeline`` does by default
  under ``--budget bytes`` (``--half_select``, ``--half_rows counts``; since 2026-12-02);
  ``lhf-headtail-select2`` between ``lhf-headtail`` and ``lhf-headtail-half`` (the
  default before, ``--half_rows size``);
  ``lhf-headtail-select2-noclust`` the same choice between the two with no id clustered
  (``lhf-headtail-noclust``, ``lhf-headtail-counts-half-noclust``);
  ``lhf-headtail-select2-fill0.05`` the same with ``--fill_share 0.05``
  (``lhf-headtail-fill0.05``, ``lhf-headtail-half-fill0.05``).
"""

from __future__ import annotations

from typing import Any

BASELINES = ("none", "modulo", "qr", "fbdh", "memrec", "mlet")
FIXED: dict[str, Any] = {"tail_region": "fixed", "tail_fraction": 0.7}
"""The build's head/tail default before 2026-11-30 (a fixed tail region of 70% of the
rows, no extension of a small head): the variants measured against it keep it, so that
their commands in docs/RESULTS.md reproduce (``lhf-headtail-fixed`` is that default)."""

LHF_VARIANTS: dict[str, dict[str, Any]] = {
    "lhf": {},
    "lhf-nofilter": {"clustering_options": {"filters": ["distance", "size"]}},
    "lhf-noweight": {"clustering_options": {"weighted_values": False}},
    "lhf-nofreq": {
        "clustering_options": {"filters": ["distance", "size"], "weighted_values": False}
    },
    "lhf-h2": {"num_hashes": 2},
    "lhf-dim0": {"projection": "dim:0"},
    "lhf-t2": {"teacher_dim": 2},
    "lhf-skip": {"skip": True},
    "lhf-rarehash": {"rare_hash": True, "tail_fraction": 0.0, "tail_region": "fixed"},
    "lhf-headtail": {"rare_hash": True},
    "lhf-headtail-fixed": {"rare_hash": True, **FIXED},
    "lhf-headtail-mass": {"rare_hash": True, "tail_region": "mass"},
    "lhf-headtail-fit": {"rare_hash": True, **FIXED, "tail_region": "fit"},
    "lhf-headtail-fill5": {"rare_hash": True, "tail_region": "fill", "tail_fraction": 0.05},
    "lhf-headtail-fill2": {"rare_hash": True, "tail_region": "fill", "tail_fraction": 0.02},
    # the default with a byte budget's rows shared by access counts, not by table sizes
    "lhf-headtail-counts": {"rare_hash": True, "row_allocation": "counts"},
    "lhf-headtail-share0.5": {"rare_hash": True, "index_share": 0.5},
    "lhf-headtail-share0.25": {"rare_hash": True, "index_share": 0.25},
    "lhf-headtail-share0.1": {"rare_hash": True, "index_share": 0.1},
    # the default with two hash functions per table, summed (a tail id gets a pair of rows)
    "lhf-headtail-h2": {"rare_hash": True, "num_hashes": 2},
    # one tail row per table (mch's single miss row): the least share that keeps a tail
    "lhf-headtail-fill1row": {"rare_hash": True, "tail_region": "fill", "tail_fraction": 1e-9},
    "lhf-shrink1": {"rare_hash": True, **FIXED, "value_shrinkage": 1},
    "lhf-shrink3": {"rare_hash": True, **FIXED, "value_shrinkage": 3},
    "lhf-shrink10": {"rare_hash": True, **FIXED, "value_shrinkage": 10},
    "lhf-shrink30": {"rare_hash": True, **FIXED, "value_shrinkage": 30},
    "lhf-window": {"rare_hash": True, **FIXED, "train_window": 0.5},
    "lhf-window-shrink10": {
        "rare_hash": True,
        **FIXED,
        "train_window": 0.5,
        "value_shrinkage": 10,
    },
    "lhf-paper-shrink10": {"value_shrinkage": 10},
    "lhf-paper-shrink30": {"value_shrinkage": 30},
    "lhf-headtail-tail0.5": {"rare_hash": True, **FIXED, "tail_fraction": 0.5},
    "lhf-headtail-tail0.85": {"rare_hash": True, **FIXED, "tail_fraction": 0.85},
    "lhf-headtail-head2x": {"rare_hash": True, **FIXED, "head_min_count_scale": 2.0},
    "lhf-headtail-head0.5x": {"rare_hash": True, **FIXED, "head_min_count_scale": 0.5},
    # no id clustered: every row but the tail's to the most frequent ids, one each
    "lhf-headtail-noclust": {"rare_hash": True, "frequency_only": True},
    # both: rows shared by access counts, none clustered
    "lhf-headtail-counts-noclust": {
        "rare_hash": True,
        "row_allocation": "counts",
        "frequency_only": True,
    },
    "lhf-h2-headtail": {"rare_hash": True, **FIXED, "num_hashes": 2},
    "lhf-compose": {"rare_hash": True, **FIXED, "num_hashes": 2, "compose": "residual"},
    "lhf-compose-paper": {"num_hashes": 2, "compose": "residual"},
    "lhf-mlet": {"mlet": True},
    "lhf-headtail-mlet": {"rare_hash": True, "mlet": True},
    "lhf-headtail-counts-mlet": {"rare_hash": True, "mlet": True, "row_allocation": "counts"},
    # the default at half the width and (about) twice the rows, trained as MLET
    "lhf-headtail-half": {"rare_hash": True, "mlet": True, "half_width": True},
    "lhf-headtail-counts-half": {
        "rare_hash": True,
        "mlet": True,
        "half_width": True,
        "row_allocation": "counts",
    },
    # that with no id clustered
    "lhf-headtail-counts-half-noclust": {
        "rare_hash": True,
        "mlet": True,
        "half_width": True,
        "row_allocation": "counts",
        "frequency_only": True,
    },
    # those with the fill's stored ids capped at 5% of the bytes (--fill_share 0.05)
    "lhf-headtail-fill0.05": {"rare_hash": True, "fill_share": 0.05},
    "lhf-headtail-half-fill0.05": {
        "rare_hash": True,
        "mlet": True,
        "half_width": True,
        "fill_share": 0.05,
    },
    "lhf-t16": {"teacher_dim": "model"},
    "lhf-init": {"teacher_dim": "model", "init": True},
}
"""Learned-hash variants: build options that differ from the paper's ``lhf``."""
CCE_VARIANTS: dict[str, dict[str, Any]] = {
    "cce": {},
    "cce-c1": {"cce_columns": 1},
    "cce-c2": {"cce_columns": 2},
}
"""``--compression cce`` runs: the :class:`~apps.dlrm.config.TrainConfig` fields that differ."""
_FOUR = (
    "lhf-headtail",
    "lhf-headtail-noclust",
    "lhf-headtail-counts",
    "lhf-headtail-counts-noclust",
)
_SIX = (*_FOUR, "lhf-headtail-mlet", "lhf-headtail-counts-mlet")
SELECTED: dict[str, tuple[str, ...]] = {
    "lhf-headtail-select": ("lhf-headtail", "lhf-headtail-noclust"),
    "lhf-headtail-select2": ("lhf-headtail", "lhf-headtail-half"),  # the default before
    # apps.pipeline's default under --budget bytes since 2026-12-02 (--half_rows counts)
    "lhf-headtail-select2-counts": ("lhf-headtail", "lhf-headtail-counts-half"),
    "lhf-headtail-select2-fill0.05": ("lhf-headtail-fill0.05", "lhf-headtail-half-fill0.05"),
    # the same choice between the two with no id clustered
    "lhf-headtail-select2-noclust": ("lhf-headtail-noclust", "lhf-headtail-counts-half-noclust"),
    # apps.pipeline --head_select under --budget bytes: the default's two and frequency-only
    "lhf-headtail-select3": (
        "lhf-headtail",
        "lhf-headtail-noclust",
        "lhf-headtail-counts-half",
    ),
    "lhf-headtail-select4": _FOUR,
    "lhf-headtail-select6": _SIX,
    "lhf-headtail-select8": (*_SIX, "lhf-headtail-half", "lhf-headtail-counts-half"),
}
"""Methods that train several variants and keep the one of higher validation AUC (the first
on a tie), as ``apps.pipeline --head_select`` (and ``--rows_select``) does."""
METHODS = (*BASELINES, *CCE_VARIANTS, *LHF_VARIANTS, *SELECTED, "mch")
DEFAULT_METHODS = (*BASELINES, "mch", "cce", "lhf")
DEFAULT_FRACTIONS = (0.5, 0.2, 0.1, 0.05, 0.01)
NOT_BYTE_FITTED: tuple[str, ...] = ()
"""Variants ``--bytes`` does not fit (none: the MLET variants take the sqrt split's width
and fit their rows, :func:`torchrec_lhf.compression.budget.mlet_width`)."""
