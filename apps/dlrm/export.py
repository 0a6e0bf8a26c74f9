"""The serving model: the trained DLRM gathered from its shards, MLET collapsed, saved.

``python -m apps.dlrm.train ... --export_model model.safetensors`` writes, on rank 0 after
training, the unsharded DLRM's ``state_dict`` (fp32 tables, MLPs, the learned-hash remap
buffers) as one safetensors file with a JSON manifest and a checksum (atomically, no
pickle). MLET tables are collapsed first (``W @ P``: one ``(rows, d)`` table per table, the
narrow dim it was trained for), so the file holds what a deployment stores; the bytes of
its tables are the ``embedding_bytes`` the app reports. :func:`load_serving_model` builds
the same module again from the file.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from apps.dlrm.config import TrainConfig
from apps.dlrm.loop import Session
from apps.dlrm.model import build_model, table_configs
from torchrec_lhf._io import load_tensors, save_tensors
from torchrec_lhf.distributed.gather import gather_to_rank0
from torchrec_lhf.distributed.mlet import PipelinedMLET
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)

KIND = "serving_model"


def _materialize(model: nn.Module) -> nn.Module:
    """``model`` (tables on the meta device) on CPU, keeping the buffers that already hold
    data there (the remap built from the plan); the rest is allocated uninitialized."""
    kept = {k: b.clone() for k, b in model.named_buffers() if b.device.type != "meta"}
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for key, b in model.named_buffers():
            if key in kept:
                b.copy_(kept[key])
    return model


def serving_module(unsharded: nn.Module) -> nn.Module:
    """The DLRM of an unsharded training model, its MLET collection collapsed.

    Args:
        unsharded: the app's ``DLRMTrain`` (from :func:`~apps.dlrm.model.build_model`),
            holding trained weights.

    Returns:
        The inner DLRM; a pipelined MLET collection becomes one plain (or learned-hash)
        EmbeddingBagCollection at the narrow dim.
    """
    dlrm = unsharded.model
    ebc = dlrm.sparse_arch.embedding_bag_collection
    if isinstance(ebc, PipelinedMLET):
        ebc.mlet.inner = ebc.inner  # undo the split made for the training pipeline
        dlrm.sparse_arch.embedding_bag_collection = ebc.mlet.collapse()
    return dlrm


def export_model(
    session: Session, path: str | os.PathLike, *, num_dense: int
) -> dict[str, Any] | None:
    """Gather the trained model to rank 0 and save its serving module. Collective.

    Args:
        session: the trained session (any sharding, any world size).
        path: the file to write (rank 0, atomically).
        num_dense: dense features of the model.

    Returns:
        On rank 0, the manifest written; ``None`` on the other ranks.
    """
    full = gather_to_rank0(dict(session.model.state_dict()), device=session.env.device)
    if full is None:
        return None
    config = session.config
    unsharded = build_model(
        config,
        session.tables,
        num_dense=num_dense,
        plan=session.plan,
        dense_device=torch.device("cpu"),
        world_size=1,
    )
    unsharded = _materialize(unsharded)
    unsharded.load_state_dict(full, strict=True)
    dlrm = serving_module(unsharded)
    manifest = {
        "kind": KIND,
        "config": config.to_dict(),
        "num_dense": num_dense,
        "plan_fingerprint": session.plan_fingerprint,
        "mlet_collapsed": config.mlet_fraction is not None,
        "tables": [
            {"name": t.name, "num_embeddings": t.num_embeddings, "features": t.feature_names}
            for t in session.tables
        ],
    }
    save_tensors(path, dlrm.state_dict(), manifest)
    logger.info("serving model -> %s (%d tensors)", path, len(dlrm.state_dict()))
    return manifest


def load_serving_model(path: str | os.PathLike, plan: HashPlan | None = None) -> nn.Module:
    """Rebuild the module :func:`export_model` saved (on CPU, in eval mode).

    Args:
        path: the exported file.
        plan: the model's hash plan, if it had one (its fingerprint is checked).

    Raises:
        ValueError: not a serving model, another plan, or tensors that do not fit.
    """
    tensors, manifest = load_tensors(path, KIND)
    fingerprint = None if plan is None else plan.fingerprint()
    if manifest["plan_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path}: exported with plan {manifest['plan_fingerprint']!r}, got {fingerprint!r}"
        )
    config = TrainConfig(**manifest["config"])
    tables = table_configs(
        [t["features"][0] for t in manifest["tables"]],
        [t["num_embeddings"] for t in manifest["tables"]],
        config.embedding_dim,
    )
    model = build_model(
        config,
        tables,
        num_dense=manifest["num_dense"],
        plan=plan,
        dense_device=torch.device("cpu"),
        world_size=1,
    )
    dlrm = serving_module(_materialize(model))
    try:
        dlrm.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: tensors do not fit the model: {e}") from e
    return dlrm.eval()
