"""TorchRec's managed collisions as a baseline: row counts, the builder and its bytes."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.mc_modules import DistanceLFU_EvictionPolicy, MCHManagedCollisionModule
from torchrec.sparse.jagged_tensor import JaggedTensor

from tests._fixtures import three_tables
from tests._vbe import vbe_batch
from torchrec_lhf.modules.mch import (
    GrowingHistoryMCH,
    MCHEmbeddingBagCollection,
    managed_collision_collection,
    mch_rows,
    mch_state_bytes,
)

MAX = torch.iinfo(torch.int64).max


def _tables() -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name="a", embedding_dim=4, num_embeddings=20, feature_names=["fa"]),
        EmbeddingBagConfig(name="b", embedding_dim=4, num_embeddings=3, feature_names=["fb"]),
    ]


def test_rows_are_the_rounded_fraction_with_small_tables_full() -> None:
    heights = {"user": 943, "item": 1682, "gender": 2, "age": 7}
    assert mch_rows(heights, fraction=0.1) == {"user": 94, "item": 168, "gender": 1, "age": 1}
    assert mch_rows(heights, fraction=0.1, min_table_rows=10) == {"user": 94, "item": 168}
    # --budget total: 10% of all 2,634 ids = 263 rows; gender and age (9 rows) stay full,
    # user and item share 254 in proportion (91 + 163)
    rows = mch_rows(heights, fraction=0.1, min_table_rows=10, budget="total")
    assert rows == {"user": 91, "item": 163}


def test_rows_leave_no_rank_empty_when_row_wise_sharded() -> None:
    # ceil(R / W)-row blocks: 1 row over 2 ranks is [1, 0] -> 2; 5 over 4 is [2, 2, 1, 0] -> 7
    assert mch_rows({"t": 10}, fraction=0.1, world_size=2) == {"t": 2}
    assert mch_rows({"t": 10}, fraction=0.5, world_size=4) == {"t": 7}
    assert mch_rows({"t": 8}, fraction=0.5, world_size=4) == {"t": 4}  # [1, 1, 1, 1]
    assert mch_rows({"t": 5}, fraction=1.0, world_size=4) == {}  # 7 > 5 rows: stays full


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
        ({"fraction": 0.5, "min_table_rows": -1}, "min_table_rows must be an int >= 0, got -1"),
        ({"fraction": 0.5, "world_size": 0}, "world_size must be an int >= 1, got 0"),
    ],
)
def test_bad_row_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mch_rows({"t": 10}, **kwargs)


def test_builder_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"must name exactly the tables \['a', 'b'\], got \['a'\]"):
        managed_collision_collection(_tables(), {"a": 5})
    with pytest.raises(ValueError, match=r"table 'b': zch size must be an int in \[1, 3\], got 4"):
        managed_collision_collection(_tables(), {"a": 5, "b": 4})
    with pytest.raises(ValueError, match="eviction_interval must be an int >= 1, got 0"):
        managed_collision_collection(_tables(), {"a": 5, "b": 2}, eviction_interval=0)
    with pytest.raises(ValueError, match=r"names tables \['c'\] that are not among"):
        MCHEmbeddingBagCollection(_tables(), zch_sizes={"c": 2})


def test_managed_table_has_exactly_zch_rows_and_small_tables_stay_full() -> None:
    tables = _tables()
    ebc = MCHEmbeddingBagCollection(tables, zch_sizes={"a": 6})
    internal = ebc.internal_embedding_bag_configs()
    assert [(c.name, c.num_embeddings) for c in internal] == [("a", 6), ("b", 3)]
    assert [(c.name, c.num_embeddings) for c in ebc.embedding_bag_configs()] == [
        ("a", 20),
        ("b", 3),
    ]
    state = ebc.state_dict()
    assert state["managed._embedding_module.embedding_bags.a.weight"].shape == (6, 4)
    assert state["full.embedding_bags.b.weight"].shape == (3, 4)
    assert tables[0].num_embeddings == 20  # the caller's configs are untouched
    # serving bytes: the sorted raw ids and their rows, 6 int64 each (eviction metadata and
    # TorchRec's fixed bookkeeping are training state, not counted)
    assert mch_state_bytes(ebc) == 8 * 2 * 6


def test_forward_remaps_by_hand() -> None:
    """Ids held by the module get their rows; others share the last (miss) row."""
    torch.manual_seed(0)
    ebc = MCHEmbeddingBagCollection(_tables(), zch_sizes={"a": 4})
    key = "managed._managed_collision_collection._managed_collision_modules.a."
    state = ebc.state_dict()
    state[key + "_mch_sorted_raw_ids"] = torch.tensor([3, 7, 12, MAX])
    state[key + "_mch_remapped_ids_mapping"] = torch.tensor([2, 0, 1, 3])
    ebc.load_state_dict(state)
    ebc.eval()  # no profiling: the held ids stay as loaded
    w_a = state["managed._embedding_module.embedding_bags.a.weight"]
    w_b = state["full.embedding_bags.b.weight"]
    # batch of 2: fa = [3, 12], [7, 5]; fb = [2], [0, 1]
    kjt = KeyedJaggedTensor(
        keys=["fb", "fa"],
        values=torch.tensor([2, 0, 1, 3, 12, 7, 5]),
        lengths=torch.tensor([1, 2, 2, 2]),
    )
    out = ebc(kjt).to_dict()
    torch.testing.assert_close(out["fa"], torch.stack([w_a[2] + w_a[1], w_a[0] + w_a[3]]))
    torch.testing.assert_close(out["fb"], torch.stack([w_b[2], w_b[0] + w_b[1]]))


def test_training_admits_new_ids() -> None:
    ebc = MCHEmbeddingBagCollection(_tables(), zch_sizes={"a": 4, "b": 2})
    kjt = KeyedJaggedTensor(
        keys=["fa", "fb"], values=torch.tensor([9, 4, 9, 1]), lengths=torch.tensor([2, 1, 1, 0])
    )
    ebc(kjt)  # training mode: the batch's ids are admitted before the lookup
    modules = ebc.managed._managed_collision_collection._managed_collision_modules
    assert modules["a"]._mch_sorted_raw_ids.tolist() == [4, 9, MAX, MAX]
    assert modules["b"]._mch_sorted_raw_ids.tolist() == [1, MAX]


def test_int32_ids_train_and_look_up_as_int64_ones() -> None:
    """TorchRec's MCH remap failed on int32 ids (``Index put requires the source and
    destination dtypes match``), which a plain EBC takes; now the same ids admitted, evicted
    and looked up as int64 ones, their rows returned int32 like the ids."""
    batches = [
        ([9, 4, 9, 1, 2], [2, 1, 1, 0]),
        ([4, 7, 7, 7, 0], [1, 3, 0, 1]),
        ([3, 2], [1, 0, 0, 1]),
    ]
    models, outputs = {}, {}
    for dtype in (torch.int64, torch.int32):
        torch.manual_seed(0)
        models[dtype] = MCHEmbeddingBagCollection(_tables(), zch_sizes={"a": 4, "b": 2})
        outputs[dtype] = []
        for train in (True, True, True, False):
            models[dtype].train(train)
            for values, lengths in batches:
                kjt = KeyedJaggedTensor(
                    keys=["fa", "fb"],
                    values=torch.tensor(values, dtype=dtype),
                    lengths=torch.tensor(lengths, dtype=dtype),
                )
                outputs[dtype].append(models[dtype](kjt).values())
    for wide, narrow in zip(outputs[torch.int64], outputs[torch.int32], strict=True):
        torch.testing.assert_close(narrow, wide, atol=0, rtol=0)
    wide_state, narrow_state = (models[d].state_dict() for d in (torch.int64, torch.int32))
    assert wide_state.keys() == narrow_state.keys()
    for key, value in wide_state.items():
        torch.testing.assert_close(narrow_state[key], value, atol=0, rtol=0, msg=key)
    module = models[torch.int32].managed._managed_collision_collection._managed_collision_modules
    assert module["a"]._mch_sorted_raw_ids.tolist() == [3, 4, 7, MAX]  # trained, evicted
    ones = torch.ones(2, dtype=torch.int32)
    ids = {"fa": JaggedTensor(values=torch.tensor([4, 5], dtype=torch.int32), lengths=ones)}
    rows = module["a"].remap(ids)["fa"].values()
    wide = module["a"].remap({"fa": JaggedTensor(values=torch.tensor([4, 5]), lengths=ones)})
    assert rows.dtype == torch.int32 and rows.tolist() == wide["fa"].values().tolist()
    assert rows[1] == 3  # id 5 is not held: the miss row


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    "lengths, where",
    [
        ([1, 2, -1, 1], r"lengths\[2\] = -1 \(feature 'fb', sample 0\)"),
        # adding up to the ids: TorchRec read backwards offsets and pooled garbage
        ([2, -1, 2, 1], r"lengths\[1\] = -1 \(feature 'fa', sample 1\)"),
    ],
)
def test_a_negative_length_is_refused_before_torchrec_reads_it(
    train: bool, lengths: list[int], where: str
) -> None:
    """Before, TorchRec's managed collisions read a negative length's offsets out of bounds:
    the process aborted on a corrupted heap (``munmap_chunk(): invalid pointer``), or, where
    the lengths add up to the ids, a bag pooled garbage without a word."""
    torch.manual_seed(0)
    ebc = MCHEmbeddingBagCollection(_tables(), zch_sizes={"a": 4}).train(train)
    state = {k: v.clone() for k, v in ebc.state_dict().items()}
    bad = KeyedJaggedTensor(
        keys=["fa", "fb"], values=torch.tensor([9, 4, 9, 1]), lengths=torch.tensor(lengths)
    )
    with pytest.raises(ValueError, match=where + " is negative; expected ids per feature"):
        ebc(bad)
    for key, value in ebc.state_dict().items():  # nothing admitted, nothing counted
        torch.testing.assert_close(value, state[key], atol=0, rtol=0, msg=key)
    good = KeyedJaggedTensor(
        keys=["fa", "fb"], values=torch.tensor([9, 4, 9, 1]), lengths=torch.tensor([2, 1, 1, 0])
    )
    assert ebc(good).values().shape == (2, 8)


@pytest.mark.parametrize("zch_sizes", [{"t0": 8}, {"t0": 8, "t1": 6, "t2": 4}])
def test_a_variable_batch_per_feature_is_refused(zch_sizes: dict[str, int]) -> None:
    """TorchRec's managed collisions drop a VBE batch's batch sizes: the pooled bags came
    out at different batch sizes (``Sizes of tensors must match except in dimension 1``,
    from inside TorchRec). Refused by name, nothing admitted."""
    torch.manual_seed(0)
    ebc = MCHEmbeddingBagCollection(three_tables(), zch_sizes=zch_sizes).train()
    state = {k: v.clone() for k, v in ebc.state_dict().items()}
    vbe, full = vbe_batch(seed=2, batch=4)
    match = r"variable batch per feature \(VBE\), which TorchRec's managed-collision"
    with pytest.raises(ValueError, match=match):
        ebc(vbe)
    for key, value in ebc.state_dict().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0, msg=key)
    assert ebc(full).values().shape == (4, 32)  # four features of dim 8


def _counts_after(cls: type, batches: list[list[int]], interval: int = 1) -> dict[int, int]:
    """The managed ids' counts of an MCH module of 4 rows trained on ``batches``, with an
    eviction round every ``interval`` steps."""
    module = cls(
        zch_size=4,
        device=torch.device("cpu"),
        eviction_policy=DistanceLFU_EvictionPolicy(),
        eviction_interval=interval,
        input_hash_size=100,
        name="t",
    )
    module.train()
    for ids in batches:
        values = torch.tensor(ids)
        module.profile({"f": JaggedTensor(values=values, lengths=torch.ones_like(values))})
    held = module._mch_sorted_raw_ids.tolist()
    return {i: c for i, c in zip(held, module._mch_counts.tolist()) if i != MAX}


def test_growing_history_counts_every_id_of_a_larger_batch() -> None:
    """TorchRec sizes the history by the first batch (1 id: room for 1) and drops the ids
    beyond it from later steps' counts; the growing history counts all of them."""
    batches = [[1], [5, 5, 5, 6, 6]]
    assert _counts_after(GrowingHistoryMCH, batches) == {1: 1, 5: 3, 6: 2}
    assert _counts_after(MCHManagedCollisionModule, batches) == {1: 1, 5: 1}  # TorchRec's
    # the same ids in another batch order count alike
    assert _counts_after(GrowingHistoryMCH, [[5, 5, 5, 6, 6], [1]]) == {1: 1, 5: 3, 6: 2}


def test_growing_history_keeps_the_ids_recorded_before_it_grows() -> None:
    """Evicting every 2 steps, the history (2 ids: the first batch's 1 id, twice, 1.25 times)
    holds step 1's id when step 2 brings 3 more: grown, it counts all 4 at step 2's round."""
    batches = [[1], [5, 5, 5]]
    assert _counts_after(GrowingHistoryMCH, batches, interval=2) == {1: 1, 5: 3}
    assert _counts_after(MCHManagedCollisionModule, batches, interval=2) == {1: 1, 5: 1}


def test_collection_and_its_sharded_modules_grow_their_history() -> None:
    mc = managed_collision_collection(_tables(), {"a": 4, "b": 2})
    modules = mc._managed_collision_collection._managed_collision_modules
    assert all(type(m) is GrowingHistoryMCH for m in modules.values())
    rebuilt = modules["a"].rebuild_with_output_id_range((0, 2), [0, 10, 20])
    assert type(rebuilt) is GrowingHistoryMCH  # as the sharder rebuilds a rank's module
