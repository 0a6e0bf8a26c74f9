"""Each built-in compression method on tiny tables, by hand."""

from __future__ import annotations

import json

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.compression.baselines import computed_mapping, modulo_plan
from torchrec_lhf.compression.budget import byte_budget
from torchrec_lhf.compression.methods import fbdh_plan, hash_seed, make_plan
from torchrec_lhf.compression.registry import plan_bytes
from torchrec_lhf.hash_build.plan_builder import build_plan
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.plan_compact import CompactMapping, ranked_bytes


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
    rest = torch.tensor([0, 2, 4, 5, 6, 9])
    # the others: hashed from the id into rows 4..5 of table 0 and row 0 of table 1
    hashed = 4 + tail_hash(rest, hash_seed(0, "fbdh/t/0"), 2)
    assert [map0[i] for i in rest.tolist()] == hashed.tolist()
    assert [map1[i] for i in rest.tolist()] == [0] * 6


def test_fbdh_stores_only_its_frequent_ids() -> None:
    plan = make_plan("fbdh", {"t": 10}, fraction=0.8, counts={"t": COUNTS})
    m0, m1 = plan["t"].mappings
    assert isinstance(m0, CompactMapping) and isinstance(m1, CompactMapping)
    assert m0.head_ids.tolist() == m1.head_ids.tolist() == [1, 3, 7, 8]
    assert (m0.tail_offset, m0.tail_rows, m1.tail_offset, m1.tail_rows) == (4, 2, 0, 1)
    assert m0.ranked(10) and not m1.ranked(10)  # table 0's rows are the ids' ranks
    # table 0's ranked head + table 1's ids (int32) and bias rows (int16); nothing per other id
    assert plan.remap_bytes() == ranked_bytes(4, 10) + 4 * (4 + 2)
    # the hashing trick's size of table: a head of K ids costs the same at any height
    big = make_plan("fbdh", {"t": 10**6}, fraction=1e-3, counts={"t": torch.arange(10**6)})
    k = big["t"].mappings[0].num_head
    assert k == 500 and big.remap_bytes() == ranked_bytes(k, 10**6) + k * 6


def test_fbdh_every_id_frequent_and_plain_double_hashing() -> None:
    # retain = 1, R = N: every id gets its own row (no hashed part; the tails are never read)
    counts = {"t": torch.tensor([3, 1, 4, 1])}
    full = make_plan("fbdh", {"t": 4}, fraction=1.0, counts=counts, retain=1.0)
    assert full["t"].heights == (4, 1) and _rows(full) == [[0, 1, 2, 3], [0, 0, 0, 0]]
    # retain = 0: two independent hashes, no head, nothing stored
    plain = make_plan("fbdh", {"t": 1000}, fraction=0.1, retain=0)
    assert plain["t"].heights == (50, 50) and plain.remap_bytes() == 0
    assert all(m.num_head == 0 for m in plain["t"].mappings)
    assert _rows(plain)[0] != _rows(plain)[1]


def test_fbdh_frequent_ids_unique_and_budget_on_a_larger_table() -> None:
    n = 1000
    counts = torch.randperm(n, generator=torch.Generator().manual_seed(1)).double()
    plan = make_plan("fbdh", {"t": n}, fraction=0.1, counts={"t": counts}, retain=0.3, seed=5)
    t = plan["t"]
    assert t.num_rows == 100  # K = 30, bias 1, hashed 69 = 35 + 34
    assert t.heights == (30 + 35, 34 + 1)
    map0, map1 = t.dense_mapping(0), t.dense_mapping(1)
    top = torch.argsort(counts, descending=True)[:30]
    assert map0[top.sort().values].tolist() == list(range(30))  # a row each, in id order
    assert (map1[top] == 34).all()
    others = torch.ones(n, dtype=torch.bool)
    others[top] = False
    assert (map0[others] >= 30).all() and (map1[others] < 34).all()
    # every hashed row is used (970 ids into 35 and 34 rows)
    assert map0[others].unique().numel() == 35 and map1[others].unique().numel() == 34
    # the two hashes are independent: the pairs almost never collide (69 rows, 970 ids, 1190 pairs)
    pairs = map0[others].long() * 35 + map1[others].long()
    assert pairs.unique().numel() > 500


