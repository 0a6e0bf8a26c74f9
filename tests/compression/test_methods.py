"""Each built-in compression method on tiny tables, by hand."""

from __future__ import annotations

import json

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.compression.baselines import modulo_plan
from torchrec_lhf.compression.methods import balanced_hash, make_plan
from torchrec_lhf.hash_build.plan_builder import build_plan


def _rows(plan: HashPlan, name: str = "t") -> list[list[int]]:
    return [plan[name].dense_mapping(h).tolist() for h in range(plan[name].num_hashes)]


# ---------------------------------------------------------------------- none, modulo
def test_none_is_the_full_model() -> None:
    plan = make_plan("none", {"t": 10}, fraction=1.0)
    assert len(plan) == 0 and plan.metadata["fraction"] == 1.0 and plan.metadata["method"] == "none"


def test_modulo_delegates_to_modulo_plan() -> None:
    plan = make_plan("modulo", {"t": 10, "small": 3}, fraction=0.3, min_table_rows=5)
    assert plan == modulo_plan({"t": 10, "small": 3}, fraction=0.3, min_table_rows=5)
    assert plan.table_names == ["t"] and _rows(plan) == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
    assert plan.metadata["method"] == "modulo" and plan.metadata["rows_fraction"] == {"t": 0.3}


# ------------------------------------------------------------------------------ qr
def test_qr_by_hand() -> None:
    # N = 10, R = 7: m = 2 (remainder) + ceil(10 / 2) = 5 (quotient) = 7 rows
    plan = make_plan("qr", {"t": 10}, fraction=0.7)
    assert plan["t"].heights == (2, 5) and plan["t"].combine == "mult"
    assert _rows(plan) == [[0, 1] * 5, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]


def test_qr_pairs_are_unique_and_budget_closest() -> None:
    plan = make_plan("qr", {"t": 1000}, fraction=0.2, combine="sum")
    m, q = plan["t"].heights
    assert (m, q) == (5, 200) and plan["t"].combine == "sum"  # 205 is the closest total to 200
    pair_N = plan["t"].dense_mapping(0).long() * q + plan["t"].dense_mapping(1).long()
    assert pair_N.unique().numel() == 1000  # complementary partitions: no id shares both rows
    # both computed from the id (id mod m, id // m): nothing stored per id
    assert plan["t"].encodings == ("compact", "compact") and plan.remap_bytes() == 0
    assert [mp.tail_seed for mp in plan["t"].mappings] == [-1, -5]


