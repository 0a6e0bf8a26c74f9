"""The learned-hash EmbeddingCollection: sequence (unpooled) embeddings of compressed tables.

The sequence twin of :class:`~torchrec_lhf.modules.embedding_bag.LearnedHashEmbeddingBagCollection`:
the same plan, internal tables (``t`` or ``t__h<i>``), internal features (``f`` or
``f__h<i>``) and :class:`~torchrec_lhf.modules.remap.FeatureRemap`, under TorchRec's
``EmbeddingCollection``, which returns one JaggedTensor of per-id embeddings per feature.
It returns exactly the dict a plain ``EmbeddingCollection`` over the logical tables would
(same keys, lengths, dim).

Shape legend: ``L`` ids of a feature in the batch, ``D`` the embedding dim.

TorchRec's ``EmbeddingCollection`` holds tables of one dim, so a table's hash functions
combine here by ``sum``, ``mult`` or ``scaled_sum`` (each internal table at the full dim);
``concat`` and ``sum_concat`` plans, which split the dim, are refused with the table named.
"""

# NOTE: no ``from __future__ import annotations``: torch.fx copies forward's annotations
# into the traced code, and TorchScript needs them as types, not strings.

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection, get_embedding_names_by_table
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_lhf.modules import logical_view
from torchrec_lhf.modules.embedding_bag import (
    _check_remap_on_load,
    check_plan_tables,
    check_plan_type,
    internal_layout,
)
from torchrec_lhf.modules.remap import FeatureRemap, hashed_name
from torchrec_lhf.plan import HashPlan

SEQUENCE_COMBINES: tuple[str, ...] = ("sum", "mult", "scaled_sum")
"""The combines a sequence collection takes: those that keep each internal table at the
table's dim (TorchRec's EmbeddingCollection holds tables of one dim)."""


def check_sequence_combine(what: str, combine: str, num_hashes: int) -> None:
    """Raise ValueError, naming ``what`` (a table or feature), unless ``combine`` is one of
    :data:`SEQUENCE_COMBINES`: the others split the dim over the ``num_hashes`` internal
    tables."""
    if combine not in SEQUENCE_COMBINES:
        raise ValueError(
            f"{what}: combine {combine!r} splits the dim over its {num_hashes} internal "
            "tables, which an EmbeddingCollection (tables of one dim) cannot hold; expected "
            f"one of {list(SEQUENCE_COMBINES)}"
        )


class JaggedCombine(nn.Module):
    """Internal per-id embeddings -> the logical ones (``sum``, ``mult``, ``scaled_sum``).

    The logical features of one combine and one number of hash functions form a group;
    each group takes ``H`` ops over all its features' ids at once (their values
    concatenated), not a pass per feature.

    Args:
        sources: for each logical feature ``(name, internal names, combine)``; a feature of
            one internal name ``name`` itself passes through.

    Raises:
        ValueError: a combine not in :data:`SEQUENCE_COMBINES` where a feature has several
            internal features.
    """

    _order: list[str]  # the logical names, in the order a plain collection returns them
    _passthrough: list[tuple[str, str]]  # (logical name, its one internal name)
    _groups: list[tuple[str, list[str], list[list[str]]]]  # (combine, names, names by hash)

    def __init__(self, sources: list[tuple[str, list[str], str]]) -> None:
        super().__init__()
        groups: dict[tuple[str, int], list[tuple[str, list[str]]]] = {}
        self._order = [name for name, _, _ in sources]
        self._passthrough = []
        for name, internal, combine in sources:
            if len(internal) == 1:
                self._passthrough.append((name, internal[0]))
                continue
            check_sequence_combine(f"feature {name!r}", combine, len(internal))
            groups.setdefault((combine, len(internal)), []).append((name, list(internal)))
        self._groups = [
            (combine, [n for n, _ in members], [list(ks) for ks in zip(*(i for _, i in members))])
            for (combine, _), members in groups.items()
        ]

    def forward(self, embeddings: dict[str, JaggedTensor]) -> dict[str, JaggedTensor]:
        """Args: embeddings: internal name -> JaggedTensor of values ``(L, D)``. Returns:
        logical name -> JaggedTensor of values ``(L, D)`` (the first internal one's lengths),
        in the logical features' order."""
        out: dict[str, JaggedTensor] = {}
        for name, key in self._passthrough:
            out[name] = embeddings[key]
        for combine, names, by_hash in self._groups:
            # by_hash[h]: the group's internal names of hash function h, in feature order
            terms = [torch.cat([embeddings[k].values() for k in keys]) for keys in by_hash]
            values = _combine_terms(terms, combine)
            sizes = [embeddings[k].values().size(0) for k in by_hash[0]]
            parts = values.split(sizes)  # indexed, not iterated: torch.fx traces it
            for i, key in enumerate(by_hash[0]):
                first = embeddings[key]
                out[names[i]] = JaggedTensor(
                    values=parts[i], lengths=first.lengths(), offsets=first.offsets()
                )
        ordered: dict[str, JaggedTensor] = {}
        for name in self._order:
            ordered[name] = out[name]
        return ordered


