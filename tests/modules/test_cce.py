"""CCE's phase change on an unsharded learned-hash collection (``torchrec_lhf.modules.cce``)."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

from tests._fixtures import three_tables
from torchrec_lhf import LearnedHashEmbeddingBagCollection
from torchrec_lhf.compression.cce import CCEConfig, phase_seed
from torchrec_lhf.compression.methods import make_plan
from torchrec_lhf.hashing import tail_hash
from torchrec_lhf.modules.cce import recluster, restore_phase


def _all_ids() -> KeyedJaggedTensor:
    """Bag ``i`` holds id ``i`` of features f0, f1 (table t0, 40 ids), f2 (t1, 30) and f3
    (t2, 12); bags beyond a feature's height are empty (stride 40)."""
    keys, heights = ["f0", "f1", "f2", "f3"], [40, 40, 30, 12]
    values = torch.cat([torch.arange(n) for n in heights])
    lengths = torch.cat([(torch.arange(40) < n).long() for n in heights])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


@pytest.mark.parametrize("columns", [1, 2])
def test_phase_change_on_the_module(columns: int) -> None:
    torch.manual_seed(0)
    plan = make_plan("cce", {"t0": 40, "t1": 30}, fraction=0.25, seed=5, columns=columns)
    ebc = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan)
    opt = torch.optim.Adagrad(ebc.parameters(), lr=0.1)
    kjt = _all_ids()
    ebc(kjt).values().square().sum().backward()
    opt.step()
    mapping, seeds = ebc.remap.mapping, ebc.remap.tail_seed_J
    before_mapping, before_t2 = mapping.clone(), ebc.embedding_bags["t2"].weight.detach().clone()
    state_t2 = opt.state[ebc.embedding_bags["t2"].weight]["sum"].clone()

    new_plan = recluster(ebc, plan, phase=1, config=CCEConfig(), optimizer=opt)

    # the remap's buffers are updated in place, and the index changed
    assert ebc.remap.mapping is mapping and ebc.remap.tail_seed_J is seeds
    assert not torch.equal(mapping, before_mapping)
    names = [f.name for f in ebc.remap.features]
    h = 2 * columns
    out = ebc(kjt).to_dict()
    for table, features, n, m1 in (("t0", ["f0", "f1"], 40, 5), ("t1", ["f2"], 30, 4)):
        parts = []
        for i in range(columns):
            seed = phase_seed(5, table, 1, column=i)
            for f in features:  # every feature of the table takes the column's new seed
                assert int(seeds[names.index(f"{f}__h{2 * i + 1}")]) == seed
            offset = ebc.remap.features[names.index(f"{features[0]}__h{2 * i}")].offset
            clustered = mapping[offset : offset + n].long()
            hashed = tail_hash(torch.arange(n), seed, m1)
            w0 = ebc.embedding_bags[f"{table}__h{2 * i}"].weight
            w1 = ebc.embedding_bags[f"{table}__h{2 * i + 1}"].weight
            parts.append((w0[clustered] + w1[hashed]).detach())
            # the optimizer state of both internal tables is zeroed
            for w in (w0, w1):
                assert not opt.state[w]["sum"].any()
            # the returned plan is the one the module now holds
            t = new_plan[table]
            assert torch.equal(t.dense_mapping(2 * i).long(), clustered)
            assert torch.equal(t.dense_mapping(2 * i + 1).long(), hashed)
        # every id's embedding: per column its cluster's row plus its new hashed row, the
        # columns side by side
        torch.testing.assert_close(out[features[0]][:n], torch.cat(parts, dim=1))
        assert len(new_plan[table].mappings) == h
    assert new_plan.metadata["cce_phase"] == 1 and new_plan != plan
    assert ebc.plan_fingerprint == new_plan.fingerprint()  # the plan the module now holds
    # the columns were clustered apart: their new indices differ
    if columns == 2:
        t0 = new_plan["t0"]
        assert not torch.equal(t0.dense_mapping(0), t0.dense_mapping(2))
    # the uncompressed table and its optimizer state are left alone
    assert torch.equal(ebc.embedding_bags["t2"].weight.detach(), before_t2)
    assert torch.equal(opt.state[ebc.embedding_bags["t2"].weight]["sum"], state_t2)
    assert state_t2.any()


def test_a_module_built_from_the_new_plan_equals_the_reclustered_one() -> None:
    torch.manual_seed(0)
    plan = make_plan("cce", {"t0": 40, "t1": 30}, fraction=0.25, seed=5, columns=2)
    ebc = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan)
    new_plan = recluster(ebc, plan, phase=1, config=CCEConfig())
    rebuilt = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=new_plan)
    rebuilt.load_state_dict(ebc.state_dict())  # refused if the remap buffers differed
    torch.testing.assert_close(rebuilt(_all_ids()).values(), ebc(_all_ids()).values())
    assert rebuilt.plan_fingerprint == new_plan.fingerprint() != plan.fingerprint()


def test_restore_phase_gives_back_the_plan_a_loaded_module_holds() -> None:
    """A module rebuilt from the starting plan, the reclustered one's state loaded, holds
    the plan of that phase: its clustered indices from the state, its seeds from the phase
    (written even where the state's seeds are the starting ones)."""
    torch.manual_seed(0)
    plan = make_plan("cce", {"t0": 40, "t1": 30}, fraction=0.25, seed=5, columns=2)
    ebc = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan)
    after_1 = recluster(ebc, plan, phase=1, config=CCEConfig())
    after_2 = recluster(ebc, after_1, phase=2, config=CCEConfig())
    state = ebc.state_dict()

    rebuilt = LearnedHashEmbeddingBagCollection(tables=three_tables(), plan=plan)
    start_seeds = rebuilt.remap.tail_seed_J.clone()
    # filled in place, as DCP fills a checkpoint's tensors (load_state_dict refuses a
    # mapping other than the plan's); the seeds left at the starting plan's
    with torch.no_grad():
        for key, tensor in rebuilt.state_dict(keep_vars=True).items():
            if key in state and key != "remap.tail_seed_J":
                tensor.copy_(state[key])
    assert restore_phase(rebuilt, plan, 0) is plan
    restored = restore_phase(rebuilt, plan, 2)
    assert restored.fingerprint() == after_2.fingerprint() != after_1.fingerprint()
    assert restored.metadata["cce_phase"] == 2
    assert rebuilt.plan_fingerprint == restored.fingerprint()
    assert not torch.equal(rebuilt.remap.tail_seed_J, start_seeds)
    assert torch.equal(rebuilt.remap.tail_seed_J, ebc.remap.tail_seed_J)
    torch.testing.assert_close(rebuilt(_all_ids()).values(), ebc(_all_ids()).values())
    # the seeds are the phase's: restoring another phase gives another plan
    assert restore_phase(rebuilt, plan, 1).fingerprint() != after_2.fingerprint()
    with pytest.raises(ValueError, match="phase must be an int >= 0, got -1"):
        restore_phase(rebuilt, plan, -1)
