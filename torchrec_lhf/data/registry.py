"""``load_dataset(spec, **options)``: one string names any dataset the project can load.

Specs: ``movielens-100k``; ``criteo-tsv:PATH``; ``criteo-npy:DIR`` (TorchRec's
preprocessed ``.npy`` files, streamed per rank: options ``num_embeddings_per_feature=``,
``chunk_rows=``); ``csv:PATH`` (options ``label=``,
``categorical=[...]``, ``dense=[...]``, ``time=``, ...); ``synthetic`` (options are
:class:`SyntheticConfig` fields). New sources join with :func:`register_dataset`.

Example::

    >>> from torchrec_lhf.data import load_dataset
    >>> ds = load_dataset("synthetic", num_samples=1000, num_embeddings=[50, 80])
    >>> ds.num_embeddings
    [50, 80]
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from torchrec_lhf.cli import FlagError, check_int
from torchrec_lhf.data.criteo import check_tsv_options, load_criteo_tsv
from torchrec_lhf.data.criteo_npy import CriteoNpyDataset, check_npy_options, load_criteo_npy
from torchrec_lhf.data.csv import check_csv_options, load_csv
from torchrec_lhf.data.dataset import RecDataset
from torchrec_lhf.data.movielens import SPLITS, load_movielens_100k
from torchrec_lhf.data.synthetic import SyntheticConfig, make_synthetic


@dataclass(frozen=True, kw_only=True)
class DatasetSource:
    """A registered dataset: its loader, whether the spec carries a path and of what."""

    name: str
    loader: Callable[..., RecDataset | CriteoNpyDataset]
    takes_path: bool
    options: tuple[str, ...]
    path_kind: Literal["file", "directory"] = "file"
    check_options: Callable[..., None] | None = None
    """Checks the options' values without reading data (raises ValueError), or None."""


_REGISTRY: dict[str, DatasetSource] = {}


def register_dataset(
    name: str,
    loader: Callable[..., RecDataset | CriteoNpyDataset],
    *,
    takes_path: bool,
    options: tuple[str, ...] | None = None,
    path_kind: Literal["file", "directory"] = "file",
    check_options: Callable[..., None] | None = None,
) -> None:
    """Register ``loader`` under ``name``: called as ``loader(PATH, **options)`` or ``loader(**options)``.

    Args:
        name: the spec's prefix, e.g. ``"criteo-tsv"``.
        loader: builds the ``RecDataset``.
        takes_path: whether the spec is ``name:PATH``.
        options: accepted keyword options; default the loader's keyword-only parameters.
        path_kind: what ``PATH`` names, checked by :func:`check_dataset_files`.
        check_options: called by :func:`check_dataset_spec`, before any data is read,
            with the options given and the loader's keyword defaults for the others:
            raises ValueError naming a bad value (so that a config refuses it before a run
            starts). None: the loader checks them when it runs.

    Raises:
        ValueError: ``name`` is already registered, contains ``':'``, or ``path_kind`` is
            neither ``"file"`` nor ``"directory"``.
    """
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    if not name or ":" in name:
        raise ValueError(f"dataset name must be non-empty without ':', got {name!r}")
    if path_kind not in ("file", "directory"):
        raise ValueError(f"path_kind must be 'file' or 'directory', got {path_kind!r}")
    if options is None:
        params = inspect.signature(loader).parameters.values()
        options = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    _REGISTRY[name] = DatasetSource(
        name=name,
        loader=loader,
        takes_path=takes_path,
        options=options,
        path_kind=path_kind,
        check_options=check_options,
    )


def dataset_names() -> list[str]:
    """The registered names, e.g. ``["criteo-tsv", "csv", "movielens-100k", "synthetic"]``."""
    return sorted(_REGISTRY)


