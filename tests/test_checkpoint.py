"""DCP checkpoints (``torchrec_lhf/checkpoint.py``): resharding across world sizes and
sharding types, a killed save, and a metadata reader that never runs pickled code."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed.checkpoint import CheckpointException, FileSystemWriter
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import row_wise, table_wise

from tests._fixtures import shard_on_cpu
from tests._multiprocess import run_multiprocess
from torchrec_lhf import checkpoint
from torchrec_lhf.distributed.gather import gather_to_rank0


class Killed(Exception):
    """A simulated crash."""


@contextlib.contextmanager
def killed_after_save(step: int) -> Iterator[None]:
    """Crash (raise :class:`Killed`) right after the checkpoint of ``step`` is saved."""
    save = checkpoint.save

    def save_then_crash(*args, **kwargs):
        path = save(*args, **kwargs)
        if kwargs["step"] == step:
            raise Killed(f"killed after the checkpoint of step {step}")
        return path

    with mock.patch.object(checkpoint, "save", save_then_crash):
        yield


# ------------------------------------------------------------ a tiny sharded model
FUSED = EmbeddingComputeKernel.FUSED.value
TABLES = [
    EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=12, feature_names=["f0"]),
    EmbeddingBagConfig(name="t1", embedding_dim=4, num_embeddings=10, feature_names=["f1"]),
]


def _model(world_size: int, shardings: dict[str, str]) -> DistributedModelParallel:
    """Both tables on the meta device, sharded as named, with fused row-wise Adagrad."""
    ebc = EmbeddingBagCollection(TABLES, device=torch.device("meta"))
    sharder = EmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.1}
    )
    types = {
        "row_wise": row_wise(compute_kernel=FUSED),
        "table_wise": table_wise(rank=world_size - 1, compute_kernel=FUSED),
    }
    return shard_on_cpu(ebc, sharder, {t: types[s] for t, s in shardings.items()}, world_size)


def _train_step(model: DistributedModelParallel, rank: int) -> None:
    kjt = KeyedJaggedTensor(
        keys=["f0", "f1"],
        values=torch.tensor([rank, 11 - rank, 3, 9 - rank, 2]),
        lengths=torch.tensor([2, 1, 1, 1]),
    )
    loss = (model(kjt).values() ** 2).sum()
    loss.backward()  # the fused optimizer updates the rows in backward


def _full_state(model: DistributedModelParallel) -> dict[str, torch.Tensor] | None:
    """Tables and their momentum, gathered to full shape on rank 0 (collective)."""
    leaves = dict(model.state_dict())
    for key, states in model.fused_optimizer.state_dict()["state"].items():
        leaves.update({f"{key}/{name}": t for name, t in states.items()})
    # NOTE: a table-wise table's momentum lives on its owner rank only
    return gather_to_rank0(leaves, device=torch.device("cpu"))


def _save(rank: int, world_size: int, tmp: str) -> dict:
    torch.manual_seed(0)
    model = _model(world_size, {"t0": "row_wise", "t1": "table_wise"})
    _train_step(model, rank)
    extra = {"counts": torch.arange(6)}
    checkpoint.save(tmp, model=model, optimizer=model.fused_optimizer, step=3, extra=extra)
    return {"saved": _full_state(model), "reloaded": _load(rank, world_size, tmp)}


def _load(rank: int, world_size: int, tmp: str) -> dict:
    torch.manual_seed(1)  # other initial weights, to be overwritten
    model = _model(world_size, {"t0": "table_wise", "t1": "row_wise"})
    _train_step(model, rank)  # other momentum too
    loaded = checkpoint.load(tmp, model=model, optimizer=model.fused_optimizer)
    assert loaded is not None
    return {"full": _full_state(model), "step": loaded.step, "extra": loaded.extra}


@pytest.mark.distributed
def test_saved_at_world_size_2_loads_at_1_and_2_across_sharding_types(tmp_path: Path) -> None:
    tmp = str(tmp_path)
    at_2 = run_multiprocess(_save, world_size=2, tmp=tmp)[0]
    saved = at_2["saved"]
    assert saved is not None and any(k.endswith("momentum1") for k in saved)
    at_1 = run_multiprocess(_load, world_size=1, tmp=tmp)[0]
    for world_size, result in [(2, at_2["reloaded"]), (1, at_1)]:
        assert result["step"] == 3
        assert torch.equal(result["extra"]["counts"], torch.arange(6))
        assert sorted(result["full"]) == sorted(saved)
        for key, expected in saved.items():
            assert torch.equal(result["full"][key], expected), (world_size, key)


def _killed_save(rank: int, world_size: int, tmp: str) -> None:
    model = _model(world_size, {"t0": "row_wise", "t1": "row_wise"})
    opt = model.fused_optimizer
    _train_step(model, rank)
    checkpoint.save(tmp, model=model, optimizer=opt, step=1)
    at_step_1 = _full_state(model)
    _train_step(model, rank)
    # killed after the shards are written, before DCP's index and the pointer flip
    with mock.patch.object(FileSystemWriter, "finish", side_effect=Killed("killed")):
        with pytest.raises(CheckpointException):  # DCP's wrapper of the Killed
            checkpoint.save(tmp, model=model, optimizer=opt, step=2)
    assert any(Path(tmp, "step_2").glob("*.distcp"))
    assert checkpoint.read_latest(tmp)["dir"] == "step_1"
    loaded = checkpoint.load(tmp, model=model, optimizer=opt)
    assert loaded is not None and loaded.step == 1
    for key, expected in at_step_1.items():
        assert torch.equal(_full_state(model)[key], expected), key
    # the next saves clear the partial step_2 and keep the newest two
    for step in (2, 3):
        checkpoint.save(tmp, model=model, optimizer=opt, step=step)
    assert sorted(p.name for p in Path(tmp).iterdir()) == ["latest", "step_2", "step_3"]
    assert checkpoint.read_latest(tmp)["previous"] == ["step_2"]


@pytest.mark.distributed
def test_killed_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    run_multiprocess(_killed_save, world_size=1, tmp=str(tmp_path))


# -------------------------------------------------------------- without a process group
def _linear() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_meta_is_checked_before_loading_and_old_format_is_refused(tmp_path: Path) -> None:
    model, opt = _linear()
    assert checkpoint.load(tmp_path, model=model, optimizer=opt) is None  # nothing yet
    checkpoint.save(tmp_path, model=model, optimizer=opt, step=7, meta={"plan": "abc"})
    weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    with pytest.raises(ValueError, match="plan 'abc', but this run has 'xyz'"):
        checkpoint.load(tmp_path, model=model, optimizer=opt, expect={"plan": "xyz"})
    assert not model.weight.any()  # nothing loaded
    loaded = checkpoint.load(tmp_path, model=model, optimizer=opt, expect={"plan": "abc"})
    assert loaded is not None and loaded.step == 7 and loaded.world_size == 1
    assert torch.equal(model.weight, weight)
    with pytest.raises(ValueError, match="holds another model"):
        checkpoint.load(tmp_path, model=nn.Linear(3, 2, bias=False), optimizer=opt)
    with pytest.raises(ValueError, match="not a tensor"):
        checkpoint.save(tmp_path, model=model, optimizer=opt, step=8, extra={"n": 3})

    old = tmp_path / "old"
    old.mkdir()
    (old / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="old single-file format"):
        checkpoint.load(old, model=model, optimizer=opt)


def _draws_after_load(directory: Path) -> torch.Tensor:
    model, opt = _linear()
    torch.rand(5)  # move the generator on: the load has to put it back
    checkpoint.load(directory, model=model, optimizer=opt)
    return torch.rand(3)


def test_generator_is_restored_from_new_and_old_checkpoints(tmp_path: Path) -> None:
    """Each rank's generator state (``rng.cpu_by_rank.{rank}``); checkpoints written before
    the states were kept per rank hold one (``rng.cpu``) and still load."""
    model, opt = _linear()
    torch.manual_seed(3)
    checkpoint.save(tmp_path / "new", model=model, optimizer=opt, step=1)
    expected = torch.rand(3)
    assert torch.equal(_draws_after_load(tmp_path / "new"), expected)

    def old_state(*args, **kwargs):
        state = state_of(*args, **kwargs)
        state["rng"] = {"cpu": torch.get_rng_state()}
        return state

    state_of = checkpoint._state
    torch.manual_seed(4)
    with mock.patch.object(checkpoint, "_state", old_state):
        checkpoint.save(tmp_path / "old", model=model, optimizer=opt, step=1)
    expected = torch.rand(3)
    assert torch.equal(_draws_after_load(tmp_path / "old"), expected)


def test_the_cuda_generator_is_kept_where_the_run_used_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank that has used CUDA saves its device's generator (``rng.cuda_by_rank.{rank}``)
    and a resumed run on CUDA gets it back; a checkpoint without one (a CPU run) loads on
    CUDA, and one with it loads without CUDA. No GPU here: whether CUDA is available and used,
    and torch.cuda's generator functions, are stood in for (a CUDA generator state is a CPU
    byte tensor)."""
    device_state = {"now": torch.arange(16, dtype=torch.uint8)}
    restored: list[torch.Tensor] = []
    cuda = {"available": True, "used": True}
    monkeypatch.setattr(
        checkpoint, "_cuda", lambda used: cuda["available"] and (cuda["used"] or not used)
    )
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: device_state["now"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, *a, **k: restored.append(s))
    model, opt = _linear()
    checkpoint.save(tmp_path / "gpu", model=model, optimizer=opt, step=1)
    device_state["now"] = torch.zeros(16, dtype=torch.uint8)  # the generator moved on
    checkpoint.load(tmp_path / "gpu", model=model, optimizer=opt)
    assert len(restored) == 1 and torch.equal(restored[0], torch.arange(16, dtype=torch.uint8))

    cuda["used"] = False  # a run on the CPU
    checkpoint.save(tmp_path / "cpu", model=model, optimizer=opt, step=1)
    restored.clear()
    checkpoint.load(tmp_path / "cpu", model=model, optimizer=opt)
    assert restored == []

    cuda["available"] = False  # resumed without CUDA
    checkpoint.load(tmp_path / "gpu", model=model, optimizer=opt)
    assert restored == []


