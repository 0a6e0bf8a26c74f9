"""The learned-hash modules trace with torch.fx and script with TorchScript, equal to eager.

TorchRec 1.8's inference flow for EBCs traces with ``torchrec.fx`` and scripts the
GraphModule (``torchrec/inference/dlrm_predict.py``); the quantized model has to survive it.
"""

from __future__ import annotations

import io

import pytest
import torch
from torchrec import KeyedJaggedTensor
from torchrec.fx import symbolic_trace as torchrec_trace

from tests._fixtures import three_tables
from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.quant import quantize_learned_hash

TRACERS = {"torchrec": torchrec_trace, "torch": torch.fx.symbolic_trace}


def _setup(
    num_hashes: int, combine: str, weighted: bool, out_of_range: str = "error"
) -> tuple[LearnedHashEmbeddingBagCollection, KeyedJaggedTensor]:
    torch.manual_seed(0)
    tables = three_tables(heights=(50, 20, 9))
    ids = torch.arange(50)
    mappings = [ids % 9, (ids * 7) % 5][:num_hashes]
    plan = HashPlan.from_multi_mappings(
        {"t0": mappings, "t1": [m[:20] for m in mappings]}, combine=combine
    )  # t2 stays uncompressed
    ebc = LearnedHashEmbeddingBagCollection(
        tables=tables, plan=plan, is_weighted=weighted, out_of_range=out_of_range
    )
    lengths = torch.tensor([3, 2, 0, 4, 6, 1, 1, 5, 2, 0, 3, 1])  # F=4 keys, B=3
    values = torch.randint(0, 9, (int(lengths.sum()),))
    kjt = KeyedJaggedTensor(
        keys=["f3", "f0", "f2", "f1"],  # not the tables' order
        values=values,
        lengths=lengths,
        weights=torch.rand(values.shape) if weighted else None,
    )
    return ebc, kjt


CASES = [(1, "sum", False), (1, "sum", True), (2, "sum", False), (2, "concat", True)]


def _equal(got, expected) -> None:  # noqa: ANN001
    assert got.keys() == expected.keys()
    torch.testing.assert_close(got.values(), expected.values(), rtol=0, atol=0)


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize(("num_hashes", "combine", "weighted"), CASES)
def test_float_module_traces_and_scripts(
    tracer: str, num_hashes: int, combine: str, weighted: bool
) -> None:
    ebc, kjt = _setup(num_hashes, combine, weighted)
    gm = TRACERS[tracer](ebc)
    # the remap is one opaque node (it reads the keys on the host)
    assert [n.name for n in gm.graph.nodes if "remap_features" in str(n.target)] != []
    _equal(gm(kjt), ebc(kjt))
    _equal(torch.jit.script(gm)(kjt), ebc(kjt))


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize(("num_hashes", "combine", "weighted"), CASES)
def test_quantized_module_traces_scripts_and_saves(
    tracer: str, num_hashes: int, combine: str, weighted: bool
) -> None:
    ebc, kjt = _setup(num_hashes, combine, weighted)
    q = quantize_learned_hash(ebc.eval(), dtype=torch.qint8)
    expected = q(kjt)
    gm = TRACERS[tracer](q)
    _equal(gm(kjt), expected)
    scripted = torch.jit.script(gm)
    _equal(scripted(kjt), expected)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    _equal(torch.jit.load(buffer)(kjt), expected)


def test_traced_and_scripted_range_checks() -> None:
    ebc, kjt = _setup(2, "sum", False)
    bad = KeyedJaggedTensor(
        keys=kjt.keys(),
        values=kjt.values().clone().index_fill_(0, torch.tensor([4]), 50),
        lengths=kjt.lengths(),
    )  # fmt: skip  (position 4 is an id of f3, an uncompressed table)
    gm = torchrec_trace(ebc)
    with pytest.raises(ValueError, match=r"feature 'f3': id 50 is out of range \[0, 9\)"):
        gm(bad)
    # scripted on CPU: the kernel's operator names the internal feature (f3's is the last
    # of the seven), or where it cannot be built, the range guard's gather fails
    with pytest.raises(RuntimeError, match=r"feature 6: id 50 is out of range \[0, 9\)|bounds"):
        torch.jit.script(gm)(bad)
    folding, _ = _setup(2, "sum", False, out_of_range="modulo")
    folding.load_state_dict(ebc.state_dict())
    scripted = torch.jit.script(torchrec_trace(folding))
    _equal(scripted(bad), folding(bad))