def test_qr_plan_round_trips_with_its_divided_tail(tmp_path) -> None:  # noqa: ANN001
    """Saved and loaded, the computed quotient stays a divided tail (nothing per id)."""
    plan = make_plan("qr", {"t": 1000, "u": 77}, fraction=0.2)
    plan.save(tmp_path / "qr.safetensors")
    loaded = HashPlan.load(tmp_path / "qr.safetensors")
    assert loaded == plan and loaded.remap_bytes() == 0
    assert loaded["t"].mappings[1].tail_seed == -plan["t"].heights[0]
    assert torch.equal(loaded["t"].dense_mapping(1), torch.arange(1000, dtype=torch.int32) // 5)


def test_qr_clamps_below_two_sqrt_n(caplog: pytest.LogCaptureFixture) -> None:
    plan = make_plan("qr", {"t": 100}, fraction=0.05)  # R = 5 < 2 * sqrt(100) = 20
    assert plan["t"].heights == (10, 10)
    assert plan.metadata["rows_fraction"] == {"t": 0.2}
    assert "cannot reach 5 rows" in caplog.text


def test_qr_bad_combine() -> None:
    with pytest.raises(
        ValueError, match="combine must be 'mult', 'sum' or 'concat', got 'scaled_sum'"
    ):
        make_plan("qr", {"t": 10}, fraction=0.5, combine="scaled_sum")


# ---------------------------------------------------------------------------- fbdh
COUNTS = torch.tensor([1, 50, 3, 40, 0, 0, 2, 9, 9, 1])


def test_fbdh_by_hand() -> None:
    # R = 8: K = 4 frequent ids (1, 3, 7, 8: ties to the lower id), 1 bias row, 3 hashed rows
    plan = make_plan("fbdh", {"t": 10}, fraction=0.8, counts={"t": COUNTS})
    t = plan["t"]
    assert t.heights == (4 + 2, 1 + 1) and t.combine == "sum" and t.num_rows == 8
    map0, map1 = _rows(plan)
    assert [map0[i] for i in (1, 3, 7, 8)] == [0, 1, 2, 3]
    assert [map1[i] for i in (1, 3, 7, 8)] == [1, 1, 1, 1]  # the frequent ids' shared bias row
    rest = [0, 2, 4, 5, 6, 9]
    assert sorted(map0[i] for i in rest) == [4, 4, 4, 5, 5, 5]  # balanced over rows 4..5
    assert [map1[i] for i in rest] == [0] * 6


def test_fbdh_frequent_ids_unique_and_budget_on_a_larger_table() -> None:
    n = 1000
    counts = torch.randperm(n, generator=torch.Generator().manual_seed(1)).double()
    plan = make_plan("fbdh", {"t": n}, fraction=0.1, counts={"t": counts}, retain=0.3, seed=5)
    t = plan["t"]
    assert t.num_rows == 100  # K = 30, bias 1, hashed 69 = 35 + 34
    assert t.heights == (30 + 35, 34 + 1)
    top = torch.argsort(counts, descending=True)[:30]
    assert t.mappings[0][top].tolist() == list(range(30))
    assert (t.mappings[1][top] == 34).all()
    others = torch.ones(n, dtype=torch.bool)
    others[top] = False
    assert (t.mappings[0][others] >= 30).all() and (t.mappings[1][others] < 34).all()
    # the two hashes are independent: the pairs almost never collide (69 rows, 970 ids, 1190 pairs)
    pairs = t.mappings[0][others].long() * 35 + t.mappings[1][others].long()
    assert pairs.unique().numel() > 500


def test_fbdh_needs_counts_and_a_good_retain() -> None:
    with pytest.raises(ValueError, match="'fbdh': table 't' needs access counts"):
        make_plan("fbdh", {"t": 10}, fraction=0.5)
    with pytest.raises(ValueError, match="retain must be in \\[0, 1\\], got 1.5"):
        make_plan("fbdh", {"t": 10}, fraction=0.5, counts={"t": COUNTS}, retain=1.5)
    plan = make_plan("fbdh", {"t": 10}, fraction=0.4, retain=0)  # plain double hashing
    assert plan["t"].heights == (2, 2)


def test_fbdh_is_deterministic_in_the_seed() -> None:
    a = make_plan("fbdh", {"t": 100}, fraction=0.2, counts={"t": torch.arange(100)}, seed=0)
    b = make_plan("fbdh", {"t": 100}, fraction=0.2, counts={"t": torch.arange(100)}, seed=0)
    c = make_plan("fbdh", {"t": 100}, fraction=0.2, counts={"t": torch.arange(100)}, seed=1)
    assert a == b and a != c


# -------------------------------------------------------------------------- memrec
def test_memrec_budget_and_layout() -> None:
    plan = make_plan("memrec", {"t": 100, "u": 40}, fraction=0.2, num_token_hashes=3)
    t = plan["t"]  # R = 20: weight 5, tokens 15 = 5 + 5 + 5
    assert t.heights == (5, 5, 5, 5) and t.combine == "scaled_sum" and t.num_hashes == 4
    assert plan["u"].heights == (2, 2, 2, 2)  # R = 8: weight 2, tokens 6
    for m, h in zip(t.mappings, t.heights):
        assert torch.bincount(m.long(), minlength=h).tolist() == [100 // h] * h  # balanced
    assert len({tuple(m.tolist()) for m in t.mappings}) == 4  # independent hashes


def test_memrec_combine_by_hand() -> None:
    # 2 token tables + 1 weight table, all of 1 row for N = 3: out = (tok0 + tok1) * w
    plan = make_plan("memrec", {"t": 3}, fraction=1.0, weight_fraction=0.3)
    assert plan["t"].heights == (1, 1, 1)
    ebc = LearnedHashEmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="t", embedding_dim=2, num_embeddings=3, feature_names=["f"])
        ],
        plan=plan,
    )
    with torch.no_grad():
        for h, row in enumerate([[1.0, 2.0], [3.0, 4.0], [10.0, -1.0]]):
            ebc.embedding_bags[f"t__h{h}"].weight.copy_(torch.tensor([row]))
    out = ebc(KeyedJaggedTensor(["f"], torch.tensor([2]), lengths=torch.tensor([1])))
    torch.testing.assert_close(out.values(), torch.tensor([[40.0, -6.0]]))