def test_another_runs_checkpoint_of_the_same_step_is_replaced(tmp_path: Path) -> None:
    model, opt = _linear()
    checkpoint.save(tmp_path, model=model, optimizer=opt, step=7, meta={"plan": "old"})
    with torch.no_grad():
        model.weight.fill_(3.0)
    # the same meta: the same run saving the step again (kept as it is)
    checkpoint.save(tmp_path, model=model, optimizer=opt, step=7, meta={"plan": "old"})
    probe, probe_opt = _linear()
    checkpoint.load(tmp_path, model=probe, optimizer=probe_opt, expect={"plan": "old"})
    assert not torch.equal(probe.weight, model.weight)
    # another run (another plan) at the same step: replaced, not silently kept
    checkpoint.save(tmp_path, model=model, optimizer=opt, step=7, meta={"plan": "new"})
    loaded = checkpoint.load(tmp_path, model=probe, optimizer=probe_opt, expect={"plan": "new"})
    assert loaded is not None and loaded.step == 7 and torch.equal(probe.weight, model.weight)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_metadata_reader_refuses_pickled_code_and_objects(tmp_path: Path) -> None:
    model, opt = _linear()
    step_dir = checkpoint.save(tmp_path, model=model, optimizer=opt, step=1)
    reader = checkpoint.SafeFileSystemReader(step_dir)
    assert isinstance(reader.read_metadata(), Metadata)  # a genuine index reads

    index = step_dir / ".metadata"
    index.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="posix.system|os.system"):
        checkpoint.load(tmp_path, model=model, optimizer=opt)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()

    index.write_bytes(pickle.dumps(Metadata(state_dict_metadata={"x": BytesStorageMetadata()})))
    with pytest.raises(ValueError, match="pickled objects"):
        checkpoint.SafeFileSystemReader(step_dir).read_metadata()

    (tmp_path / "latest").write_text(json.dumps({"kind": checkpoint.KIND, "dir": "../x"}))
    with pytest.raises(ValueError, match="not a checkpoint pointer"):
        checkpoint.load(tmp_path, model=model, optimizer=opt)


