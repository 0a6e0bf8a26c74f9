"""The README's Python examples run: "Use it in your model" (a DLRM on the meta device, a
saved plan applied) and its sharding with DMP, at world size 2 on gloo, then a batch; and
its sequence features' example.

The first block runs as written, next to a ``plan.safetensors``. The second is written for
GPUs and leaves ``fused``, ``world_size``, ``batch_size`` and ``pg`` to the reader: they are
given here, and its ``compute_device="cuda"`` becomes ``"cpu"`` (the only change).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests._multiprocess import run_multiprocess
from torchrec_lhf import HashPlan

README = Path(__file__).resolve().parents[1] / "README.md"
ROWS = 1000
"""The test plan's rows for the README's table of 1,000,000 ids."""


def python_blocks(text: str) -> list[str]:
    """The ```` ```python ```` blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _use_it_in_your_model(rank: int, world_size: int, directory: str) -> dict:
    os.chdir(directory)  # where the first block loads plan.safetensors from
    first, second = python_blocks(README.read_text())[:2]
    names: dict = {}
    exec(first, names)  # noqa: S102 (the README's own example)
    names.update(
        fused={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1},
        world_size=world_size,
        batch_size=4,
        pg=dist.GroupMember.WORLD,
    )
    exec(second.replace('compute_device="cuda"', 'compute_device="cpu"'), names)  # noqa: S102
    dmp = names["dmp"]
    ids = torch.tensor([0, 999_999, 12_345, 1000 + rank])  # one id a sample, raw
    features = KeyedJaggedTensor.from_lengths_sync(["f0"], ids, torch.ones(4, dtype=torch.int32))
    logits = dmp(torch.randn(4, 13), features)
    kinds = sorted({type(m).__name__ for m in dmp.modules() if "LearnedHash" in type(m).__name__})
    return {"logits": list(logits.shape), "kinds": kinds}


@pytest.mark.distributed
def test_use_it_in_your_model_runs_as_the_readme_says(tmp_path: Path) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2 and 'compute_device="cuda"' in blocks[1]  # what is replaced
    HashPlan.from_mappings({"t0": torch.arange(1_000_000) % ROWS}).save(
        tmp_path / "plan.safetensors"
    )
    results = run_multiprocess(_use_it_in_your_model, world_size=2, directory=str(tmp_path))
    for result in results:
        assert result["logits"] == [4, 1]
        assert result["kinds"] == ["ShardedLearnedHashEmbeddingBagCollection"]


def test_the_sequence_example_runs_as_the_readme_says() -> None:
    third = python_blocks(README.read_text())[2]
    assert "EmbeddingCollection" in third
    names: dict = {}
    exec(third, names)  # noqa: S102 (the README's own example)
    per_id = names["per_id"]
    assert type(names["ec"]).__name__ == "LearnedHashEmbeddingCollection"
    assert list(per_id.values().shape) == [3, 16] and per_id.lengths().tolist() == [2, 1]
    weight = names["ec"].embeddings["item"].weight
    assert weight.shape[0] == 10_000
    torch.testing.assert_close(per_id.values(), weight[torch.tensor([3, 999_999, 42]) % 10_000])
