"""The hash build's configuration: :class:`BuildConfig` and the rows it gives each table.

Used by the distributed job (:mod:`torchrec_lhf.hash_build.job`), ``apps.build_hash`` and the
build benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchrec_lhf.cli import checked_fields
from torchrec_lhf.clustering.registry import check_clustering_options, get_clustering
from torchrec_lhf.compression.budget import BUDGETS, MIN_TABLE_ROWS, allocate_rows
from torchrec_lhf.hash_build.byte_budget import fit_head_to_bytes, learned_rows_for_bytes
from torchrec_lhf.hash_build.compose import COMPOSE_MODES
from torchrec_lhf.hash_build.head_tail import ENCODINGS, ROW_ALLOCATIONS, TAIL_REGIONS, HeadTail
from torchrec_lhf.hash_build.shrinkage import check_shrinkage
from torchrec_lhf.plan import COMBINE_MODES

FREQUENCY_ONLY_COUNT = 2**62
"""A head count threshold above any access count: no id is clustered
(:meth:`BuildConfig.frequency_only`)."""


def parse_rows_per_table(text: str) -> dict[str, int]:
    """``--rows_per_table``: a JSON object, or the path of a file holding one.

    Raises:
        ValueError: not a JSON object, or no such file.
    """
    source = "argument"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(
                f"rows_per_table must be a JSON object or a JSON file, got {text!r} (no such file)"
            )
        text, source = path.read_text(), str(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"rows_per_table: {source} is not valid JSON: {e}") from e
    if not isinstance(rows, dict):
        raise ValueError(
            f"rows_per_table must be a JSON object table -> rows, got {type(rows).__name__}"
        )
    return rows


def parse_index_share(text: str) -> float | None:
    """``--index_share``: a number, or ``none`` (no cap).

    Raises:
        ValueError: neither, naming the text.
    """
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number in (0, 1] or 'none', got {text!r}") from None


@dataclass(kw_only=True)
class BuildConfig:
    """What to build and where: everything that decides the plan, plus the paths."""

    fraction: float | None = None
    """Compressed rows of a table, ``max(H, round(fraction * N))``; exactly one of
    ``fraction`` / ``rows_per_table``."""

    rows_per_table: dict[str, int] | None = field(
        default=None, metadata={"parse": parse_rows_per_table, "metavar": "JSON|FILE"}
    )
    """Compressed rows (total over the ``H`` internal tables) per table, a JSON object or a
    JSON file; tables not named stay full."""

    min_table_rows: int = MIN_TABLE_ROWS
    """Tables with fewer ids stay full (0: none; the paper skipped tables under 100K ids)."""

    budget: str = field(default="table", metadata={"choices": BUDGETS})
    """How ``fraction`` is spent (:mod:`~torchrec_lhf.compression.budget`): ``"table"``
    (each table's own fraction), ``"total"`` (of all the model's rows) or ``"bytes"`` (of
    the full fp32 table bytes at ``embedding_dim``, the remap counted)."""

    embedding_dim: int | None = None
    """The student's embedding dim ``D`` (``budget="bytes"``: a compressed row costs
    ``4 D`` bytes)."""

    num_hashes: int = 1
    """``H``, hash functions (internal tables) per compressed table."""

    combine: str = field(default="sum", metadata={"choices": COMBINE_MODES})
    """How the ``H`` internal embeddings combine: ``"sum"`` or ``"concat"``."""

    clustering: str = "agglomerative"
    """A clustering registered in :mod:`torchrec_lhf.clustering.registry`."""

    projection: str = "pca"
    """Teacher embeddings -> 1-D values: ``"pca"``, ``"dim:k"`` or ``"dim:k0,k1,..."``."""

    head_min_count: int = 10
    """The head (the ids clustered) is the ids seen at least this often in one pass over the
    training split (the teacher's counts, of its first epoch); the others are hashed (0:
    every id is clustered, the paper's build). The teacher memorizes the labels of rare ids
    (:mod:`~torchrec_lhf.hash_build.head_tail`; docs/RESULTS.md, "The rare-id regime")."""

    head_mass: float | None = None
    """Or the head is the most frequent ids covering this share of the training accesses."""

    tail_fraction: float = 0.05
    """Share of each internal table's rows reserved for the hashed tail, so that the head's
    rows stay its own (0: the tail is hashed into all rows). With the default ``fill``
    region the head takes the other rows, a row per frequent id where they suffice
    (docs/RESULTS.md, "Rows of their own for the most frequent ids")."""
    tail_region: str = field(default="fill", metadata={"choices": TAIL_REGIONS})
    """``fixed``: the tail gets ``tail_fraction`` of the rows; ``mass``: its share of the
    table's training accesses (``tail_fraction`` unused); ``fit``: as ``fixed``, but a head
    of fewer ids than its region's rows keeps a row per id and the tail gets the rest;
    ``fill``: as ``fixed``, but such a head is extended by the next most frequent ids seen in
    training, a row each, until it fills its region."""

    row_allocation: str = field(
        default=HeadTail.row_allocation, metadata={"choices": ROW_ALLOCATIONS}
    )
    """How ``budget="bytes"`` shares rows among the compressed tables: ``size`` (in
    proportion to their ids) or ``counts`` (a row each for the most frequent ids of all of
    them together, so that a table whose ids are seen more often keeps more rows; needs
    ``tail_region="fill"``: :func:`~torchrec_lhf.hash_build.byte_budget.rows_by_counts`)."""

    index_share: float | None = field(
        default=0.5, metadata={"parse": parse_index_share, "metavar": "SHARE|none"}
    )
    """Under ``budget="bytes"``, the most of the budget the stored remap may take: where the
    head at ``head_min_count`` stores more, its count threshold is raised (one for every
    compressed table) until it does not
    (:func:`~torchrec_lhf.hash_build.byte_budget.fit_head_to_bytes`; docs/RESULTS.md, "A head
    the byte budget can hold"); ``None``: the head stays ``head_min_count``'s (and a budget
    below its remap cannot be met). No effect without a head by ``head_min_count``."""

    fill_share: float | None = field(
        default=None, metadata={"parse": parse_index_share, "metavar": "SHARE|none"}
    )
    """Under ``budget="bytes"``, the most of the budget the stored remap may take once the
    ``fill`` region's extension (the frequent ids given a row each) is counted: where it
    stores more, the extension keeps only the ids seen at least a threshold (one for every
    compressed table), raised until it does not, and the rows it leaves go to the hashed tail
    (:func:`~torchrec_lhf.hash_build.byte_budget.fit_fill_to_bytes`); ``None``: the extension
    fills its region. The clustered head is ``index_share``'s. Needs ``budget="bytes"``,
    ``tail_region="fill"`` and a head by ``head_min_count``."""

    encoding: str = field(default="auto", metadata={"choices": ENCODINGS})
    """How the plan stores a hash: ``dense`` (a row per id), ``compact`` (head ids and rows,
    the tail computed) or ``auto`` (the smaller)."""

    value_shrinkage: float = 0.0
    """``k`` of the count-aware shrinkage: each id's teacher embedding is pulled toward the
    count-weighted mean of the tail's by ``n / (n + k)`` (``n`` its training access count)
    before the projection, so that the low-count ids' memorized labels weigh less in the
    clustering's order (:mod:`~torchrec_lhf.hash_build.shrinkage`; 0: the raw values, the
    paper's)."""

    compose: str = field(default="independent", metadata={"choices": COMPOSE_MODES})
    """How the ``num_hashes`` hashes of a table relate: ``independent`` (hash ``h`` clusters
    the ``h``-th projection, the paper's) or ``residual`` (hash ``h >= 1`` splits the ids that
    hashes ``0..h-1`` put together, by what those rows leave unexplained:
    :mod:`~torchrec_lhf.hash_build.compose`)."""

    clustering_options: dict[str, Any] = field(default_factory=dict)
    """Passed to the clustering (e.g. ``max_cluster_size``); JSON-serializable."""

    out: Path
    """Where rank 0 writes the plan (atomically, once every table is done)."""

    work_dir: Path | None = None
    """Finished tables and the job's fingerprint; reruns resume from it (default
    ``<out>.work``). Shared by all ranks, or local to each node if reruns keep the same
    ranks per node."""

    restart: bool = False
    """Discard ``work_dir``'s tables (even another build's) and start over."""

    teacher: str | None = None
    """The teacher artifact's directory (``apps.build_hash`` reads it; recorded in the
    plan's metadata, not in the fingerprint)."""

    @checked_fields
    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.rows_per_table is None):
            raise ValueError(
                "give exactly one of fraction and rows_per_table, got "
                f"fraction={self.fraction!r}, rows_per_table={self.rows_per_table!r}"
            )
        f = self.fraction
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1
        ):
            raise ValueError(f"fraction must be a number in (0, 1], got {f!r}")
        if self.rows_per_table is not None:
            rows = self.rows_per_table
            if not isinstance(rows, dict) or not rows:
                raise ValueError(
                    f"rows_per_table must be a non-empty dict table -> rows, got {rows!r}"
                )
            bad = {
                k: v
                for k, v in rows.items()
                if isinstance(v, bool) or not isinstance(v, int) or v < 1
            }
            if bad:
                raise ValueError(f"rows_per_table values must be ints >= 1, got {bad}")
            self.rows_per_table = dict(rows)
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if self.budget != "table" and self.fraction is None:
            raise ValueError(f"budget={self.budget!r} needs a fraction, not rows_per_table")
        d = self.embedding_dim
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(f"embedding_dim must be an int >= 1, got {d!r}")
        if self.budget == "bytes" and d is None:
            raise ValueError("budget='bytes' needs embedding_dim (the student's dim)")
        self.head_tail()  # ValueError naming a bad head/tail setting
        if self.fill_share is not None and self.budget != "bytes":
            raise ValueError(
                f"fill_share={self.fill_share} caps the remap's share of a byte budget; it "
                f"needs budget='bytes', got budget={self.budget!r}"
            )
        if self.row_allocation != "size" and self.budget != "bytes":
            raise ValueError(
                f"row_allocation={self.row_allocation!r} shares a byte budget; it needs "
                f"budget='bytes', got budget={self.budget!r}"
            )
        for name, low in (("min_table_rows", 0), ("num_hashes", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")
        get_clustering(self.clustering)  # ValueError naming the registered clusterings
        if self.compose not in COMPOSE_MODES:
            raise ValueError(f"compose must be one of {COMPOSE_MODES}, got {self.compose!r}")
        self.value_shrinkage = check_shrinkage(self.value_shrinkage)
        if not isinstance(self.projection, str) or not re.fullmatch(
            r"pca|dim:\d+(,\d+)*", self.projection
        ):
            raise ValueError(
                f"projection must be 'pca', 'dim:k' or 'dim:k0,k1,...', got {self.projection!r}"
            )
        check_clustering_options(self.clustering, self.clustering_options)
        try:
            json.dumps(self.clustering_options)
        except TypeError as e:
            raise ValueError(
                f"clustering_options must be JSON-serializable, got {self.clustering_options!r}"
            ) from e
        self.clustering_options = dict(self.clustering_options)
        self.out = Path(self.out)
        if self.work_dir is None:
            self.work_dir = self.out.with_name(self.out.name + ".work")
        self.work_dir = Path(self.work_dir)
        if self.work_dir.resolve() == self.out.resolve():
            raise ValueError(f"work_dir and out must differ, both are {str(self.out)!r}")

    def head_tail(self) -> HeadTail:
        """The head/tail settings of the build."""
        return HeadTail(
            min_count=self.head_min_count,
            mass=self.head_mass,
            tail_fraction=self.tail_fraction,
            encoding=self.encoding,
            tail_region=self.tail_region,
            row_allocation=self.row_allocation,
            index_share=self.index_share,
            fill_share=self.fill_share,
        )

    def frequency_only(self, out: str | Path) -> BuildConfig:
        """This build with no head to cluster, written to ``out``: each table's head region
        goes to its most frequent ids seen in training, a row each (``tail_region="fill"``),
        and the others are hashed into the tail region, as ``mch`` keeps its most frequent
        ids. Where the teacher's values do not generalize (the Criteo head) it is the better
        plan, where they do (MovieLens) far worse: ``apps.pipeline --head_select`` trains
        both and keeps the better on validation (docs/RESULTS.md, "Choosing the head's
        treatment on validation").

        Raises:
            ValueError: the build does not fill its head region (``tail_region`` is not
                ``fill``, or its head is by mass or absent).
        """
        if self.tail_region != "fill" or not self.head_min_count:
            raise ValueError(
                "a frequency-only build fills the head region with the most frequent ids, "
                f"which needs tail_region 'fill' and a head by head_min_count, got "
                f"tail_region={self.tail_region!r}, head_min_count={self.head_min_count!r}, "
                f"head_mass={self.head_mass!r}"
            )
        return dataclasses.replace(
            self, head_min_count=FREQUENCY_ONLY_COUNT, out=Path(out), work_dir=None
        )

    def plan_options(self) -> dict[str, Any]:
        """The fields that decide the plan (in the fingerprint and the plan's metadata)."""
        return {
            "clustering": self.clustering,
            "fraction": self.fraction,
            "rows": self.rows_per_table,
            "projection": self.projection,
            "num_hashes": self.num_hashes,
            "combine": self.combine,
            "min_table_rows": self.min_table_rows,
            "budget": self.budget,
            # NOTE: only under a byte budget, so that other builds keep their fingerprints
            **({"embedding_dim": self.embedding_dim} if self.budget == "bytes" else {}),
            **self.head_tail().to_dict(),
            # NOTE: only when on, so that other builds keep their fingerprints
            **({"value_shrinkage": self.value_shrinkage} if self.value_shrinkage else {}),
            **({"compose": self.compose} if self.compose != "independent" else {}),
            # NOTE: says what the threshold no id reaches means (only then: fingerprints)
            **({"frequency_only": True} if self.head_min_count == FREQUENCY_ONLY_COUNT else {}),
            "clustering_options": self.clustering_options,
        }


def _byte_fit(config: BuildConfig) -> dict[str, Any]:
    """The arguments of a byte budget's fit (``budget="bytes"``)."""
    assert config.fraction is not None and config.embedding_dim is not None  # checked
    return dict(
        fraction=config.fraction,
        embedding_dim=config.embedding_dim,
        min_table_rows=config.min_table_rows,
        num_hashes=config.num_hashes,
        combine=config.combine,
    )


def fitted_head_tail(
    sizes: dict[str, int], config: BuildConfig, counts: Mapping[str, torch.Tensor] | None
) -> HeadTail:
    """The head/tail settings the build clusters with: ``config.head_tail()``, its head's
    count threshold raised under a byte budget with ``index_share``
    (:func:`~torchrec_lhf.hash_build.byte_budget.fit_head_to_bytes`)."""
    spec = config.head_tail()
    if config.budget != "bytes":
        return spec
    return fit_head_to_bytes(sizes, counts, spec, **_byte_fit(config))


def table_rows(
    sizes: dict[str, int],
    config: BuildConfig,
    counts: Mapping[str, torch.Tensor] | None = None,
    head_tail: HeadTail | None = None,
) -> dict[str, int]:
    """Compressed rows per table to build (the rule of ``build_plan``); others stay full.

    Args:
        sizes: table name -> ``N``, in the teacher's order.
        config: the build config.
        counts: table name -> access counts ``(N,)`` (``budget="bytes"`` with a head:
            the head sets the remap's bytes).
        head_tail: the settings the build clusters with, if already fitted (default
            :func:`fitted_head_tail`).

    Returns:
        table name -> total rows over the table's ``H`` internal tables, in ``sizes``
        order, for tables with ``N >= min_table_rows`` (and named in ``rows_per_table``);
        with ``budget="total"``, the tables it allocates fewer rows than ids.

    Raises:
        ValueError: ``rows_per_table`` names an unknown table, gives fewer rows than ``H``,
            or more rows per internal table than the table has ids.
    """
    h = config.num_hashes
    if config.rows_per_table is not None:
        unknown = sorted(set(config.rows_per_table) - set(sizes))
        if unknown:
            raise ValueError(
                f"rows_per_table names tables the teacher lacks: {unknown} (has {list(sizes)})"
            )
    if config.budget == "bytes":
        allocated, _ = learned_rows_for_bytes(
            sizes,
            counts,
            **_byte_fit(config),
            head_tail=head_tail or fitted_head_tail(sizes, config, counts),
        )
    elif config.fraction is not None:
        allocated = allocate_rows(
            sizes,
            config.fraction,
            budget=config.budget,
            min_table_rows=config.min_table_rows,
            num_hashes=h,
        )
    else:
        allocated = {
            k: config.rows_per_table[k]
            for k, n in sizes.items()
            if k in config.rows_per_table and n >= config.min_table_rows
        }
    out: dict[str, int] = {}
    for name, rows in allocated.items():
        n = sizes[name]
        if config.budget != "table" and rows >= n:
            continue  # the total or bytes budget keeps this table full
        if not h <= rows <= h * n:
            raise ValueError(
                f"table {name!r}: {rows} rows for {h} hash(es) of a table of {n} ids; "
                f"expected {h} <= rows <= {h * n}"
            )
        out[name] = rows
    return out
