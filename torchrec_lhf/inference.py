"""TorchRec's inference flow for models with learned-hash (or plain) collections.

The steps TorchRec's own inference examples take (``torchrec.inference.dlrm_predict``),
with the learned-hash modules added where TorchRec matches modules by exact type:

1. :func:`quantize_for_inference`: ``quantize_inference_model`` with the learned-hash
   collections mapped to :class:`~torchrec_lhf.modules.quant.QuantLearnedHashEmbeddingBagCollection`
   and, for sequence features, :class:`~torchrec_lhf.modules.quant.QuantLearnedHashEmbeddingCollection`;
2. :func:`shard_for_inference`: ``shard_quant_model`` (one rank, table-wise) with the
   quantized learned-hash sharders next to TorchRec's (:func:`inference_sharders`),
   the quantized weights copied into the sharded tables (TorchRec's sharding allocates
   them empty);
3. :func:`script_for_inference`: ``torchrec.fx.symbolic_trace`` then ``torch.jit.script``;
   save it with :func:`save_scripted`, load it with :func:`load_scripted`
   (``torch.jit.load``: no pickle).

The served model takes plain tensors (:class:`ScoringModule`), so a caller builds no
TorchRec object; loading it needs only FBGEMM's operators registered (``import
fbgemm_gpu``), as any TorchScript model with FBGEMM kernels does.

Example::

    >>> import torch
    >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    >>> from torchrec.models.dlrm import DLRM
    >>> tables = [EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10,
    ...                              feature_names=["f"])]
    >>> dlrm = DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables),
    ...             dense_in_features=2, dense_arch_layer_sizes=[4], over_arch_layer_sizes=[4, 1])
    >>> model = ScoringModule(dlrm, ["f"]).eval()
    >>> batch = (torch.zeros(3, 2), torch.tensor([1, 2, 3]), torch.ones(3, dtype=torch.long))
    >>> model = shard_for_inference(quantize_for_inference(model), batch)
    >>> scripted = script_for_inference(model)
    >>> scripted(*batch).shape
    torch.Size([3])
"""

# NOTE: no ``from __future__ import annotations``: FX copies the annotations of
# ScoringModule.forward into its generated code, where TorchScript needs real types.

import contextlib
import copy
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchrec.fx
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed.fused_params import FUSED_PARAM_QUANT_STATE_DICT_SPLIT_SCALE_BIAS
from torchrec.distributed.global_settings import get_propogate_device, set_propogate_device
from torchrec.distributed.quant_embedding import QuantEmbeddingCollectionSharder
from torchrec.distributed.quant_embeddingbag import QuantEmbeddingBagCollectionSharder
from torchrec.inference.modules import (
    DEFAULT_FUSED_PARAMS,
    DEFAULT_QUANT_MAPPING,
    assign_weights_to_tbe,
    get_table_to_weights_from_tbe,
    quantize_inference_model,
    shard_quant_model,
    trim_torch_package_prefix_from_typename,
)
from torchrec.modules.mc_embedding_modules import BaseManagedCollisionEmbeddingCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_lhf import _spill
from torchrec_lhf._io import atomic_path, json_default, not_a_file
from torchrec_lhf._memory import trim_heap
from torchrec_lhf.cli import check_int
from torchrec_lhf.distributed.quant_embedding import QuantLearnedHashEmbeddingCollectionSharder
from torchrec_lhf.distributed.quant_embedding_bag import (
    QuantLearnedHashEmbeddingBagCollectionSharder,
)
from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding import LearnedHashEmbeddingCollection
from torchrec_lhf.modules.embedding_bag import LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.quant import (
    QuantLearnedHashEmbeddingBagCollection,
    QuantLearnedHashEmbeddingCollection,
    check_quantizable,
)
from torchrec_lhf.modules.remap import FeatureRemap
from torchrec_lhf.serving_request import (
    at_least_one_sample,
    check_request,
    id_limits,
    scores_of,
)

torch.fx.wrap("check_request")  # one opaque node in a trace (it reads the request's lengths)
torch.fx.wrap("at_least_one_sample")
torch.fx.wrap("scores_of")

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
"""Name of the JSON manifest stored inside a saved scripted model (``_extra_files``)."""

WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "int8": torch.qint8,
    "int4": torch.quint4x2,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
"""Table weight dtypes of the quantized model, by name."""


