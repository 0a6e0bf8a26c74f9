"""The learned-hash EmbeddingBagCollection (single device) and ``apply_hash_plan``.

A logical table ``t`` (height ``N``, dim ``D``) compressed by a plan with ``H`` hash
functions becomes ``H`` internal tables ``t`` (``H = 1``) or ``t__h0 .. t__h{H-1}``
(heights ``M_h``; dim ``D`` for ``sum``, ``D`` split for ``concat``), and each of its
features ``f`` becomes internal features ``f`` / ``f__h{h}``. Tables absent from the plan
stay as they are. The module returns the same KeyedTensor (keys, order, dims) as a plain
EmbeddingBagCollection over the logical tables.

Two views of the tables: ``embedding_bag_configs()`` gives the logical configs (what models
such as ``torchrec.models.dlrm.DLRM`` read), ``internal_embedding_bag_configs()`` and
:meth:`LearnedHashEmbeddingBagCollection.internal_tables` the compressed ones (what
TorchRec's sharder and quantization work on; our sharder and quantizer hand them over).
"""

# NOTE: no ``from __future__ import annotations``: torch.fx copies forward's annotations
# into the traced code, and TorchScript needs them as types, not strings.

import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.combine import KeyedTensorCombine
from torchrec_lhf.modules.remap import (
    IDENTITY,
    FeatureRemap,
    InternalFeature,
    MappingPacker,
    check_internal_names,
    hashed_name,
)
from torchrec_lhf.modules.remap_state import check_remap_state
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InternalLayout:
    """How logical tables map to internal tables, features and mapping offsets."""

    configs: list[EmbeddingBagConfig]
    features: list[InternalFeature]
    mapping: torch.Tensor
    combine: KeyedTensorCombine | None
    compact: tuple[torch.Tensor, torch.Tensor] | None = None  # see FeatureRemap


def internal_layout(tables: list[EmbeddingBagConfig], plan: HashPlan) -> InternalLayout:
    """Derive the internal tables of ``tables`` under ``plan`` (pure; mutates nothing).

    Raises:
        ValueError: a planned table's height differs from its config, a concat split is
            impossible, or an internal name clashes with a logical one.
    """
    check_internal_names(
        [
            (
                c.name,
                list(c.feature_names) or [c.name],
                plan[c.name].num_hashes if c.name in plan else 1,
            )
            for c in tables
        ]
    )
    configs: list[EmbeddingBagConfig] = []
    features: list[InternalFeature] = []
    packer = MappingPacker()
    in_keys, in_dims, out_keys, out_dims, sources = [], [], [], [], []
    for cfg in tables:
        names = list(cfg.feature_names) or [cfg.name]
        th = plan[cfg.name] if cfg.name in plan else None
        if th is not None and th.num_embeddings != cfg.num_embeddings:
            raise ValueError(
                f"table {cfg.name!r}: the hash plan has num_embeddings={th.num_embeddings}, "
                f"the table config has {cfg.num_embeddings}"
            )
        num_hashes = th.num_hashes if th is not None else 1
        dims = th.internal_dims(cfg.embedding_dim) if th is not None else [cfg.embedding_dim]
        for h in range(num_hashes):
            rows = th.heights[h] if th is not None else cfg.num_embeddings
            offset, tail = IDENTITY, None
            if th is not None:
                offset, tail = packer.add(th.mappings[h], th.num_embeddings, rows)
            configs.append(
                _internal_config(
                    cfg, hashed_name(cfg.name, h, num_hashes), rows, dims[h], names, h, num_hashes
                )
            )
            for f in names:
                fname = hashed_name(f, h, num_hashes)
                features.append(InternalFeature(fname, f, offset, cfg.num_embeddings, tail))
                in_keys.append(fname)
                in_dims.append(dims[h])
        for f in names:
            out_keys.append(f)
            out_dims.append(cfg.embedding_dim)
            sources.append(
                (
                    [hashed_name(f, h, num_hashes) for h in range(num_hashes)],
                    th.combine if th else "sum",
                )
            )
    mapping, compact = packer.buffers()
    combine = None
    if in_keys != out_keys:
        combine = KeyedTensorCombine(in_keys, in_dims, out_keys, out_dims, sources)
    return InternalLayout(configs, features, mapping, combine, compact)


