"""The rare-id regime at scale: learned hashing (paper vs head/tail) against the hashing trick.

Synthetic data shaped like Criteo 1TB: 26 tables at ``--scale`` times the MLPerf heights
(at least ``--min_height`` ids each; 0.1 gives five tables of 4M ids, 20.4M ids in all),
Zipf popularity, ``--num_groups`` planted groups per table, 13 dense features. One teacher
is trained, then every method trains the same DLRM at ``--fraction`` of its size, under
``--budget``: ``table`` (the default): ``fraction`` of the rows of each table of at least
``--min_table_rows`` ids; ``bytes``: ``fraction`` of the full model's fp32 table bytes, every
method fitted to what it stores (tables + stored remap, smaller tables full and counted;
:mod:`torchrec_lhf.compression.budget`), so that the learned hash pays for its remap in rows
and "gap closed" is read at equal total bytes:

* ``none``: the full model; ``modulo``: the hashing trick;
* ``lhf-paper``: every id clustered, dense remap (Ghaemmaghami et al.);
* ``lhf``: the build's defaults (head/tail: the ids seen at least ``head_min_count``
  times clustered, extended by the next most frequent ids, a row each, where rows are left
  (``--tail_region fill``), the tail hashed into a region of its own of 5% of the rows;
  compact remap);
* ``lhf-fixed``: the default before 2026-11-30 (``benchmarks.quality_methods.FIXED``: a tail
  region of 70%, no extension); the variants below are measured against it and keep it:
* leak-free values for that head: ``lhf-shrink3`` / ``lhf-shrink10`` (``--value_shrinkage``
  3 / 10: each id's teacher embedding pulled toward the tail's mean by ``n / (n + k)``) and
  ``lhf-window`` (a second, held-out teacher trained on the first half of the training
  rows, ``apps.teacher --train_window 0.5``; counts over all of them);
* two hashes per table with that head, summed: ``lhf-h2`` (independent: hash ``h``
  clusters projection ``h``) and ``lhf-compose`` (``--compose residual``: hash 1 splits the
  ids hash 0 put together; :mod:`torchrec_lhf.hash_build.compose`);
* the default's two settings moved: ``lhf-tail0.5`` / ``lhf-tail0.85`` (``--tail_fraction``)
  and ``lhf-head5`` / ``lhf-head20`` (``--head_min_count``); the tail region moved:
  ``lhf-mass`` / ``lhf-fit`` / ``lhf-fill`` (``--tail_region``: sized by the tail's
  traffic, given the rows a small head leaves unused, or those rows given to the next most
  frequent ids, a row each); ``lhf-fill-t0.05``: ``fill`` with a 5% tail region (what
  became the default), ``lhf-fill-t0.02`` / ``-t0.15`` / ``-t0``: with 2% / 15% / no tail region (the tail
  hashed into all rows); ``lhf-fill-1row``: with a tail of one row per table (as ``mch``'s
  single miss row); ``lhf-fill-h2``: the default with two hash functions per table, summed
  (each with its head and its own tail seed: a tail id gets a pair of tail rows);
* ``lhf-fill-head3`` / ``lhf-fill-head3-shrink10``: the default with a head of the ids seen
  at least 3 times (larger than the head region, so clustered instead of filled), and that
  with ``--value_shrinkage 10``;
* ``lhf-counts``: the default with ``--row_allocation counts`` (a byte budget's rows shared
  by the tables as their ids' access counts say, not by their sizes);
* ``lhf-freq``: the default with no head clustered (``BuildConfig.frequency_only``: the
  head region's rows to the most frequent ids, one each); ``lhf-select``: ``lhf`` and
  ``lhf-freq`` both trained, the one of higher validation AUC kept (:data:`SELECT`, as
  ``apps.pipeline --head_select --no-half_select``); ``lhf-select3``: among ``lhf``,
  ``lhf-freq`` and ``lhf-counts-half`` (``--head_select`` under ``--budget bytes``);
  ``lhf-counts-freq``: rows shared by counts, none clustered; ``lhf-select4``: the one of
  higher validation AUC among ``lhf``, ``lhf-freq``, ``lhf-counts`` and ``lhf-counts-freq``
  (``--head_select --rows_select``);
  ``lhf-sqrt-mlet`` / ``lhf-counts-sqrt-mlet``: the default / ``lhf-counts`` trained as MLET
  at the sqrt split's width (:data:`SQRT_MLET`); ``lhf-select6``: the one of higher
  validation AUC among those six; ``lhf-half`` / ``lhf-counts-half``: the same at half the
  width (:data:`HALF_WIDTH`); ``lhf-select8``: among those eight (``--head_select
  --rows_select --width_select``); ``lhf-select2-counts``: between ``lhf`` and
  ``lhf-counts-half``, what ``apps.pipeline`` does by default under ``--budget bytes``
  (``--half_select``, ``--half_rows counts``; ``lhf`` is its one plan,
  ``--no-half_select``); ``lhf-select2``: between ``lhf`` and ``lhf-half``, the default
  before 2026-12-02 (``--half_rows size``); ``lhf-fill0.05`` / ``lhf-half-fill0.05`` /
  ``lhf-select2-fill0.05``: those with ``--fill_share 0.05`` (the fill's frequent ids
  stored only while the remap is at most 5% of the bytes);
* ``lhf-mlet``: the plan at ``1 / MLET_WIDTH`` times the rows, trained as MLET at
  ``MLET_WIDTH`` of the width (about the same bytes);
* the other methods, at the same size and budget: ``qr``, ``fbdh``, ``memrec``, ``mlet``,
  ``cce`` and ``mch`` (:data:`PEERS`).

Prints JSON: per method test AUC, logloss, NE, ``table_bytes`` (fp32 tables),
``index_bytes`` (the remap as the plan stores it; nothing for a hash computed from the id),
``stored_bytes`` (tables + stored index: what ``--budget bytes`` counts), ``remap_bytes``
(the remap as the module holds it in memory: a compact head's cuckoo table is about 1.25x
its sorted heads), ``compression`` (full fp32 tables over ``stored_bytes``),
``compression_in_memory`` (over tables + ``remap_bytes``) and ``gap_closed``, the share of
the hashing trick's AUC gap to the full model that the method closes. A method that cannot
fit a byte budget (the paper's dense remap alone can be larger) gets ``infeasible`` (the
reason) instead. Takes 3-6 minutes and 5-7 GB at ``--scale 0.1``::

    python -m benchmarks.rare_ids --scale 0.1 --fraction 0.01 --json
    python -m benchmarks.rare_ids --scale 0.1 --fraction 0.01 --budget bytes --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps import build_hash, pipeline, teacher
from apps.dlrm import train
from apps.dlrm.config import TrainConfig
from apps.plan_candidates import training_fingerprint
from benchmarks.quality_methods import FIXED
from torchrec_lhf.cli import (
    add_config_flags,
    check_int,
    check_unique,
    config_from_args,
    run_command,
)
from torchrec_lhf.compression.budget import (
    BudgetTooSmall,
    byte_budget,
    fraction_at_width,
    half_width,
    mlet_width,
)
from torchrec_lhf.data import check_dataset_spec
from torchrec_lhf.data.criteo_npy import MLPERF_NUM_EMBEDDINGS
from torchrec_lhf.hash_build.config import BuildConfig
from torchrec_lhf.report import select_on_validation

logger = logging.getLogger(__name__)

PEERS = ("qr", "fbdh", "memrec", "mlet", "cce", "mch")
"""The other compression methods (``--compression``), fitted to the same budget as the
hashing trick (the app's own fitting: ``mlet`` by its width, ``cce`` with its defaults)."""
SQRT_MLET = ("lhf-sqrt-mlet", "lhf-counts-sqrt-mlet")
"""Learned plans trained as MLET at the sqrt split's width (the sweep's ``lhf-headtail-mlet``
and ``lhf-headtail-counts-mlet``): under ``--budget bytes`` the width
:func:`~torchrec_lhf.compression.budget.mlet_width`, the rows fitted to the bytes left."""
HALF_WIDTH = ("lhf-half", "lhf-counts-half")
"""The default plan (and with rows by counts) at half the width, the rows fitted to the
bytes left, trained as MLET (the sweep's ``lhf-headtail-half``, ``-counts-half``)."""
HALF_PLANS = (*HALF_WIDTH, "lhf-half-fill0.05")
"""Every method trained at half the width (``lhf-half-fill0.05``: ``lhf-half`` with
``--fill_share 0.05``)."""
MLET_WIDTH = 0.25
"""``lhf-mlet``: the share of the width its tables keep (dim 4 of 16), trained as MLET."""
METHODS = (
    "none",
    "modulo",
    "lhf-paper",
    "lhf",
    "lhf-fixed",
    "lhf-mass",
    "lhf-fit",
    "lhf-fill",
    "lhf-fill-t0.05",
    "lhf-fill-t0.02",
    "lhf-fill-t0.15",
    "lhf-fill-t0",
    "lhf-fill-1row",
    "lhf-fill-h2",
    "lhf-mlet",
    "lhf-shrink3",
    "lhf-shrink10",
    "lhf-window",
    "lhf-h2",
    "lhf-compose",
    "lhf-tail0.5",
    "lhf-tail0.85",
    "lhf-head5",
    "lhf-head20",
    "lhf-fill-head3",
    "lhf-fill-head3-shrink10",
    "lhf-counts",
    "lhf-freq",
    "lhf-counts-freq",
    "lhf-sqrt-mlet",
    "lhf-counts-sqrt-mlet",
    "lhf-half",
    "lhf-counts-half",
    "lhf-fill0.05",
    "lhf-half-fill0.05",
    "lhf-select",
    "lhf-select2",
    "lhf-select2-counts",
    "lhf-select3",
    "lhf-select4",
    "lhf-select6",
    "lhf-select8",
    *PEERS,
)
"""The methods this benchmark trains (see the module docstring)."""
_FOUR = ("lhf", "lhf-freq", "lhf-counts", "lhf-counts-freq")
SELECT = {
    "lhf-select": ("lhf", "lhf-freq"),
    "lhf-select2": ("lhf", "lhf-half"),  # apps.pipeline's default before 2026-12-02
    "lhf-select2-counts": ("lhf", "lhf-counts-half"),  # its default under --budget bytes
    "lhf-select2-fill0.05": ("lhf-fill0.05", "lhf-half-fill0.05"),
    "lhf-select3": ("lhf", "lhf-freq", "lhf-counts-half"),  # that and --head_select
    "lhf-select4": _FOUR,
    "lhf-select6": (*_FOUR, *SQRT_MLET),
    "lhf-select8": (*_FOUR, *SQRT_MLET, *HALF_WIDTH),
}
"""Methods that train several plans and keep the one of higher validation AUC (the first on
a tie): ``lhf-select`` the default and the frequency-only plan, as ``apps.pipeline
--head_select --no-half_select`` does; ``lhf-select3`` those and ``lhf-counts-half``, as
``--head_select`` does under ``--budget bytes``; ``lhf-select4`` those with rows shared by
the sizes and by the counts, as ``--head_select --rows_select`` does; ``lhf-select6``
those and :data:`SQRT_MLET`; ``lhf-select8`` those and :data:`HALF_WIDTH`, as
``--head_select --rows_select --width_select`` does."""


@dataclass(kw_only=True)
class RareIdsConfig:
    """The scale case of the rare-ids benchmark."""

    out_dir: str = "runs/rare_ids"
    """Teacher, plans and metrics go here."""
    scale: float = 0.1
    """Table heights: this times the MLPerf heights."""
    min_height: int = 3
    """No table smaller than this (the planted groups need ``num_groups`` ids)."""
    num_samples: int = 2_000_000
    """Samples drawn (80 / 10 / 10 train / val / test)."""
    num_groups: int = 3
    """Planted groups per table (more: a weaker structure)."""
    group_scale: float = 0.7
    """Strength of the planted group effects (``SyntheticConfig.group_scale``)."""
    fraction: float = 0.01
    """Size kept: of each table's rows (``budget="table"``) or of the full fp32 table bytes
    (``budget="bytes"``)."""
    budget: str = field(default="table", metadata={"choices": ("table", "bytes")})
    """``"table"``: ``fraction`` of the rows of each table of at least ``min_table_rows`` ids
    (smaller tables full, outside the budget); ``"bytes"``: equal total bytes, every method
    fitted to ``fraction`` of the full fp32 table bytes, its stored remap and the smaller
    tables counted."""
    min_table_rows: int = 100_000
    """Smaller tables stay full."""
    batch_size: int = 4096
    """Per-rank batch size."""
    teacher_epochs: int = 1
    """Epochs of the teacher (the rare-ids issue's command: 1; the pipeline's default is 3).
    Its access counts are of its first epoch whatever this is (one pass over the data)."""
    seed: int = 0
    """Seed of every stage (teacher, build, training: initialization and data order); the
    synthetic data are the same for every seed (the generator's own seed, 0)."""
    methods: list[str] = field(default_factory=lambda: ["none", "modulo", "lhf-paper", "lhf"])
    """Which of none, modulo, lhf-paper, lhf."""
    json: bool = False
    """Print only the JSON."""

    def __post_init__(self) -> None:
        if not 0 < self.scale < math.inf:
            raise ValueError(f"scale must be a finite number > 0, got {self.scale}")
        for name, low in (
            ("min_height", 1), ("seed", 0), ("teacher_epochs", 1), ("batch_size", 1),
            ("min_table_rows", 0),
        ):  # fmt: skip
            check_int(name, getattr(self, name), low=low)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.budget not in ("table", "bytes"):
            raise ValueError(f"budget must be 'table' or 'bytes', got {self.budget!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        check_unique("methods", self.methods)
        check_dataset_spec("synthetic", self.dataset_options())  # the data's own checks

    def dataset_options(self) -> dict[str, Any]:
        """The synthetic dataset's options (``torchrec_lhf.data``'s ``synthetic``)."""
        return {
            "num_samples": self.num_samples,
            "num_dense": 13,
            "num_groups": self.num_groups,
            "group_scale": self.group_scale,
            "num_embeddings": _heights(self),
        }


def _heights(config: RareIdsConfig) -> list[int]:
    return [max(config.min_height, round(n * config.scale)) for n in MLPERF_NUM_EMBEDDINGS]


def run(config: RareIdsConfig) -> dict:
    """Train the teacher once and every method; returns the JSON report."""
    heights = _heights(config)
    options = config.dataset_options()
    pipe = pipeline.PipelineConfig(
        dataset="synthetic", fraction=config.fraction, budget=config.budget,
        min_table_rows=config.min_table_rows, teacher_epochs=config.teacher_epochs,
        batch_size=config.batch_size,
        out_dir=config.out_dir, methods=["lhf", "modulo", "none"], seed=config.seed,
    )  # fmt: skip
    teach, build, trains = pipeline.stage_configs(pipe, "synthetic", options)
    out = Path(config.out_dir)
    if any(m.startswith("lhf") and m != "lhf-window" for m in config.methods):
        teacher.run(teach)
        pipeline.release_memory()
    if "lhf-window" in config.methods:
        metrics = str(out / "teacher_w0.5_metrics.json")
        teacher.run(
            dataclasses.replace(
                teach,
                train=dataclasses.replace(teach.train, metrics_json=metrics),
                out=str(out / "teacher_w0.5"),
                train_window=0.5,
            )
        )
        pipeline.release_memory()
    trained: dict[str, dict] = {}
    plans: dict[str, str] = {}  # a training's plan fingerprint and settings -> its method

    def result(method: str) -> dict:
        if method in SELECT:
            return select_on_validation({m: result(m) for m in SELECT[method]})
        if method not in trained:
            try:
                cfg = _train_config(method, build, trains, out)
                same = _same_plan(method, cfg, plans)
                # an earlier method's plan: the same deterministic training
                trained[method] = (
                    dict(trained[same], same_plan=same) if same else _result(train.run(cfg))
                )
            except BudgetTooSmall as e:  # e.g. the paper's dense remap above the budget
                logger.warning("%s does not fit %g of the bytes: %s", method, config.fraction, e)
                trained[method] = {"infeasible": str(e)}
            pipeline.release_memory()
        return trained[method]

    results = {method: result(method) for method in config.methods}
    _gap_closed(results)
    report = {"benchmark": "rare_ids", "config": dataclasses.asdict(config), "results": results}
    if config.budget == "bytes":
        sizes = {f"t{i}": n for i, n in enumerate(heights)}
        report["budget_bytes"] = byte_budget(sizes, config.fraction, pipe.embedding_dim)
    return report


def _same_plan(method: str, cfg: TrainConfig, plans: dict[str, str]) -> str | None:
    """The method already trained as ``cfg`` is (the same
    :func:`apps.plan_candidates.training_fingerprint`), else None, ``method`` then recorded in
    ``plans`` (fingerprint -> method)."""
    if cfg.learned_hash is None:
        return None
    fingerprint = training_fingerprint(cfg)
    if fingerprint in plans:
        return plans[fingerprint]
    plans[fingerprint] = method
    return None


def _train_config(
    method: str, build: BuildConfig, trains: dict[str, TrainConfig], out: Path
) -> TrainConfig:
    """The training config of ``method``, building its plan first for the learned hashes."""
    if method.startswith("lhf"):
        paper = {"head_min_count": 0, "tail_fraction": 0.0, "encoding": "dense"}
        plan = out / f"plan_{method}.safetensors"
        extra = {
            "lhf-paper": paper,
            "lhf-fixed": FIXED,
            "lhf-mass": {"tail_region": "mass"},
            "lhf-fit": {**FIXED, "tail_region": "fit"},
            "lhf-fill": {**FIXED, "tail_region": "fill"},
            "lhf-fill-t0.05": {"tail_region": "fill", "tail_fraction": 0.05},
            "lhf-fill-t0.02": {"tail_region": "fill", "tail_fraction": 0.02},
            "lhf-fill-t0.15": {"tail_region": "fill", "tail_fraction": 0.15},
            "lhf-fill-t0": {"tail_region": "fill", "tail_fraction": 0.0},
            "lhf-fill-1row": {"tail_region": "fill", "tail_fraction": 1e-9},  # a miss row
            "lhf-fill-h2": {"num_hashes": 2},  # the default, two hashes summed
            "lhf-shrink3": {**FIXED, "value_shrinkage": 3},
            "lhf-shrink10": {**FIXED, "value_shrinkage": 10},
            "lhf-window": {**FIXED, "teacher": str(out / "teacher_w0.5")},
            "lhf-h2": {**FIXED, "num_hashes": 2},
            "lhf-compose": {**FIXED, "num_hashes": 2, "compose": "residual"},
            "lhf-tail0.5": {**FIXED, "tail_fraction": 0.5},
            "lhf-tail0.85": {**FIXED, "tail_fraction": 0.85},
            "lhf-head5": {**FIXED, "head_min_count": 5},
            "lhf-head20": {**FIXED, "head_min_count": 20},
            # the default with a head of the ids seen 3 times or more: larger than the head
            # region where the default fills it, so its mid-frequency ids are clustered
            "lhf-fill-head3": {"head_min_count": 3},
            "lhf-fill-head3-shrink10": {"head_min_count": 3, "value_shrinkage": 10},
            "lhf-counts": {"row_allocation": "counts"},
            "lhf-counts-freq": {"row_allocation": "counts"},
            "lhf-counts-sqrt-mlet": {"row_allocation": "counts"},
            "lhf-counts-half": {"row_allocation": "counts"},
            "lhf-fill0.05": {"fill_share": 0.05},
            "lhf-half-fill0.05": {"fill_share": 0.05},
            "lhf-mlet": FIXED,
        }.get(method, {})
        if method == "lhf-mlet":  # MLET_WIDTH of the width, so 1 / MLET_WIDTH of the rows
            extra = {**extra, "fraction": build.fraction / MLET_WIDTH}
        side = None  # the share of the width the tables keep, when trained as MLET
        if method in SQRT_MLET + HALF_PLANS:  # that width, the rows fitted to the bytes left
            dim, half = build.embedding_dim, method in HALF_PLANS
            side = half_width(dim) / dim if half else build.fraction**0.5
            if build.budget == "bytes":
                width = half_width(dim) if half else mlet_width(build.fraction, dim)
                extra = {**extra, "fraction": fraction_at_width(build.fraction, dim, width)}
                extra["embedding_dim"], side = width, width / dim
            else:  # the rows' share times the width's is the fraction
                extra = {**extra, "fraction": round(build.fraction / side, 6)}
        config = dataclasses.replace(build, out=plan, work_dir=None, **extra)
        if method in ("lhf-freq", "lhf-counts-freq"):  # nothing clustered
            config = config.frequency_only(plan)
        build_hash.run(config)
        pipeline.release_memory()
        cfg = dataclasses.replace(trains["lhf"], learned_hash=str(plan))
        if method == "lhf-mlet":
            side = MLET_WIDTH
        if side is not None:
            cfg = dataclasses.replace(cfg, mlet_fraction=side, dense_arch_layer_sizes=None)
    elif method in PEERS:  # the hashing trick's size and budget, another method
        # mlet shrinks the width: the dense arch is re-derived for its dim
        extra = {"dense_arch_layer_sizes": None} if method == "mlet" else {}
        cfg = dataclasses.replace(trains["modulo"], compression=method, **extra)
    else:
        cfg = trains[method]
    return dataclasses.replace(cfg, metrics_json=str(out / f"metrics_{method}.json"))


def _result(m: dict) -> dict:
    """One method's JSON entry from the DLRM app's metrics."""
    full = m["full_embedding_bytes"]
    return {
        "auc": m["auc"],
        "val_auc": m["val_auc"],
        "logloss": m["logloss"],
        "ne": m["ne"],
        "rows": m["rows"],
        "table_bytes": m["embedding_bytes"],
        "index_bytes": m["index_bytes"],
        "stored_bytes": m["total_bytes"],
        "remap_bytes": m["remap_bytes"],
        "remap_computable": bool(m["remap_computable"]),
        "bytes_fraction": m["total_bytes"] / full,
        "compression": full / m["total_bytes"],
        "compression_in_memory": full / (m["embedding_bytes"] + m["remap_bytes"]),
    }


def _gap_closed(results: dict[str, dict]) -> None:
    """Add ``gap_closed`` = (AUC - hashing trick's) / (full model's - hashing trick's) to
    every trained method, when both references trained (None when the gap is not > 0)."""
    none, modulo = results.get("none", {}), results.get("modulo", {})
    if "auc" not in none or "auc" not in modulo:
        return
    gap = none["auc"] - modulo["auc"]
    for r in results.values():
        if "auc" in r:
            r["gap_closed"] = (r["auc"] - modulo["auc"]) / gap if gap > 0 else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rare_ids", description=__doc__)
    add_config_flags(parser, RareIdsConfig)
    config = config_from_args(RareIdsConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.WARNING if config.json else logging.INFO)
    report = run(config)
    print(json.dumps(report, indent=None if config.json else 1))  # noqa: T201
    return report


if __name__ == "__main__":
    run_command(main)  # a bad flag value: a usage error, no traceback