def test_fbdh_needs_counts_and_a_good_retain() -> None:
    with pytest.raises(ValueError, match="'fbdh': table 't' needs access counts"):
        make_plan("fbdh", {"t": 10}, fraction=0.5)
    with pytest.raises(ValueError, match="retain must be in \\[0, 1\\], got 1.5"):
        make_plan("fbdh", {"t": 10}, fraction=0.5, counts={"t": COUNTS}, retain=1.5)
    # counts of another shape, also where fbdh_plan is called without make_plan's checks
    bad = r"counts of table 't' must have shape \(10,\), got shape \(9,\)"
    with pytest.raises(ValueError, match=bad):
        fbdh_plan({"t": 10}, fraction=0.5, counts={"t": COUNTS[:9]})
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
    ids = torch.arange(100)
    roles = ["token0", "token1", "token2", "weight"]
    for h, (role, m) in enumerate(zip(roles, t.heights)):
        expected = tail_hash(ids, hash_seed(0, f"memrec/t/{role}"), m)
        assert t.dense_mapping(h).tolist() == expected.tolist()  # computed from the id
        assert torch.bincount(expected, minlength=m).min() > 0  # every row used
    assert len({tuple(t.dense_mapping(h).tolist()) for h in range(4)}) == 4  # independent
    assert plan.remap_bytes() == 0


def test_memrec_stores_nothing_per_id_at_any_height() -> None:
    # the Criteo 1TB's largest table: nothing of size N is built or stored
    plan = make_plan("memrec", {"t": 40_000_000}, fraction=0.01, seed=3)
    assert plan["t"].heights == (150_000, 150_000, 100_000)
    assert all(m.num_head == 0 for m in plan["t"].mappings) and plan.remap_bytes() == 0
    assert plan["t"].mappings[2].tail_seed == hash_seed(3, "memrec/t/weight")


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


@pytest.mark.parametrize("budget", ["bytes", "total"])
def test_lhf_counts_the_tables_it_leaves_full_in_its_budget(budget: str) -> None:
    """Before, the method handed the clustering the planned tables alone, so a byte budget
    was spent on them as if the small table took nothing: 68 rows and 4,776 bytes for a
    budget of 3,360 (the small table's 1,600 bytes over). Now its plan is the clustering's
    over every table (the small one a zero-width stand-in), within the budget."""
    heights = {"a": 1000, "b": 50}
    g = torch.Generator().manual_seed(0)
    emb = {"a": torch.randn(1000, 4, generator=g)}
    counts = {"a": torch.randint(0, 5, (1000,), generator=g)}
    kw = dict(fraction=0.1, min_table_rows=100, budget=budget, embedding_dim=8)
    plan = make_plan("lhf", heights, teacher_embeddings=emb, counts=counts, **kw)
    full = {**emb, "b": torch.zeros(50, 4)}  # (build_plan reads only b's size)
    assert plan == build_plan(full, counts, **kw)
    assert plan.table_names == ["a"]
    if budget == "bytes":
        assert plan["a"].num_rows == 23  # (1,760 bytes left - 1,000 of remap) / 32
        assert plan_bytes(plan, heights, 8).total <= byte_budget(heights, 0.1, 8) == 3360
    else:  # as every method: 10% of all 1,050 rows, the small table's 50 kept
        assert plan["a"].num_rows == make_plan("modulo", heights, **kw)["a"].num_rows == 55


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


@pytest.mark.parametrize("method", ["memrec", "fbdh"])
def test_plans_save_and_load(tmp_path, method: str) -> None:
    counts = {"t": torch.arange(50) % 9}
    plan = make_plan(method, {"t": 50}, fraction=0.2, seed=4, counts=counts)
    plan.save(tmp_path / "p.safetensors")
    loaded = HashPlan.load(tmp_path / "p.safetensors")
    assert loaded == plan and loaded.metadata["method"] == method
    for h in range(plan["t"].num_hashes):  # the same rows, computed from the loaded seeds
        assert torch.equal(loaded["t"].dense_mapping(h), plan["t"].dense_mapping(h))
    assert [m.tail_seed for m in loaded["t"].mappings] == [m.tail_seed for m in plan["t"].mappings]


def test_computed_mapping_and_hash_seed() -> None:
    m = computed_mapping(4, hash_seed(1, "x"))
    ids = torch.arange(10)
    assert m.num_head == 0 and m.nbytes(10**9) == 0 and m.head_rows.dtype == torch.int16
    assert m.rows(ids).tolist() == tail_hash(ids, hash_seed(1, "x"), 4).tolist()
    assert hash_seed(1, "x") != hash_seed(1, "y") and hash_seed(1, "x") != hash_seed(2, "x")
    assert 0 <= hash_seed(1, "x") < 2**32
