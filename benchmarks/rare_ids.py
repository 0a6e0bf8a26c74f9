"""The rare-id regime at scale: learned hashing (paper vs head/tail) against the hashing trick.

Synthetic data shaped like Criteo 1TB: 26 tables at ``--scale`` times the MLPerf heights
(at least ``--min_height`` ids each; 0.1 gives four tables of 4M ids, 20.4M ids in all),
Zipf popularity, ``--num_groups`` planted groups per table, 13 dense features. One teacher
is trained, then every method trains the same DLRM at ``--fraction`` of each large
table's rows (``--budget table``, tables of at least ``--min_table_rows`` ids):

* ``none``: the full model; ``modulo``: the hashing trick;
* ``lhf-paper``: every id clustered, dense remap (Ghaemmaghami et al.);
* ``lhf``: the build's defaults (head/tail: the ids seen at least ``head_min_count``
  times clustered, the tail hashed into a region of its own; compact remap).

Prints JSON: per method test AUC, logloss, table and remap bytes, end-to-end compression
(full fp32 tables over tables + remap) and the share of the hashing trick's AUC gap to the
full model that it closes. Takes minutes and ~6 GB at ``--scale 0.1``::

    python -m benchmarks.rare_ids --scale 0.1 --fraction 0.01 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from apps import build_hash, pipeline, teacher
from apps.dlrm import train
from torchrec_lhf.cli import add_config_flags, config_from_args
from torchrec_lhf.data.criteo_npy import MLPERF_NUM_EMBEDDINGS

logger = logging.getLogger(__name__)


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
    """Rows kept of each table of at least ``min_table_rows`` ids."""
    min_table_rows: int = 100_000
    """Smaller tables stay full."""
    batch_size: int = 4096
    """Per-rank batch size."""
    methods: list[str] = field(default_factory=lambda: ["none", "modulo", "lhf-paper", "lhf"])
    """Which of none, modulo, lhf-paper, lhf."""
    json: bool = False
    """Print only the JSON."""


def _heights(config: RareIdsConfig) -> list[int]:
    return [max(config.min_height, round(n * config.scale)) for n in MLPERF_NUM_EMBEDDINGS]


def run(config: RareIdsConfig) -> dict:
    """Train the teacher once and every method; returns the JSON report."""
    options = {
        "num_samples": config.num_samples,
        "num_dense": 13,
        "num_groups": config.num_groups,
        "group_scale": config.group_scale,
        "num_embeddings": _heights(config),
    }
    pipe = pipeline.PipelineConfig(
        dataset="synthetic", fraction=config.fraction, budget="table",
        min_table_rows=config.min_table_rows, teacher_epochs=1, batch_size=config.batch_size,
        out_dir=config.out_dir, methods=["lhf", "modulo", "none"],
    )  # fmt: skip
    teach, build, trains = pipeline.stage_configs(pipe, "synthetic", options)
    out = Path(config.out_dir)
    if any(m.startswith("lhf") for m in config.methods):
        teacher.run(teach)
    results = {}
    for method in config.methods:
        if method.startswith("lhf"):
            paper = {"head_min_count": 0, "tail_fraction": 0.0, "encoding": "dense"}
            plan = out / f"plan_{method}.safetensors"
            extra = paper if method == "lhf-paper" else {}
            build_hash.run(dataclasses.replace(build, out=plan, work_dir=None, **extra))
            cfg = dataclasses.replace(trains["lhf"], learned_hash=str(plan))
        else:
            cfg = trains[method]
        cfg = dataclasses.replace(cfg, metrics_json=str(out / f"metrics_{method}.json"))
        m = train.run(cfg)
        results[method] = {
            "auc": m["auc"],
            "logloss": m["logloss"],
            "table_bytes": m["embedding_bytes"],
            "remap_bytes": m["remap_bytes"],
            "compression": m["full_embedding_bytes"] / (m["embedding_bytes"] + m["remap_bytes"]),
        }
    if {"none", "modulo"} <= set(results):
        gap = results["none"]["auc"] - results["modulo"]["auc"]
        for r in results.values():
            r["gap_closed"] = (r["auc"] - results["modulo"]["auc"]) / gap if gap > 0 else None
    return {"benchmark": "rare_ids", "config": dataclasses.asdict(config), "results": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rare_ids", description=__doc__)
    add_config_flags(parser, RareIdsConfig)
    config = config_from_args(RareIdsConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.WARNING if config.json else logging.INFO)
    report = run(config)
    print(json.dumps(report, indent=None if config.json else 1))  # noqa: T201
    return report


if __name__ == "__main__":
    main()
