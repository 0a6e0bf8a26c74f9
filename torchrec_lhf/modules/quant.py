"""Quantized (inference) learned-hash EmbeddingBagCollection and EmbeddingCollection.

``torchrec.inference.modules.quantize_embeddings`` maps modules by exact type, so the
learned-hash modules need their own entries: :func:`quantize_learned_hash` passes them.
"""

# NOTE: no ``from __future__ import annotations``: torch.fx copies forward's annotations
# into the traced code, and TorchScript needs them as types, not strings.

from collections.abc import Callable

import torch
from torch import nn
from torchrec.inference.modules import quantize_embeddings
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.quant.embedding_modules import (
    MODULE_ATTR_CACHE_FEATURES_ORDER,
    MODULE_ATTR_EMB_CONFIG_NAME_TO_NUM_ROWS_POST_PRUNING_DICT,
    MODULE_ATTR_QUANT_STATE_DICT_SPLIT_SCALE_BIAS,
    MODULE_ATTR_REGISTER_TBES_BOOL,
    MODULE_ATTR_ROW_ALIGNMENT_INT,
)
from torchrec.quant.embedding_modules import (
    EmbeddingBagCollection as QuantEmbeddingBagCollection,
)
from torchrec.quant.embedding_modules import (
    EmbeddingCollection as QuantEmbeddingCollection,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding import LearnedHashEmbeddingCollection
from torchrec_lhf.modules.embedding_bag import LearnedHashEmbeddingBagCollection
from torchrec_lhf.modules.remap import refuse_variable_batch

torch.fx.wrap("refuse_variable_batch")  # one node of a trace (it reads the keys)

QUANTIZED = "TorchRec's quantized EmbeddingBagCollection"
QUANTIZED_SEQUENCE = "TorchRec's quantized EmbeddingCollection"

# The options TorchRec's from_float reads from the float module (set by users on it).
_FROM_FLOAT_OPTIONS = (
    "qconfig",
    MODULE_ATTR_CACHE_FEATURES_ORDER,
    MODULE_ATTR_EMB_CONFIG_NAME_TO_NUM_ROWS_POST_PRUNING_DICT,
    MODULE_ATTR_QUANT_STATE_DICT_SPLIT_SCALE_BIAS,
    MODULE_ATTR_REGISTER_TBES_BOOL,
    MODULE_ATTR_ROW_ALIGNMENT_INT,
)


class QuantLearnedHashEmbeddingBagCollection(QuantEmbeddingBagCollection):
    """TorchRec's quantized EBC over the compressed tables, with the same remap.

    NOTE: one subclass level under TorchRec's quantized EBC, which ``quantize_embeddings``
    instantiates through ``from_float`` by exact type.

    As the float module, ``embedding_bag_configs()`` gives the logical tables (so a quantized
    DLRM still sees its features and dims) and ``internal_embedding_bag_configs()`` the
    quantized compressed ones.
    """

    @classmethod
    def from_float(
        cls, module: LearnedHashEmbeddingBagCollection, use_precomputed_fake_quant: bool = False
    ) -> "QuantLearnedHashEmbeddingBagCollection":
        quantized = quantized_twin(
            super().from_float,
            module,
            LearnedHashEmbeddingBagCollection,
            use_precomputed_fake_quant,
        )
        if quantized.combine is not None:
            # TorchRec's quantized EBC groups its tables by pooling type: with SUM and MEAN
            # tables interleaved its output keys are not in the configs' order, which the
            # combine's column gathers assume; the combine follows the order it returns
            keys, dims = quantized.internal_output_order()
            if keys != quantized.combine.in_keys:
                quantized.combine = quantized.combine.for_input_order(keys, dims)
        return quantized

    def internal_output_order(self) -> tuple[list[str], list[int]]:
        """The keys and dims of the internal pooled embeddings, in the order TorchRec's
        quantized EBC returns them (grouped by pooling type): those of one forward of a
        sample without ids (public API only)."""
        names = [f for c in self.internal_embedding_bag_configs() for f in c.feature_names]
        device = self.remap.mapping.device
        empty = KeyedJaggedTensor(
            keys=names,
            values=torch.zeros(0, dtype=torch.long, device=device),
            lengths=torch.zeros(len(names), dtype=torch.int32, device=device),
            weights=torch.zeros(0, device=device) if self.is_weighted() else None,
        )
        pooled = super().forward(empty)
        return pooled.keys(), pooled.length_per_key()

    # the logical tables (as the float module's), bound from logical_view
    embedding_bag_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The quantized compressed tables' configs (TorchRec's, with their data types)."""
        return super().embedding_bag_configs()

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        # (FBGEMM's inference kernel takes one batch size for all features)
        features = refuse_variable_batch(features, QUANTIZED)
        pooled = super().forward(self.remap(features))
        return pooled if self.combine is None else self.combine(pooled)


def quantized_twin(
    base_from_float: Callable[[nn.Module, bool], nn.Module],
    module: nn.Module,
    expected: type,
    use_precomputed_fake_quant: bool,
) -> nn.Module:
    """TorchRec's ``from_float`` (``base_from_float``) of a learned-hash collection's
    internal tables, given the collection's remap, combine and logical view.

    TorchRec's ``from_float`` reads the tables from the module's configs and expects only
    table weights in its state dict: it gets the internal tables (shared, no copy) with the
    options it reads from the float module (``qconfig`` and the like).

    Raises:
        ValueError: ``module`` is not an ``expected``.
    """
    if not isinstance(module, expected):
        raise ValueError(f"expected a {expected.__name__}, got {type(module).__name__}")
    tables = module.internal_tables()
    for option in _FROM_FLOAT_OPTIONS:
        if hasattr(module, option):
            setattr(tables, option, getattr(module, option))
    quantized = base_from_float(tables, use_precomputed_fake_quant)
    logical_view.copy_learned_hash_parts(module, quantized)
    return quantized


class QuantLearnedHashEmbeddingCollection(QuantEmbeddingCollection):
    """TorchRec's quantized EmbeddingCollection over the compressed tables, with the same
    remap and combine: the sequence twin of :class:`QuantLearnedHashEmbeddingBagCollection`
    (``embedding_configs()`` the logical tables, ``internal_embedding_configs()`` the
    quantized compressed ones)."""

    @classmethod
    def from_float(
        cls, module: LearnedHashEmbeddingCollection, use_precomputed_fake_quant: bool = False
    ) -> "QuantLearnedHashEmbeddingCollection":
        return quantized_twin(
            super().from_float, module, LearnedHashEmbeddingCollection, use_precomputed_fake_quant
        )

    embedding_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    embedding_names_by_table = logical_view.logical_embedding_names
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_configs(self) -> list[EmbeddingConfig]:
        """The quantized compressed tables' configs (TorchRec's, with their data types)."""
        return super().embedding_configs()

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        features = refuse_variable_batch(features, QUANTIZED_SEQUENCE)
        embeddings = super().forward(self.remap(features))
        return embeddings if self.combine is None else self.combine(embeddings)


def quantize_learned_hash(
    model: nn.Module,
    *,
    dtype: torch.dtype = torch.qint8,
    output_dtype: torch.dtype = torch.float,
    inplace: bool = False,
) -> nn.Module:
    """Quantize every (learned-hash or plain) EmbeddingBagCollection and EmbeddingCollection
    of ``model``.

    Args:
        model: a float model (unsharded).
        dtype: weight dtype (``torch.qint8``, ``torch.quint4x2``, ``torch.float16``...).
        output_dtype: dtype of the pooled embeddings.
        inplace: modify ``model`` instead of a copy.

    Returns:
        The quantized model (or module, if ``model`` is itself a collection).

    Raises:
        ValueError: a table whose dim ``dtype``'s rows cannot have (:func:`check_quantizable`).
    """
    check_quantizable(model, dtype)
    if isinstance(model, (EmbeddingBagCollection, EmbeddingCollection)):
        # quantize_dynamic swaps children only: wrap a bare collection.
        holder = nn.ModuleDict({"ebc": model})
        return quantize_learned_hash(
            holder, dtype=dtype, output_dtype=output_dtype, inplace=inplace
        )["ebc"]
    return quantize_embeddings(
        model,
        dtype=dtype,
        inplace=inplace,
        additional_qconfig_spec_keys=[
            LearnedHashEmbeddingBagCollection,
            LearnedHashEmbeddingCollection,
        ],
        additional_mapping={
            LearnedHashEmbeddingBagCollection: QuantLearnedHashEmbeddingBagCollection,
            LearnedHashEmbeddingCollection: QuantLearnedHashEmbeddingCollection,
        },
        output_dtype=output_dtype,
    )


PACKED_BITS = {torch.qint8: 8, torch.quint8: 8, torch.quint4x2: 4, torch.quint2x4: 2}
"""Bits a weight of each integer quantized dtype takes in FBGEMM's rows."""


