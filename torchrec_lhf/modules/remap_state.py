"""The remap's state dict: its compact heads shown sorted, and the check that a checkpoint
was trained with the module's own hash plan.

:class:`~torchrec_lhf.modules.remap.FeatureRemap` holds the compact heads as a cuckoo
table (the lookup's form); its state dict shows them as the plan holds them (sorted
``head_keys`` and ``head_rows``), through the two hooks here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torchrec_lhf.modules.remap import FeatureRemap


def heads_to_state(module: FeatureRemap, state_dict: dict, prefix: str, metadata: Any) -> None:
    """State-dict hook: the heads, sorted, as ``head_keys`` / ``head_rows``."""
    state_dict[f"{prefix}head_keys"], state_dict[f"{prefix}head_rows"] = module._sorted_heads()


def heads_from_state(
    module: FeatureRemap,
    state_dict: dict,
    prefix: str,
    metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook: rebuild the heads' lookup forms (cuckoo table, ranked
    blocks) from the incoming sorted heads (and take them out of ``state_dict``: they are
    no buffer), and the tails' divisors and the heads' table from incoming tail seeds that
    differ from the module's (the table is probed at slots of the seeds' mix)."""
    seed_J = state_dict.get(f"{prefix}tail_seed_J")
    new_seeds = (
        isinstance(seed_J, torch.Tensor)
        and seed_J.shape == module.tail_seed_J.shape
        and not torch.equal(seed_J.cpu().long(), module.tail_seed_J.cpu())
    )
    mine_K, my_rows_K = module._sorted_heads()  # (read before the seeds change)
    if new_seeds:  # the heads' probes and the divided tails follow the incoming seeds
        module.tail_seed_J.copy_(seed_J)
        module._set_divisors(module.tail_seed_J)
    names = (f"{prefix}head_keys", f"{prefix}head_rows")
    if not all(n in state_dict for n in names):
        missing_keys.extend(n for n in names if n not in state_dict)
        if new_seeds:
            module._set_heads(mine_K, my_rows_K, module.slot_keys.device)
        return
    keys_K, rows_K = (state_dict.pop(n) for n in names)
    if keys_K.shape == mine_K.shape and torch.equal(keys_K.cpu().long(), mine_K.cpu().long()):
        if torch.equal(rows_K.cpu().long(), my_rows_K.cpu().long()) and not new_seeds:
            return  # the same heads and seeds: nothing to rebuild
    module._set_heads(keys_K.to(mine_K.dtype), rows_K.to(my_rows_K.dtype), module.slot_keys.device)


def check_remap_state(remap: FeatureRemap, state_dict: dict, prefix: str) -> None:
    """Reject a checkpoint whose remap state (the hash plan) differs from ``remap``'s.

    Call it from a load-state-dict pre-hook; ``prefix`` is the remap's (``...remap.``).
    Matching entries are cast to ``remap``'s dtypes (a checkpoint may hold another width).

    Raises:
        ValueError: naming the first differing key; the checkpoint was trained with
            another hash plan.
    """
    for name, mine in remap.state_dict().items():
        key = f"{prefix}{name}"
        if key not in state_dict:
            continue  # strict loading reports the missing key itself
        incoming = state_dict[key]
        if incoming.shape != mine.shape or not torch.equal(
            incoming.cpu().long(), mine.cpu().long()
        ):
            raise ValueError(
                f"{key}: the checkpoint's hash mapping differs from this module's plan "
                f"(checkpoint {tuple(incoming.shape)}, module {tuple(mine.shape)}); it was "
                "trained with another hash plan"
            )
        state_dict[key] = incoming.to(mine.dtype)
