"""Quality sweep: every compression method at every size, AUC / logloss / NE against bytes.

Two views of size. ``--bytes 0.1,0.01`` (the headline): each size is a fraction of the full
model's fp32 table bytes and every method is fitted to it (``budget="bytes"``,
:mod:`torchrec_lhf.compression.budget`: tables, stored index and extra parameters counted).
``--fractions`` (the secondary view): a fraction of the rows (``mlet``: of the width).
Each run records what its model stores: ``table_bytes``, ``index_bytes`` (a learned remap,
mch's ids; nothing for a hash computed from the id), ``extra_bytes``, ``total_bytes``
(= ``bytes``), and ``remap_bytes`` (the materialized remap buffers).

Each run is the DLRM app (``apps.dlrm.train.run``, given a typed config) in this process with the
same model, optimizer, epochs and seed; only the embedding tables differ. The methods and the
learned hash's variants: :mod:`benchmarks.quality_methods`.

Resumable: a run writes ``runs/<method>_f<fraction>_s<seed>.json`` (``_b<bytes>_``
under ``--bytes``) under ``--out`` and is skipped when it exists (teachers and plans
likewise); a method that cannot fit a byte budget is recorded as ``infeasible``; a learned
hash whose plan and settings equal a run already saved (its ``fingerprint``) is not trained
again, its row the earlier one's with ``same_plan`` naming it. Outputs
under ``--out`` (:mod:`benchmarks.quality_report`): ``results.json`` (a list of
``{"method", "fraction", "budget", "seed", "auc", "logloss", "ne", "bytes", ...}``),
``results.md`` (paired statistics, collapsed runs apart) and ``results.png`` (AUC against
stored bytes, a line per method, like Figure 3 of Ghaemmaghami et al. 2022).

Run: ``python -m benchmarks.quality --dataset movielens-100k --bytes 0.1,0.01 --out DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps import build_hash, teacher
from apps.dlrm import train
from apps.dlrm.config import TrainConfig
from apps.plan_candidates import training_fingerprint
from benchmarks.quality_methods import (
    CCE_VARIANTS,
    DEFAULT_FRACTIONS,
    DEFAULT_METHODS,
    LHF_VARIANTS,
    METHODS,
    NOT_BYTE_FITTED,
    SELECTED,
)
from benchmarks.quality_report import check_rows, write_reports
from torchrec_lhf._io import atomic_write_json
from torchrec_lhf.cli import (
    FlagError,
    add_config_flags,
    check_int,
    check_unique,
    config_from_args,
    run_command,
)
from torchrec_lhf.compression.budget import (
    BUDGETS,
    MIN_TABLE_ROWS,
    BudgetTooSmall,
    fraction_at_width,
    half_width,
    mlet_width,
)
from torchrec_lhf.data import check_dataset_files, check_dataset_spec
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.report import select_on_validation

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SweepConfig:
    """The quality sweep: which compression methods, sizes and seeds, on what data."""

    out: Path
    """Output directory (runs, teachers, plans and the three reports)."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Compression methods to run (comma list); see the module docstring."""
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    """Fractions of the rows kept (``mlet``: of the width), each in (0, 1]: the equal-rows
    view, used when ``bytes`` is not given."""
    bytes: list[float] | None = None
    """Fractions of the full model's fp32 table bytes, each in (0, 1]: every method fitted
    to each (``budget="bytes"``: tables, stored index and extras counted), instead of
    ``fractions``."""
    seeds: int = 5
    """Seeds ``0..seeds-1`` of every run (5 for a headline: paired standard errors)."""
    report: bool = False
    """Only rewrite the reports from ``out/results.json``."""
    dataset: str = TrainConfig.dataset
    """A ``torchrec_lhf.data`` spec, as in ``apps.dlrm.train``."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Loader options (JSON object)."""
    embedding_dim: int = TrainConfig.embedding_dim
    """Embedding dim of the trained models."""
    epochs: int = TrainConfig.epochs
    """Epochs of each trained model."""
    batch_size: int = 1024
    """Per-rank batch size (larger than the app's: the sweep runs many models)."""
    learning_rate: float = 0.05
    """Learning rate of the dense and table optimizers."""
    min_table_rows: int = MIN_TABLE_ROWS
    """Smaller tables stay full (every row-dropping method and the learned plans)."""
    budget: str = field(default="table", metadata={"choices": BUDGETS})
    """``fractions`` of each table (the paper) or of all rows, small tables full while cheap
    (every row-compressing method; mlet shrinks width and ignores it); ``"bytes"`` comes
    with ``bytes`` (and is set by it)."""
    skip_rows: int = 1000
    """``lhf-skip``: tables under this many ids stay full."""
    head_min_count: int = BuildConfig.head_min_count
    """``lhf-rarehash``, ``lhf-headtail``: ids seen fewer times (one pass over the training
    split) are hashed."""
    teacher_dim: int = teacher.TEACHER_DEFAULTS["embedding_dim"]
    """Teacher dim of ``lhf`` (``lhf-t2``: 2; dims not divisible by 4 train data_parallel)."""
    teacher_epochs: int = 1
    """Epochs of each teacher."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """More :class:`~apps.dlrm.config.TrainConfig` fields for every run (JSON object),
    e.g. ``{"interaction_type": "dcn"}``."""

    def __post_init__(self) -> None:
        check_dataset_spec(self.dataset, self.dataset_options)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must name some of {list(METHODS)}, got {self.methods}")
        for name in ("methods", "fractions", "bytes"):  # a repeat: its runs reported twice
            check_unique(name, getattr(self, name))
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if self.bytes is not None:
            if not self.bytes or any(not 0 < b <= 1 for b in self.bytes):
                raise ValueError(f"bytes must be fractions in (0, 1], got {self.bytes}")
            if self.budget not in ("table", "bytes"):
                raise ValueError(f"--bytes fits every method to bytes; --budget {self.budget!r}")
            self.budget = "bytes"
            unfit = [m for m in self.methods if m in NOT_BYTE_FITTED]
            if unfit:
                raise ValueError(f"--bytes cannot fit {unfit}: give them --fractions")
        elif self.budget == "bytes":
            raise ValueError("--budget bytes: give the sizes with --bytes, not --fractions")
        for name, low in (
            ("seeds", 1),
            ("teacher_dim", 1),
            ("teacher_epochs", 1),
            ("min_table_rows", 0),
            ("skip_rows", 0),
            ("head_min_count", 0),
        ):
            check_int(name, getattr(self, name), low=low)
        unknown = set(self.train_options) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"train_options names no TrainConfig field: {sorted(unknown)}")
        self.out = Path(self.out)
        _base(self, 0)  # the trainings' own checks (learning_rate, train_options' values)


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    """The sweep's flags (derived from :class:`SweepConfig`); raises ValueError naming a
    bad method or fraction."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    add_config_flags(p, SweepConfig)
    return config_from_args(SweepConfig, p.parse_args(argv))