def check_quantizable(model: nn.Module, dtype: torch.dtype) -> None:
    """Raise ValueError where a table of ``model`` has a dim whose ``dtype`` rows FBGEMM
    cannot hold (:func:`check_quantizable_dims`). A learned-hash table's internal tables are
    checked, since a ``concat`` plan splits its dim (8 into 4 + 4, but 6 into 3 + 3).

    Args:
        model: a float model, or a collection.
        dtype: the weights' quantized dtype (float ones pass).
    """
    for path, module in model.named_modules():
        learned = isinstance(
            module, (LearnedHashEmbeddingBagCollection, LearnedHashEmbeddingCollection)
        )
        if isinstance(module, LearnedHashEmbeddingBagCollection):
            configs = module.internal_embedding_bag_configs()
        elif isinstance(module, LearnedHashEmbeddingCollection):
            configs = module.internal_embedding_configs()
        elif isinstance(module, EmbeddingBagCollection):
            configs = module.embedding_bag_configs()
        elif isinstance(module, EmbeddingCollection):
            configs = module.embedding_configs()
        else:
            continue
        dims = {c.name: c.embedding_dim for c in configs}
        check_quantizable_dims(dims, dtype, where=f"{path}: " if path else "", learned=learned)


def check_quantizable_dims(
    dims: dict[str, int], dtype: torch.dtype, *, where: str = "", learned: bool = True
) -> None:
    """Raise ValueError naming the first table of ``dims`` (table name -> dim) whose
    ``dtype`` rows FBGEMM cannot hold: an n-bit row's ``dim * n / 8`` bytes must be a
    multiple of 2 (int8 needs an even dim, int4 a multiple of 4, int2 of 8), else FBGEMM
    fails with "ncols needs to be multiple of 2 Bytes".

    Args:
        dims: the tables' dims (a learned-hash table's internal ones: ``t__h{h}``).
        dtype: the weights' quantized dtype (float ones pass).
        where: the message's prefix (the module's path).
        learned: the names are a learned-hash module's (``t__h{h}``: an internal table).
    """
    bits = PACKED_BITS.get(dtype)
    if bits is None:
        return
    multiple = 16 // bits
    for name, dim in dims.items():
        if dim % multiple == 0:
            continue
        logical = name.partition("__h")[0]
        split = (
            f" (an internal table of {logical!r}, whose dim its plan splits over its hash "
            "functions)"
            if learned and logical != name
            else ""
        )
        raise ValueError(
            f"{where}table {name!r}{split} has dim {dim}, but "
            f"FBGEMM's {dtype} rows need a dim that is a multiple of {multiple}; quantize "
            f"to torch.float16, or give the table a dim whose every part is a multiple of "
            f"{multiple}"
        )