def _combine_terms(terms: list[torch.Tensor], combine: str) -> torch.Tensor:
    """The ``H`` terms ``(L, D)`` of one group combined by ``combine``: ``(L, D)``."""
    if combine == "mult":
        out = terms[0]
        for t in terms[1:]:
            out = out * t
        return out
    last = len(terms) - 1 if combine == "scaled_sum" else len(terms)
    out = terms[0]
    for t in terms[1:last]:
        out = out + t
    return out * terms[last] if combine == "scaled_sum" else out


def embedding_table_list(tables: object) -> list[EmbeddingConfig]:
    """``tables`` as a list, or TypeError naming what was given unless it is an iterable
    of EmbeddingConfig."""
    if isinstance(tables, (str, bytes, EmbeddingConfig)) or not isinstance(tables, Iterable):
        raise TypeError(f"tables must be a list of EmbeddingConfig, got {tables!r}")
    out = list(tables)
    bad = [type(c).__name__ for c in out if not isinstance(c, EmbeddingConfig)]
    if bad:
        raise TypeError(f"tables must be a list of EmbeddingConfig, got items of types {bad}")
    return out


def sequence_sources(
    tables: list[EmbeddingConfig], plan: HashPlan
) -> list[tuple[str, list[str], str]]:
    """Each logical feature's ``(name, internal names, combine)`` under ``plan``.

    Raises:
        ValueError: a planned table of several hash functions combined by a combine not in
            :data:`SEQUENCE_COMBINES` (named with the table).
    """
    sources = []
    for cfg in tables:
        th = plan[cfg.name] if cfg.name in plan else None
        num_hashes = th.num_hashes if th is not None else 1
        if num_hashes > 1:
            check_sequence_combine(f"table {cfg.name!r}", th.combine, num_hashes)
        for f in list(cfg.feature_names) or [cfg.name]:
            internal = [hashed_name(f, h, num_hashes) for h in range(num_hashes)]
            sources.append((f, internal, th.combine if th is not None else "sum"))
    return sources