class ScoringModule(nn.Module):
    """A DLRM as a serving function of plain tensors: probabilities of the positive class.

    Args:
        model: a ``torchrec.models.dlrm.DLRM`` (or any ``(dense, KJT) -> logits`` module).
        feature_names: the sparse features, in the order of ``lengths``.
        num_dense: the model's dense features, checked on every request; None: not checked.
        check_lengths: also read each request's lengths (on the CPU: each ``>= 0``, adding
            up to its ids; two reductions, 4% of a one-sample request to
            ``benchmarks.serve``'s model), and the ids of features that plain tables read
            (:func:`plain_id_heights`): False for callers that check them upstream.

    Shapes (``B`` samples, ``F = len(feature_names)``): ``dense`` ``(B, num_dense)``,
    ``values`` ``(sum lengths,)`` raw ids, ``lengths`` ``(F * B,)`` feature-major (as a
    KeyedJaggedTensor's); returns ``(B,)``. (:func:`script_for_inference` may trace it with
    its learned-hash remap done on the request's tensors: :class:`RemapOnRequest`.)

    Raises:
        ValueError: (on a call) a malformed request, named
            (:func:`~torchrec_lhf.serving_request.check_request`).
    """

    def __init__(
        self,
        model: nn.Module,
        feature_names: list[str],
        num_dense: int | None = None,
        check_lengths: bool = True,
    ) -> None:
        super().__init__()
        if num_dense is not None:
            check_int("num_dense", num_dense, low=1)
        self.model = model
        self.feature_names = list(feature_names)
        self.num_dense = None if num_dense is None else int(num_dense)
        self.check_lengths = bool(check_lengths)
        # (not in the state dict: derived from the model; None where no table needs it)
        heights = plain_id_heights(model, self.feature_names)
        limits = None if heights is None else id_limits(heights)
        self.register_buffer("id_limits", limits, persistent=False)

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        check_request(
            dense, values, lengths, self.feature_names, self.num_dense, self.check_lengths,
            self.id_limits,
        )  # fmt: skip
        # (FBGEMM's kernels read the ids' memory as contiguous: a strided view's other
        # elements were scored; no copy where they are contiguous)
        sparse = KeyedJaggedTensor(
            keys=self.feature_names, values=values.contiguous(), lengths=lengths
        )
        return self.score(dense, sparse)

    def score(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Probabilities ``(B,)`` of a batch of sparse features already made."""
        return torch.sigmoid(self.model(dense, sparse)).reshape(-1)


_PLAIN_COLLECTIONS = (
    EmbeddingBagCollection,
    EmbeddingCollection,
    QuantEmbeddingBagCollection,
    QuantEmbeddingCollection,
)


def plain_id_heights(model: nn.Module, feature_names: list[str]) -> torch.Tensor | None:
    """Per request feature, the height of the table a plain TorchRec collection of
    ``model`` reads its ids from (float or quantized; the smallest where several do), -1
    for the others (a learned hash's remap checks its ids); None where no feature has one.

    The served model checks those ids (:func:`~torchrec_lhf.serving_request.check_request`):
    TorchRec builds its quantized tables with FBGEMM's bounds check off, so an id outside
    the table scored a row read from memory outside it (the float model raises). A
    managed-collision collection's tables, which its remapped ids index, are skipped.

    Returns:
        ``(F,)`` int64, or None.
    """
    heights: dict[str, int] = {}

    def visit(module: nn.Module) -> None:
        if isinstance(module, BaseManagedCollisionEmbeddingCollection):
            return  # (ids remapped inside)
        if type(module) in _PLAIN_COLLECTIONS:  # (exact: not the learned-hash subclasses)
            configs = (
                module.embedding_bag_configs()
                if hasattr(module, "embedding_bag_configs")
                else module.embedding_configs()
            )
            for c in configs:
                for f in c.feature_names:
                    heights[f] = min(heights.get(f, c.num_embeddings), c.num_embeddings)
            return
        for child in module.children():
            visit(child)

    visit(model)
    if not any(f in heights for f in feature_names):
        return None
    return torch.tensor([heights.get(f, -1) for f in feature_names], dtype=torch.int64)


class RemapOnRequest(nn.Module):
    """A :class:`ScoringModule` whose one learned-hash remap reads the request's features
    in order (DLRM's layout), with that remap done on the request's tensors
    (:meth:`FeatureRemap.request_rows`, one operator call on CPU): the traced model makes
    one KeyedJaggedTensor, of rows, where it made one of raw ids and the remap a second
    (with the keys compared, the per-key lengths taken and the lists built: most of a
    one-sample request's remap). Traced while the collection's remap passes its input on
    (``FeatureRemap.hoisted``; :func:`script_for_inference`). Same scores. Where that
    operator reads the request's lengths (on the CPU; ``FeatureRemap.request_reads_lengths``)
    the request check leaves them to it: a bad one is its error, naming the feature by index.

    Args:
        scoring: the wrapper; its feature names must be ``remap.sources``.
        remap: its model's one remap.
        ids_only: the remap is FBGEMM's (the collection's ``remap_in_kernel``): the request's
            ids are range-checked here (``FeatureRemap.check_ids``), not mapped, and a request
            of no samples, which FBGEMM's remap refuses, is scored as one of empty bags and
            none of its scores kept (``at_least_one_sample``; no copy otherwise).
    """

    def __init__(self, scoring: ScoringModule, remap: FeatureRemap, ids_only: bool = False) -> None:
        super().__init__()
        self.ids_only = bool(ids_only)
        if scoring.feature_names != remap.sources:
            raise ValueError(
                f"the request's features {scoring.feature_names} are not the remap's, in "
                f"order: {remap.sources}"
            )
        self.scoring = scoring
        self.remap = remap
        # on the CPU the remap's operator reads the lengths (refusing bad ones by internal
        # feature, which is the request's feature here): the request check need not too
        self.check_lengths = scoring.check_lengths and not remap.request_reads_lengths(ids_only)

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        scoring = self.scoring
        check_request(
            dense, values, lengths, scoring.feature_names, scoring.num_dense,
            self.check_lengths,
        )  # fmt: skip
        rows = self.remap.request_rows(values, lengths, self.ids_only)
        if not self.ids_only:
            sparse = KeyedJaggedTensor(keys=self.remap.feature_names, values=rows, lengths=lengths)
            return self.scoring.score(dense, sparse)
        # (FBGEMM's remap refuses a request of no samples: one of empty bags scored, none kept)
        batch = dense.size(0)
        dense, lengths = at_least_one_sample(dense, lengths, len(scoring.feature_names))
        sparse = KeyedJaggedTensor(keys=self.remap.feature_names, values=rows, lengths=lengths)
        return scores_of(self.scoring.score(dense, sparse), batch)


def quantization_mapping() -> dict[str, type[nn.Module]]:
    """TorchRec's default float -> quantized module mapping plus the learned-hash ones
    (pooled and sequence collections)."""
    mapping = dict(DEFAULT_QUANT_MAPPING)
    for float_type, quant_type in (
        (LearnedHashEmbeddingBagCollection, QuantLearnedHashEmbeddingBagCollection),
        (LearnedHashEmbeddingCollection, QuantLearnedHashEmbeddingCollection),
    ):
        mapping[trim_torch_package_prefix_from_typename(torch.typename(float_type))] = quant_type
    return mapping


def inference_sharders() -> list:
    """Quantized learned-hash and plain sharders, of pooled (EBC) and sequence (EC)
    collections, with TorchRec's inference defaults,
    except that scale and bias stay inside the int8/int4 rows (``quant_state_dict_split_
    scale_bias`` off): fp16/fp32 tables have none to split, and table-wise sharding (the one
    used here) does not need the split."""
    fused_params = dict(DEFAULT_FUSED_PARAMS)
    fused_params[FUSED_PARAM_QUANT_STATE_DICT_SPLIT_SCALE_BIAS] = False
    return [
        QuantLearnedHashEmbeddingBagCollectionSharder(fused_params=fused_params),
        QuantEmbeddingBagCollectionSharder(fused_params=fused_params),
        QuantLearnedHashEmbeddingCollectionSharder(fused_params=dict(fused_params)),
        TableWiseQuantEmbeddingCollectionSharder(fused_params=dict(fused_params)),
    ]


class TableWiseQuantEmbeddingCollectionSharder(QuantEmbeddingCollectionSharder):
    """TorchRec's quantized EmbeddingCollection sharder, table-wise only: its row- and
    column-wise shardings need the scale and bias split out of the rows (TorchRec asserts
    so), which :func:`inference_sharders` keeps in them, and its planner picks them for
    small tables."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return ["table_wise"]


def quantize_for_inference(model: nn.Module, *, dtype: str = "int8") -> nn.Module:
    """Quantize a copy of ``model``'s embedding collections (TorchRec's flow).

    Args:
        model: an unsharded float model on CPU; left unchanged.
        dtype: table weight dtype, a key of :data:`WEIGHT_DTYPES`; the pooled embeddings
            stay fp32.

    Returns:
        The quantized copy.

    Raises:
        ValueError: an unknown ``dtype``, or a table whose dim ``dtype``'s rows cannot have
            (:func:`~torchrec_lhf.modules.quant.check_quantizable`: before, FBGEMM failed
            with "ncols needs to be multiple of 2 Bytes", e.g. for int8 and a concat plan
            that splits dim 6 into 3 + 3).
    """
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {list(WEIGHT_DTYPES)}, got {dtype!r}")
    check_quantizable(model, WEIGHT_DTYPES[dtype])
    # NOTE: the copy shares the float tables and the learned hashes' mappings with ``model``
    # (a deepcopy memo that maps them to themselves): quantization reads the tables into
    # tables of its own, takes one copy of each remap, and swaps the copy's collections
    # out, so copies of them would only add their bytes to the export's peak
    shared = {id(t): t for t in embedding_tables(model)}
    for m in model.modules():
        if isinstance(m, (LearnedHashEmbeddingBagCollection, LearnedHashEmbeddingCollection)):
            shared.update(logical_view.remap_tensors(m))
    return quantize_inference_model(
        copy.deepcopy(model, shared),
        quantization_mapping=quantization_mapping(),
        quantization_dtype=WEIGHT_DTYPES[dtype],
        output_dtype=torch.float,
    )


def embedding_tables(model: nn.Module) -> list[torch.Tensor]:
    """The float tables of ``model``'s embedding (bag) collections (TorchRec's and the
    learned-hash ones), which quantization replaces."""
    kinds = (EmbeddingBagCollection, EmbeddingCollection)
    return [t for m in model.modules() if isinstance(m, kinds) for t in m.parameters()]


@contextlib.contextmanager
def _propagate_device() -> Iterator[None]:
    """TorchRec's inference sharding places tables on CUDA unless the sharding device
    propagates (as ``dlrm_predict`` sets for good); set it only for the call."""
    before = get_propogate_device()
    set_propogate_device(True)
    try:
        yield
    finally:
        set_propogate_device(before)


def shard_for_inference(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    device: torch.device | str = "cpu",
    spill: bool = True,
) -> nn.Module:
    """``shard_quant_model`` on one rank, table-wise, the quantized weights copied over.

    TorchRec's sharding allocates tables of its own, which the quantized ones fill. With
    ``spill`` (the default) the quantized tables are first written to a temporary directory
    (``tempfile``'s, so ``TMPDIR`` chooses the disk: it needs their bytes) and freed, and the
    sharded tables are filled from it one table at a time: the two sets are never in memory
    together, so the step's peak is one set of tables and one table, not two sets
    (``benchmarks.export_memory``). Where that disk has no room for them, a warning says so
    and they stay in memory. ``spill=False``: TorchRec's ``assign_weights_to_tbe``, both
    sets in memory at once, no disk.

    Args:
        model: from :func:`quantize_for_inference`; consumed (TorchRec shards in place; with
            ``spill`` its quantized tables' memory is released before the sharding).
        example_inputs: one batch for ``model(*example_inputs)``: TorchRec creates the
            input and output dists of the sharded collections lazily, on the first call,
            which has to see the sharding device (and precede tracing).
        device: where the sharded tables live (``cpu`` or ``cuda``).
        spill: stage the quantized tables on disk (above).

    Returns:
        The sharded model, in eval mode.
    """
    device = torch.device(device)
    with contextlib.ExitStack() as stack:
        weights: Any = get_table_to_weights_from_tbe(model)
        if spill:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lhf_export_")))
            spill = _spill.room_to_spill(weights, tmp)  # NOTE: else kept in memory, as spill=False
            if spill:
                weights = _spill.spill_weights(weights, tmp)
                _spill.release_tbe_weights(model)
                trim_heap()  # NOTE: else glibc may keep the freed tables (measured: 2 runs in 3)
        with _propagate_device():
            sharded, _ = shard_quant_model(
                model,
                world_size=1,
                compute_device=device.type,
                sharding_device=device.type,
                sharders=inference_sharders(),
            )
            if spill:
                _spill.assign_spilled_weights(sharded, weights)
            else:
                assign_weights_to_tbe(sharded, weights)
            del weights
            sharded.eval()
            with torch.no_grad():
                sharded(*example_inputs)
    return sharded


def script_for_inference(model: nn.Module) -> torch.jit.ScriptModule:
    """FX-trace ``model`` with TorchRec's tracer and script it (TorchRec's serving form).

    Raises:
        Whatever tracing or scripting raises for a module that is not traceable.
    """
    with _remap_on_request(model) as root:
        graph = torchrec.fx.symbolic_trace(root)
    return torch.jit.script(graph)


@contextlib.contextmanager
def _remap_on_request(model: nn.Module) -> Iterator[nn.Module]:
    """The module to trace: ``model``, or a :class:`RemapOnRequest` of it where it is a
    :class:`ScoringModule` whose one remap reads its features in request order and is
    called by its collection (where FBGEMM remaps inside its kernel, the range check of
    the ids), with that remap passing its input on meanwhile. ``model`` is left as it
    was."""
    owners = [m for m in model.modules() if isinstance(getattr(m, "remap", None), FeatureRemap)]
    remaps = [m for m in model.modules() if isinstance(m, FeatureRemap)]
    if (
        not isinstance(model, ScoringModule)
        or len(remaps) != 1
        or len(owners) != 1
        or remaps[0].sources != model.feature_names
    ):
        yield model
        return
    remap = remaps[0]
    remap.hoisted = True
    try:
        yield RemapOnRequest(model, remap, getattr(owners[0], "remap_in_kernel", False))
    finally:
        remap.hoisted = False


def example_batch(num_features: int, num_dense: int) -> tuple[torch.Tensor, ...]:
    """A one-sample ``(dense, values, lengths)`` batch for :class:`ScoringModule`: zeros,
    one id (0, valid in every table) per feature."""
    return (
        torch.zeros(1, num_dense),
        torch.zeros(num_features, dtype=torch.long),
        torch.ones(num_features, dtype=torch.long),
    )


def script_serving_model(
    model: nn.Module,
    feature_names: list[str],
    *,
    num_dense: int,
    dtype: str = "int8",
    spill: bool = True,
    check_lengths: bool = True,
) -> torch.jit.ScriptModule:
    """A float DLRM through the whole flow: scoring wrapper, quantize, shard, trace, script.

    Args:
        model: an unsharded float ``(dense, KJT) -> logits`` model on CPU; left unchanged.
        feature_names: its sparse features, in the order requests give them.
        num_dense: its dense input features.
        dtype: table weight dtype (a key of :data:`WEIGHT_DTYPES`).
        spill: stage the quantized tables on disk while they are sharded
            (:func:`shard_for_inference`; one set of tables in memory, not two).
        check_lengths: the served model reads each request's lengths
            (:class:`ScoringModule`); its shapes and dtypes are checked either way.

    Returns:
        The scripted :class:`ScoringModule` (tables on CPU).
    """
    scoring = ScoringModule(model, feature_names, num_dense, check_lengths).eval()
    quantized = quantize_for_inference(scoring, dtype=dtype)
    batch = example_batch(len(feature_names), num_dense)
    sharded = shard_for_inference(quantized, batch, spill=spill)
    return script_for_inference(sharded)


def save_scripted(
    path: str | os.PathLike, model: torch.jit.ScriptModule, manifest: dict[str, Any]
) -> None:
    """``torch.jit.save`` ``model`` with ``manifest`` (JSON) inside, atomically."""
    extra = {MANIFEST_FILE: json.dumps(manifest, sort_keys=True, default=json_default)}
    with atomic_path(path) as tmp:
        torch.jit.save(model, tmp, _extra_files=extra)


def load_scripted(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a model saved by :func:`save_scripted`: ``(module, manifest)``. (This module's
    imports define the remap's operators, ``torchrec_lhf::fused_remap`` and
    ``fused_remap_bags``, which the scripted remap calls:
    :mod:`~torchrec_lhf.modules.compact_kernel`.)

    Raises:
        FileNotFoundError: no file at ``path`` (IsADirectoryError: a directory).
        ValueError: the file holds no manifest (not saved by :func:`save_scripted`).
    """
    if not os.path.isfile(path):
        raise not_a_file(Path(path), "a TorchScript model that torchrec_lhf saved")
    extra = {MANIFEST_FILE: ""}
    model = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    if not extra[MANIFEST_FILE]:
        raise ValueError(f"{path}: a TorchScript file without a torchrec_lhf manifest")
    return model.eval(), json.loads(extra[MANIFEST_FILE])
