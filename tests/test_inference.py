"""TorchRec's inference flow (quantize, shard, trace, script, save, load) for DLRMs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import DLRM

from tests._compact import to_compact
from torchrec_lhf import HashPlan, apply_hash_plan
from torchrec_lhf.inference import (
    RemapOnRequest,
    ScoringModule,
    example_batch,
    load_scripted,
    plain_id_heights,
    quantize_for_inference,
    save_scripted,
    script_for_inference,
    script_serving_model,
    shard_for_inference,
)
from torchrec_lhf.modules import compact_kernel
from torchrec_lhf.modules.mch import MCHEmbeddingBagCollection
from torchrec_lhf.modules.remap import FeatureRemap
from torchrec_lhf.serving_request import id_limits

FEATURES = ["f0", "f1"]


def _dlrm(plan: HashPlan | None, dim: int = 4) -> DLRM:
    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=dim, num_embeddings=30, feature_names=[f])
        for i, f in enumerate(FEATURES)
    ]
    dlrm = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables),
        dense_in_features=3,
        dense_arch_layer_sizes=[8, dim],
        over_arch_layer_sizes=[8, 1],
    )
    if plan is not None:
        apply_hash_plan(dlrm, plan)
    return dlrm.eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([1, 2, 0, 1, 1, 1])  # 3 samples, feature-major
    return torch.randn(3, 3), torch.tensor([0, 29, 7, 3, 11, 28]), lengths


@pytest.mark.parametrize("learned_hash", [None, "dense", "compact", "ranked"])
def test_scripted_serving_model_scores_as_the_float_model(
    tmp_path: Path, learned_hash: str | None
) -> None:
    plan = HashPlan.from_mappings({"t0": torch.arange(30) % 7}) if learned_hash else None
    if learned_hash in ("compact", "ranked"):  # the scripted model holds the head/tail lookup
        plan = to_compact(plan, every=3, ranked=learned_hash == "ranked")
    dlrm = _dlrm(plan)
    batch = _batch()
    expected = ScoringModule(dlrm, FEATURES)(*batch)
    assert expected.shape == (3,)
    for dtype, atol in (("fp32", 1e-6), ("int8", 0.01)):
        scripted = script_serving_model(dlrm, FEATURES, num_dense=3, dtype=dtype)
        torch.testing.assert_close(scripted(*batch), expected, atol=atol, rtol=0)
        path = tmp_path / f"{dtype}.pt"
        save_scripted(path, scripted, {"dtype": dtype})
        loaded, manifest = load_scripted(path)
        assert manifest == {"dtype": dtype}
        torch.testing.assert_close(loaded(*batch), scripted(*batch), atol=0, rtol=0)


def test_bad_dtype_and_foreign_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype must be one of .* got 'int3'"):
        quantize_for_inference(_dlrm(None), dtype="int3")
    with pytest.raises(FileNotFoundError, match="missing.pt: no such file; expected a TorchS"):
        load_scripted(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError, match="is a directory; expected a TorchScript model"):
        load_scripted(tmp_path)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), str(plain))
    with pytest.raises(ValueError, match="without a torchrec_lhf manifest"):
        load_scripted(plain)


LOAD_AND_SCORE = """
import sys, torch
from torchrec_lhf.inference import load_scripted  # (defines the remap's operator)
model, _ = load_scripted(sys.argv[1])
batch = torch.load(sys.argv[2], weights_only=True)
torch.save(model(*batch), sys.argv[3])
"""


@pytest.mark.parametrize("kernel", ["built", "off"])
def test_a_compact_model_runs_the_remap_operator_and_loads_in_a_new_process(
    tmp_path: Path, kernel: str
) -> None:
    """The scripted remap is the one operator ``torchrec_lhf::fused_remap_bags``; a new process
    that imports the project loads and scores it, with the C++ kernel or (turned off, or
    where it cannot be built) the operator's torch ops."""
    import os
    import subprocess
    import sys

    plan = to_compact(HashPlan.from_mappings({"t0": torch.arange(30) % 7}), every=3)
    scripted = script_serving_model(_dlrm(plan), FEATURES, num_dense=3, dtype="fp32")
    batch = _batch()
    with torch.profiler.profile() as prof:
        expected = scripted(*batch)
    ops = {event.key for event in prof.key_averages()}
    assert "torchrec_lhf::fused_remap_bags" in ops  # (on the request: see the test below)
    if compact_kernel.available():  # the C++ kernel: no torch op of the lookup runs
        assert "aten::gather" not in ops
    path = tmp_path / "model.pt"
    save_scripted(path, scripted, {})
    torch.save(batch, tmp_path / "batch.pt")
    env = dict(os.environ, TORCHREC_LHF_FUSED_REMAP="1" if kernel == "built" else "0")
    argv = [str(path), str(tmp_path / "batch.pt"), str(tmp_path / "scores.pt")]
    subprocess.run([sys.executable, "-c", LOAD_AND_SCORE, *argv], check=True, env=env)
    scores = torch.load(tmp_path / "scores.pt", weights_only=True)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("order", ["request", "reversed", "dense"])
