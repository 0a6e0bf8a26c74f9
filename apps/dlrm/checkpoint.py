"""The DLRM app's checkpoints: a :class:`~apps.dlrm.loop.Session` through
:mod:`torchrec_lhf.checkpoint` (DCP: every rank writes and reads its own shards).

Besides the model and optimizer state, a checkpoint's ``meta`` holds the data position
(``epoch``, ``batch`` of that epoch, the global batch size), the hash plan's fingerprint
and the :data:`~apps.dlrm.config.MODEL_FIELDS` of the config, which a resumed run must
match; ``extra`` holds the caller's tensors (the teacher's id counts). Checkpoints of the
format before DCP (``checkpoint.safetensors``) are refused with a ValueError.

A ``cce`` run's plan changes at each phase: its checkpoint also holds the starting plan's
fingerprint (which the resumed run must match) and the phases done (``cce_phase``); the
plan the model holds is restored from the loaded state (the clustered indices are the
remap's state) and checked against the saved fingerprint.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from apps.dlrm.config import MODEL_FIELDS
from torchrec_lhf import checkpoint
from torchrec_lhf.distributed.cce import restore_model_phase

if TYPE_CHECKING:
    from apps.dlrm.loop import Session

logger = logging.getLogger(__name__)

KEEP = 2
"""Complete checkpoints kept in ``--checkpoint_dir`` (the newest)."""


def _expected(session: Session) -> dict[str, Any]:
    """What a resumed run must match: the model's configuration and its plan (``cce``: the
    starting plan, which its phases replace; the one it holds is restored and checked after
    loading, :func:`_restore_cce_plan`)."""
    config = session.config.to_dict()
    if _is_cce(session):
        plan = {"start_plan_fingerprint": session.start_plan_fingerprint}
    else:
        plan = {"plan_fingerprint": session.plan_fingerprint}
    return {**plan, "model": {k: config[k] for k in MODEL_FIELDS}}


def _is_cce(session: Session) -> bool:
    return session.config.compression == "cce" and session.start_plan is not None


def save(session: Session, extra_state: Any = None) -> None:
    """Checkpoint ``session`` at its step into ``--checkpoint_dir`` (collective).

    Args:
        session: the run.
        extra_state: an object with ``state() -> dict[str, Tensor]`` (collective, equal on
            every rank), or None.
    """
    cfg = session.config
    assert cfg.checkpoint_dir is not None, "save needs --checkpoint_dir"
    meta = {
        **_expected(session),
        "plan_fingerprint": session.plan_fingerprint,
        **({"cce_phase": session.cce_phase} if _is_cce(session) else {}),
        "epoch": session.epoch,
        "batch": session.batch,
        "global_batch_size": cfg.batch_size * session.env.world_size,
        "config": cfg.to_dict(),
    }
    checkpoint.save(
        cfg.checkpoint_dir,
        model=session.model,
        optimizer=session.optimizer,
        step=session.step,
        meta=meta,
        extra=extra_state.state() if extra_state is not None else None,
        keep=KEEP,
    )


def resume(session: Session, extra_state: Any = None) -> bool:
    """Load the latest checkpoint of ``--checkpoint_dir`` into ``session`` (collective).

    Args:
        session: a freshly built run (any world size and sharding).
        extra_state: an object with ``load(dict[str, Tensor])``, or None.

    Returns:
        False (with a warning) if there is no checkpoint yet, else True.

    Raises:
        ValueError: the checkpoint has another hash plan or model configuration (both
            values named), is of the old format, or was saved mid-epoch by a run of another
            ``--seed`` (the data order of that epoch).
    """
    cfg = session.config
    loaded = checkpoint.load(
        cfg.checkpoint_dir,
        model=session.model,
        optimizer=session.optimizer,
        expect=_expected(session),
    )
    if loaded is None:
        logger.warning(
            "--resume: no checkpoint in %s yet; starting from scratch", cfg.checkpoint_dir
        )
        return False
    meta = loaded.meta
    session.epoch, session.step = int(meta["epoch"]), loaded.step
    session.batch = int(meta["batch"])
    saved_seed = meta.get("config", {}).get("seed")
    if session.batch and saved_seed is not None and saved_seed != cfg.seed:
        raise ValueError(
            f"{loaded.path} was saved mid-epoch (epoch {session.epoch + 1}, batch "
            f"{session.batch}) by a run with seed {saved_seed}, which orders that epoch's "
            f"rows; this run has seed {cfg.seed}, so the epoch would go on in another order, "
            f"training some rows twice and others not at all: resume with --seed {saved_seed} "
            "(a checkpoint at an epoch's end takes another seed)"
        )
    global_batch = cfg.batch_size * session.env.world_size
    if session.batch and meta["global_batch_size"] != global_batch:
        # NOTE: rows [0, batch * old) of the epoch's order are trained; continue at the batch
        # holding the first untrained row (a dataset shuffling batches, not rows, differs)
        session.batch = session.batch * int(meta["global_batch_size"]) // global_batch
        logger.warning(
            "resumed mid-epoch at global batch size %d (saved at %d): continuing at batch %d",
            global_batch,
            meta["global_batch_size"],
            session.batch,
        )
    if _is_cce(session):
        _restore_cce_plan(session, meta, loaded.path)
    if extra_state is not None:
        extra_state.load(loaded.extra)
    logger.info(
        "resumed at epoch %d, batch %d, step %d", session.epoch + 1, session.batch, session.step
    )
    return True


def _restore_cce_plan(session: Session, meta: dict[str, Any], path: Any) -> None:
    """After loading a ``cce`` run's state: the plan its model holds after the checkpoint's
    phases (the clustered indices from the state, the seeds from the phase), checked
    against the fingerprint saved with it."""
    phase = meta.get("cce_phase", 0)
    session.plan = restore_model_phase(session.model, session.start_plan, phase)
    if session.plan_fingerprint != meta.get("plan_fingerprint"):
        raise ValueError(
            f"{path}: after cce phase {phase} the model holds plan {session.plan_fingerprint!r}, "
            f"but the checkpoint was saved with {meta.get('plan_fingerprint')!r}"
        )