def test_memrec_bad_options() -> None:
    with pytest.raises(ValueError, match="num_token_hashes must be an int >= 1, got 0"):
        make_plan("memrec", {"t": 10}, fraction=0.5, num_token_hashes=0)
    with pytest.raises(ValueError, match="weight_fraction must be in \\(0, 1\\), got 1.0"):
        make_plan("memrec", {"t": 10}, fraction=0.5, weight_fraction=1.0)


# ----------------------------------------------------------------------------- lhf
def test_lhf_needs_a_teacher() -> None:
    with pytest.raises(ValueError, match="'lhf' needs teacher_embeddings=.*build_plan"):
        make_plan("lhf", {"t": 4}, fraction=0.5)
    with pytest.raises(
        ValueError, match="table 't' needs teacher embeddings of shape \\(4, D\\), got \\(3, 1\\)"
    ):
        make_plan("lhf", {"t": 4}, fraction=0.5, teacher_embeddings={"t": torch.zeros(3, 1)})


def test_lhf_calls_build_plan() -> None:
    emb = {"t": torch.tensor([[0.0], [5.0], [0.1], [5.2]]), "small": torch.zeros(2, 1)}
    plan = make_plan(
        "lhf",
        {"t": 4, "small": 2},
        fraction=0.5,
        min_table_rows=3,
        teacher_embeddings=emb,
        projection="dim:0",
    )
    assert plan == build_plan(emb, None, fraction=0.5, min_table_rows=3, projection="dim:0")
    assert _rows(plan) == [[0, 1, 0, 1]]
    assert plan.metadata["method"] == "lhf" and plan.metadata["clustering"] == "agglomerative"


# ------------------------------------------------------------------------- general
@pytest.mark.parametrize("method", ["modulo", "qr", "fbdh", "memrec"])
@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.1, 0.01])
def test_budget_is_honest(method: str, fraction: float) -> None:
    heights = {"big": 5000, "mid": 700, "small": 30}
    counts = {k: torch.arange(n, 0, -1) for k, n in heights.items()}
    plan = make_plan(method, heights, fraction=fraction, counts=counts, min_table_rows=50)
    assert plan.table_names == ["big", "mid"]  # "small" stays full
    for t in plan:
        target = max(round(fraction * t.num_embeddings), t.num_hashes)
        slack = 2 * t.num_embeddings**0.5 + 1 if method == "qr" else t.num_hashes + 1
        assert target - slack <= t.num_rows <= max(target + slack, 1), (t.name, t.heights)
        assert min(t.heights) >= 1
        assert plan.metadata["rows_fraction"][t.name] == t.num_rows / t.num_embeddings
    json.dumps(plan.metadata)  # HashPlan.save writes it into the file's manifest


def test_plans_save_and_load(tmp_path) -> None:
    plan = make_plan("memrec", {"t": 50}, fraction=0.2, seed=4)
    plan.save(tmp_path / "p.safetensors")
    loaded = HashPlan.load(tmp_path / "p.safetensors")
    assert loaded == plan and loaded.metadata["method"] == "memrec"


def test_balanced_hash() -> None:
    h = balanced_hash(10, 3, seed=0, key="x")
    assert sorted(torch.bincount(h).tolist()) == [3, 3, 4]
    assert torch.equal(h, balanced_hash(10, 3, seed=0, key="x"))
    assert not torch.equal(
        balanced_hash(100, 10, seed=0, key="x"), balanced_hash(100, 10, seed=0, key="y")
    )
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        balanced_hash(10, 0, seed=0, key="x")
