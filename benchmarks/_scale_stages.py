"""The stages of ``benchmarks/scale.py``, each run in a process of its own (one per rank).

``python -m benchmarks._scale_stages STAGE SPEC_JSON OUT_JSON`` runs one stage on this
process's rank (``RANK`` / ``WORLD_SIZE`` / ``MASTER_*`` from the parent, gloo) and writes
``{"seconds", "peak_rss_bytes", ...}`` to ``OUT_JSON`` (``.rank{r}`` appended on ranks > 0).
``peak_rss_bytes`` is the process's ``VmHWM`` (its own high-water mark, reset at exec).

Stages: ``generate`` (the synthetic Criteo npy files, one process), ``teacher`` (full height,
counts), ``build`` (the hash plan), ``train`` (the learned-hash DLRM, one epoch through
TrainPipelineSparseDist, then its DCP checkpoint), ``paired`` (the learned-hash DLRM again
beside a plain EBC of the same compressed rows fed pre-hashed ids, ids folded modulo the
plan's rows before the batch reaches the model, trained in alternating blocks of steps in
one process: their samples/s ratio), ``eval`` (the checkpoint on val and test), ``checkpoint`` (load the
checkpoint, save it again elsewhere) and ``export`` (the serving model from the checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

_STAGES = ("generate", "teacher", "build", "train", "paired", "eval", "checkpoint", "export")


def peak_rss_bytes() -> int:
    """This process's peak resident set (``VmHWM`` of ``/proc/self/status``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _dataset(spec: dict[str, Any]) -> str:
    return f"criteo-npy:{spec['data_dir']}"


def _train_config(spec: dict[str, Any], **over: Any):
    from apps.dlrm.config import TrainConfig

    work = Path(spec["work_dir"])
    kw: dict[str, Any] = dict(
        dataset=_dataset(spec),
        batch_size=spec["batch_size"],
        embedding_dim=spec["embedding_dim"],
        learning_rate=spec["learning_rate"],
        epochs=1,
        seed=spec["seed"],
        backend="gloo",
        learned_hash=str(work / "plan.safetensors"),
        checkpoint_dir=str(work / "ckpt"),
        limit_val_batches=spec["limit_eval_batches"],
        limit_test_batches=spec["limit_eval_batches"],
        log_every=10**9,
        sharding_types=spec["sharding_types"],
    )
    kw.update(over)
    return TrainConfig(**kw)


def _session(config, env):
    from apps.dlrm.loop import build_session, load_data
    from torchrec_lhf.plan import HashPlan

    dataset = load_data(config)
    plan = HashPlan.load(config.learned_hash) if config.learned_hash else None
    return build_session(config, env, dataset, plan)


def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    from torchrec_lhf.data.synthetic_criteo import SyntheticCriteoConfig, write_synthetic_criteo

    cfg = SyntheticCriteoConfig(
        scale=spec["scale"], days=spec["days"], rows_per_day=spec["rows_per_day"], seed=0
    )
    heights = write_synthetic_criteo(spec["data_dir"], cfg)
    return {"ids": sum(heights)}


def _teacher(spec: dict[str, Any]) -> dict[str, Any]:
    from apps import teacher

    dim = spec["teacher_dim"]
    config = _train_config(
        spec,
        embedding_dim=dim,
        learned_hash=None,
        checkpoint_dir=None,
        **({"sharding_types": teacher.teacher_sharding_types(dim)} if dim % 4 else {}),
    )
    out = str(Path(spec["work_dir"]) / "teacher")
    metrics = teacher.run(teacher.TeacherConfig(train=config, out=out))
    return {"samples_per_s": metrics["qps"], "auc": metrics["auc"]}


