"""Every read or write of a TorchRec private attribute, in one place.

TorchRec offers no public way to do the two things below. Each function names what it
touches, why, and the public alternative that was tried; ``docs/TORCHREC_PRIVATE.md``
lists the same (and the private uses that were replaced by public ones). When TorchRec
is upgraded, ``tests/modules/test_mch.py`` and ``tests/distributed/test_mch.py`` exercise
both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torchrec.modules.mc_modules import MCHManagedCollisionModule

if TYPE_CHECKING:  # the modules side must not import torchrec.distributed
    from torchrec.distributed.mc_embeddingbag import (
        ShardedManagedCollisionEmbeddingBagCollection,
    )

MCH_SERVING_BUFFERS: tuple[str, ...] = ("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping")
"""The buffers of an MCH module a deployment needs to map raw ids to rows."""


def mch_serving_buffers(module: MCHManagedCollisionModule) -> list[torch.Tensor]:
    """The sorted raw ids and their rows of one MCH module (``R`` int64 each).

    Reads the buffers ``_mch_sorted_raw_ids`` and ``_mch_remapped_ids_mapping`` (by name,
    through the public ``named_buffers``) to count what serving stores.

    Public alternative tried: ``MCHManagedCollisionModule`` has no accessor for its id map
    (``output_size()`` and ``input_size()`` give sizes only), and counting all its buffers
    would add the eviction metadata (counts, last access) and TorchRec's fixed bookkeeping,
    which serving does not need.
    """
    return [b for name, b in module.named_buffers(recurse=False) if name in MCH_SERVING_BUFFERS]


def wrap_eviction_tables(
    sharded: ShardedManagedCollisionEmbeddingBagCollection,
    wrap: Callable[[Any], Any],
) -> None:
    """Replace each fused table module TorchRec resets evicted rows through by ``wrap(tbe)``.

    Reads and writes ``ShardedManagedCollisionEmbeddingBagCollection._table_to_tbe_and_index``
    (table name -> ``(fused FBGEMM module, table index)``), which TorchRec looks up at every
    eviction to call ``reset_embedding_weight_momentum``; that FBGEMM op has no CPU kernel,
    so on CPU the sharder swaps in a module with a CPU reset.

    Public alternative tried: the fused modules are reachable through the sharded EBC's
    ``named_modules()``, but TorchRec reads this private map, not the module tree, at
    eviction time; replacing the module in the tree would not change what it calls, and
    TorchRec has no hook for the reset.
    """
    # NOTE: TorchRec private attribute (see docstring).
    table_to_tbe = sharded._table_to_tbe_and_index
    sharded._table_to_tbe_and_index = {
        table: (wrap(tbe), index) for table, (tbe, index) in table_to_tbe.items()
    }