def _base(sweep: SweepConfig, seed: int) -> TrainConfig:
    """The training settings every run of ``seed`` shares (teachers included)."""
    return TrainConfig(
        dataset=sweep.dataset,
        dataset_options=sweep.dataset_options,
        batch_size=sweep.batch_size,
        learning_rate=sweep.learning_rate,
        seed=seed,
        log_every=100_000,
        embedding_dim=sweep.embedding_dim,
        epochs=sweep.epochs,
        **sweep.train_options,
    )


def _teacher(sweep: SweepConfig, seed: int, dim: int, window: float = 1.0) -> Path:
    """Train (once) the teacher of ``seed`` at ``dim`` on the first ``window`` of the
    training rows (``apps.teacher --train_window``); returns its artifact directory."""
    out = sweep.out / "teachers" / (f"d{dim}_s{seed}" + (f"_w{window:g}" if window < 1 else ""))
    done = out.with_suffix(".metrics.json")
    if not done.is_file():
        base = _base(sweep, seed)
        train_config = dataclasses.replace(
            base,
            embedding_dim=dim,
            epochs=sweep.teacher_epochs,
            dense_arch_layer_sizes=None,  # re-derived for the teacher's dim
            sharding_types=teacher.teacher_sharding_types(dim) or base.sharding_types,
            metrics_json=str(done),
        )
        teacher.run(teacher.TeacherConfig(train=train_config, out=str(out), train_window=window))
    return out


def _teacher_dim(sweep: SweepConfig, opts: dict[str, Any]) -> int:
    dim = opts.get("teacher_dim", sweep.teacher_dim)
    return sweep.embedding_dim if dim == "model" else dim


