"""The DLRM app's checkpoints: a :class:`~apps.dlrm.loop.Session` through
:mod:`torchrec_lhf.checkpoint` (DCP: every rank writes and reads its own shards).

Besides the model and optimizer state, a checkpoint's ``meta`` holds the data position
(``epoch``, ``batch`` of that epoch, the global batch size), the hash plan's fingerprint
and the :data:`~apps.dlrm.config.MODEL_FIELDS` of the config, which a resumed run must
match; ``extra`` holds the caller's tensors (the teacher's id counts). Checkpoints of the
format before DCP (``checkpoint.safetensors``) are refused with a ValueError.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from apps.dlrm.config import MODEL_FIELDS
from torchrec_lhf import checkpoint

if TYPE_CHECKING:
    from apps.dlrm.loop import Session

logger = logging.getLogger(__name__)

KEEP = 2
"""Complete checkpoints kept in ``--checkpoint_dir`` (the newest)."""


def _expected(session: Session) -> dict[str, Any]:
    config = session.config.to_dict()
    return {
        "plan_fingerprint": session.plan_fingerprint,
        "model": {k: config[k] for k in MODEL_FIELDS},
    }


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
            values named), or is of the old format.
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
    if extra_state is not None:
        extra_state.load(loaded.extra)
    logger.info(
        "resumed at epoch %d, batch %d, step %d", session.epoch + 1, session.batch, session.step
    )
    return True