class LearnedHashEmbeddingCollection(EmbeddingCollection):
    """An EmbeddingCollection whose tables are compressed by a :class:`HashPlan`.

    Takes the logical table configs a user gives TorchRec's EmbeddingCollection and
    returns the same dict of JaggedTensors (per-id embeddings ``(L, D)`` per feature).
    ``embedding_configs()`` gives the logical configs, ``internal_embedding_configs()``
    the compressed ones (what a sharding plan names); the sharder
    (:class:`~torchrec_lhf.distributed.embedding.LearnedHashEmbeddingCollectionSharder`)
    hands TorchRec the :meth:`internal_tables` view.

    Args:
        tables: logical table configs, one embedding dim (not mutated).
        plan: the hash plan; a table of several hash functions must combine them by
            ``sum``, ``mult`` or ``scaled_sum``.
        device: device of the tables; the remap lives on CPU when this is ``meta``.
        need_indices: must be False: TorchRec would return the internal rows as the
            indices, not the raw ids.
        use_gather_select, use_gather_select_per_sharding: as for EmbeddingCollection (how
            the sharded output is put back in order).
        out_of_range: ``"error"`` or ``"modulo"`` (see :class:`FeatureRemap`).
        strict: every table of ``plan`` must be one of ``tables``; ``False`` ignores the
            others (a plan spanning several collections, as :func:`apply_hash_plan` passes it).

    Raises:
        TypeError: ``plan`` not a HashPlan, or ``tables`` not EmbeddingConfigs.
        ValueError: ``need_indices``; ``strict`` and a plan table not in ``tables``; a
            combine that splits the dim; or see
            :func:`~torchrec_lhf.modules.embedding_bag.internal_layout`.

    Example::

        >>> import torch
        >>> from torchrec import EmbeddingConfig, KeyedJaggedTensor
        >>> from torchrec_lhf import HashPlan, LearnedHashEmbeddingCollection
        >>> plan = HashPlan.from_mappings({"t0": torch.tensor([0, 1, 1, 0], dtype=torch.int32)})
        >>> ec = LearnedHashEmbeddingCollection(
        ...     tables=[EmbeddingConfig(name="t0", embedding_dim=3, num_embeddings=4, feature_names=["f0"])],
        ...     plan=plan,
        ... )
        >>> kjt = KeyedJaggedTensor(["f0"], torch.tensor([0, 2, 3]), lengths=torch.tensor([2, 1]))
        >>> ec(kjt)["f0"].values().shape
        torch.Size([3, 3])
        >>> ec.internal_embedding_configs()[0].num_embeddings
        2
    """

    def __init__(
        self,
        tables: list[EmbeddingConfig],
        plan: HashPlan,
        *,
        device: torch.device | str | None = None,
        need_indices: bool = False,
        use_gather_select: bool = False,
        use_gather_select_per_sharding: dict[str, bool] | None = None,
        out_of_range: str = "error",
        strict: bool = True,
    ) -> None:
        check_plan_type(plan)
        logical = copy.deepcopy(embedding_table_list(tables))
        if need_indices:
            raise ValueError(
                "need_indices=True is not supported by LearnedHashEmbeddingCollection: "
                "TorchRec would return the compressed rows as the indices, not the raw ids; "
                "expected need_indices=False (the raw ids are the input features' values)"
            )
        if strict:
            check_plan_tables(plan, logical)
        sources = sequence_sources(logical, plan)
        layout = internal_layout(logical, plan)
        device = torch.device(device) if isinstance(device, str) else device
        super().__init__(
            layout.configs,
            device=device,
            use_gather_select=use_gather_select,
            use_gather_select_per_sharding=use_gather_select_per_sharding,
        )
        for cfg in logical:  # as EmbeddingCollection fills its configs in
            cfg.feature_names = list(cfg.feature_names) or [cfg.name]
        self._logical_configs = logical
        self._internal_configs = layout.configs
        self._plan_fingerprint = plan.fingerprint()
        remap_device = logical_view.remap_device(self.device)
        self.remap = FeatureRemap(
            layout.features, layout.mapping, compact=layout.compact, out_of_range=out_of_range
        ).to(remap_device)
        needs_combine = any(len(internal) > 1 for _, internal, _ in sources)
        self.combine = JaggedCombine(sources) if needs_combine else None
        self.register_load_state_dict_pre_hook(_check_remap_on_load)

    # NOTE: bound from logical_view, shared with the sharded twin
    embedding_configs = logical_view.logical_configs
    logical_configs = logical_view.logical_configs
    plan_fingerprint = property(logical_view.plan_fingerprint)

    def internal_embedding_configs(self) -> list[EmbeddingConfig]:
        """The compressed tables' configs (``t`` / ``t__h<i>``, heights ``M_h``)."""
        return self._internal_configs

    embedding_names_by_table = logical_view.logical_embedding_names

    def internal_tables(self) -> "InternalEmbeddings":
        """The compressed tables as a plain collection view, for TorchRec's sharder
        (shares ``embeddings``; nothing is copied)."""
        return InternalEmbeddings(
            self._internal_configs,
            self.embeddings,
            device=self.device,
            use_gather_select=self.use_gather_select(),
            use_gather_select_per_sharding=self.use_gather_select_per_sharding(),
        )

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        """Args: features: raw ids of the logical features. Returns: feature name ->
        JaggedTensor of per-id embeddings ``(L, D)``."""
        embeddings = super().forward(self.remap(features))
        return embeddings if self.combine is None else self.combine(embeddings)

    def extra_repr(self) -> str:
        return f"plan={self._plan_fingerprint[:12]}, out_of_range={self.remap.out_of_range!r}"


