"""The serving artifact: the trained DLRM written shard by shard, MLET collapsed, exported.

``python -m apps.dlrm.train ... --export_model DIR`` writes, after training, a directory that
TorchRec's inference path loads:

- ``weights/``: the trained model's ``state_dict`` in its training form (sharded tables,
  MLET's wide tables and projections, MLPs, remap buffers), written with
  ``torch.distributed.checkpoint`` (:mod:`torchrec_lhf.sharded_io`): every rank writes its
  own shards (``__{rank}_0.distcp``), no rank gathers the model;
- ``manifest.json``: what the model is (config, tables, plan fingerprint, the weights'
  digest); :func:`load_serving_model` rebuilds the eager module from it and ``weights/``
  (with the project's code);
- ``model_int8.pt``: the primary artifact, built on rank 0 from ``weights/``. The DLRM as a
  :class:`~torchrec_lhf.inference.ScoringModule` (dense, ids, lengths -> probabilities),
  MLET tables collapsed (``W @ P``: one ``(rows, d)`` table per table, the narrow dim it was
  trained for), quantized to int8 tables by ``quantize_inference_model``, sharded by
  ``shard_quant_model`` (one CPU rank, table-wise, the learned-hash remap inside the
  sharded collection), FX-traced and TorchScripted; load it with ``torch.jit.load`` (no
  pickle) or :func:`load_scripted_model`;
- ``model_fp32.pt``: the same with fp32 tables (scores equal the trained model's);
- ``plan.safetensors`` (``--compression cce`` only): the plan the model holds after its
  phases, which its flags do not give (they give the starting one);
  :func:`load_serving_model` reads it when no plan is passed.

Rank 0 alone builds the unsharded model and fills it in place from ``weights/`` (DCP reads
each saved chunk into its table): it holds that model and the scripted copies, never a
gathered second copy. Each ``.pt`` carries the manifest (``manifest.json`` extra file).

Atomicity: the export is staged in the sibling ``.DIR.partial`` and moved over ``DIR`` at
the end (:func:`~torchrec_lhf.sharded_io.replace_dir`), so a killed export leaves the
previous one in place; ``DIR`` must be an earlier export or a new or empty directory.
An export from before DCP (``weights.safetensors``, collapsed tables) still loads with
:func:`load_serving_model`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from apps.dlrm.config import TrainConfig
from apps.dlrm.loop import Session
from apps.dlrm.model import build_model, table_configs
from torchrec_lhf._io import atomic_write_json, load_tensors, tensor_digest
from torchrec_lhf.cli import check_int
from torchrec_lhf.distributed.mlet import PipelinedMLET
from torchrec_lhf.inference import load_scripted, save_scripted, script_serving_model
from torchrec_lhf.plan import HashPlan
from torchrec_lhf.sharded_io import (
    load_state_dict_in_place,
    replace_dir,
    save_state_dict,
    staging_dir,
)

logger = logging.getLogger(__name__)

KIND = "serving_model"
WEIGHTS_DIR = "weights"
"""The trained state dict, written with DCP (one ``.distcp`` file per rank)."""
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.safetensors"
"""A ``cce`` model's plan after its phases (its clustered indices change in training)."""
LEGACY_WEIGHTS_FILE = "weights.safetensors"
"""The weights of an export from before DCP (still loaded by :func:`load_serving_model`)."""
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
    """Write the serving artifact of the trained model, each rank its own shards. Collective.

    Every rank writes its shards of the trained ``state_dict`` into ``weights/`` of a staged
    sibling directory (no rank sends tables to another); after a barrier rank 0 alone builds
    the unsharded model, fills it from those files in place, writes the manifest and the
    scripted models, and moves the staged directory over ``path``; the other ranks wait.

    Args:
        session: the trained session (any sharding, any world size).
        path: the directory to write (replaced whole: an earlier export or an empty or
            missing directory; on a file system every rank sees).
        num_dense: dense features of the model.
        dtypes: table dtypes of the scripted models (keys of
            :data:`torchrec_lhf.inference.WEIGHT_DTYPES`).

    Returns:
        On rank 0, the manifest written; ``None`` on the other ranks.

    Raises:
        ValueError: ``path`` holds something other than an export.
    """
    directory = Path(os.path.abspath(path))
    check_replaceable(directory)
    staged = staging_dir(directory)
    if session.env.rank == 0:
        shutil.rmtree(staged, ignore_errors=True)  # what a killed export left
        (staged / WEIGHTS_DIR).mkdir(parents=True)
    dist.barrier()
    save_state_dict(session.model.state_dict(), staged / WEIGHTS_DIR)
    dist.barrier()  # every rank's shards are on disk
    manifest = None
    if session.env.rank == 0:
        manifest = _write_serving_files(session, staged, num_dense=num_dense, dtypes=dtypes)
        replace_dir(staged, directory)
        logger.info("serving model -> %s (%s/, %s)", directory, WEIGHTS_DIR, list(dtypes))
    # NOTE: the other ranks wait for rank 0's build (seconds to a minute at the MLPerf
    # heights), well within the process group's timeout
    dist.barrier()
    return manifest


def check_replaceable(directory: Path) -> None:
    """Refuse to replace a directory that is not an export (e.g. ``--export_model runs``):
    what :func:`export_model` checks, and the app where it starts (before the training)."""
    if not directory.exists():
        return
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None
    if names is None or (names and not _is_export(directory)):
        raise ValueError(
            f"export path {str(directory)!r} is not an earlier export ({names and names[:5]}): "
            "export into a new or empty directory, which is replaced whole"
        )


def _is_export(directory: Path) -> bool:
    if (directory / LEGACY_WEIGHTS_FILE).is_file():
        return True
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == KIND


