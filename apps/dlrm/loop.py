"""The training and evaluation loop shared by the DLRM app and the teacher.

Shape legend: ``B`` per-rank batch size, ``W`` world size, ``V`` ids of a batch, ``F``
features, ``T`` ids of all tables together (``sum N``).

Training runs through TorchRec's TrainPipelineSparseDist (input_dist of batch ``i + 1``
overlaps the forward / backward of batch ``i``); evaluation runs the same pipeline in
eval mode under ``no_grad``. Data order depends only on ``--seed`` and the epoch, so a
run resumed from a checkpoint (``apps/dlrm/checkpoint.py``: after every epoch and every
``--checkpoint_every`` steps) continues at the same batch exactly like an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from tqdm import tqdm

from apps.dlrm import checkpoint as ckpt
from apps.dlrm.batches import batches_from, fold_ids
from apps.dlrm.config import TrainConfig
from apps.dlrm.model import (
    build_model,
    check_table_dims,
    make_optimizer,
    shard_model,
    table_configs,
    table_stats,
)
from apps.dlrm.runtime import DistEnv
from torchrec_lhf.compression.cce import phase_steps
from torchrec_lhf.data import RecDataset, load_dataset
from torchrec_lhf.distributed.cce import recluster_model
from torchrec_lhf.distributed.embedding_bag import remap_bytes
from torchrec_lhf.metrics import (
    CTR_METRIC_KEYS,
    compute_ctr_metrics,
    ctr_metric_module,
    global_qps,
    update_ctr_metrics,
)
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)

BatchHook = Callable[[Iterable[Batch]], Iterable[Batch]]
"""Wraps training batches: each epoch's, or with ``--checkpoint_every`` each run of them
between two checkpoints (so that a checkpoint sees only batches already trained)."""

EVAL_KEYS = ("auc", "logloss", *CTR_METRIC_KEYS)
"""What :func:`evaluate` reports per split (besides ``num_samples``)."""


@dataclass(kw_only=True)
class Session:
    """A sharded model ready to train, with its data and bookkeeping."""

    config: TrainConfig
    env: DistEnv
    dataset: RecDataset
    tables: list[EmbeddingBagConfig]
    """The logical tables (one per feature, in feature order)."""
    plan: HashPlan | None
    model: DistributedModelParallel
    optimizer: torch.optim.Optimizer
    pipeline: TrainPipelineSparseDist
    stats: dict[str, int]
    """``rows``, ``embedding_bytes``, ``full_rows``, ``full_embedding_bytes``, ``remap_bytes``."""
    prepare: Callable[[Batch], Batch]
    """Applied to every batch (folds ids beyond ``--num_embeddings_per_feature``)."""
    epoch: int = 0
    """Epochs finished."""
    step: int = 0
    """Training steps finished."""
    batch: int = 0
    """Batches of the current epoch trained (the data position of a mid-epoch checkpoint)."""
    train_seconds: float = 0.0
    train_samples: int = 0
    phase_steps: list[int] = field(default_factory=list)
    """Where ``--compression cce`` re-clusters (:func:`_cce_phase`): positions in the run's
    training batches over all epochs, ``epoch * batches_per_epoch + batch`` (the steps of
    a run that is not resumed at another global batch size)."""
    start_plan: HashPlan | None = None
    """The plan the run started from (:attr:`plan` until a cce phase replaces it)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    _fingerprint: tuple[HashPlan, str] | None = field(default=None, init=False, repr=False)
    """The last plan fingerprinted and its fingerprint (a digest of every mapping: seconds
    at the MLPerf heights, read at every checkpoint)."""
    _start_fingerprint: str | None = field(default=None, init=False, repr=False)
    """:attr:`start_plan`'s fingerprint, once computed."""

    @property
    def plan_fingerprint(self) -> str | None:
        """The fingerprint of :attr:`plan`, computed once per plan object (a cce phase
        replaces the plan with a new one; plans are not changed in place)."""
        if self.plan is None:
            return None
        if self._fingerprint is None or self._fingerprint[0] is not self.plan:
            self._fingerprint = (self.plan, self.plan.fingerprint())
        return self._fingerprint[1]

    @property
    def start_plan_fingerprint(self) -> str | None:
        """The fingerprint of :attr:`start_plan` (computed once)."""
        if self.start_plan is None:
            return None
        if self.start_plan is self.plan:
            return self.plan_fingerprint
        if self._start_fingerprint is None:
            self._start_fingerprint = self.start_plan.fingerprint()
        return self._start_fingerprint

    @property
    def cce_phase(self) -> int:
        """The cce phase changes the model has been through (0 without cce)."""
        return 0 if self.plan is None else int(self.plan.metadata.get("cce_phase", 0))

    def next_phase_at(self) -> int | None:
        """The position (:attr:`phase_steps`) of the next cce phase, or None: the phases
        are taken in order, so a run resumed at another global batch size (its positions
        rescaled, its step count not) takes each phase once, where its share of the
        training is done."""
        done = self.cce_phase
        return self.phase_steps[done] if done < len(self.phase_steps) else None