def _build(spec: dict[str, Any]) -> dict[str, Any]:
    from apps import build_hash
    from torchrec_lhf.hash_build.config import BuildConfig

    work = Path(spec["work_dir"])
    config = BuildConfig(
        teacher=str(work / "teacher"),
        fraction=spec["fraction"],
        min_table_rows=spec["min_table_rows"],
        budget=spec.get("budget", "table"),
        out=work / "plan.safetensors",
        restart=True,
    )
    plan = build_hash.run(config, build_hash.LaunchConfig(backend="gloo", device="cpu"))
    return {} if plan is None else {"rows": sum(t.num_rows for t in plan)}


def _fit_one_epoch(session) -> dict[str, Any]:
    from apps.dlrm.loop import train_epoch
    from torchrec_lhf.metrics import global_qps

    train_epoch(session)
    session.epoch, session.batch = session.epoch + 1, 0
    qps = global_qps(session.train_samples, session.train_seconds, device=session.env.device)
    return {"train_seconds": session.train_seconds, "samples_per_s": qps, **session.stats}


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    from apps.dlrm import checkpoint as ckpt
    from apps.dlrm.runtime import distributed

    with distributed("gloo") as env:
        session = _session(_train_config(spec), env)
        out = _fit_one_epoch(session)
        tic = time.perf_counter()
        ckpt.save(session)
        out["checkpoint_save_seconds"] = time.perf_counter() - tic
        return out


def _baseline_config(spec: dict[str, Any]):
    """A plain EBC of the plan's rows per table, fed ids folded modulo those rows."""
    from apps.dlrm.model import table_name
    from torchrec_lhf.data.criteo_npy import load_criteo_npy
    from torchrec_lhf.plan import HashPlan

    plan = HashPlan.load(Path(spec["work_dir"]) / "plan.safetensors")
    data = load_criteo_npy(spec["data_dir"])
    names = [table_name(f) for f in data.feature_names]
    rows = [plan[n].num_rows if n in plan else h for n, h in zip(names, data.num_embeddings)]
    return _train_config(
        spec, learned_hash=None, checkpoint_dir=None, num_embeddings_per_feature=rows
    )


def _timed_block(session, batches, steps: int) -> tuple[float, int]:
    """``steps`` training steps of ``session`` (fewer where its data ends): (seconds, steps),
    the ranks in step at both ends."""
    import torch.distributed as dist

    dist.barrier()
    tic, done = time.perf_counter(), 0
    session.model.train()
    for _ in range(steps):
        try:
            session.pipeline.progress(batches)
        except StopIteration:
            break
        done += 1
    dist.barrier()
    return time.perf_counter() - tic, done


def _paired(spec: dict[str, Any]) -> dict[str, Any]:
    """The learned-hash DLRM and the plain EBC of the same rows (:func:`_baseline_config`),
    both built in this process and trained for one epoch in alternating blocks of
    ``paired_block`` steps, in ABBA order (block pair ``i`` runs the learned hash first when
    ``i`` is even), so that the machine's drift falls on both alike. A pair's ratio is the
    learned hash's samples/s over the baseline's in that pair; the first pair (pipelines
    filling, caches cold) is left out of the median and of the totals."""
    import statistics

    from apps.dlrm.loop import train_batches
    from apps.dlrm.runtime import distributed

    block = int(spec.get("paired_block", 50))
    with distributed("gloo") as env:
        lhf = _session(_train_config(spec, checkpoint_dir=None), env)
        base = _session(_baseline_config(spec), env)
        feeds = {"lhf": (lhf, train_batches(lhf)), "base": (base, train_batches(base))}
        pairs: list[dict[str, float]] = []
        while True:
            order = ("lhf", "base") if len(pairs) % 2 == 0 else ("base", "lhf")
            timed = {name: _timed_block(*feeds[name], block) for name in order}
            if min(n for _, n in timed.values()) < block:  # NOTE: an epoch ended: a short pair
                break
            pairs.append({name: sec for name, (sec, _) in timed.items()})
    kept = pairs[1:]
    if not kept:
        raise RuntimeError(f"fewer than 2 full pairs of {block} steps: too little data")
    ratios = [p["base"] / p["lhf"] for p in kept]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    samples = block * spec["batch_size"] * env.world_size * len(kept)
    return {
        "paired_block": block,
        "pairs": len(kept),
        "ratio_median": statistics.median(ratios),
        "ratio_q1": q[0],
        "ratio_q3": q[2],
        "ratio_total": sum(p["base"] for p in kept) / sum(p["lhf"] for p in kept),
        "lhf_samples_per_s": samples / sum(p["lhf"] for p in kept),
        "baseline_samples_per_s": samples / sum(p["base"] for p in kept),
        "block_seconds": kept,
    }


