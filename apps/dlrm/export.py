"""The serving artifact: the trained DLRM gathered from its shards, MLET collapsed, exported.

``python -m apps.dlrm.train ... --export_model DIR`` writes, on rank 0 after training, a
directory that TorchRec's inference path loads:

- ``model_int8.pt``: the primary artifact. The DLRM as a :class:`~torchrec_lhf.inference.
  ScoringModule` (dense, ids, lengths -> probabilities), quantized to int8 tables by
  ``quantize_inference_model``, sharded by ``shard_quant_model`` (one CPU rank, table-wise,
  the learned-hash remap inside the sharded collection), FX-traced and TorchScripted; load
  it with ``torch.jit.load`` (no pickle) or :func:`load_scripted_model`;
- ``model_fp32.pt``: the same with fp32 tables (scores equal the trained model's);
- ``weights.safetensors``: the unsharded DLRM's ``state_dict`` (fp32 tables, MLPs, remap
  buffers) with a JSON manifest and a checksum; :func:`load_serving_model` rebuilds the
  eager module from it (with the project's code).

MLET tables are collapsed first (``W @ P``: one ``(rows, d)`` table per table, the narrow
dim it was trained for), so the files hold what a deployment stores; the bytes of the
tables in ``weights.safetensors`` are the ``embedding_bytes`` the app reports. Every file
is written atomically, and each ``.pt`` carries the manifest (``manifest.json`` extra file).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apps.dlrm.config import TrainConfig
from apps.dlrm.loop import Session
from apps.dlrm.model import build_model, table_configs
from torchrec_lhf._io import load_tensors, save_tensors
from torchrec_lhf.distributed.gather import gather_to_rank0
from torchrec_lhf.distributed.mlet import PipelinedMLET
from torchrec_lhf.inference import load_scripted, save_scripted, script_serving_model
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)

KIND = "serving_model"
WEIGHTS_FILE = "weights.safetensors"
EXPORT_DTYPES = ("int8", "fp32")
"""Table dtypes of the scripted models :func:`export_model` writes (``model_<dtype>.pt``)."""


def scripted_file(dtype: str) -> str:
    """The file name of the scripted model with ``dtype`` tables."""
    return f"model_{dtype}.pt"


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
    session: Session,
    path: str | os.PathLike,
    *,
    num_dense: int,
    dtypes: tuple[str, ...] = EXPORT_DTYPES,
) -> dict[str, Any] | None:
    """Gather the trained model to rank 0 and write the serving artifact. Collective.

    Args:
        session: the trained session (any sharding, any world size).
        path: the directory to write (rank 0; created, files replaced atomically).
        num_dense: dense features of the model.
        dtypes: table dtypes of the scripted models (keys of
            :data:`torchrec_lhf.inference.WEIGHT_DTYPES`).

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
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_FILE, dlrm.state_dict(), manifest)
    features = [f for t in session.tables for f in t.feature_names]
    for dtype in dtypes:
        scripted = script_serving_model(dlrm, features, num_dense=num_dense, dtype=dtype)
        save_scripted(
            directory / scripted_file(dtype),
            scripted,
            dict(manifest, dtype=dtype, feature_names=features),
        )
    logger.info("serving model -> %s (%s, %s)", directory, WEIGHTS_FILE, list(dtypes))
    return manifest


def load_scripted_model(
    path: str | os.PathLike, dtype: str = "int8"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The scripted model of an exported directory: ``(module, manifest)``.

    The module maps ``(dense (B, num_dense), values (V,), lengths (F * B,))`` to
    probabilities ``(B,)``, features in ``manifest["feature_names"]`` order.

    Raises:
        FileNotFoundError: no ``model_<dtype>.pt`` in ``path``.
        ValueError: the file is not a serving model.
    """
    model, manifest = load_scripted(Path(path) / scripted_file(dtype))
    if manifest.get("kind") != KIND:
        raise ValueError(f"{path}: not a {KIND} (kind {manifest.get('kind')!r})")
    return model, manifest


def load_serving_model(path: str | os.PathLike, plan: HashPlan | None = None) -> nn.Module:
    """Rebuild the eager float module :func:`export_model` saved (on CPU, in eval mode).

    Args:
        path: the exported directory (or its ``weights.safetensors``).
        plan: the model's hash plan, if it had one (its fingerprint is checked).

    Raises:
        ValueError: not a serving model, another plan, or tensors that do not fit.
    """
    if Path(path).is_dir():
        path = Path(path) / WEIGHTS_FILE
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