def load_data(config: TrainConfig) -> RecDataset:
    """The dataset named by ``config.dataset`` (every rank loads the same, deterministically)."""
    return load_dataset(config.dataset, **config.dataset_options)


def build_session(
    config: TrainConfig, env: DistEnv, dataset: RecDataset, plan: HashPlan | None
) -> Session:
    """Build, convert and shard the model; seed first so that runs are reproducible."""
    heights = config.num_embeddings_per_feature or list(dataset.num_embeddings)
    tables = table_configs(dataset.feature_names, heights, config.embedding_dim)
    check_table_dims(config, tables, plan)
    torch.manual_seed(config.seed)  # NOTE: before DMP, which initializes the sharded tables
    unsharded = build_model(
        config, tables, num_dense=len(dataset.dense_names), plan=plan, dense_device=env.device
    )
    stats = dict(table_stats(unsharded, plan=plan), remap_bytes=remap_bytes(unsharded))
    model = shard_model(unsharded, config, device=env.device, world_size=env.world_size)
    if env.is_main:
        logger.info("sharding plan:\n%s", model.plan)
    optimizer = make_optimizer(model, config)
    pipeline = TrainPipelineSparseDist(model, optimizer, env.device, execute_all_batches=True)
    return Session(
        config=config,
        env=env,
        dataset=dataset,
        tables=tables,
        plan=plan,
        start_plan=plan,
        model=model,
        optimizer=optimizer,
        pipeline=pipeline,
        stats=stats,
        prepare=fold_ids(tables, dataset),
        phase_steps=_cce_phase_steps(config, env, dataset),
    )


def check_trains(
    config: TrainConfig, env: DistEnv, dataset: RecDataset, *, split: str = "the training split"
) -> None:
    """What a run that trains calls before :func:`build_session` (``split``: how the
    message names the training rows).

    Raises:
        ValueError: the run is to train (``epochs`` > 0) but ``dataset``'s training split
            holds less than one global batch (``batch_size`` x world size), so that no
            step would run and the untrained model would be evaluated as if trained.
    """
    if config.epochs == 0:
        return
    if dataset.num_batches("train", config.batch_size, env.world_size) > 0:
        return
    global_batch = config.batch_size * env.world_size
    raise ValueError(
        f"{split} of {dataset.name!r} holds {dataset.num_batches('train', 1)} samples, "
        f"fewer than one global batch of batch_size {config.batch_size} x world size "
        f"{env.world_size} = {global_batch}: no training step would run; expected at "
        f"least {global_batch} training samples (a smaller --batch_size, or more data)"
    )


def _cce_phase_steps(config: TrainConfig, env: DistEnv, dataset: RecDataset) -> list[int]:
    """``--compression cce``'s phase positions over all epochs' training batches at this
    run's global batch size (else none; :attr:`Session.phase_steps`)."""
    if config.compression != "cce":
        return []
    per_epoch = dataset.num_batches("train", config.batch_size, env.world_size)
    if config.limit_train_batches is not None:
        per_epoch = min(per_epoch, config.limit_train_batches)
    return phase_steps(config.epochs * per_epoch, config.cce_phases)


def _cce_phase(session: Session) -> None:
    """Re-cluster the cce tables (every rank, after the pipeline has drained); the session's
    plan becomes the one the model now holds. Phases are numbered by the ones done
    (:meth:`Session.next_phase_at`)."""
    phase = session.cce_phase + 1
    tic = time.perf_counter()
    session.plan = recluster_model(
        session.model,
        session.plan,
        phase=phase,
        config=session.config.cce_config(),
        device=session.env.device,
    )
    logger.info("cce phase %d at step %d: %.2fs", phase, session.step, time.perf_counter() - tic)


def train_batches(session: Session) -> Iterator[Batch]:
    """This rank's training batches of the current epoch from batch ``session.batch`` on
    (``--limit_train_batches`` at most), prepared (ids folded) for the model."""
    cfg, env = session.config, session.env
    return map(
        session.prepare,
        batches_from(
            session.dataset, session.batch, "train", cfg.batch_size, rank=env.rank,
            world_size=env.world_size, shuffle=True, seed=cfg.seed, epoch=session.epoch,
            limit=cfg.limit_train_batches,
        ),
    )  # fmt: skip