def _restored(spec: dict[str, Any], env, timings: dict[str, float]):
    from apps.dlrm import checkpoint as ckpt

    session = _session(_train_config(spec), env)
    tic = time.perf_counter()
    if not ckpt.resume(session):
        raise RuntimeError(f"no checkpoint in {session.config.checkpoint_dir}")
    timings["checkpoint_load_seconds"] = time.perf_counter() - tic
    return session


def _eval(spec: dict[str, Any]) -> dict[str, Any]:
    from apps.dlrm.loop import evaluate
    from apps.dlrm.runtime import distributed

    with distributed("gloo") as env:
        out: dict[str, Any] = {}
        session = _restored(spec, env, out)
        tic = time.perf_counter()
        val = evaluate(session, "val", spec["limit_eval_batches"])
        test = evaluate(session, "test", spec["limit_eval_batches"])
        out["eval_seconds"] = time.perf_counter() - tic
        out.update(
            val_auc=val["auc"],
            auc=test["auc"],
            eval_samples=val["num_samples"] + test["num_samples"],
        )
        return out


def _checkpoint(spec: dict[str, Any]) -> dict[str, Any]:
    import dataclasses
    import shutil

    import torch

    from apps.dlrm import checkpoint as ckpt
    from apps.dlrm.runtime import distributed

    with distributed("gloo") as env:
        out: dict[str, Any] = {}
        session = _restored(spec, env, out)
        again = str(Path(spec["work_dir"]) / "ckpt_again")
        if env.is_main:  # NOTE: a save of a step already in `latest` would be skipped
            shutil.rmtree(again, ignore_errors=True)
        torch.distributed.barrier()
        session.config = dataclasses.replace(session.config, checkpoint_dir=again)
        tic = time.perf_counter()
        ckpt.save(session)
        out["checkpoint_save_seconds"] = time.perf_counter() - tic
        size = sum(p.stat().st_size for p in Path(again).rglob("*") if p.is_file())
        out["checkpoint_bytes"] = size
        return out


def _export(spec: dict[str, Any]) -> dict[str, Any]:
    from apps.dlrm.export import export_model
    from apps.dlrm.runtime import distributed

    with distributed("gloo") as env:
        out: dict[str, Any] = {}
        session = _restored(spec, env, out)
        path = Path(spec["work_dir"]) / "export"
        tic = time.perf_counter()
        export_model(session, path, num_dense=len(session.dataset.dense_names))
        out["export_seconds"] = time.perf_counter() - tic
        return out


def run_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` in this process; returns its figures with ``seconds`` and
    ``peak_rss_bytes`` (the process's, imports included)."""
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
    tic = time.perf_counter()
    out = globals()[f"_{stage}"](spec)
    seconds = time.perf_counter() - tic
    # NOTE: the machine's 1-minute load average as the stage ends: other work on shared
    # cores slows a stage, and this says how busy they were
    load = os.getloadavg()[0]
    return {"seconds": seconds, **out, "peak_rss_bytes": peak_rss_bytes(), "load_average": load}


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    stage, spec_json, out_json = argv
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[{stage} r{rank}] %(asctime)s %(name)s: %(message)s",
    )
    result = run_stage(stage, json.loads(Path(spec_json).read_text()))
    from torchrec_lhf._io import atomic_write_json

    atomic_write_json(out_json + (f".rank{rank}" if rank else ""), result)


if __name__ == "__main__":
    main(sys.argv[1:])
