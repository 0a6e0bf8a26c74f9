"""The cross-field checks of :class:`~apps.dlrm.config.TrainConfig` that choose a compression.

Kept apart from the dataclass (which calls them from ``__post_init__``) so that the config
file stays a readable list of fields. Each check raises ``ValueError`` naming the flag and
the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchrec_lhf.cli import (
    check_int,  # noqa: F401 (the configs' int check, re-exported)
    is_finite_number,
)
from torchrec_lhf.compression.budget import BUDGETS, width_for_bytes

if TYPE_CHECKING:
    from apps.dlrm.config import TrainConfig

COMPRESSION_METHODS = ("none", "modulo", "qr", "fbdh", "memrec", "cce", "mlet", "mch")
"""Methods of ``--compression``: the plan methods of ``torchrec_lhf.compression.methods`` that
need no teacher, ``mlet`` (narrower tables trained through a wider layer) and ``mch``
(TorchRec's managed collisions, ``torchrec_lhf.modules.mch``: tables of
``round(fraction * N)`` rows, sharded row-wise). Learned plans come through
``--learned_hash``."""
PLAN_METHODS = ("modulo", "qr", "fbdh", "memrec", "cce")
"""``--compression`` methods that produce a HashPlan (hash computable from the id, but for
``cce``'s clustered index, re-clustered during training: ``--cce_phases``)."""
UNSUPPORTED_METHODS: dict[str, str] = {}
"""Methods that ``--compression`` names but rejects, with the reason (none at present)."""


def check_compression(config: TrainConfig) -> None:
    """The compression method and its options (``mlet`` sets ``mlet_fraction``)."""
    if config.compression not in COMPRESSION_METHODS:
        raise ValueError(
            f"--compression {config.compression!r} is not a built-in method; supported: "
            f"{list(COMPRESSION_METHODS)} (learned plans: --learned_hash PLAN)"
        )
    if config.compression in UNSUPPORTED_METHODS:
        raise ValueError(
            f"--compression {config.compression!r} is not supported: "
            f"{UNSUPPORTED_METHODS[config.compression]}"
        )
    if not isinstance(config.compression_options, dict):
        raise ValueError(
            f"compression_options must be a JSON object, got {config.compression_options!r}"
        )
    check_choice("budget", config.budget, BUDGETS)
    fits = (*PLAN_METHODS, "mch", *(("mlet",) if config.budget == "bytes" else ()))
    if config.budget != "table" and config.compression not in fits:
        raise ValueError(
            f"--budget {config.budget!r} needs a method that drops rows {list(fits)}, got "
            f"--compression {config.compression!r} (a learned plan brings its own rows; "
            "mlet narrows the width: only --budget bytes fits it)"
        )
    if config.budget == "bytes" and config.compression != "mlet" and config.mlet_fraction:
        raise ValueError(
            f"--budget bytes fits one method; --mlet_fraction {config.mlet_fraction} with "
            f"--compression {config.compression!r} is not fitted"
        )
    if config.compression_options and config.compression not in PLAN_METHODS:
        raise ValueError(
            f"--compression_options {config.compression_options!r} need a plan method "
            f"{list(PLAN_METHODS)}, got --compression {config.compression!r}"
        )
    if config.compression == "mch":
        if config.mlet_fraction is not None:
            raise ValueError(
                f"--compression mch does not combine with --mlet_fraction {config.mlet_fraction}"
            )
        if "row_wise" not in config.sharding_types:
            raise ValueError(
                "--compression mch shards its tables row_wise only (TorchRec's managed "
                f"collisions); --sharding_types {config.sharding_types} must include row_wise"
            )
    if config.compression == "mlet":
        width = config.fraction
        if config.budget == "bytes" and config.fraction is not None:
            width = width_for_bytes(config.fraction, config.embedding_dim) / config.embedding_dim
        if config.mlet_fraction is not None and config.mlet_fraction != width:
            raise ValueError(
                f"--compression mlet takes its width from --fraction {config.fraction} "
                f"(--budget {config.budget}: {width}); --mlet_fraction {config.mlet_fraction} "
                "disagrees"
            )
        config.mlet_fraction = width
    if config.mlet_fraction is not None and (
        isinstance(config.mlet_fraction, bool) or not 0 < config.mlet_fraction <= 1
    ):
        raise ValueError(f"mlet_fraction must be in (0, 1], got {config.mlet_fraction!r}")


def check_cce(config: TrainConfig) -> None:
    """``--cce_*`` values (checked by :class:`CCEConfig`) and what cce does not combine with."""
    config.cce_config()
    check_int("cce_columns", config.cce_columns, low=1)
    if config.compression != "cce":
        return
    if "columns" in config.compression_options:
        raise ValueError(
            f"--compression_options {config.compression_options!r}: give cce's columns "
            "with --cce_columns"
        )
    if config.mlet_fraction is not None:
        raise ValueError(
            f"--compression cce does not combine with --mlet_fraction {config.mlet_fraction!r} "
            "(its columns split the model's dim, which MLET narrows: not built)"
        )
    types = config.sharding_types
    if config.cce_phases and isinstance(types, list | tuple) and set(types) == {"data_parallel"}:
        # (before: refused at its first phase, after part of the training; with other
        # types given, shard_model keeps the cce tables off data_parallel)
        raise ValueError(
            f"--compression cce re-clusters its tables during training (--cce_phases "
            f"{config.cce_phases}), which needs them sharded: --sharding_types {types} leaves "
            "them whole on every rank; add table_wise, row_wise, column_wise or "
            "table_row_wise, or pass --cce_phases 0"
        )


def is_positive_number(value: Any) -> bool:
    """A finite real number > 0 (not a bool)."""
    return is_finite_number(value) and value > 0


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_sizes(name: str, sizes: Any) -> None:
    if (
        not isinstance(sizes, list)
        or not sizes
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
    ):
        raise ValueError(f"{name} must be a non-empty list of ints >= 1, got {sizes!r}")