def train_epoch(
    session: Session, *, hook: BatchHook | None = None, extra_state: Any = None
) -> None:
    """This epoch's training batches (``--limit_train_batches`` at most) from batch
    ``session.batch`` on, checkpointing every ``--checkpoint_every`` steps.

    With ``--checkpoint_every`` the batches reach the pipeline in runs that end at each
    checkpoint, so the pipeline drains (no batch fetched ahead) before a checkpoint is taken:
    what it saves, ``hook``'s state included, covers exactly the batches trained.
    """
    cfg, env, ds = session.config, session.env, session.dataset
    total = ds.num_batches("train", cfg.batch_size, env.world_size)
    if cfg.limit_train_batches is not None:
        total = min(total, cfg.limit_train_batches)
    batches = train_batches(session)
    session.model.train()
    start, steps, saving = time.perf_counter(), 0, 0.0
    with tqdm(
        total=total,
        initial=session.batch,
        desc=f"epoch {session.epoch + 1}/{cfg.epochs}",
        disable=not env.is_main,
        mininterval=5.0,
    ) as bar:
        while session.batch < total:
            run = total - session.batch
            if cfg.checkpoint_every is not None:
                run = min(run, cfg.checkpoint_every - session.step % cfg.checkpoint_every)
            # NOTE: a run also ends at each cce phase, so the pipeline drains (no batch
            # remapped ahead with the old hash) before the remap changes
            phase_at = session.next_phase_at()
            if phase_at is not None:
                run = min(run, max(phase_at - (session.epoch * total + session.batch), 0))
            segment: Iterable[Batch] = islice(batches, run)
            done = _train_steps(session, iter(hook(segment) if hook else segment), bar)
            steps += done
            if phase_at is not None and session.epoch * total + session.batch >= phase_at:
                _cce_phase(session)
            if done < run:  # NOTE: the data ended early; nothing more to train this epoch
                break
            # (done == 0: a phase a resumed run had passed, taken at once; nothing to save)
            if done and cfg.checkpoint_every and session.step % cfg.checkpoint_every == 0:
                if session.batch < total:  # NOTE: the epoch's end is checkpointed by fit
                    tic = time.perf_counter()
                    ckpt.save(session, extra_state)
                    saving += time.perf_counter() - tic
    session.train_seconds += time.perf_counter() - start - saving
    session.train_samples += steps * cfg.batch_size * env.world_size


def _train_steps(session: Session, batches: Iterator[Batch], bar: tqdm) -> int:
    """Train on ``batches`` until they run out; return the number of steps."""
    done = 0
    while True:
        try:
            loss, _, _ = session.pipeline.progress(batches)
        except StopIteration:
            return done
        done += 1
        session.step += 1
        session.batch += 1
        bar.update(1)
        if session.step % session.config.log_every == 0:
            logger.info("epoch %d step %d: loss %.5f", session.epoch + 1, session.step, float(loss))


def _eval_batches(
    session: Session, split: str, limit: int | None
) -> tuple[Iterator[Batch], list[int]]:
    """This rank's batches of ``split`` and the number of real rows in each.

    Without ``limit`` the incomplete last global batch is padded (with copies of its first
    row, masked out of the metrics) so that the whole split is evaluated while every rank
    still runs the same number of batches.
    """
    cfg, env, ds = session.config, session.env, session.dataset
    per_global = cfg.batch_size * env.world_size
    num_full = ds.num_batches(split, cfg.batch_size, env.world_size)
    if limit is not None and limit <= num_full:
        batches = ds.batches(
            split, cfg.batch_size, rank=env.rank, world_size=env.world_size, limit=limit
        )
        return iter(map(session.prepare, batches)), [cfg.batch_size] * limit
    valid = [cfg.batch_size] * num_full
    rows_R = ds.splits[split][num_full * per_global :]
    tail: list[Batch] = []
    if rows_R.numel():
        padded_R = torch.cat([rows_R, rows_R[:1].expand(per_global - rows_R.numel())])
        tail = [
            ds.make_batch(padded_R[env.rank * cfg.batch_size : (env.rank + 1) * cfg.batch_size])
        ]
        valid.append(max(0, min(cfg.batch_size, rows_R.numel() - env.rank * cfg.batch_size)))
    full = batches_from(ds, 0, split, cfg.batch_size, rank=env.rank, world_size=env.world_size)
    return iter(map(session.prepare, _chain(full, tail))), valid


def _chain(*parts: Iterable[Batch]) -> Iterator[Batch]:
    for part in parts:
        yield from part


