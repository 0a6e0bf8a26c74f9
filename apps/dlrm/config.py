"""The DLRM app's configuration: :class:`TrainConfig` and its torchrec_dlrm-style flags.

The flags are derived from the dataclass (:mod:`torchrec_lhf.cli`): each default and help
text is written once, below. The teacher (``apps/teacher.py``) trains the same model
through the same flags, less :data:`COMPRESSION_FIELDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from apps.dlrm.config_checks import (  # the method lists are re-exported (one source)
    COMPRESSION_METHODS,
    PLAN_METHODS,
    UNSUPPORTED_METHODS,
    check_cce,
    check_choice,
    check_compression,
    check_int,
    check_sizes,
    is_positive_number,
)
from torchrec_lhf.cli import (
    FlagError,
    add_config_flags,
    check_unique,
    checked_fields,
    comma_list,
    config_from_args,
)
from torchrec_lhf.compression.budget import BUDGETS, MIN_TABLE_ROWS
from torchrec_lhf.compression.cce import DEFAULT_COLUMNS, CCEConfig
from torchrec_lhf.data import check_dataset_spec
from torchrec_lhf.distributed.sharding_types import FUSED_DIM_MULTIPLE

__all__ = [
    "COMPRESSION_FIELDS",
    "COMPRESSION_METHODS",
    "MODEL_FIELDS",
    "PLAN_METHODS",
    "UNSUPPORTED_METHODS",
    "TrainConfig",
    "add_train_flags",
    "train_config_from_args",
]

INTERACTION_TYPES = ("original", "dcn")
DENSE_OPTIMIZERS = ("adagrad", "adam")
OUT_OF_RANGE = ("error", "modulo")
SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel")
DEFAULT_SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "table_row_wise")
"""NOTE: data_parallel is left out by default: its tables would train with the dense
optimizer instead of the fused row-wise Adagrad at ``--embedding_learning_rate``."""
BACKENDS = ("gloo", "nccl")

# Fields that fix the model's parameters: a checkpoint only resumes if they agree.
MODEL_FIELDS = (
    "dataset",
    "dataset_options",
    "num_embeddings_per_feature",
    "embedding_dim",
    "dense_arch_layer_sizes",
    "over_arch_layer_sizes",
    "interaction_type",
    "dcn_num_layers",
    "dcn_low_rank_dim",
    "dense_optimizer",
    "mlet_fraction",
    "mlet_inner_dim",
)


@dataclass(kw_only=True)
class TrainConfig:
    """Everything one DLRM training run needs (see ``--help`` of ``apps.dlrm.train``)."""

    dataset: str = "movielens-100k"
    """A ``torchrec_lhf.data.load_dataset`` spec: ``movielens-100k``, ``criteo-tsv:PATH``,
    ``csv:PATH`` or ``synthetic``."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the loader (e.g. ``{"num_samples": 2000}`` for synthetic)."""
    num_embeddings_per_feature: list[int] | None = None
    """Table heights overriding the dataset's; ids beyond a height fold modulo it."""
    embedding_dim: int = 16
    """Logical embedding dim ``D`` of every table."""
    dense_arch_layer_sizes: list[int] | None = None
    """Bottom MLP; the last size must equal ``embedding_dim``. Default ``[64, D]``."""
    over_arch_layer_sizes: list[int] = field(default_factory=lambda: [64, 1])
    """Top MLP; the last size must be 1 (the click logit)."""
    interaction_type: str = field(default="original", metadata={"choices": INTERACTION_TYPES})
    """``original`` (DLRM dot products) or ``dcn`` (low-rank DCN cross net)."""
    dcn_num_layers: int = 3
    """Cross layers of ``dcn``."""
    dcn_low_rank_dim: int = 16
    """Low-rank dim of ``dcn``'s cross layers."""
    batch_size: int = 256
    """Samples per rank per step."""
    epochs: int = 1
    """Passes over the training split."""
    learning_rate: float = 0.02
    """Learning rate of the dense optimizer."""
    embedding_learning_rate: float | None = None
    """Learning rate of the fused row-wise Adagrad of the tables (default ``learning_rate``)."""
    dense_optimizer: str = field(default="adagrad", metadata={"choices": DENSE_OPTIMIZERS})
    """``adagrad`` or ``adam`` for the MLPs."""
    seed: int = 0
    """Seeds the model's initialization and the data order."""
    limit_train_batches: int | None = None
    """At most this many training steps per epoch."""
    limit_val_batches: int | None = None
    """At most this many validation batches (default: the whole split)."""
    limit_test_batches: int | None = None
    """At most this many test batches (default: the whole split)."""
    learned_hash: str | None = field(default=None, metadata={"metavar": "PLAN"})
    """Path of a HashPlan: train its tables compressed by learned hashing."""
    compression: str = "none"
    """A built-in method instead: one of :data:`COMPRESSION_METHODS`."""
    fraction: float | None = None
    """Rows kept by ``--compression`` (for ``mlet``: the width kept), in ``(0, 1]``."""
    compression_options: dict[str, Any] = field(default_factory=dict)
    """Options of the ``--compression`` plan method (e.g. ``{"combine": "concat"}`` for qr,
    ``{"retain": 0.3}`` for fbdh)."""
    mlet_fraction: float | None = None
    """MLET: the model's embedding dim becomes ``max(1, round(mlet_fraction * D))``, its
    tables trained through a wider inner layer and collapsible to that dim. Combines with
    a plan (``--compression``/``--learned_hash``); ``--compression mlet`` sets it from
    ``--fraction``."""
    mlet_inner_dim: int | None = None
    """MLET's inner (training) width ``k`` (default ``embedding_dim``, the uncompressed dim)."""
    cce_columns: int = DEFAULT_COLUMNS
    """``--compression cce``: columns per table, each a clustered and a hashed internal table
    of ``embedding_dim / cce_columns`` (fewer when the dim does not split into widths of 4:
    ``torchrec_lhf.compression.cce.fit_columns``)."""
    cce_phases: int = CCEConfig.phases
    """``--compression cce``: re-clusterings, at the end of each of the first ``cce_phases`` of
    ``cce_phases + 1`` equal slices of the training steps (``torchrec_lhf.compression.cce``)."""
    cce_kmeans_iters: int = CCEConfig.kmeans_iters
    """``--compression cce``: Lloyd iterations of each re-clustering's k-means."""
    cce_sample_factor: int = CCEConfig.sample_factor
    """``--compression cce``: k-means on ``cce_sample_factor`` sampled ids per centroid."""
    cce_reset_optimizer: bool = CCEConfig.reset_optimizer
    """``--compression cce``: zero the re-initialised tables' optimizer state at each phase."""
    min_table_rows: int = MIN_TABLE_ROWS
    """``--compression`` leaves tables with fewer ids full (0: none; ``budget="total"``: while
    they are cheap)."""
    budget: str = field(default="table", metadata={"choices": BUDGETS})
    """How ``--compression`` spends ``--fraction``: ``"table"`` (of each table), ``"total"``
    (of all rows; :func:`torchrec_lhf.compression.budget.allocate_rows`) or ``"bytes"`` (of
    the full fp32 table bytes, what the model stores counted: its stored index, ``mch``'s
    ids, ``mlet``'s narrower width; :mod:`torchrec_lhf.compression.budget`)."""
    out_of_range: str = field(default="error", metadata={"choices": OUT_OF_RANGE})
    """Raw ids beyond a plan's table: ``error`` or fold them ``modulo`` the logical height ``N``."""
    sharding_types: list[str] = field(default_factory=lambda: list(DEFAULT_SHARDING_TYPES))
    """Sharding types the planner may choose for the tables."""
    backend: str | None = field(default=None, metadata={"choices": BACKENDS})
    """Process group backend; default nccl with CUDA, gloo otherwise."""
    metrics_json: str | None = None
    """Write the final metrics here (rank 0, atomically)."""
    checkpoint_dir: str | None = None
    """Save sharded checkpoints here (``torch.distributed.checkpoint``, one ``step_N``
    directory each, the last 2 kept) after every epoch and every ``checkpoint_every`` steps."""
    checkpoint_every: int | None = None
    """Also checkpoint every this many training steps, within an epoch (``--resume``
    continues at the next batch)."""
    init_from: str | None = None
    """A teacher artifact at the model's dim: tables start at its cluster centroids
    (``torchrec_lhf/warm_start.py``)."""
    export_model: str | None = None
    """After training, write the serving model into this directory (replaced whole): the
    trained weights, each rank its own shards (``weights/``, DCP, with ``manifest.json``),
    and, from rank 0, the DLRM, MLET collapsed, quantized, sharded and TorchScripted through
    TorchRec's inference path (``model_int8.pt``, ``model_fp32.pt``); see
    ``apps/dlrm/export.py`` and ``apps/serve.py``."""
    resume: bool = False
    """Resume from ``checkpoint_dir`` (fresh start, with a warning, if it holds none)."""
    log_every: int = 100
    """Log the training loss every this many steps (rank 0)."""

    @checked_fields
    def __post_init__(self) -> None:
        self._check_values()
        check_compression(self)
        check_cce(self)
        self._check_model()
        self._check_run()

    def _check_values(self) -> None:
        """Numbers and choices, one field at a time."""
        for name in (
            "embedding_dim",
            "batch_size",
            "log_every",
            "dcn_num_layers",
            "dcn_low_rank_dim",
        ):
            check_int(name, getattr(self, name), low=1)
        check_int("epochs", self.epochs, low=0)
        check_int("seed", self.seed, low=0)
        check_int("min_table_rows", self.min_table_rows, low=0)
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        check_choice("interaction_type", self.interaction_type, INTERACTION_TYPES)
        check_choice("dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS)
        check_choice("out_of_range", self.out_of_range, OUT_OF_RANGE)
        if self.backend is not None:
            check_choice("backend", self.backend, BACKENDS)

    def cce_config(self) -> CCEConfig:
        """The ``--cce_*`` flags as :class:`~torchrec_lhf.compression.cce.CCEConfig`."""
        return CCEConfig(
            phases=self.cce_phases,
            kmeans_iters=self.cce_kmeans_iters,
            sample_factor=self.cce_sample_factor,
            reset_optimizer=self.cce_reset_optimizer,
        )

    def _check_model(self) -> None:
        """Optimizer rates and layer sizes (derives ``dense_arch_layer_sizes``)."""
        if self.mlet_inner_dim is not None:
            check_int("mlet_inner_dim", self.mlet_inner_dim, low=1)
        for name in ("learning_rate", "embedding_learning_rate"):
            value = getattr(self, name)
            if value is not None and not is_positive_number(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.dense_arch_layer_sizes is None:
            self.dense_arch_layer_sizes = [64, self.model_dim]
        check_sizes("dense_arch_layer_sizes", self.dense_arch_layer_sizes)
        check_sizes("over_arch_layer_sizes", self.over_arch_layer_sizes)
        if self.dense_arch_layer_sizes[-1] != self.model_dim:
            raise ValueError(
                f"the last dense_arch_layer_sizes value must equal the model's embedding dim "
                f"{self.model_dim} (embedding_dim={self.embedding_dim}, "
                f"mlet_fraction={self.mlet_fraction}), got {self.dense_arch_layer_sizes}"
            )
        if self.over_arch_layer_sizes[-1] != 1:
            raise ValueError(
                f"the last over_arch_layer_sizes value must be 1, got {self.over_arch_layer_sizes}"
            )
        if self.num_embeddings_per_feature is not None:
            check_sizes("num_embeddings_per_feature", self.num_embeddings_per_feature)

    def _check_run(self) -> None:
        """Flags that must agree with each other: dataset, plan, fraction, sharding, outputs."""
        check_dataset_spec(self.dataset, self.dataset_options)
        if self.learned_hash is not None and self.compression != "none":
            raise ValueError(
                f"--learned_hash {self.learned_hash!r} and --compression {self.compression!r} "
                "both choose a plan; give one"
            )
        if self.compression != "none":
            if self.fraction is None:
                raise ValueError(f"--compression {self.compression!r} needs --fraction")
            if not 0 < self.fraction <= 1:
                raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        elif self.fraction is not None:
            raise ValueError(f"--fraction {self.fraction} needs --compression (got 'none')")
        if not self.sharding_types:
            raise ValueError("sharding_types must name at least one type")
        if isinstance(self.sharding_types, str):  # (not its letters, one by one)
            raise ValueError(
                f"sharding_types must be a list of strings, got {self.sharding_types!r}"
            )
        for st in self.sharding_types:
            check_choice("sharding type", st, SHARDING_TYPES)
        check_unique("sharding_types", self.sharding_types)
        if self.init_from is not None and (self.compression == "mch" or self.mlet_fraction):
            raise ValueError(
                f"--init_from {self.init_from!r} sets plain or learned-hash tables; it does not "
                f"combine with --compression {self.compression!r} / --mlet_fraction"
            )
        if self.export_model is not None and self.compression == "mch":
            raise ValueError(
                f"--export_model {self.export_model!r}: a --compression mch model is not "
                "exportable (TorchRec's managed-collision state is per rank)"
            )
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("--resume needs --checkpoint_dir")
        if self.checkpoint_every is not None:
            check_int("checkpoint_every", self.checkpoint_every, low=1)
            if self.checkpoint_dir is None:
                raise ValueError(
                    f"--checkpoint_every {self.checkpoint_every} needs --checkpoint_dir"
                )
        if not isinstance(self.dataset_options, dict):
            raise ValueError(f"dataset_options must be a JSON object, got {self.dataset_options!r}")
        types = list(self.sharding_types)
        if self.sharded_dim % FUSED_DIM_MULTIPLE and set(types) != {"data_parallel"}:
            # (before, TorchRec asserted where it built the kernel, after the data was read)
            flag = "mlet_inner_dim" if self.sharded_dim != self.embedding_dim else "embedding_dim"
            raise ValueError(
                f"{flag}={self.sharded_dim} is not a multiple of {FUSED_DIM_MULTIPLE}: TorchRec "
                f"shards FBGEMM's fused embedding-bag tables only at such dims, so give one, or "
                f"sharding_types ['data_parallel'] (the dense kernel), got {types}"
            )

    @property
    def sharded_dim(self) -> int:
        """The dim of the tables the model shards: MLET's inner width, else ``embedding_dim``
        (a ``concat`` plan splits it over its hash functions)."""
        if self.mlet_fraction is None:
            return self.embedding_dim
        return self.mlet_inner_dim or self.embedding_dim

    @property
    def model_dim(self) -> int:
        """The tables' dim in the model: ``embedding_dim``, shrunk by ``mlet_fraction``."""
        if self.mlet_fraction is None:
            return self.embedding_dim
        return max(1, round(self.mlet_fraction * self.embedding_dim))

    @property
    def table_learning_rate(self) -> float:
        """The fused table optimizer's learning rate."""
        return (
            self.embedding_learning_rate
            if self.embedding_learning_rate is not None
            else self.learning_rate
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable copy (for metrics, manifests and checkpoints)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------ flags
COMPRESSION_FIELDS = (
    "learned_hash",
    "compression",
    "fraction",
    "compression_options",
    "mlet_fraction",
    "mlet_inner_dim",
    "cce_columns",
    "cce_phases",
    "cce_kmeans_iters",
    "cce_sample_factor",
    "cce_reset_optimizer",
    "min_table_rows",
    "budget",
    "out_of_range",
)
"""The fields that choose a compression (the teacher has no flags for them)."""
CSV_SHORTCUTS = ("label", "categorical", "dense")
"""``--label``/``--categorical``/``--dense``: ``csv:PATH`` options with flags of their own."""


def add_train_flags(
    parser: argparse.ArgumentParser,
    *,
    exclude: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add a flag per :class:`TrainConfig` field (less ``exclude``), and the csv shortcuts."""
    add_config_flags(parser, TrainConfig, exclude=exclude, defaults=defaults)
    g = parser.add_argument_group("csv:PATH shortcuts (folded into --dataset_options)")
    g.add_argument("--label", default=argparse.SUPPRESS, help="the label column")
    g.add_argument(
        "--categorical",
        type=comma_list(str, "column names"),
        default=argparse.SUPPRESS,
        help="comma list of categorical columns",
    )
    g.add_argument(
        "--dense",
        type=comma_list(str, "column names"),
        default=argparse.SUPPRESS,
        help="comma list of dense columns",
    )


def train_config_from_args(
    args: argparse.Namespace, *, defaults: dict[str, Any] | None = None, **fixed: Any
) -> TrainConfig:
    """Build a :class:`TrainConfig` from :func:`add_train_flags`' flags.

    Raises:
        ValueError: bad values, or ``--label`` / ``--categorical`` / ``--dense`` with a
            dataset other than ``csv:PATH``.
    """
    values = dict(vars(args))
    given = {k: values.pop(k) for k in CSV_SHORTCUTS if k in values}
    if given:
        dataset = values.get("dataset", (defaults or {}).get("dataset", TrainConfig.dataset))
        if not str(dataset).startswith("csv:"):
            raise FlagError(
                f"--{', --'.join(given)} only apply to --dataset csv:PATH, got {dataset!r}"
            )
        values["dataset_options"] = {**values.get("dataset_options", {}), **given}
    return config_from_args(TrainConfig, values, defaults=defaults, **fixed)
