"""Staging quantized tables on disk while TorchRec shards a model for inference.

:func:`torchrec_lhf.inference.shard_for_inference` (``spill=True``) writes the quantized
tables to raw files (:func:`spill_weights`; never pickled), frees them in place
(:func:`release_tbe_weights`), lets TorchRec allocate the sharded tables, and fills those
one table at a time (:func:`assign_spilled_weights`): the two sets of tables are never in
memory together.
"""

import logging
import shutil
from pathlib import Path

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
from torch import nn

logger = logging.getLogger(__name__)


def room_to_spill(
    weights: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]], directory: Path
) -> bool:
    """Whether ``directory``'s disk holds the quantized tables (with 5% to spare); if not,
    a warning says so and the export keeps them in memory (a higher peak, not a failure)."""
    need = sum(
        t.numel() * t.element_size() for parts in weights.values() for t in parts if t is not None
    )
    free = shutil.disk_usage(directory).free
    if free >= 1.05 * need:
        return True
    logger.warning(
        "%s has %d bytes free, the quantized tables need %d: they stay in memory while "
        "sharded (set TMPDIR to a disk with room to lower the export's peak)",
        directory,
        free,
        need,
    )
    return False


SpilledTensor = tuple[Path, torch.dtype, tuple[int, ...]]
"""One spilled tensor: its file (raw bytes), dtype and shape."""


def spill_weights(
    weights: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]], directory: Path
) -> dict[str, tuple[SpilledTensor, SpilledTensor | None]]:
    """Write every table's weight (and scale/bias, where split) to ``directory``, one raw
    file each (never pickled; one table's copy in memory at a time)."""
    spilled = {}
    for i, (name, (weight, scale_bias)) in enumerate(weights.items()):
        parts = []
        for j, t in enumerate((weight, scale_bias)):
            if t is None:
                parts.append(None)
                continue
            path = directory / f"{i}_{j}.bin"
            # NOTE: a copy: numpy would pin the storage that _release_tbe_weights frees
            t.detach().cpu().clone(memory_format=torch.contiguous_format).view(-1).view(
                torch.uint8
            ).numpy().tofile(path)
            parts.append((path, t.dtype, tuple(t.shape)))
        spilled[name] = (parts[0], parts[1])
    return spilled


def read_spilled(part: SpilledTensor) -> torch.Tensor:
    path, dtype, shape = part
    nbytes = path.stat().st_size
    raw = torch.from_file(str(path), shared=False, size=nbytes, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def release_tbe_weights(model: nn.Module) -> None:
    """Free the memory of ``model``'s quantized (FBGEMM inference) tables in place: their
    storages shrink to nothing, so every view of them (the collections' weight buffers)
    goes too. ``model`` must not be run afterwards; sharding it allocates tables anew. A
    storage that cannot shrink (memory TorchRec or FBGEMM did not allocate through torch's
    allocator, such as unified memory) is left as it is: only the peak stays higher."""
    for module in model.modules():
        if isinstance(module, IntNBitTableBatchedEmbeddingBagsCodegen):
            for name in ("weights_host", "weights_dev", "weights_uvm"):
                t = getattr(module, name, None)
                if isinstance(t, torch.Tensor) and t.numel() and t.untyped_storage().resizable():
                    t.untyped_storage().resize_(0)


def assign_spilled_weights(
    model: nn.Module, spilled: dict[str, tuple[SpilledTensor, SpilledTensor | None]]
) -> None:
    """TorchRec's ``assign_weights_to_tbe`` from spilled files: each table is read, copied
    into the sharded tables and dropped before the next."""
    for module in model.modules():
        if not isinstance(module, IntNBitTableBatchedEmbeddingBagsCodegen):
            continue
        for spec, (dest, dest_scale_bias) in zip(
            module.embedding_specs, module.split_embedding_weights(), strict=True
        ):
            if spec[0] not in spilled:
                raise ValueError(f"table {spec[0]!r} of the sharded model was not quantized")
            weight, scale_bias = spilled[spec[0]]
            dest.copy_(read_spilled(weight))
            if (scale_bias is None) != (dest_scale_bias is None):
                raise ValueError(f"table {spec[0]!r}: scale/bias split differs after sharding")
            if scale_bias is not None:
                dest_scale_bias.copy_(read_spilled(scale_bias))