def _write_serving_files(
    session: Session, directory: Path, *, num_dense: int, dtypes: tuple[str, ...]
) -> dict[str, Any]:
    """On rank 0: the unsharded model filled from ``directory/weights``, MLET collapsed;
    write the manifest and the scripted models into ``directory``; return the manifest."""
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
    digest = _load_weights(unsharded, directory / WEIGHTS_DIR)
    dlrm = serving_module(unsharded)
    plan_file = None
    if config.compression == "cce" and session.plan is not None:
        session.plan.save(directory / PLAN_FILE)
        plan_file = PLAN_FILE
    manifest = {
        "kind": KIND,
        "config": config.to_dict(),
        "num_dense": num_dense,
        "plan_fingerprint": session.plan_fingerprint,
        "plan_file": plan_file,
        "weights_dir": WEIGHTS_DIR,
        "weights_form": "training",
        "weights_sha256": digest,
        "scripted_mlet_collapsed": config.mlet_fraction is not None,
        "tables": [
            {"name": t.name, "num_embeddings": t.num_embeddings, "features": t.feature_names}
            for t in session.tables
        ],
    }
    atomic_write_json(directory / MANIFEST_FILE, manifest)
    features = [f for t in session.tables for f in t.feature_names]
    for dtype in dtypes:
        scripted = script_serving_model(dlrm, features, num_dense=num_dense, dtype=dtype)
        save_scripted(
            directory / scripted_file(dtype),
            scripted,
            dict(manifest, dtype=dtype, feature_names=features),
        )
        del scripted  # NOTE: not alive while the next dtype's copies are made
    return manifest


def _load_weights(model: nn.Module, weights: Path) -> str:
    """Fill ``model`` (the unsharded training form) from the DCP directory ``weights``, in
    place; return the digest of its state dict.

    NOTE: DCP fills the state dict's tensors, the module's own (views, no copy); the
    ``load_state_dict`` after it copies them onto themselves and runs the modules' load
    hooks, for entries a state dict shows in another form than the module holds (the
    remap's heads: here equal to the plan's it was built with, as the fingerprint is).
    """
    state = model.state_dict()
    load_state_dict_in_place(state, weights)
    model.load_state_dict(state, strict=True)
    return tensor_digest(state)


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
    """Rebuild the eager float module of an export (on CPU, in eval mode, MLET collapsed).

    Reads ``weights/`` (DCP, training form) with the safe reader and checks its digest; an
    export from before DCP (``weights.safetensors``, collapsed tables) still loads.

    Args:
        path: the exported directory (or an old export's ``weights.safetensors``).
        plan: the model's hash plan, if it had one (its fingerprint is checked); None
            reads the export's own plan where it holds one (``cce``: ``plan.safetensors``).

    Raises:
        ValueError: not a serving model, another plan, tensors that do not fit, or damaged
            weights (each naming the path and the value).
    """
    path = Path(path)
    legacy = path if path.is_file() else path / LEGACY_WEIGHTS_FILE
    if path.is_file() or (not (path / MANIFEST_FILE).exists() and legacy.is_file()):
        tensors, manifest = load_tensors(legacy, KIND)
        return _rebuild(legacy, manifest, plan, tensors)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a {KIND} (no readable {MANIFEST_FILE}: {e})") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else manifest
        raise ValueError(f"{path}: not a {KIND} (kind {kind!r})")
    plan_file = manifest.get("plan_file")
    if plan_file not in (None, PLAN_FILE):
        raise ValueError(f"{path}: the manifest's plan_file is {plan_file!r}, not {PLAN_FILE!r}")
    if plan is None and plan_file is not None:
        plan = HashPlan.load(path / PLAN_FILE)
    return _rebuild(path, manifest, plan, None)


def _rebuild(
    path: Path, manifest: dict[str, Any], plan: HashPlan | None, tensors: dict | None
) -> nn.Module:
    """The model of ``manifest``: from ``tensors`` (an old export's collapsed state dict)
    or, if None, from ``path/weights`` (the training form, collapsed here)."""
    needed = ("config", "num_dense", "plan_fingerprint", "tables")
    needed += ("weights_sha256",) if tensors is None else ()
    if missing := [k for k in needed if k not in manifest]:
        raise ValueError(f"{path}: the {KIND} manifest lacks {missing}")
    fingerprint = None if plan is None else plan.fingerprint()
    if manifest["plan_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path}: exported with plan {manifest['plan_fingerprint']!r}, got {fingerprint!r}"
        )
    try:  # (a manifest edited by hand: its values named with the file)
        config = TrainConfig(**manifest["config"])
        entries = manifest["tables"]
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"tables must be a non-empty list, got {entries!r}")
        for t in entries:
            check_int(f"table {t.get('name')!r}: num_embeddings", t["num_embeddings"], low=1)
        check_int("num_dense", manifest["num_dense"], low=1)
        tables = table_configs(
            [t["features"][0] for t in entries],
            [t["num_embeddings"] for t in entries],
            config.embedding_dim,
        )
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: the {KIND} manifest is malformed: {e!r}") from e
    model = build_model(
        config,
        tables,
        num_dense=manifest["num_dense"],
        plan=plan,
        dense_device=torch.device("cpu"),
        world_size=1,
    )
    model = _materialize(model)
    if tensors is None:
        digest = _load_weights(model, path / WEIGHTS_DIR)
        if digest != manifest["weights_sha256"]:
            raise ValueError(
                f"{path}: weights digest {digest} differs from the manifest's "
                f"{manifest['weights_sha256']}: the weights were altered or damaged"
            )
        return serving_module(model).eval()
    dlrm = serving_module(model)
    try:
        dlrm.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: tensors do not fit the model: {e}") from e
    return dlrm.eval()
