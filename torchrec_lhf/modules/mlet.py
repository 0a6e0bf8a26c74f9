"""MLET: embeddings trained through two linear layers, collapsed to one table to serve.

Multi-Layer Embedding Training (Ghaemmaghami et al. 2020, "Training with Multi-Layer
Embeddings for Model Reduction") trains a table ``t`` of dim ``D`` as ``W_t @ P_t``: an inner
table ``W_t`` of shape ``(N, k)`` followed by a linear layer ``P_t`` of shape ``(k, D)``
without bias. After training the product is one ``(N, D)`` table (:meth:`collapse`), so
the served model is a plain EmbeddingBagCollection.

Legend:
    N   logical table height;  D  table (output) dim;  k  inner width
    B   batch size;  F  features;  G  groups of tables sharing one ``(k, D)``
    C   columns of a KeyedTensor (sum of dims)

Width, two regimes (``k = max(1, round(inner_dim_fraction * D))``):
    * the paper's: ``inner_dim_fraction > 1``, a hidden layer wider than the table, on a
      model whose embedding dim was itself shrunk (``mlet_dim(D, fraction)``) — MLET's
      compression is the smaller ``D``, the wide hidden layer is what keeps its quality;
    * ``inner_dim_fraction < 1``: a low-rank factorization during training. Collapsing
      then gives back a full ``(N, D)`` table, so it saves training memory, not model bytes.

With a :class:`~torchrec_lhf.plan.HashPlan`, the inner collection is a
:class:`~torchrec_lhf.modules.embedding_bag.LearnedHashEmbeddingBagCollection` of the narrow
tables: MLET combines with any height-compression method. The projection acts on the
combined (logical) embedding; the collapse is exact for one hash function and for ``sum``
(``concat`` collapses into a ``sum`` plan with the same mappings); ``mult`` and
``scaled_sum`` are not linear in each table and cannot be collapsed.

Because pooling (sum, mean, weighted sum) is linear, projecting the pooled inner embedding
equals pooling the projected rows, which is why the projection can follow the collection.

Sharding: the inner collection is an ordinary (learned-hash) EBC, so DistributedModelParallel
shards it with the usual sharders; the projections are dense parameters of this module and
are replicated with DDP like the MLPs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_lhf.modules.embedding_bag import (
    LearnedHashEmbeddingBagCollection,
    build_replacements,
    swap_in,
)
from torchrec_lhf.modules.remap import FeatureRemap, hashed_name, refuse_negative_lengths
from torchrec_lhf.plan import HashPlan

logger = logging.getLogger(__name__)


def mlet_dim(dim: int, fraction: float) -> int:
    """``max(1, round(fraction * dim))``: an inner width, or MLET's shrunk embedding dim.

    Raises:
        ValueError: ``dim < 1`` or ``fraction`` not a finite number ``> 0``.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"embedding dim must be an int >= 1, got {dim!r}")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not (math.isfinite(fraction) and fraction > 0)
    ):
        raise ValueError(f"MLET fraction must be a finite number > 0, got {fraction!r}")
    return max(1, round(fraction * dim))