def _internal_config(
    cfg: EmbeddingBagConfig,
    name: str,
    rows: int,
    dim: int,
    features: list[str],
    h: int,
    num_hashes: int,
) -> EmbeddingBagConfig:
    init_fn = cfg.init_fn
    if isinstance(init_fn, functools.partial) and init_fn.func is torch.nn.init.uniform_:
        # TorchRec's default init (bounds from the *logical* height): recompute for ``rows``.
        init_fn = None
    return dataclasses.replace(
        cfg,
        name=name,
        num_embeddings=rows,
        embedding_dim=dim,
        feature_names=[hashed_name(f, h, num_hashes) for f in features],
        init_fn=init_fn,
    )


class LearnedHashEmbeddingBagCollection(EmbeddingBagCollection):
    """An EmbeddingBagCollection whose tables are compressed by a :class:`HashPlan`.

    Takes the logical table configs a user gives TorchRec's EmbeddingBagCollection and
    returns exactly the KeyedTensor that one would (same keys, order and dims), so it drops
    into ``torchrec.models.dlrm.DLRM``. Internally it holds the compressed tables
    (``embedding_bags``, named ``t`` or ``t__h<i>``) and a :class:`FeatureRemap`
    (``remap.mapping`` is in the state dict).

    Design (the two config views): ``embedding_bag_configs()`` returns the *logical*
    configs as given (names, features, dim ``D``, height ``N``), because models read it to
    learn their features and dims (DLRM's ``SparseArch``). TorchRec's sharding and
    quantization read the *internal* configs through another path: the planner's table
    list comes from the sharder's ``shardable_parameters`` (the ``embedding_bags``
    weights), and our sharder and quantizer hand ``ShardedEmbeddingBagCollection`` and
    ``QuantEmbeddingBagCollection.from_float`` the :meth:`internal_tables` view, whose
    ``embedding_bag_configs()`` lists the compressed tables.
    ``internal_embedding_bag_configs()`` lists them too (sharding constraints and plans
    name internal tables); :func:`internal_table_configs` works on any collection.

    NOTE: one subclass level under TorchRec's EmbeddingBagCollection, because DMP, the
    planner and ``quantize_embeddings`` match modules by exact type, and the sharded twin
    must subclass ShardedEmbeddingBagCollection to remap inside the pipelined input_dist.

    Args:
        tables: logical table configs (not mutated).
        plan: the hash plan.
        is_weighted: as for EmbeddingBagCollection.
        device: device of the tables; the remap lives on CPU when this is ``meta``.
        out_of_range: ``"error"`` or ``"modulo"`` (see :class:`FeatureRemap`).
        strict: every table of ``plan`` must be one of ``tables`` (a misspelled name would
            otherwise leave its table uncompressed). ``False`` ignores the others, for a
            plan that spans several collections (as :func:`apply_hash_plan` passes it).

    Raises:
        TypeError: ``plan`` not a HashPlan, or ``tables`` not EmbeddingBagConfigs.
        ValueError: ``strict`` and a plan table not in ``tables`` (named), or see
            :func:`internal_layout` (e.g. a user feature ``f__h0`` beside a two-hash table
            of feature ``f``).

    Example::

        >>> import torch
        >>> from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        >>> from torchrec_lhf import HashPlan, LearnedHashEmbeddingBagCollection
        >>> plan = HashPlan.from_mappings({"t0": torch.tensor([0, 1, 1, 0], dtype=torch.int32)})
        >>> ebc = LearnedHashEmbeddingBagCollection(
        ...     tables=[EmbeddingBagConfig(name="t0", embedding_dim=3, num_embeddings=4, feature_names=["f0"])],
        ...     plan=plan,
        ... )
        >>> kjt = KeyedJaggedTensor(["f0"], torch.tensor([0, 2, 3]), lengths=torch.tensor([2, 1]))
        >>> ebc(kjt).to_dict()["f0"].shape
        torch.Size([2, 3])
        >>> [c.name for c in ebc.embedding_bag_configs()], ebc.internal_embedding_bag_configs()[0].num_embeddings
        (['t0'], 2)
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        plan: HashPlan,
        *,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
        out_of_range: str = "error",
        strict: bool = True,
    ) -> None:
        check_plan_type(plan)
        logical = copy.deepcopy(table_list(tables))
        if strict:
            check_plan_tables(plan, logical)
        layout = internal_layout(logical, plan)
        device = torch.device(device) if isinstance(device, str) else device
        super().__init__(layout.configs, is_weighted=is_weighted, device=device)
        self._logical_configs = logical
        self._internal_configs = layout.configs
        self._plan_fingerprint = plan.fingerprint()
        remap_device = logical_view.remap_device(self.device)
        self.remap = FeatureRemap(
            layout.features, layout.mapping, compact=layout.compact, out_of_range=out_of_range
        ).to(remap_device)
        self.combine = layout.combine.to(remap_device) if layout.combine is not None else None
        self.register_load_state_dict_pre_hook(_check_remap_on_load)

    # NOTE: bound from torchrec_lhf.modules.logical_view, shared with the quantized and
    # sharded twins; logical_configs is embedding_bag_configs, kept for existing callers.
    embedding_bag_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The compressed tables' configs (``t`` / ``t__h<i>``, heights ``M_h``)."""
        return self._internal_configs

    def internal_tables(self) -> "InternalTables":
        """The compressed tables as a plain collection view, for TorchRec's sharder and
        quantization (shares ``embedding_bags``; nothing is copied)."""
        return InternalTables(
            self._internal_configs,
            self.embedding_bags,
            is_weighted=self.is_weighted(),
            device=self.device,
        )

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Args: features: raw ids of the logical features. Returns: pooled ``(B, sum D)``."""
        pooled = super().forward(self.remap(features))
        return pooled if self.combine is None else self.combine(pooled)

    def extra_repr(self) -> str:
        return f"plan={self._plan_fingerprint[:12]}, out_of_range={self.remap.out_of_range!r}"


class InternalTables(nn.Module):
    """The compressed tables of a learned-hash collection, seen as a plain collection.

    TorchRec's ``ShardedEmbeddingBagCollection`` and ``QuantEmbeddingBagCollection.from_float``
    read ``embedding_bag_configs()``, ``is_weighted()``, ``device``, the parameters and the
    state dict of the module they convert; this view answers them with the internal
    tables. Build it with :meth:`LearnedHashEmbeddingBagCollection.internal_tables`.

    Args:
        configs: the internal table configs.
        embedding_bags: the tables (shared, not copied), keyed by internal table name.
        is_weighted: whether the features carry weights.
        device: the tables' device.
    """

    def __init__(
        self,
        configs: list[EmbeddingBagConfig],
        embedding_bags: nn.ModuleDict,
        *,
        is_weighted: bool,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.embedding_bags = embedding_bags
        self._configs = configs
        self._is_weighted = is_weighted
        self._device = device

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return self._device


def check_plan_type(plan: object) -> None:
    """Raise TypeError unless ``plan`` is a HashPlan (a dict of mappings is a common slip)."""
    if not isinstance(plan, HashPlan):
        raise TypeError(
            f"plan must be a HashPlan, got {type(plan).__name__}; HashPlan.from_mappings "
            "builds one from {table name: mapping}, HashPlan.load reads a saved one"
        )


def table_list(tables: object) -> list[EmbeddingBagConfig]:
    """``tables`` as a list, or TypeError naming what was given unless it is an iterable
    of EmbeddingBagConfig."""
    if isinstance(tables, (str, bytes, EmbeddingBagConfig)) or not isinstance(tables, Iterable):
        raise TypeError(f"tables must be a list of EmbeddingBagConfig, got {tables!r}")
    out = list(tables)
    bad = [type(c).__name__ for c in out if not isinstance(c, EmbeddingBagConfig)]
    if bad:
        raise TypeError(f"tables must be a list of EmbeddingBagConfig, got items of types {bad}")
    return out


def check_plan_tables(plan: HashPlan, tables: list[EmbeddingBagConfig]) -> None:
    """Raise ValueError naming the tables of ``plan`` that are not among ``tables``."""
    names = sorted(c.name for c in tables)
    missing = sorted(set(plan.table_names) - set(names))
    if missing:
        shown = names if len(names) <= 20 else [*names[:20], "..."]
        raise ValueError(
            f"hash plan tables {missing} are not tables of the collection; expected names "
            f"among {shown} (pass strict=False for a plan that spans several collections, "
            "or use apply_hash_plan)"
        )


def internal_table_configs(module: nn.Module) -> list[EmbeddingBagConfig]:
    """The configs of the tables ``module`` trains (and a sharding plan names).

    Args:
        module: any embedding-bag collection: learned-hash (sharded, quantized or not) and
            managed-collision ones give their internal tables, others their own configs.
    """
    internal = getattr(module, "internal_embedding_bag_configs", None)
    return internal() if internal is not None else module.embedding_bag_configs()


def _check_remap_on_load(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    check_remap_state(module.remap, state_dict, f"{prefix}remap.")


def apply_hash_plan(
    model: nn.Module,
    plan: HashPlan,
    *,
    out_of_range: str = "error",
    filter_fn: Callable[[str, EmbeddingBagCollection], bool] | None = None,
) -> nn.Module:
    """Swap every EmbeddingBagCollection and EmbeddingCollection of ``model`` that holds a
    table of ``plan`` for the learned-hash one, in place.

    Use it before sharding, also on a model built on the meta device. The new modules keep
    the device, weighting and logical configs of the ones they replace
    (:class:`LearnedHashEmbeddingBagCollection`,
    :class:`~torchrec_lhf.modules.embedding.LearnedHashEmbeddingCollection`).

    Args:
        model: any module; a bare EmbeddingBagCollection or EmbeddingCollection is
            converted and returned.
        plan: the hash plan; each of its tables must belong to some swapped collection.
        out_of_range: see :class:`FeatureRemap`.
        filter_fn: optional ``(fqn, collection) -> bool`` choosing which collections to swap.

    Returns:
        ``model`` (or the new module when ``model`` itself is an EmbeddingBagCollection).

    Raises:
        TypeError: ``model`` not a module or ``plan`` not a HashPlan.
        ValueError: a plan table matches no collection of the model, or see
            :class:`LearnedHashEmbeddingBagCollection`; ``model`` is then left unchanged.
    """
    check_plan_type(plan)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    planned = set(plan.table_names)
    seen: set[str] = set()

    def convert(fqn: str, ebc: EmbeddingBagCollection) -> nn.Module:
        if type(ebc) is not EmbeddingBagCollection or (filter_fn and not filter_fn(fqn, ebc)):
            return ebc
        names = {c.name for c in ebc.embedding_bag_configs()}
        if not names & planned:
            return ebc
        seen.update(names)
        new = LearnedHashEmbeddingBagCollection(
            ebc.embedding_bag_configs(),
            plan,
            is_weighted=ebc.is_weighted(),
            device=ebc.device,
            out_of_range=out_of_range,
            strict=False,  # the plan may span several collections: checked below
        )
        if ebc.device.type != "meta":
            with torch.no_grad():  # uncompressed tables keep their trained weights
                for name in names - planned:
                    new.embedding_bags[name].weight.copy_(ebc.embedding_bags[name].weight)
        logger.info("learned hashing for %s: tables %s", fqn or "<root>", sorted(names & planned))
        return new

    # NOTE: imported here: the sequence module builds on this one
    from torchrec_lhf.modules.embedding import sequence_replacements

    built = build_replacements(model, convert)
    built += sequence_replacements(
        model, plan, out_of_range=out_of_range, filter_fn=filter_fn, seen=seen
    )
    unused = sorted(planned - seen)
    if unused:
        raise ValueError(
            f"hash plan tables {unused} match no EmbeddingBagCollection or "
            "EmbeddingCollection table of the model"
        )
    return swap_in(model, built)


def build_replacements(
    model: nn.Module,
    build: Callable[[str, EmbeddingBagCollection], nn.Module],
    *,
    skip: Callable[[str], bool] | None = None,
) -> list[tuple[str, nn.Module]]:
    """The new modules for the EmbeddingBagCollections of ``model``, built before any is
    swapped in (:func:`swap_in`), so that an error while building leaves ``model`` as it was.

    Args:
        model: any module, or an EmbeddingBagCollection itself (fqn ``""``).
        build: ``(fqn, ebc) -> module``; returning ``ebc`` itself keeps it.
        skip: optional ``fqn -> bool``: collections not to offer to ``build``.

    Returns:
        ``(fqn, new module)`` for each collection ``build`` replaced, in module order.
    """
    found = (
        [("", model)] if isinstance(model, EmbeddingBagCollection) else list(model.named_modules())
    )
    built = []
    for fqn, child in found:
        if isinstance(child, EmbeddingBagCollection) and not (skip is not None and skip(fqn)):
            new = build(fqn, child)
            if new is not child:
                built.append((fqn, new))
    return built


def swap_in(model: nn.Module, built: list[tuple[str, nn.Module]]) -> nn.Module:
    """Put :func:`build_replacements`' modules in place; returns ``model``, or the new module
    where ``model`` itself (fqn ``""``) was replaced."""
    for fqn, new in built:
        if not fqn:
            return new
        parent_fqn, _, attr = fqn.rpartition(".")
        setattr(model.get_submodule(parent_fqn), attr, new)
    return model
