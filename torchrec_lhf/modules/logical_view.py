"""The logical view shared by the learned-hash collections and their twins.

:class:`~torchrec_lhf.modules.embedding_bag.LearnedHashEmbeddingBagCollection`, its
quantized twin (:mod:`torchrec_lhf.modules.quant`) and the sharded ones
(:mod:`torchrec_lhf.distributed.embedding_bag`,
:mod:`torchrec_lhf.distributed.quant_embedding_bag`) answer ``embedding_bag_configs()``
with the logical tables and carry the same remap, combine and plan fingerprint. The twins
take those parts with :func:`copy_learned_hash_parts`, and every class binds
:func:`logical_configs` and :func:`plan_fingerprint` as its methods.

NOTE: bound, not inherited: each class already sits one level under its own TorchRec base
(matched by exact type), and a mixin would add a second level. The functions' first
argument is named ``self`` so that TorchScript compiles them as the methods they are.
"""

# NOTE: no ``from __future__ import annotations``: TorchScript reads the methods'
# annotations as types, not strings.

import copy
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import get_embedding_names_by_table


def logical_configs(self) -> list[EmbeddingBagConfig]:
    """The logical table configs, as given (heights ``N``, dims ``D``)."""
    return self._logical_configs


def logical_embedding_names(self) -> list[list[str]]:
    """The logical features of each logical table: a sequence collection's output keys
    (``embedding_names_by_table()`` of TorchRec's EmbeddingCollection)."""
    return get_embedding_names_by_table(self._logical_configs)


def plan_fingerprint(self) -> str:
    """:meth:`HashPlan.fingerprint` of the plan this module holds: the one it was built
    with, or the one a ``cce`` phase left (:func:`hold_plan`)."""
    return self._plan_fingerprint


def hold_plan(module: nn.Module, plan: Any) -> Any:
    """Record that ``module`` (a learned-hash collection or twin) now holds ``plan``, a
    :class:`~torchrec_lhf.plan.HashPlan` its remap was rewritten to in place; returns it."""
    module._plan_fingerprint = plan.fingerprint()
    return plan


def remap_device(device: torch.device | None) -> torch.device:
    """Where the remap of tables on ``device`` lives: CPU when that is ``meta`` or None."""
    return device if device is not None and device.type != "meta" else torch.device("cpu")


def remap_tensors(source: nn.Module) -> dict[int, torch.Tensor]:
    """The tensors of a learned-hash collection's ``remap`` and ``combine`` (its per-id
    mappings, the bulk of them), by ``id``: a ``copy.deepcopy`` memo that shares them."""
    parts = [m for m in (source.remap, source.combine) if m is not None]
    return {id(t): t for m in parts for t in (*m.buffers(), *m.parameters())}


def copy_learned_hash_parts(
    source: nn.Module,
    target: nn.Module,
    *,
    device: torch.device | None = None,
    share: bool = False,
) -> None:
    """Give ``target`` (a quantized or sharded twin) the learned-hash parts of ``source``.

    Args:
        source: a learned-hash collection (float or quantized).
        target: its twin; gets copies of ``source``'s ``remap`` and ``combine`` and its
            logical configs and plan fingerprint (as :func:`logical_configs` and
            :func:`plan_fingerprint` read them).
        device: where the copied remap and combine go; None keeps them where they are.
        share: the copies' tensors are ``source``'s where ``device`` is theirs (new
            modules, the same mappings: no bytes copied). For inference twins, whose
            mappings nobody changes; a training twin takes copies, since ``cce`` rewrites
            its mappings in place.
    """
    memo = remap_tensors(source) if share else {}
    remap = copy.deepcopy(source.remap, dict(memo))
    combine = copy.deepcopy(source.combine, dict(memo))
    target.remap = remap if device is None else remap.to(device)
    target.combine = combine if device is None or combine is None else combine.to(device)
    target._logical_configs = source.logical_configs()
    target._plan_fingerprint = source.plan_fingerprint