class MultiLayerEmbeddingBagCollection(nn.Module):
    """An EmbeddingBagCollection trained as inner tables ``(N, k)`` times projections ``(k, D)``.

    Returns exactly the KeyedTensor the plain EmbeddingBagCollection over ``tables`` returns
    (keys, order, dims), so it drops into ``torchrec.models.dlrm.DLRM``; see the module
    docstring for the two width regimes, hash plans and sharding.

    Args:
        tables: the logical table configs (dims ``D``; not mutated).
        inner_dim_fraction: inner width ``k = max(1, round(inner_dim_fraction * D))``, ``> 0``.
        plan: optional hash plan compressing the inner tables' heights.
        is_weighted: as for EmbeddingBagCollection.
        device: device of the tables and projections (``meta`` for DMP).
        out_of_range: with a plan, see :class:`~torchrec_lhf.modules.remap.FeatureRemap`.
        strict: with a plan, every plan table must be one of ``tables``; ``False`` ignores
            the others (see
            :class:`~torchrec_lhf.modules.embedding_bag.LearnedHashEmbeddingBagCollection`).

    Raises:
        ValueError: no tables, a bad ``inner_dim_fraction``, or ``strict`` and a plan
            table not in ``tables``.

    Example::

        >>> import torch
        >>> from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        >>> from torchrec_lhf.modules.mlet import MultiLayerEmbeddingBagCollection
        >>> mlet = MultiLayerEmbeddingBagCollection(
        ...     tables=[EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=10, feature_names=["f0"])],
        ...     inner_dim_fraction=2.0,
        ... )
        >>> kjt = KeyedJaggedTensor(["f0"], torch.tensor([0, 2, 3]), lengths=torch.tensor([2, 1]))
        >>> mlet(kjt).to_dict()["f0"].shape, mlet.inner.embedding_bag_configs()[0].embedding_dim
        (torch.Size([2, 4]), 8)
        >>> torch.allclose(mlet.collapse()(kjt).values(), mlet(kjt).values())
        True
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        *,
        inner_dim_fraction: float,
        plan: HashPlan | None = None,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
        out_of_range: str = "error",
        strict: bool = True,
    ) -> None:
        super().__init__()
        if not tables:
            raise ValueError("MultiLayerEmbeddingBagCollection needs at least one table, got none")
        self._logical_configs = copy.deepcopy(list(tables))
        self.inner_dim_fraction = inner_dim_fraction
        inner_configs = [
            dataclasses.replace(c, embedding_dim=mlet_dim(c.embedding_dim, inner_dim_fraction))
            for c in self._logical_configs
        ]
        if plan is None:
            self.inner: EmbeddingBagCollection = EmbeddingBagCollection(
                inner_configs, is_weighted=is_weighted, device=device
            )
        else:
            self.inner = LearnedHashEmbeddingBagCollection(
                inner_configs,
                plan,
                is_weighted=is_weighted,
                device=device,
                out_of_range=out_of_range,
                strict=strict,
            )
        self._plan = plan
        device = self.inner.device
        # Tables grouped by (k, D): one (T_g, k, D) parameter and one batched matmul per group.
        self._groups: list[tuple[str, int, int]] = []
        self._table_slot: dict[str, tuple[str, int]] = {}  # table -> (parameter name, index)
        self._group_features: dict[str, list[str]] = {}  # logical features, in output order
        slot_of_feature: dict[str, list[int]] = {}
        out_cols: dict[str, list[int]] = {}
        col_out = 0
        for cfg, inner_cfg in zip(self._logical_configs, inner_configs):
            k, d = inner_cfg.embedding_dim, cfg.embedding_dim
            key = f"proj_{k}x{d}"
            if key not in self._group_features:
                self._groups.append((key, k, d))
                self._group_features[key], slot_of_feature[key], out_cols[key] = [], [], []
            slot = sum(1 for s in self._table_slot.values() if s[0] == key)
            self._table_slot[cfg.name] = (key, slot)
            for f in cfg.feature_names:
                self._group_features[key].append(f)
                slot_of_feature[key].append(slot)
                out_cols[key].extend(range(col_out, col_out + d))
                col_out += d
        for key, k, d in self._groups:
            num_tables = sum(1 for s in self._table_slot.values() if s[0] == key)
            self.register_parameter(key, nn.Parameter(torch.empty(num_tables, k, d, device=device)))
        # Index tensors are built per device and input key order on first use (not buffers:
        # DMP would zero them when materializing a meta module). A sharded inner collection
        # returns its keys grouped by sharding, not in the logical order.
        order = [c for key, _, _ in self._groups for c in out_cols[key]]
        self._static_lists = {
            "perm": torch.argsort(torch.tensor(order, dtype=torch.long)).tolist(),
            **{f"slot_{key}": slot_of_feature[key] for key, _, _ in self._groups},
        }
        self._out_keys = [f for c in self._logical_configs for f in c.feature_names]
        self._out_dims = [c.embedding_dim for c in self._logical_configs for _ in c.feature_names]
        self._index_cache: dict[tuple[tuple[str, ...], torch.device], dict[str, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize the projections (not the inner tables): uniform with variance ``1/k``,
        so ``W @ P`` starts with the inner table's scale."""
        for key, k, _ in self._groups:
            param = getattr(self, key)
            if param.device.type != "meta":
                bound = math.sqrt(3.0 / k)
                nn.init.uniform_(param, -bound, bound)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The logical table configs (dims ``D``), as a plain EBC over them reports."""
        return self._logical_configs

    def is_weighted(self) -> bool:
        return self.inner.is_weighted()

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def projection(self, table: str) -> torch.Tensor:
        """The ``(k, D)`` projection of ``table``."""
        key, slot = self._table_slot[table]
        return getattr(self, key)[slot]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Args: features: raw ids of the logical features. Returns: pooled ``(B, sum D)``.

        Raises:
            ValueError: (CPU) a negative length, named, where the inner collection does
                not refuse it (:func:`hands_raw_ids`).
        """
        if isinstance(features, KeyedJaggedTensor) and hands_raw_ids(self.inner):
            refuse_negative_lengths(features)  # (pipelined: a pooled KeyedTensor, checked)
        inner = self.inner(features)
        values_BC = inner.values()
        index = self._layout(inner.keys(), inner.length_per_key(), values_BC.device)
        num_batch = values_BC.shape[0]
        pieces = []
        for key, k, _ in self._groups:  # one batched matmul per distinct (k, D), not per feature
            x_BC = (
                values_BC.index_select(1, index[f"in_{key}"]) if f"in_{key}" in index else values_BC
            )
            x_FBk = x_BC.view(num_batch, -1, k).transpose(0, 1)
            proj_FkD = getattr(self, key).index_select(0, index[f"slot_{key}"])
            pieces.append(torch.bmm(x_FBk, proj_FkD).transpose(0, 1).reshape(num_batch, -1))
        out_BC = (
            pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1).index_select(1, index["perm"])
        )
        return KeyedTensor(keys=self._out_keys, length_per_key=self._out_dims, values=out_BC)

    def _layout(
        self, keys: list[str], dims: list[int], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Index tensors for an inner KeyedTensor with ``keys`` (cached per order and device)."""
        cached = self._index_cache.get((tuple(keys), device))
        if cached is not None:
            return cached
        start = dict(zip(keys, (sum(dims[:i]) for i in range(len(dims)))))
        width = dict(zip(keys, dims))
        lists = dict(self._static_lists)
        for key, _, _ in self._groups:
            cols = [
                c for f in self._group_features[key] for c in range(start[f], start[f] + width[f])
            ]
            if cols != list(range(sum(dims))):  # not the whole input in order: gather
                lists[f"in_{key}"] = cols
        cached = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in lists.items()}
        self._index_cache[(tuple(keys), device)] = cached
        return cached

    @torch.no_grad()
    def collapse(self) -> EmbeddingBagCollection:
        """One table per logical table, ``W @ P``: the module to serve and save.

        Call it on the unsharded module (load a checkpoint into one first): it reads the
        inner tables' full weights.

        Returns:
            A plain EmbeddingBagCollection over the logical configs, or, with a plan, a
            LearnedHashEmbeddingBagCollection (``concat`` tables turned into ``sum`` tables
            with the same mappings); its output equals this module's.

        Raises:
            ValueError: a planned table combines by ``mult`` or ``scaled_sum``.
        """
        plan = self._plan
        names = {c.name for c in self._logical_configs}
        # where the weights are (a module materialized from meta still reports meta)
        device = next(iter(self.inner.embedding_bags.values())).weight.device
        if plan is not None:
            bad = uncollapsible_tables(plan, names)
            if bad:
                raise ValueError(
                    f"tables {bad} combine by mult/scaled_sum, which is not linear per table: MLET "
                    "cannot collapse them; serve this module as it is"
                )
            plan = HashPlan(
                [
                    dataclasses.replace(t, combine="sum") if t.num_hashes > 1 else t
                    for t in plan
                    if t.name in names
                ],
                metadata=dict(plan.metadata),
            )
            out: EmbeddingBagCollection = LearnedHashEmbeddingBagCollection(
                self._logical_configs,
                plan,
                is_weighted=self.is_weighted(),
                device=device,
                out_of_range=self.inner.remap.out_of_range,
            )
        else:
            out = EmbeddingBagCollection(
                self._logical_configs, is_weighted=self.is_weighted(), device=device
            )
        for cfg in self._logical_configs:
            proj_kD = self.projection(cfg.name)
            th = plan[cfg.name] if plan is not None and cfg.name in plan else None
            num_hashes = th.num_hashes if th is not None else 1
            inner_name = [hashed_name(cfg.name, h, num_hashes) for h in range(num_hashes)]
            widths = [self.inner.embedding_bags[n].weight.shape[1] for n in inner_name]
            concat = th is not None and self._plan[cfg.name].combine == "concat" and num_hashes > 1
            start = 0
            for name, width in zip(inner_name, widths):
                rows_kD = proj_kD[start : start + width] if concat else proj_kD
                out.embedding_bags[name].weight.copy_(
                    self.inner.embedding_bags[name].weight @ rows_kD
                )
                start += width
        return out

    def extra_repr(self) -> str:
        return f"inner_dim_fraction={self.inner_dim_fraction}, plan={'yes' if self._plan is not None else 'no'}"


def uncollapsible_tables(plan: HashPlan, names: Iterable[str]) -> list[str]:
    """The tables of ``names`` whose plan combines several hash functions by ``mult`` or
    ``scaled_sum``: not linear per table, so :meth:`MultiLayerEmbeddingBagCollection.
    collapse` cannot fold MLET's projection into them."""
    names = set(names)
    return [
        t.name
        for t in plan
        if t.name in names and t.num_hashes > 1 and t.combine in ("mult", "scaled_sum")
    ]


def hands_raw_ids(inner: nn.Module) -> bool:
    """Whether MLET's inner collection ``inner`` hands raw ids to TorchRec's as they are,
    with nothing to refuse a negative length (a learned hash's remap refuses them), so that
    its caller has to (:func:`~torchrec_lhf.modules.remap.refuse_negative_lengths`)."""
    return not isinstance(getattr(inner, "remap", None), FeatureRemap)


def apply_mlet(
    model: nn.Module,
    inner_dim_fraction: float,
    *,
    plan: HashPlan | None = None,
    out_of_range: str = "error",
    filter_fn: Callable[[str, EmbeddingBagCollection], bool] | None = None,
) -> nn.Module:
    """Swap every plain EmbeddingBagCollection of ``model`` for MLET, in place.

    Use it before sharding (also on the meta device). The new inner tables and projections
    are freshly initialized: trained weights are not carried over. To combine MLET with a
    hash plan pass ``plan`` here instead of calling ``apply_hash_plan`` first (collections
    that are already learned-hash ones are left alone, with a warning).

    Args:
        model: any module; a bare EmbeddingBagCollection is converted and returned.
        inner_dim_fraction: see :class:`MultiLayerEmbeddingBagCollection`.
        plan: optional hash plan for the inner tables.
        out_of_range: with a plan, see :class:`~torchrec_lhf.modules.remap.FeatureRemap`.
        filter_fn: optional ``(fqn, ebc) -> bool`` choosing which collections to swap.

    Returns:
        ``model`` (or the new module when ``model`` itself is an EmbeddingBagCollection).
    """
    mlet_dim(1, inner_dim_fraction)  # validate before touching the model

    def convert(fqn: str, ebc: EmbeddingBagCollection) -> nn.Module:
        if type(ebc) is not EmbeddingBagCollection:
            logger.warning(
                "MLET: %s is a %s, not a plain EmbeddingBagCollection; left as is",
                fqn or "<root>",
                type(ebc).__name__,
            )
            return ebc
        if filter_fn is not None and not filter_fn(fqn, ebc):
            return ebc
        logger.info("MLET for %s: inner_dim_fraction=%s", fqn or "<root>", inner_dim_fraction)
        return MultiLayerEmbeddingBagCollection(
            ebc.embedding_bag_configs(),
            inner_dim_fraction=inner_dim_fraction,
            plan=plan,
            is_weighted=ebc.is_weighted(),
            device=ebc.device,
            out_of_range=out_of_range,
            strict=False,  # the plan may span several collections: checked below
        )

    built = build_replacements(model, convert, skip=lambda fqn: _inside_mlet(model, fqn))
    if plan is not None:
        # the tables of MLET collections, new or already there (apply_mlet is idempotent)
        mlets = [new for _, new in built] + [
            m for m in model.modules() if isinstance(m, MultiLayerEmbeddingBagCollection)
        ]
        converted = {c.name for m in mlets for c in m.embedding_bag_configs()}
        unused = sorted(set(plan.table_names) - converted)
        if unused:
            raise ValueError(
                f"hash plan tables {unused} match no EmbeddingBagCollection table of the model"
            )
    return swap_in(model, built)


def collapse_mlet(model: nn.Module) -> nn.Module:
    """Replace every :class:`MultiLayerEmbeddingBagCollection` in ``model`` by its collapse.

    Returns:
        ``model`` (or the collapsed module when ``model`` itself is an MLET collection).
    """
    if isinstance(model, MultiLayerEmbeddingBagCollection):
        return model.collapse()
    for fqn, child in list(model.named_modules()):
        if isinstance(child, MultiLayerEmbeddingBagCollection):
            parent_fqn, _, attr = fqn.rpartition(".")
            setattr(model.get_submodule(parent_fqn), attr, child.collapse())
    return model


def _inside_mlet(model: nn.Module, fqn: str) -> bool:
    parts = fqn.split(".")
    return any(
        isinstance(model.get_submodule(".".join(parts[:i])), MultiLayerEmbeddingBagCollection)
        for i in range(1, len(parts))
    )
