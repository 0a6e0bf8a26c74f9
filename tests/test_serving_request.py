"""The served model's request check: malformed requests named, eager and scripted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests._compact import to_compact
from tests.test_inference import FEATURES, _batch, _dlrm
from torchrec_lhf import HashPlan
from torchrec_lhf.inference import RemapOnRequest, ScoringModule, script_serving_model
from torchrec_lhf.serving_request import (
    at_least_one_sample,
    check_request,
    id_limits,
    ids_out_of_range,
    scores_of,
)

DENSE, VALUES, LENGTHS = _batch()  # 3 samples, 2 features, 3 dense features

BAD_REQUESTS = {
    # name: ((dense, values, lengths), the message's pattern)
    "lengths add up to more": (
        (DENSE, VALUES, torch.tensor([1, 2, 0, 1, 1, 2])),
        r"the lengths of features \[.?f0.?, .?f1.?\] add up to 7 ids, but the batch holds 6",
    ),
    "lengths add up to fewer": (
        (DENSE, VALUES, torch.tensor([1, 2, 0, 1, 1, 0])),
        r"the lengths of features \[.?f0.?, .?f1.?\] add up to 5 ids, but the batch holds 6",
    ),
    "a length per feature and sample missing": (
        (DENSE, VALUES, torch.tensor([1, 2, 1, 1, 1])),
        r"lengths has 5 entries; expected 6: 2 features \[f0, f1\] x 3 samples",
    ),
    "a negative length": (
        (DENSE, VALUES, torch.tensor([1, 3, 1, 1, -1, 1])),
        r"lengths\[4\] = -1 \(feature 'f1', sample 1\) is negative",
    ),
    "float ids": (
        (DENSE, VALUES.float(), LENGTHS),
        r"the ids of features \[.?f0.?, .?f1.?\] are (not integers|torch.float32)",
    ),
    "float lengths": ((DENSE, VALUES, LENGTHS.float()), r"lengths are not integers"),
    "int16 ids": (
        (DENSE, VALUES.to(torch.int16), LENGTHS),
        r"the ids of features \[.?f0.?, .?f1.?\] are integers of another width; expected "
        r"torch.int64 or torch.int32",
    ),
    "uint8 ids": ((DENSE, VALUES.to(torch.uint8), LENGTHS), r"the ids of .* another width"),
    "int16 lengths": (
        (DENSE, VALUES, LENGTHS.to(torch.int16)),
        r"lengths are integers of another width; expected torch.int64 or torch.int32",
    ),
    "dense of another width": (
        (torch.randn(3, 4), VALUES, LENGTHS),
        r"dense has 4 features a sample \(shape \[3, 4\]\); expected 3",
    ),
    "dense of another batch": (
        (torch.randn(2, 3), VALUES, LENGTHS),
        r"lengths has 6 entries; expected 4: 2 features \[f0, f1\] x 2 samples",
    ),
    "integer dense features": (
        (DENSE.long(), VALUES, LENGTHS),
        r"dense features are not floating point; expected a float dtype",
    ),
    "dense not 2-D": ((torch.randn(9), VALUES, LENGTHS), r"dense must be 2-D .* got shape \[9\]"),
    "values not 1-D": (
        (DENSE, VALUES.reshape(2, 3), LENGTHS),
        r"values must be 1-D .* got shape \[2, 3\]",
    ),
    "lengths not 1-D": (
        (DENSE, VALUES, LENGTHS.reshape(2, 3)),
        r"lengths must be 1-D .* got shape \[2, 3\]",
    ),
}


# A learned hash's served model leaves the lengths to its remap's operator, which reads them
# anyway (one pass fewer: 4% of a one-sample request); the model passes it the request's
# feature names, which its messages name (before, by index: "internal feature 1").
OPERATOR_MESSAGES = {
    "lengths add up to more": r"the lengths add up to 7 ids, but the batch holds 6: the lengths",
    "lengths add up to fewer": r"the lengths add up to 5 ids, but the batch holds 6: the lengths",
    "a negative length": r"lengths\[4\] = -1 \(feature 'f1', sample 1\) is negative",
}


def _plan(kind: str | None) -> HashPlan | None:
    """None (a plain model), ``dense`` (FBGEMM remaps inside its kernel when served) or
    ``compact`` (the remap on the request: ``RemapOnRequest``)."""
    if kind is None:
        return None
    plan = HashPlan.from_mappings({"t0": torch.arange(30) % 7})
    return to_compact(plan, every=3) if kind == "compact" else plan


KINDS = [None, "dense", "compact"]


@pytest.fixture(scope="module")
def scripted() -> dict[str | None, torch.jit.ScriptModule]:
    """The served model of each kind of plan, scripted once for the module's tests."""
    return {
        kind: script_serving_model(_dlrm(_plan(kind)), FEATURES, num_dense=3, dtype="fp32")
        for kind in KINDS
    }


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
@pytest.mark.parametrize("kind", KINDS)
def test_the_scripted_serving_model_names_every_malformed_request(
    scripted: dict[str | None, torch.jit.ScriptModule], kind: str | None, name: str
) -> None:
    """Before the check, a plain or dense model scored a request whose lengths add up to
    fewer ids than it holds (the extra ids ignored) and read a negative length as an empty
    bag; the other cases failed inside FBGEMM or as a matrix product, naming nothing."""
    model = scripted[kind]
    good = model(DENSE, VALUES, LENGTHS)
    request, pattern = BAD_REQUESTS[name]
    # (TorchScript raises its own error type, with the ValueError's name in the message)
    pattern = f"ValueError: {pattern}"
    if kind is not None and name in OPERATOR_MESSAGES:
        pattern = OPERATOR_MESSAGES[name]
    with pytest.raises(Exception, match=pattern):
        model(*request)
    torch.testing.assert_close(model(DENSE, VALUES, LENGTHS), good, atol=0, rtol=0)