def evaluate(session: Session, split: str, limit: int | None = None) -> dict[str, float]:
    """AUROC and logloss (torchmetrics), NE, calibration and AUC (``torchrec.metrics``)
    over ``split`` on all ranks together (both libraries sync them).

    Returns:
        ``{"auc", "logloss", "ne", "calibration", "rec_auc", "num_samples"}`` (identical on
        every rank); NaN metrics for an empty split.
    """
    batches, valid = _eval_batches(session, split, limit)
    env, device = session.env, session.env.device
    batches = iter(
        tqdm(
            batches,
            total=len(valid),
            desc=f"eval {split}",
            disable=not env.is_main,
            mininterval=5.0,
        )
    )
    auroc, logloss = BinaryAUROC().to(device), MeanMetric().to(device)
    # NOTE: the window holds every evaluated row of all ranks, so TorchRec's AUC is exact
    rec_metrics = ctr_metric_module(
        session.config.batch_size,
        window_size=max(1, len(valid)) * session.config.batch_size * env.world_size,
        world_size=env.world_size,
        rank=env.rank,
        device=device,
    )
    num_local = 0
    session.model.eval()
    i = 0
    with torch.no_grad():
        while True:
            try:
                _, logits_B, labels_B = session.pipeline.progress(batches)
            except StopIteration:
                break
            n = valid[i]
            i += 1
            logits_B, labels_B = logits_B[:n].float(), labels_B[:n].float()
            auroc.update(torch.sigmoid(logits_B), labels_B.long())
            logloss.update(F.binary_cross_entropy_with_logits(logits_B, labels_B, reduction="none"))
            update_ctr_metrics(rec_metrics, logits_B, labels_B)
            num_local += n
    session.model.train()
    assert i == len(valid), f"evaluated {i} batches, expected {len(valid)}"
    num_N = torch.tensor([num_local], dtype=torch.int64, device=device)
    dist.all_reduce(num_N)
    num = int(num_N)
    if num == 0:
        logger.warning("split %r is empty: no metrics", split)
        return {**dict.fromkeys(EVAL_KEYS, float("nan")), "num_samples": 0}
    return {
        "auc": float(auroc.compute()),
        "logloss": float(logloss.compute()),
        **compute_ctr_metrics(rec_metrics),
        "num_samples": num,
    }


def fit(
    session: Session, *, hook: BatchHook | None = None, extra_state: Any = None
) -> dict[str, Any]:
    """Resume if asked (mid-epoch too), train the remaining epochs (validating and
    checkpointing after each, and every ``--checkpoint_every`` steps), then test.

    Args:
        session: from :func:`build_session`.
        hook: wraps each epoch's training batches (e.g. the teacher's id counter).
        extra_state: an object with ``state() -> dict[str, Tensor]`` (collective, equal on
            every rank) and ``load(dict[str, Tensor])``, checkpointed with the model.

    Returns:
        ``val_auc``, ``val_logloss``, ``val_ne``, ``val_calibration``, ``val_rec_auc``, the
        same without ``val_`` for the test split, ``qps`` (training samples per second of all
        ranks, also as ``samples_per_s``), the table statistics, ``epochs``, ``steps`` and
        ``history`` (per-epoch validation).
    """
    cfg, env = session.config, session.env
    if cfg.resume:
        ckpt.resume(session, extra_state)
    val = dict.fromkeys(EVAL_KEYS, float("nan"))
    while session.epoch < cfg.epochs:
        train_epoch(session, hook=hook, extra_state=extra_state)
        session.epoch += 1
        session.batch = 0
        val = evaluate(session, "val", cfg.limit_val_batches)
        session.history.append(
            {
                "epoch": session.epoch,
                "step": session.step,
                "val_auc": val["auc"],
                "val_logloss": val["logloss"],
            }
        )
        logger.info("epoch %d: val %s", session.epoch, _format(val))
        if cfg.checkpoint_dir is not None:
            ckpt.save(session, extra_state)
    if not session.history:  # resumed after the last epoch: validate the restored model
        val = evaluate(session, "val", cfg.limit_val_batches)
    test = evaluate(session, "test", cfg.limit_test_batches)
    qps = global_qps(session.train_samples, session.train_seconds, device=env.device)
    logger.info("test %s; train %.0f samples/s", _format(test), qps)
    return {
        **{key: test[key] for key in EVAL_KEYS},
        **{f"val_{key}": val[key] for key in EVAL_KEYS},
        "test_samples": test["num_samples"],
        "qps": qps,
        "samples_per_s": qps,
        **session.stats,
        "epochs": session.epoch,
        "steps": session.step,
        "world_size": env.world_size,
        "history": session.history,
    }


def _format(metrics: dict[str, float]) -> str:
    return (
        f"auc {metrics['auc']:.5f} logloss {metrics['logloss']:.5f} ne {metrics['ne']:.5f} "
        f"calibration {metrics['calibration']:.4f} rec_auc {metrics['rec_auc']:.5f}"
    )