class InternalEmbeddings(nn.Module):
    """The compressed tables of a learned-hash sequence collection, seen as a plain
    EmbeddingCollection by TorchRec's ``ShardedEmbeddingCollection`` (its configs, dim,
    parameters and state dict are the internal tables').

    Args:
        configs: the internal table configs.
        embeddings: the tables (shared, not copied), keyed by internal table name.
        device: the tables' device.
        use_gather_select, use_gather_select_per_sharding: the collection's.
    """

    def __init__(
        self,
        configs: list[EmbeddingConfig],
        embeddings: nn.ModuleDict,
        *,
        device: torch.device,
        use_gather_select: bool = False,
        use_gather_select_per_sharding: dict[str, bool] | None = None,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self._configs = configs
        self._device = device
        self._use_gather_select = use_gather_select
        self._use_gather_select_per_sharding = use_gather_select_per_sharding

    def embedding_configs(self) -> list[EmbeddingConfig]:
        return self._configs

    def embedding_names_by_table(self) -> list[list[str]]:
        return get_embedding_names_by_table(self._configs)

    def embedding_dim(self) -> int:
        return self._configs[0].embedding_dim

    def need_indices(self) -> bool:
        return False

    def use_gather_select(self) -> bool:
        return self._use_gather_select

    def use_gather_select_per_sharding(self) -> dict[str, bool] | None:
        return self._use_gather_select_per_sharding

    @property
    def device(self) -> torch.device:
        return self._device


def sequence_replacements(
    model: nn.Module, plan: HashPlan, *, out_of_range: str, filter_fn, seen: set
) -> list[tuple[str, nn.Module]]:
    """The learned-hash twins of ``model``'s EmbeddingCollections that hold a table of
    ``plan`` (``(fqn, new module)``, built before any is swapped in; ``seen`` gets the
    converted collections' table names). For :func:`apply_hash_plan`."""
    found = [("", model)] if isinstance(model, EmbeddingCollection) else list(model.named_modules())
    planned = set(plan.table_names)
    built = []
    for fqn, ec in found:
        if type(ec) is not EmbeddingCollection or (filter_fn and not filter_fn(fqn, ec)):
            continue
        names = {c.name for c in ec.embedding_configs()}
        if not names & planned:
            continue
        seen.update(names)
        new = LearnedHashEmbeddingCollection(
            ec.embedding_configs(),
            plan,
            device=ec.device,
            need_indices=ec.need_indices(),
            use_gather_select=ec.use_gather_select(),
            use_gather_select_per_sharding=ec.use_gather_select_per_sharding(),
            out_of_range=out_of_range,
            strict=False,
        )
        if ec.device.type != "meta":
            with torch.no_grad():  # uncompressed tables keep their trained weights
                for name in names - planned:
                    new.embeddings[name].weight.copy_(ec.embeddings[name].weight)
        built.append((fqn, new))
    return built