def _plan(
    sweep: SweepConfig, variant: str, fraction: float, seed: int, dim: int | None = None
) -> Path:
    """Build (once) the learned plan of ``variant`` at ``fraction``, its tables of ``dim``
    (default the sweep's ``embedding_dim``; under ``--bytes`` the fraction is then of the
    bytes at that dim); returns its path."""
    opts = LHF_VARIANTS[variant]
    dim = sweep.embedding_dim if dim is None else dim
    path = sweep.out / "plans" / f"{variant}_{_size_key(sweep)}{fraction:g}_s{seed}.safetensors"
    if not path.is_file():
        src = _teacher(sweep, seed, _teacher_dim(sweep, opts), opts.get("train_window", 1.0))
        config = BuildConfig(
            teacher=str(src),
            fraction=fraction,
            min_table_rows=max(sweep.min_table_rows, sweep.skip_rows if opts.get("skip") else 0),
            num_hashes=opts.get("num_hashes", BuildConfig.num_hashes),
            projection=opts.get("projection", BuildConfig.projection),
            clustering_options=opts.get("clustering_options", {}),
            budget=sweep.budget,
            embedding_dim=dim,
            head_min_count=max(
                1, round(sweep.head_min_count * opts.get("head_min_count_scale", 1.0))
            )
            if opts.get("rare_hash")
            else 0,
            tail_fraction=opts.get("tail_fraction", BuildConfig.tail_fraction),
            tail_region=opts.get("tail_region", BuildConfig.tail_region),
            row_allocation=opts.get("row_allocation", BuildConfig.row_allocation),
            index_share=opts.get("index_share", BuildConfig.index_share),
            fill_share=opts.get("fill_share", BuildConfig.fill_share),
            value_shrinkage=opts.get("value_shrinkage", BuildConfig.value_shrinkage),
            compose=opts.get("compose", BuildConfig.compose),
            out=path,
            restart=True,
        )
        build_hash.run(config.frequency_only(path) if opts.get("frequency_only") else config)
    return path


def run_config(sweep: SweepConfig, method: str, fraction: float, seed: int) -> TrainConfig:
    """The typed config of one training run."""
    base = _base(sweep, seed)
    if method in LHF_VARIANTS and LHF_VARIANTS[method].get("mlet"):
        # both ways at once: sqrt(fraction) of the rows and of the width (or half the
        # width, the rows the rest)
        full, half = sweep.embedding_dim, LHF_VARIANTS[method].get("half_width", False)
        side = half_width(full) / full if half else fraction**0.5
        if sweep.bytes:  # that width, the rows fitted to the bytes left
            width = half_width(full) if half else mlet_width(fraction, full)
            plan = _plan(sweep, method, fraction_at_width(fraction, full, width), seed, dim=width)
            side = width / full
        else:  # the rows' share times the width's is the fraction
            plan = _plan(sweep, method, round(fraction / side, 6), seed)
        return dataclasses.replace(
            base, learned_hash=str(plan), mlet_fraction=side, dense_arch_layer_sizes=None
        )
    if method in LHF_VARIANTS:  # the plan skips small tables itself
        extra: dict[str, Any] = {"learned_hash": str(_plan(sweep, method, fraction, seed))}
        if LHF_VARIANTS[method].get("init"):
            dim = _teacher_dim(sweep, LHF_VARIANTS[method])
            extra["init_from"] = str(_teacher(sweep, seed, dim))
        return dataclasses.replace(base, **extra)
    if method == "none":
        return base
    # mlet: the dense arch is re-derived for the narrower dim; it shrinks width, not rows
    # (a byte budget fits its width)
    extra: dict[str, Any] = {"budget": sweep.budget}
    if method == "mlet":
        extra = {"dense_arch_layer_sizes": None, "budget": "bytes" if sweep.bytes else "table"}
    if method in CCE_VARIANTS:
        extra.update(CCE_VARIANTS[method])
    return dataclasses.replace(
        base,
        compression="cce" if method in CCE_VARIANTS else method,
        fraction=fraction,
        min_table_rows=sweep.min_table_rows,
        **extra,
    )


def _size_key(sweep: SweepConfig) -> str:
    """``b`` (of the bytes) or ``f`` (of the rows): the size's letter in file names."""
    return "b" if sweep.bytes else "f"