def test_a_damaged_checkpoint_is_a_value_error(tmp_path: Path) -> None:
    """Before, a truncated tensor file or index escaped as DCP's ``CheckpointException`` (a
    ``BaseException``, which ``except Exception`` misses), a manifest without its step as a
    ``KeyError``, and an index whose byte length was damaged as a ``MemoryError``; each is
    now a ValueError naming the file, and nothing is loaded into the model."""
    model, opt = _linear()
    path = checkpoint.save(tmp_path, model=model, optimizer=opt, step=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def damaged(file: Path, data: bytes, match: str) -> None:
        good = file.read_bytes()
        file.write_bytes(data)
        try:
            with pytest.raises(ValueError, match=match):
                checkpoint.load(tmp_path, model=model, optimizer=opt)
        finally:
            file.write_bytes(good)

    (data_file,) = path.glob("*.distcp")
    damaged(data_file, data_file.read_bytes()[:-40], "the saved tensors cannot be read")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["step"]
    damaged(
        path / "manifest.json", json.dumps(manifest).encode(), "step must be an int >= 0, got None"
    )
    # a pickle that asks for a buffer of 2**62 bytes (BYTEARRAY8 and its length)
    huge = pickle.PROTO + bytes([5]) + b"\x96" + (2**62).to_bytes(8, "little") + pickle.STOP
    damaged(path / ".metadata", huge, "not a safe DCP checkpoint index")
    damaged(tmp_path / "latest", b"{not json", "cannot be read as a checkpoint pointer")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert checkpoint.load(tmp_path, model=model, optimizer=opt).step == 1  # restored: loads
