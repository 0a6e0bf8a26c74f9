"""Warm start: compressed tables begin at the teacher's count-weighted cluster centroids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apps.dlrm.loop import build_session, load_data
from apps.dlrm.model import EBC_FQN
from apps.dlrm.runtime import distributed
from apps.dlrm.train import parse_args
from tests._multiprocess import run_multiprocess
from torchrec_lhf.distributed.gather import gather_to_rank0
from torchrec_lhf.hash_build.artifact import TeacherArtifact
from torchrec_lhf.plan import HashPlan
from torchrec_lhf.warm_start import centroid_tables, check_teacher, warm_start


def _artifact(dim: int = 2) -> TeacherArtifact:
    emb = {"a": torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.0, 8.0]])[:, :dim],
           "b": torch.tensor([[7.0, 7.0], [9.0, 9.0]])[:, :dim]}  # fmt: skip
    counts = {"a": torch.tensor([1, 0, 2, 5]), "b": torch.tensor([3, 3])}
    return TeacherArtifact(embeddings=emb, counts=counts, manifest={"dataset": "hand"})


def test_centroids_by_hand() -> None:
    # a: ids 0, 1, 2 -> row 0, id 3 -> row 1; weights count + 1 = 2, 1, 3 (and 6)
    plan = HashPlan.from_mappings({"a": torch.tensor([0, 0, 0, 1], dtype=torch.int32)})
    tables = centroid_tables(_artifact(), plan, dim=2)
    row0 = (
        2 * torch.tensor([1.0, 0.0]) + 1 * torch.tensor([3.0, 2.0]) + 3 * torch.tensor([5.0, 4.0])
    ) / 6
    torch.testing.assert_close(tables["a"], torch.stack([row0, torch.tensor([0.0, 8.0])]))
    torch.testing.assert_close(tables["b"], _artifact().embeddings["b"])  # not planned: as is


def test_centroids_name_what_does_not_fit() -> None:
    plan = HashPlan.from_mappings({"a": torch.tensor([0, 0, 0, 1], dtype=torch.int32)})
    with pytest.raises(ValueError, match="teacher table 'a' has dim 1, the model 2"):
        centroid_tables(_artifact(dim=1), plan, dim=2)
    two = HashPlan.from_multi_mappings(
        {"a": [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])]}
    )
    with pytest.raises(ValueError, match="table 'a' has 2 hash functions"):
        centroid_tables(_artifact(), two, dim=2)


OPTIONS = {"num_samples": 400, "num_embeddings": [30, 50]}


def _warm(rank: int, world_size: int, teacher: str, plan_path: str) -> dict | None:
    config = parse_args([
        "--dataset", "synthetic", "--dataset_options", json.dumps(OPTIONS),
        "--embedding_dim", "4", "--dense_arch_layer_sizes", "8,4", "--over_arch_layer_sizes", "8,1",
        "--learned_hash", plan_path, "--sharding_types", "row_wise",
    ])  # fmt: skip
    with distributed() as env:
        dataset = load_data(config)
        session = build_session(config, env, dataset, HashPlan.load(plan_path))
        warm_start(
            session.model,
            TeacherArtifact.load(teacher),
            plan=session.plan,
            dim=config.embedding_dim,
            collection_fqn=EBC_FQN,
        )
        state = session.model.state_dict()
        keys = [f"{EBC_FQN}.embedding_bags.cat_{i}.weight" for i in range(2)]
        full = gather_to_rank0({k: state[k] for k in keys}, device=env.device)
    return None if full is None else {k.split(".")[-2]: v for k, v in full.items()}


@pytest.mark.distributed
def test_warm_start_fills_row_wise_shards_at_world_size_2(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    emb = {f"cat_{i}": torch.randn(n, 4, generator=gen) for i, n in enumerate([30, 50])}
    counts = {k: torch.randint(0, 5, (v.shape[0],), generator=gen) for k, v in emb.items()}
    artifact = TeacherArtifact(embeddings=emb, counts=counts, manifest={"dataset": "synthetic"})
    artifact.save(tmp_path / "teacher")
    plan = HashPlan.from_mappings({"cat_1": torch.arange(50, dtype=torch.int32) % 7})
    plan.save(tmp_path / "plan.safetensors")
    got = run_multiprocess(
        _warm,
        world_size=2,
        teacher=str(tmp_path / "teacher"),
        plan_path=str(tmp_path / "plan.safetensors"),
    )[0]
    expected = centroid_tables(artifact, plan, dim=4)
    torch.testing.assert_close(got["cat_0"], expected["cat_0"])  # full table: the teacher's
    torch.testing.assert_close(got["cat_1"], expected["cat_1"])  # 7 centroid rows
    assert got["cat_1"].shape == (7, 4)


class _Tables(torch.nn.Module):
    """A model whose state has ``ebc.embedding_bags.{name}.weight`` for each table."""

    def __init__(self, heights: dict[str, int], dim: int = 2) -> None:
        super().__init__()
        self.ebc = torch.nn.Module()
        self.ebc.embedding_bags = torch.nn.ModuleDict(
            {k: torch.nn.EmbeddingBag(n, dim) for k, n in heights.items()}
        )


def test_warm_start_refuses_a_teacher_without_a_model_table() -> None:
    # before: the teacher's tables were copied and 'c' kept its random rows without a word
    model = _Tables({"a": 4, "b": 2, "c": 3})
    before = model.ebc.embedding_bags["c"].weight.detach().clone()
    with pytest.raises(ValueError, match=r"the teacher has no table \['c'\] of the model"):
        warm_start(model, _artifact(), plan=None, dim=2, collection_fqn="ebc")
    torch.testing.assert_close(model.ebc.embedding_bags["c"].weight.detach(), before)
    plan = HashPlan.from_mappings({"c": torch.tensor([0, 1, 0], dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"planned table 'c' is not in the teacher"):
        centroid_tables(_artifact(), plan, dim=2)


def test_warm_start_names_a_full_table_of_another_height() -> None:
    model = _Tables({"a": 4, "b": 3})
    before = model.ebc.embedding_bags["a"].weight.detach().clone()
    with pytest.raises(ValueError, match=r"teacher table 'b' has 2 ids, the model's table 3"):
        warm_start(model, _artifact(), plan=None, dim=2, collection_fqn="ebc")
    # nothing was copied before the refusal
    torch.testing.assert_close(model.ebc.embedding_bags["a"].weight.detach(), before)
    warm_start(_Tables({"a": 4, "b": 2}), _artifact(), plan=None, dim=2, collection_fqn="ebc")


def test_check_teacher_against_the_student_heights() -> None:
    check_teacher(_artifact(), None, 2, {"a": 4, "b": 2})
    with pytest.raises(ValueError, match=r"the teacher has no table \['c'\] of the model"):
        check_teacher(_artifact(), None, 2, {"a": 4, "b": 2, "c": 5})
    with pytest.raises(ValueError, match=r"the model has no table \['b'\] of the teacher"):
        check_teacher(_artifact(), None, 2, {"a": 4})
    with pytest.raises(ValueError, match=r"teacher table 'a' has 4 ids, the model's table 5"):
        check_teacher(_artifact(), None, 2, {"a": 5, "b": 2})
    plan = HashPlan.from_mappings({"c": torch.tensor([0, 1, 0], dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"planned table 'c' is not in the teacher"):
        check_teacher(_artifact(), plan, 2)