def check_dataset_spec(spec: str, options: Mapping[str, Any] | None = None) -> DatasetSource:
    """The registered source ``spec`` names, checked without reading any data: a config
    validates its ``--dataset`` with it, so that a bad spec fails before a run starts.

    Args:
        spec: e.g. ``"synthetic"`` or ``"criteo-tsv:train.txt"`` (see the module docstring).
        options: the loader's keyword options, checked by name, for the loader's required
            ones and by value (the source's ``check_options``); None: the spec alone.

    Raises:
        ValueError: unknown name, a missing or unexpected path, an unknown or missing
            option or a bad option value.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a dataset spec must be a string such as 'synthetic', got {spec!r}")
    if options is not None and not isinstance(options, Mapping):
        # (a JSON string passed as is was read as a set of its characters: unknown options
        # [' ', '"', '0', ...])
        raise ValueError(
            f"dataset {spec!r}: options must be a mapping of option names to values, got "
            f"{options!r}"
        )
    name, sep, path = spec.partition(":")
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown dataset {spec!r}; expected one of {[_usage(s) for s in _REGISTRY.values()]}"
        )
    source = _REGISTRY[name]
    if source.takes_path and not path:
        raise ValueError(f"dataset {spec!r} needs a path: {_usage(source)}")
    if not source.takes_path and sep:
        raise ValueError(f"dataset {name!r} takes no path, got {spec!r}")
    unknown = sorted(set(options or {}) - set(source.options))
    if unknown:
        raise ValueError(
            f"dataset {name!r}: unknown options {unknown}; accepted: {list(source.options)}"
        )
    if options is None:
        return source
    given = dict(options)
    params = inspect.signature(source.loader).parameters.values()
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = sorted(p.name for p in keyword if p.default is p.empty and p.name not in given)
    if missing:
        raise ValueError(f"dataset {name!r} needs the options {missing}")
    if source.check_options is not None:
        defaults = {p.name: p.default for p in keyword if p.default is not p.empty}
        try:
            source.check_options(**{**defaults, **given})
        except ValueError as e:
            raise ValueError(f"dataset {name!r}: {e}") from None
    return source


def check_dataset_files(spec: str) -> None:
    """Check, where a run starts, that the path of ``spec`` names what its source reads.

    An entry point calls it in ``main`` (not in its config's validation: a config may be
    built where the data is not, e.g. when a torchx job is submitted), so that a missing
    file is a usage error before any stage starts rather than a traceback inside one.

    Args:
        spec: a spec :func:`check_dataset_spec` accepts.

    Raises:
        FlagError: the path does not exist or is not a file / directory as the source
            expects (a ``ValueError``, reported by ``cli.run_command`` as a usage error).
    """
    source = check_dataset_spec(spec)
    if not source.takes_path:
        return
    path = Path(spec.partition(":")[2])
    found = path.is_dir() if source.path_kind == "directory" else path.is_file()
    if not found:
        what = "no such file or directory" if not path.exists() else f"not a {source.path_kind}"
        raise FlagError(
            f"--dataset {spec!r}: {path}: {what}; expected {_usage(source)}, a {source.path_kind}"
        )


def load_dataset(spec: str, **options) -> RecDataset | CriteoNpyDataset:
    """Load the dataset named by ``spec`` (see the module docstring).

    Raises:
        ValueError: unknown name, a missing or unexpected path, or an unknown option
            (:func:`check_dataset_spec`).
        DatasetUnavailableError: the data cannot be obtained (e.g. PyPI unreachable).
    """
    source = check_dataset_spec(spec, options)
    path = spec.partition(":")[2]
    return source.loader(path, **options) if source.takes_path else source.loader(**options)


def _usage(source: DatasetSource) -> str:
    """How a spec of ``source`` is written: ``name``, ``name:PATH`` or ``name:DIR``."""
    if not source.takes_path:
        return source.name
    return f"{source.name}:{'DIR' if source.path_kind == 'directory' else 'PATH'}"


def _synthetic(**options) -> RecDataset:
    return make_synthetic(SyntheticConfig(**options))


def _movielens(
    *, cache_dir: str | None = None, split: str = "random", split_seed: int = 0
) -> RecDataset:
    return load_movielens_100k(cache_dir, split=split, split_seed=split_seed)


def _check_movielens(*, cache_dir: Any, split: Any, split_seed: Any) -> None:
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a path or None, got {cache_dir!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    check_int("split_seed", split_seed, low=0)


register_dataset("movielens-100k", _movielens, takes_path=False, check_options=_check_movielens)
register_dataset("criteo-tsv", load_criteo_tsv, takes_path=True, check_options=check_tsv_options)
register_dataset(
    "criteo-npy",
    load_criteo_npy,
    takes_path=True,
    path_kind="directory",
    check_options=check_npy_options,
)
register_dataset("csv", load_csv, takes_path=True, check_options=check_csv_options)
register_dataset(
    "synthetic",
    _synthetic,
    takes_path=False,
    options=tuple(f.name for f in fields(SyntheticConfig)),
    check_options=SyntheticConfig,  # (its checks; nothing is drawn)
)