@pytest.mark.parametrize("bad", [30, 31, 2**40, -1])
@pytest.mark.parametrize("feature", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_the_served_model_refuses_an_id_outside_its_table(
    scripted: dict[str | None, torch.jit.ScriptModule], kind: str | None, feature: int, bad: int
) -> None:
    """Before, the dense plan's served model (FBGEMM remaps inside its kernel) read its
    remapping array out of bounds: an error naming a garbage row, another id's row, or a
    segmentation fault; and the plain model (TorchRec's quantized tables, FBGEMM's bounds
    check off) scored ids 30, 31 and -1 with rows read from memory outside the table.
    Both tables (t0 compressed, t1 not) have 30 ids. The feature is named (before, by its
    index: ``internal feature 1``)."""
    model = scripted[kind]
    good = model(DENSE, VALUES, LENGTHS)
    values = VALUES.clone()
    values[0 if feature == 0 else 3] = bad  # (f0's first id, f1's first)
    with pytest.raises(
        Exception, match=rf"feature 'f{feature}': id {bad} is out of range \[0, 30\)"
    ):
        model(DENSE, values, LENGTHS)
    torch.testing.assert_close(model(DENSE, VALUES, LENGTHS), good, atol=0, rtol=0)


def test_ids_out_of_range_names_the_first_checked_id_and_counts_them() -> None:
    limits = id_limits(torch.tensor([-1, 5, 3]))  # f0 unchecked (a remap checks it)
    names = ["f0", "f1", "f2"]
    lengths = torch.tensor([2, 0, 1, 1, 0, 3])  # 2 samples: f0 3 ids, f1 2, f2 3
    values = torch.tensor([99, -7, 1, 4, 2, 0, 1])
    assert ids_out_of_range(values, lengths, limits, names) == ""
    assert ids_out_of_range(values.int(), lengths.int(), limits, names) == ""
    values = torch.tensor([99, -7, 1, 4, 2, 3, -1])
    expected = "feature 'f2': id 3 is out of range [0, 3) (2 such ids in the request)"
    assert ids_out_of_range(values, lengths, limits, names) == expected
    values[3] = 5  # f1's second id: the first bad one in request order
    assert ids_out_of_range(values, lengths, limits, names).startswith("feature 'f1': id 5 ")


@pytest.mark.parametrize("kind", KINDS)
def test_a_strided_view_of_the_ids_is_scored_as_its_values(
    scripted: dict[str | None, torch.jit.ScriptModule], kind: str | None
) -> None:
    """Before, FBGEMM read a strided view's memory as contiguous: the plain model scored
    other ids without a word, and the learned hashes' operators refused it naming nothing."""
    model = scripted[kind]
    strided = torch.stack([VALUES, VALUES.flip(0)], 1)[:, 0]
    assert not strided.is_contiguous() and torch.equal(strided, VALUES)
    good = model(DENSE, VALUES, LENGTHS)
    torch.testing.assert_close(model(DENSE, strided, LENGTHS), good, atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_of_no_samples_scores_none(
    scripted: dict[str | None, torch.jit.ScriptModule], kind: str | None
) -> None:
    """Before, the dense plan's served model failed inside FBGEMM's remap (``Expected B > 0``)
    where the others returned no scores. A malformed empty request is still named."""
    model = scripted[kind]
    good = model(DENSE, VALUES, LENGTHS)
    no_ids = torch.zeros(0, dtype=torch.long)
    scores = model(torch.zeros(0, 3), no_ids, no_ids)
    assert scores.shape == (0,) and scores.dtype == good.dtype
    assert model(torch.zeros(0, 3), no_ids.int(), no_ids.int()).shape == (0,)
    with pytest.raises(Exception, match=r"ValueError: lengths has 2 entries; expected 0"):
        model(torch.zeros(0, 3), no_ids, torch.zeros(2, dtype=torch.long))
    with pytest.raises(Exception, match=r"ValueError: dense has 4 features a sample"):
        model(torch.zeros(0, 4), no_ids, no_ids)
    one = model(DENSE[:1], VALUES[[0, 3]], torch.tensor([1, 1]))  # the smallest batch after
    assert one.shape == (1,)
    torch.testing.assert_close(model(DENSE, VALUES, LENGTHS), good, atol=0, rtol=0)


def test_at_least_one_sample_passes_a_request_with_samples_on_uncopied() -> None:
    dense, lengths = at_least_one_sample(DENSE, LENGTHS, 2)
    assert dense is DENSE and lengths is LENGTHS
    scores = torch.rand(3)
    assert scores_of(scores, 3) is scores
    dense, lengths = at_least_one_sample(torch.zeros(0, 3), LENGTHS[:0].int(), 2)
    assert torch.equal(dense, torch.zeros(1, 3)) and torch.equal(lengths, torch.zeros(2).int())
    assert lengths.dtype == torch.int32
    assert scores_of(scores[:1], 0).shape == (0,)


@pytest.mark.parametrize("check_lengths", [True, False])
def test_the_request_check_leaves_the_lengths_to_the_remaps_operator(check_lengths: bool) -> None:
    """Where the remap's operator reads a CPU request's lengths (dense ids checked; compact
    heads of int16 or int32 rows), the request check does not read them again; head rows
    of another width are the torch ops', so it does."""
    for kind in ("dense", "compact"):
        dlrm = _dlrm(_plan(kind))
        remap = dlrm.sparse_arch.embedding_bag_collection.remap
        scoring = ScoringModule(dlrm, FEATURES, 3, check_lengths=check_lengths)
        assert remap.request_reads_lengths(ids_only=kind == "dense")
        assert RemapOnRequest(scoring, remap, ids_only=kind == "dense").check_lengths is False
    remap.slot_rows = remap.slot_rows.to(torch.int64)  # (a width the kernel does not read)
    assert not remap.request_reads_lengths()
    assert RemapOnRequest(scoring, remap).check_lengths is check_lengths
    assert RemapOnRequest(scoring, remap, ids_only=True).check_lengths is False


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_the_eager_scoring_module_raises_the_same_value_errors(name: str) -> None:
    request, pattern = BAD_REQUESTS[name]
    scoring = ScoringModule(_dlrm(_plan("dense")), FEATURES, num_dense=3).eval()
    with pytest.raises(ValueError, match=pattern):
        scoring(*request)


def test_well_formed_requests_of_every_integer_dtype_and_empty_bags_pass() -> None:
    check_request(DENSE, VALUES.int(), LENGTHS.int(), FEATURES, 3)
    check_request(DENSE, VALUES, LENGTHS, FEATURES, None)  # the width unchecked
    check_request(torch.randn(3, 8), VALUES, LENGTHS, FEATURES, None)
    empty_bags = torch.tensor([0, 0, 0, 0, 0, 0])
    check_request(DENSE, torch.zeros(0, dtype=torch.long), empty_bags, FEATURES, 3)
    check_request(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), empty_bags[:0], FEATURES, 3)
    scoring = ScoringModule(_dlrm(None), FEATURES, num_dense=np.int64(3)).eval()
    assert scoring.num_dense == 3 and type(scoring.num_dense) is int  # (a TorchScript int)
    assert scoring(DENSE, VALUES.int(), LENGTHS.int()).shape == (3,)


@pytest.mark.parametrize("num_dense", [0, -1, True, 3.0, "3"])
def test_a_bad_num_dense_is_named(num_dense: object) -> None:
    with pytest.raises(ValueError, match=r"num_dense must be an int >= 1, got"):
        ScoringModule(_dlrm(None), FEATURES, num_dense=num_dense)  # type: ignore[arg-type]


def test_check_lengths_false_reads_shapes_and_dtypes_only() -> None:
    """The opt-out skips the two reads of the lengths, not the checks of their shapes (a
    plain model: a learned hash's remap or range check reads the lengths itself)."""
    scripted = script_serving_model(
        _dlrm(_plan(None)), FEATURES, num_dense=3, dtype="fp32", check_lengths=False
    )
    fewer = torch.tensor([1, 2, 0, 1, 1, 0])  # adds up to 5 of the 6 ids: not read
    assert scripted(DENSE, VALUES, fewer).shape == (3,)
    for name in ("a length per feature and sample missing", "float ids", "dense of another width"):
        request, pattern = BAD_REQUESTS[name]
        with pytest.raises(Exception, match=f"ValueError: {pattern}"):
            scripted(*request)