def test_the_scripted_model_remaps_the_request_and_leaves_the_model_as_it_was(
    order: str,
) -> None:
    """Where the request's features are the remap's, in order, the traced wrapper remaps
    the request's tensors (``request_rows``) and the collection's remap is not in the
    graph; in another order the collection remaps as in eager mode; a dense one-hash plan,
    which FBGEMM remaps inside its kernel, is left to it, the wrapper checking the ids'
    range only (a mapping that is not idempotent, so that remapping twice would show).
    Same scores every time, and the module traced is left as it was."""
    mapping = torch.randperm(30, generator=torch.Generator().manual_seed(0)) % 7
    plan = HashPlan.from_mappings({"t0": mapping})
    assert not torch.equal(mapping[mapping], mapping)
    if order != "dense":
        plan = to_compact(plan, every=3)
    features = FEATURES[::-1] if order == "reversed" else FEATURES
    scoring = ScoringModule(_dlrm(plan), features).eval()
    dense, values, lengths = _batch()
    expected = scoring(dense, values, lengths)
    sharded = shard_for_inference(
        quantize_for_inference(scoring, dtype="fp32"), example_batch(len(features), 3)
    )
    scripted = script_for_inference(sharded)
    code = "\n".join(m.code for m in scripted.modules() if hasattr(m, "code"))
    assert ("request_rows" in code) == (order == "request")
    assert ("remap_features" in code) == (order == "reversed")
    # dense: remapped in FBGEMM's kernel, the request's ids range-checked first (the
    # collection's FeatureRemap.check_ids, hoisted as the remap is)
    assert ("request_ids" in code) == (order == "dense")
    torch.testing.assert_close(scripted(dense, values, lengths), expected, atol=1e-6, rtol=0)
    assert all(not getattr(m, "hoisted", False) for m in sharded.modules())
    if order == "reversed":  # the wrapper takes only the remap's features, in order
        remap = next(m for m in sharded.modules() if isinstance(m, FeatureRemap))
        with pytest.raises(ValueError, match=r"features \['f1', 'f0'\] are not the remap's"):
            RemapOnRequest(sharded, remap)
    torch.testing.assert_close(sharded(dense, values, lengths), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("learned_hash", [None, "compact"])
def test_the_serving_model_copies_the_tables_and_leaves_the_float_model(
    learned_hash: str | None,
) -> None:
    """The quantized copy shares the float tables and remaps until quantization replaces
    them (the export's peak): the float model's state is unchanged afterwards, and changing
    its tables or its remap's mappings later does not change the served scores (the served
    model holds tables and mappings of its own)."""
    plan = HashPlan.from_mappings({"t0": torch.arange(30) % 7}) if learned_hash else None
    dlrm = _dlrm(to_compact(plan, every=3) if plan is not None else None)
    before = {k: v.clone() for k, v in dlrm.state_dict().items()}
    mappings = {k: v.clone() for k, v in dlrm.named_buffers()}
    batch = _batch()
    for dtype in ("fp32", "int8"):
        scripted = script_serving_model(dlrm, FEATURES, num_dense=3, dtype=dtype)
        scores = scripted(*batch)
        state = dlrm.state_dict()
        assert state.keys() == before.keys()
        assert all(torch.equal(state[k], v) for k, v in before.items()), dtype
        with torch.no_grad():
            for table in dlrm.parameters():
                table.add_(1.0)
            for mapping in dlrm.buffers():  # the remap's (every id to row 0)
                mapping.zero_()
        torch.testing.assert_close(scripted(*batch), scores, atol=0, rtol=0)
        with torch.no_grad():
            for name, mapping in dlrm.named_buffers():
                mapping.copy_(mappings[name])
        dlrm.load_state_dict(before)


@pytest.mark.parametrize("learned_hash", [None, "compact"])
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_spilled_quantized_tables_are_freed_and_serve_the_same_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learned_hash: str | None, dtype: str
) -> None:
    """``spill`` stages the quantized tables on disk and frees them before the sharding
    allocates its own (the export's peak): the sharded model scores exactly as without it,
    the quantized tables' memory is gone, and the staging directory is removed."""
    import tempfile

    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
        IntNBitTableBatchedEmbeddingBagsCodegen as QuantTables,
    )

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plan = HashPlan.from_mappings({"t0": torch.arange(30) % 7}) if learned_hash else None
    scoring = ScoringModule(_dlrm(to_compact(plan, every=3) if plan else None), FEATURES).eval()
    batch = _batch()
    scores, freed = {}, {}
    for spill in (True, False):
        quantized = quantize_for_inference(scoring, dtype=dtype)
        tables = [m for m in quantized.modules() if isinstance(m, QuantTables)]
        assert tables and all(t.weights_host.untyped_storage().nbytes() for t in tables)
        sharded = shard_for_inference(quantized, example_batch(2, 3), spill=spill)
        scores[spill] = sharded(*batch)
        freed[spill] = all(t.weights_host.untyped_storage().nbytes() == 0 for t in tables)
    assert freed == {True: True, False: False}
    torch.testing.assert_close(scores[True], scores[False], atol=0, rtol=0)
    atol = 1e-6 if dtype == "fp32" else 0.01
    torch.testing.assert_close(scores[True], scoring(*batch), atol=atol, rtol=0)
    assert list(tmp_path.iterdir()) == []


