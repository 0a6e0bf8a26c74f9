"""The DLRM app's configuration: :class:`TrainConfig` and its torchrec_dlrm-style flags.

The teacher (``apps/teacher.py``) trains the same model through the same flags, less the
compression ones and with ``--embedding_dim`` defaulting to 4.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from torchrec_lhf.compression.budget import BUDGETS

INTERACTION_TYPES = ("original", "dcn")
DENSE_OPTIMIZERS = ("adagrad", "adam")
COMPRESSION_METHODS = ("none", "modulo", "qr", "fbdh", "memrec", "mlet", "mch")
"""Methods of ``--compression``: the plan methods of ``torchrec_lhf.compression.methods`` that
need no teacher, ``mlet`` (narrower tables trained through a wider layer) and ``mch``
(TorchRec's managed collisions, ``torchrec_lhf.modules.mch``: tables of
``round(fraction * N)`` rows, sharded row-wise). Learned plans come through
``--learned_hash``."""
PLAN_METHODS = ("modulo", "qr", "fbdh", "memrec")
"""``--compression`` methods that produce a HashPlan (hash computable from the id)."""
UNSUPPORTED_METHODS: dict[str, str] = {}
"""Methods that ``--compression`` names but rejects, with the reason (none at present)."""
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
    interaction_type: str = "original"
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
    dense_optimizer: str = "adagrad"
    """``adagrad`` or ``adam`` for the MLPs."""
    seed: int = 0
    """Seeds the model's initialization and the data order."""
    limit_train_batches: int | None = None
    """At most this many training steps per epoch."""
    limit_val_batches: int | None = None
    """At most this many validation batches (default: the whole split)."""
    limit_test_batches: int | None = None
    """At most this many test batches (default: the whole split)."""
    learned_hash: str | None = None
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
    min_table_rows: int = 0
    """``--compression`` leaves tables with fewer rows full."""
    budget: str = "table"
    """How ``--compression`` spends ``--fraction``: ``"table"`` (of each table) or
    ``"total"`` (of all rows; :func:`torchrec_lhf.compression.budget.allocate_rows`)."""
    out_of_range: str = "error"
    """Raw ids beyond a plan's table: ``error`` or fold them ``modulo`` the height."""
    sharding_types: list[str] = field(default_factory=lambda: list(DEFAULT_SHARDING_TYPES))
    """Sharding types the planner may choose for the tables."""
    backend: str | None = None
    """Process group backend; default nccl with CUDA, gloo otherwise."""
    metrics_json: str | None = None
    """Write the final metrics here (rank 0, atomically)."""
    checkpoint_dir: str | None = None
    """Save a checkpoint here after every epoch."""
    init_from: str | None = None
    """A teacher artifact at the model's dim: tables start at its cluster centroids
    (``torchrec_lhf/warm_start.py``)."""
    export_model: str | None = None
    """After training, write the serving model here (rank 0): the unsharded DLRM, MLET
    collapsed, as safetensors (``apps/dlrm/export.py``)."""
    resume: bool = False
    """Resume from ``checkpoint_dir`` (fresh start, with a warning, if it holds none)."""
    log_every: int = 100
    """Log the training loss every this many steps (rank 0)."""

    def __post_init__(self) -> None:
        for name in (
            "embedding_dim",
            "batch_size",
            "log_every",
            "dcn_num_layers",
            "dcn_low_rank_dim",
        ):
            _check_int(name, getattr(self, name), low=1)
        _check_int("epochs", self.epochs, low=0)
        _check_int("seed", self.seed, low=0)
        _check_int("min_table_rows", self.min_table_rows, low=0)
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=1)
        _check_choice("interaction_type", self.interaction_type, INTERACTION_TYPES)
        _check_choice("dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS)
        _check_choice("out_of_range", self.out_of_range, OUT_OF_RANGE)
        if self.backend is not None:
            _check_choice("backend", self.backend, BACKENDS)
        if self.compression not in COMPRESSION_METHODS:
            raise ValueError(
                f"--compression {self.compression!r} is not a built-in method; supported: "
                f"{list(COMPRESSION_METHODS)} (learned plans: --learned_hash PLAN)"
            )
        if self.compression in UNSUPPORTED_METHODS:
            raise ValueError(
                f"--compression {self.compression!r} is not supported: "
                f"{UNSUPPORTED_METHODS[self.compression]}"
            )
        if not isinstance(self.compression_options, dict):
            raise ValueError(
                f"compression_options must be a JSON object, got {self.compression_options!r}"
            )
        _check_choice("budget", self.budget, BUDGETS)
        if self.budget != "table" and self.compression not in (*PLAN_METHODS, "mch"):
            raise ValueError(
                f"--budget {self.budget!r} needs a method that drops rows "
                f"{[*PLAN_METHODS, 'mch']}, got --compression {self.compression!r} (a learned "
                "plan brings its own rows; mlet narrows the width)"
            )
        if self.compression_options and self.compression not in PLAN_METHODS:
            raise ValueError(
                f"--compression_options {self.compression_options!r} need a plan method "
                f"{list(PLAN_METHODS)}, got --compression {self.compression!r}"
            )
        if self.compression == "mch":
            if self.mlet_fraction is not None:
                raise ValueError(
                    f"--compression mch does not combine with --mlet_fraction {self.mlet_fraction}"
                )
            if "row_wise" not in self.sharding_types:
                raise ValueError(
                    "--compression mch shards its tables row_wise only (TorchRec's managed "
                    f"collisions); --sharding_types {self.sharding_types} must include row_wise"
                )
        if self.compression == "mlet":
            if self.mlet_fraction is not None and self.mlet_fraction != self.fraction:
                raise ValueError(
                    f"--compression mlet takes its width from --fraction {self.fraction}; "
                    f"--mlet_fraction {self.mlet_fraction} disagrees"
                )
            self.mlet_fraction = self.fraction
        if self.mlet_fraction is not None and (
            isinstance(self.mlet_fraction, bool) or not 0 < self.mlet_fraction <= 1
        ):
            raise ValueError(f"mlet_fraction must be in (0, 1], got {self.mlet_fraction!r}")
        if self.mlet_inner_dim is not None:
            _check_int("mlet_inner_dim", self.mlet_inner_dim, low=1)
        for name in ("learning_rate", "embedding_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.dense_arch_layer_sizes is None:
            self.dense_arch_layer_sizes = [64, self.model_dim]
        _check_sizes("dense_arch_layer_sizes", self.dense_arch_layer_sizes)
        _check_sizes("over_arch_layer_sizes", self.over_arch_layer_sizes)
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
            _check_sizes("num_embeddings_per_feature", self.num_embeddings_per_feature)
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
        for st in self.sharding_types:
            _check_choice("sharding type", st, SHARDING_TYPES)
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
        if not isinstance(self.dataset_options, dict):
            raise ValueError(f"dataset_options must be a JSON object, got {self.dataset_options!r}")

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


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_sizes(name: str, sizes: Any) -> None:
    if (
        not isinstance(sizes, list)
        or not sizes
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
    ):
        raise ValueError(f"{name} must be a non-empty list of ints >= 1, got {sizes!r}")


# ------------------------------------------------------------------------------ flags
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_training_flags(parser: argparse.ArgumentParser, *, embedding_dim: int = 16) -> None:
    """The flags shared by the DLRM app and the teacher (model, data, optimization, runs)."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="movielens-100k",
        help="movielens-100k | criteo-tsv:PATH | csv:PATH | synthetic (default %(default)s)",
    )
    g.add_argument(
        "--dataset_options",
        type=_json_object,
        default={},
        help="JSON object of loader options, e.g. '{\"num_samples\": 100000}'",
    )
    g.add_argument("--label", help="csv: the label column")
    g.add_argument("--categorical", type=_str_list, help="csv: comma list of categorical columns")
    g.add_argument("--dense", type=_str_list, help="csv: comma list of dense columns")
    g = parser.add_argument_group("model")
    g.add_argument("--embedding_dim", type=int, default=embedding_dim, help="default %(default)s")
    g.add_argument(
        "--num_embeddings_per_feature",
        type=_int_list,
        help="comma list of table heights overriding the dataset's",
    )
    g.add_argument(
        "--dense_arch_layer_sizes",
        type=_int_list,
        help="bottom MLP, e.g. 64,16 (last = embedding_dim; default 64,<embedding_dim>)",
    )
    g.add_argument(
        "--over_arch_layer_sizes", type=_int_list, default=[64, 1], help="top MLP (default 64,1)"
    )
    g.add_argument("--interaction_type", choices=INTERACTION_TYPES, default="original")
    g.add_argument("--dcn_num_layers", type=int, default=3)
    g.add_argument("--dcn_low_rank_dim", type=int, default=16)
    g = parser.add_argument_group("optimization")
    g.add_argument("--batch_size", type=int, default=256, help="per rank (default %(default)s)")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=0.02, help="dense optimizer")
    g.add_argument(
        "--embedding_learning_rate",
        type=float,
        help="fused row-wise Adagrad of the tables (default --learning_rate)",
    )
    g.add_argument("--dense_optimizer", choices=DENSE_OPTIMIZERS, default="adagrad")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--limit_train_batches", type=int)
    g.add_argument("--limit_val_batches", type=int)
    g.add_argument("--limit_test_batches", type=int)
    g.add_argument(
        "--sharding_types",
        type=_str_list,
        default=list(DEFAULT_SHARDING_TYPES),
        help=f"comma list of the planner's choices among {list(SHARDING_TYPES)}",
    )
    g.add_argument("--backend", choices=BACKENDS, help="default nccl with CUDA, gloo otherwise")
    g = parser.add_argument_group("outputs")
    g.add_argument("--metrics_json", help="write the final metrics (JSON) here")
    g.add_argument("--checkpoint_dir", help="checkpoint after every epoch into this directory")
    g.add_argument(
        "--export_model", help="write the serving model (unsharded, MLET collapsed) here"
    )
    g.add_argument(
        "--init_from",
        help="teacher artifact at --embedding_dim: start the tables at its cluster centroids",
    )
    g.add_argument("--resume", action="store_true", help="resume from --checkpoint_dir")
    g.add_argument("--log_every", type=int, default=100, help="log the loss every N steps")


def add_compression_flags(parser: argparse.ArgumentParser) -> None:
    """The DLRM app's flags that choose a hash plan."""
    g = parser.add_argument_group("compression")
    g.add_argument(
        "--learned_hash", metavar="PLAN", help="train with this HashPlan (learned hashing)"
    )
    g.add_argument(
        "--compression",
        default="none",
        help=f"built-in method: one of {list(COMPRESSION_METHODS)} (default none)",
    )
    g.add_argument(
        "--fraction", type=float, help="rows (mlet: width) kept by --compression, in (0, 1]"
    )
    g.add_argument(
        "--compression_options",
        type=_json_object,
        default={},
        help='JSON object of the plan method\'s options, e.g. \'{"combine": "concat"}\' (qr)',
    )
    g.add_argument(
        "--mlet_fraction",
        type=float,
        help="MLET: embedding dim = round(F * embedding_dim), trained through a wider layer",
    )
    g.add_argument(
        "--mlet_inner_dim", type=int, help="MLET's inner training width (default embedding_dim)"
    )
    g.add_argument(
        "--min_table_rows", type=int, default=0, help="--compression keeps smaller tables full"
    )
    g.add_argument(
        "--budget",
        choices=BUDGETS,
        default="table",
        help="--fraction of each table, or of the total rows (small tables full while cheap)",
    )
    g.add_argument(
        "--out_of_range",
        choices=OUT_OF_RANGE,
        default="error",
        help="raw ids beyond a plan's table: error, or fold them modulo its height",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build a :class:`TrainConfig` from parsed flags (csv shortcuts folded into the options).

    Raises:
        ValueError: bad values, or ``--label`` / ``--categorical`` / ``--dense`` with a
            dataset other than ``csv:PATH``.
    """
    values = dict(vars(args))
    options = dict(values.pop("dataset_options") or {})
    csv_flags = {k: values.pop(k) for k in ("label", "categorical", "dense")}
    given = {k: v for k, v in csv_flags.items() if v is not None}
    if given:
        if not str(values["dataset"]).startswith("csv:"):
            raise ValueError(
                f"--{', --'.join(given)} only apply to --dataset csv:PATH, got {values['dataset']!r}"
            )
        options.update(given)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(dataset_options=options, **{k: v for k, v in values.items() if k in names})