def run_one(sweep: SweepConfig, method: str, fraction: float, seed: int) -> dict[str, Any]:
    """One training run (or its saved result); returns its results row.

    Under ``--bytes`` a method that cannot fit the budget (:class:`BudgetTooSmall`, the
    same for every seed) gets a row with ``infeasible`` (the reason) and no metrics.
    """
    if method in SELECTED:  # two runs (each its own), the one of higher validation AUC
        runs = {m: run_one(sweep, m, fraction, seed) for m in SELECTED[method]}
        return dict(select_on_validation(runs), method=method)
    key = "f" if method == "none" else _size_key(sweep)
    path = sweep.out / "runs" / f"{method}_{key}{fraction:g}_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    row: dict[str, Any] = {
        "method": method,
        "fraction": fraction,
        "budget": "full" if method == "none" else sweep.budget,
        "seed": seed,
    }
    try:
        config = run_config(sweep, method, fraction, seed)
        fingerprint = _fingerprint(config)
        same = _same_training(path.parent, f"*_{key}{fraction:g}_s{seed}.json", fingerprint)
        if same is not None:  # an earlier method's plan and settings: the same training
            logger.info("%s: the same training as %s, not run again", path.name, same["method"])
            row = {**same, **row, "same_plan": same["method"], "seconds": 0.0}
            atomic_write_json(path, row)
            return row
        m = train.run(config)
    except BudgetTooSmall as e:
        if not sweep.bytes:
            raise
        logger.warning("%s does not fit %g of the bytes: %s", method, fraction, e)
        row.update(infeasible=str(e), dataset=sweep.dataset)
        atomic_write_json(path, row)
        return row
    row.update(
        {k: m[k] for k in ("auc", "logloss", "ne", "val_auc", "val_logloss", "val_ne")},
        bytes=m["total_bytes"],
        **{k: m[k] for k in ("table_bytes", "index_bytes", "extra_bytes", "total_bytes")},
        embedding_bytes=m["embedding_bytes"],
        remap_bytes=m["remap_bytes"],
        remap_computable=m["remap_computable"],
        full_embedding_bytes=m["full_embedding_bytes"],
        bytes_fraction=m["total_bytes"] / m["full_embedding_bytes"],
        rows=m["rows"],
        full_rows=m["full_rows"],
        row_fraction=m["rows"] / m["full_rows"],
        dataset=m["dataset"],
        seconds=round(time.perf_counter() - start, 1),
        **({"fingerprint": fingerprint} if fingerprint else {}),
    )
    atomic_write_json(path, row)
    return row


def _fingerprint(config: TrainConfig) -> str | None:
    """A learned-hash training's key (sha256 of
    :func:`apps.plan_candidates.training_fingerprint`: the plan's mappings and every other
    setting), None for the other methods."""
    if config.learned_hash is None:
        return None
    return hashlib.sha256(training_fingerprint(config).encode()).hexdigest()


def _same_training(runs: Path, pattern: str, fingerprint: str | None) -> dict[str, Any] | None:
    """The saved run under ``runs`` matching ``pattern`` (the runs of this size and seed:
    the fingerprint holds the seed) whose training has ``fingerprint`` (e.g. a candidate
    whose frequency-only plan equals the clustered one, where no table clusters its head),
    else None. Trainings are deterministic per seed, so its result is this one's."""
    if fingerprint is None or not runs.is_dir():
        return None
    for path in sorted(runs.glob(pattern)):
        row = json.loads(path.read_text())
        if row.get("fingerprint") == fingerprint and "same_plan" not in row:
            return row
    return None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the sweep and write the three outputs; returns the results rows.

    With ``--report`` only the reports are rewritten from ``--out``'s ``results.json``.
    """
    args = parse_args(argv)
    if args.report:
        path = args.out / "results.json"
        if not path.is_file():
            raise FlagError(f"--report: {path} does not exist; run the sweep first")
        try:
            rows = json.loads(path.read_text())
            check_rows(rows, str(path))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FlagError(
                f"--report: {path} is not JSON ({e}); expected a sweep's runs"
            ) from None
        except ValueError as e:
            raise FlagError(f"--report: {e}") from None
        write_reports(args.out, rows)
        return rows
    check_dataset_files(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = args.bytes or args.fractions
    for seed in range(args.seeds):
        for method in args.methods:
            for fraction in [1.0] if method == "none" else sizes:
                row = run_one(args, method, fraction, seed)
                logger.info(
                    "%s %s%g seed %d: %s", method, _size_key(args), fraction, seed,
                    row.get("infeasible") or f"auc {row['auc']:.4f}",
                )  # fmt: skip
                rows.append(row)
    summary = write_reports(args.out, rows)
    print(json.dumps({"out": str(args.out), "runs": len(rows), "summary": summary}, indent=1))  # noqa: T201
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run_command(main)  # a bad flag value: a usage error, no traceback
