"""Variable batches per feature (VBE) and unequal batches across ranks, at world size 2.

Ranks whose batches differ (in VBE strides or in batch size) are what a deduplicating
data loader or a last partial batch gives. Three TorchRec 1.8 paths failed on them
(``torchrec_lhf._torchrec_private.fix_variable_batches``):

* VBE with a MEAN table split row-wise and the batch's keys out of the sharding's order:
  means divided by another feature's lengths, or an IndexError;
* VBE with several fused kernels on one rank (SUM and MEAN tables): FBGEMM's CPU kernels
  refused TorchRec's preallocated merge;
* row-wise tables with ranks of unequal batches: gloo refused the backward's all-gather.
"""

from __future__ import annotations

import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.optimizers import in_backward_optimizer_filter

from tests._multiprocess import run_multiprocess
from tests._vbe import vbe_batch
from tests.distributed.test_embedding_bag import _concat, assert_state_equals
from tests.distributed.test_embedding_bag_mean import LR, reference_and_sharded

SUM, MEAN = PoolingType.SUM, PoolingType.MEAN
# (pooling, sharding type) of t0 (f0, f1), t1 (f2), t2 (f3); the batches' keys are
# f3, f0, f1, f2 (tests._vbe), out of every layout's order
LAYOUTS = {
    "rw": [(SUM, "row_wise"), (MEAN, "row_wise"), (MEAN, "row_wise")],
    "tw": [(SUM, "table_wise"), (MEAN, "table_wise"), (MEAN, "table_wise")],
    "cw": [(SUM, "column_wise"), (MEAN, "column_wise"), (MEAN, "column_wise")],
    "rw-mean+tw-sum+rw-mean": [(MEAN, "row_wise"), (SUM, "table_wise"), (MEAN, "row_wise")],
    "twrw": [(SUM, "table_row_wise"), (MEAN, "table_row_wise"), (SUM, "row_wise")],
}
VBE_LAYOUTS = ["rw", "tw", "cw", "rw-mean+tw-sum+rw-mean"]
UNEVEN_LAYOUTS = ["rw", "twrw"]


def _unequal_batches(rank: int, world_size: int, layout: str, learned: bool, vbe: bool) -> None:
    torch.manual_seed(1)
    reference, model = reference_and_sharded(LAYOUTS[layout], learned, world_size)
    # rank r: 3 + r samples; VBE: strides 3 + r, 2 + r, 3 + r and 1 (f3, f0, f1, f2)
    sizes = [3 + r for r in range(world_size)]
    batches = [vbe_batch(seed=10 + r, batch=sizes[r]) for r in range(world_size)]
    out = model(batches[rank][0 if vbe else 1]).wait().to_dict()
    ref_out = reference(_concat([full for _, full in batches])).to_dict()
    assert sorted(out) == sorted(ref_out) == ["f0", "f1", "f2", "f3"]
    mine = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    for key, pooled in out.items():  # (TorchRec orders the sharded output's keys by sharding)
        torch.testing.assert_close(pooled, ref_out[key][mine], msg=lambda m, k=key: f"{k}: {m}")

    def loss(pooled: dict[str, torch.Tensor], rows: slice = slice(None)) -> torch.Tensor:
        w = torch.linspace(-1, 1, 8)
        return sum((pooled[k][rows] * w * (i + 1)).sum() for i, k in enumerate(sorted(pooled)))

    loss(out).backward()
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    if dense:  # table-row-wise test placements: not fused
        torch.optim.SGD(dense.values(), lr=LR).step()
    # TorchRec divides embedding gradients by the world size: the reference loss over the
    # global batch is scaled to match
    loss(ref_out).div(world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=LR).step()
    assert_state_equals(model, reference.state_dict(), rank)


@pytest.mark.distributed
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("layout", VBE_LAYOUTS)
def test_vbe_batches_unequal_across_ranks_equal_unsharded(layout: str, learned: bool) -> None:
    """VBE batches whose strides and sizes differ between the ranks: outputs and one
    training step equal the unsharded collection's on the written-out batches (before:
    ``rw`` and ``rw-mean+tw-sum+rw-mean`` means divided by other features' lengths, or
    refused by gloo in the backward; ``tw`` and ``cw`` refused by FBGEMM's CPU kernels)."""
    run_multiprocess(_unequal_batches, world_size=2, layout=layout, learned=learned, vbe=True)


@pytest.mark.distributed
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("layout", UNEVEN_LAYOUTS)
def test_batches_of_unequal_sizes_across_ranks_equal_unsharded(layout: str, learned: bool) -> None:
    """Batches of 3 and 4 samples on the two ranks, row-wise and table-row-wise: outputs and
    one training step equal the unsharded collection's (before: gloo refused the
    backward's all-gather of unequal gradients)."""
    run_multiprocess(_unequal_batches, world_size=2, layout=layout, learned=learned, vbe=False)