def test_tables_that_cannot_be_freed_are_left_and_still_served() -> None:
    """A quantized table whose storage cannot shrink (here: pinned by a numpy view, as
    memory not from torch's allocator is) stays as it is; the export still works."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
        IntNBitTableBatchedEmbeddingBagsCodegen as QuantTables,
    )

    scoring = ScoringModule(_dlrm(None), FEATURES).eval()
    quantized = quantize_for_inference(scoring, dtype="fp32")
    tables = [m for m in quantized.modules() if isinstance(m, QuantTables)]
    pins = [t.weights_host.numpy() for t in tables]  # noqa: F841 (held: the pin)
    assert not any(t.weights_host.untyped_storage().resizable() for t in tables)
    sharded = shard_for_inference(quantized, example_batch(2, 3))
    assert all(t.weights_host.untyped_storage().nbytes() for t in tables)
    batch = _batch()
    torch.testing.assert_close(sharded(*batch), scoring(*batch), atol=1e-6, rtol=0)


def test_no_room_to_spill_warns_and_keeps_the_tables_in_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
        IntNBitTableBatchedEmbeddingBagsCodegen as QuantTables,
    )

    from torchrec_lhf import _spill

    disk = SimpleNamespace(total=100, used=90, free=10)
    monkeypatch.setattr(_spill.shutil, "disk_usage", lambda path: disk)
    scoring = ScoringModule(_dlrm(None), FEATURES).eval()
    quantized = quantize_for_inference(scoring, dtype="fp32")
    tables = [m for m in quantized.modules() if isinstance(m, QuantTables)]
    with caplog.at_level("WARNING", logger="torchrec_lhf._spill"):
        sharded = shard_for_inference(quantized, example_batch(2, 3))
    assert "has 10 bytes free, the quantized tables need" in caplog.text
    assert all(t.weights_host.untyped_storage().nbytes() for t in tables)  # not freed
    batch = _batch()
    torch.testing.assert_close(sharded(*batch), scoring(*batch), atol=1e-6, rtol=0)


def test_the_sharded_serving_model_shares_the_quantized_remaps_mappings() -> None:
    """An inference twin takes no copy of the remap's mappings (the export's peak): the
    sharded collection's remap holds the quantized collection's tensors, on the same
    device, and serves the same scores."""
    from torchrec_lhf.modules import logical_view
    from torchrec_lhf.modules.quant import QuantLearnedHashEmbeddingBagCollection

    plan = to_compact(HashPlan.from_mappings({"t0": torch.arange(30) % 7}), every=3)
    scoring = ScoringModule(_dlrm(plan), FEATURES).eval()
    quantized = quantize_for_inference(scoring, dtype="fp32")
    (quant,) = [
        m for m in quantized.modules() if isinstance(m, QuantLearnedHashEmbeddingBagCollection)
    ]

    def pointers(tensors) -> set[int]:  # noqa: ANN001
        return {t.data_ptr() for t in tensors if t.numel()}

    mappings = pointers(logical_view.remap_tensors(quant).values())
    assert mappings  # the compact head's tables, the dense mapping's buffer
    assert not pointers(scoring.buffers()) & mappings  # its own copy of the float model's
    sharded = shard_for_inference(quantized, example_batch(2, 3))
    (remap,) = [m.remap for m in sharded.modules() if hasattr(m, "remap") and m is not quant]
    assert pointers((*remap.buffers(), *remap.parameters())) == mappings
    batch = _batch()
    torch.testing.assert_close(sharded(*batch), scoring(*batch), atol=1e-6, rtol=0)


def test_a_table_int8_rows_cannot_hold_is_named_and_fp32_serves_it() -> None:
    """A concat plan splits ``t0``'s dim 6 into 3 + 3: int8 rows need an even dim. Before,
    FBGEMM failed inside the flow ("ncols needs to be multiple of 2 Bytes"); the flow now
    names the internal table before it quantizes, and the fp32 model scores as before."""
    plan = HashPlan.from_multi_mappings(
        {"t0": [torch.arange(30) % 7, torch.arange(30) % 5]}, combine="concat"
    )
    dlrm = _dlrm(plan, dim=6)
    match = r"table 't0__h0' \(an internal table of 't0', whose .*\) has dim 3, but .*qint8"
    with pytest.raises(ValueError, match=match):
        script_serving_model(dlrm, FEATURES, num_dense=3, dtype="int8")
    batch = _batch()
    scripted = script_serving_model(dlrm, FEATURES, num_dense=3, dtype="fp32")
    expected = ScoringModule(dlrm, FEATURES)(*batch)
    torch.testing.assert_close(scripted(*batch), expected, atol=1e-6, rtol=0)


def test_plain_id_heights_names_the_features_plain_tables_read() -> None:
    """The served model checks the ids of features plain tables read (TorchRec builds its
    quantized tables with no bounds check); a learned hash's remap checks its own, and a
    managed-collision collection's tables take remapped ids, so neither is listed."""
    assert torch.equal(plain_id_heights(_dlrm(None), FEATURES), torch.tensor([30, 30]))
    assert torch.equal(plain_id_heights(_dlrm(None), ["f1", "x"]), torch.tensor([30, -1]))
    plan = HashPlan.from_mappings({"t0": torch.arange(30) % 7})
    assert plain_id_heights(_dlrm(plan), FEATURES) is None  # (t1 is in the remap too)
    quantized = quantize_for_inference(ScoringModule(_dlrm(None), FEATURES, 3))
    assert torch.equal(quantized.id_limits, id_limits(torch.tensor([30, 30])))
    assert torch.equal(plain_id_heights(quantized, FEATURES), torch.tensor([30, 30]))
    assert "id_limits" not in quantized.state_dict()
    tables = [  # t managed (5 rows for its 10 ids), u a plain table beside it
        EmbeddingBagConfig(name=n, embedding_dim=4, num_embeddings=h, feature_names=[f])
        for n, h, f in (("t", 10, "a"), ("u", 7, "b"))
    ]
    managed = MCHEmbeddingBagCollection(tables, zch_sizes={"t": 5})
    heights = plain_id_heights(nn.ModuleDict({"m": managed}), ["a", "b"])
    assert torch.equal(heights, torch.tensor([-1, 7]))
