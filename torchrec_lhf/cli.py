"""Command-line flags derived from config dataclasses: each default and help text lives once.

A config is a ``@dataclass(kw_only=True)`` whose fields carry their help as attribute
docstrings (the string literal right under the field, as in titan's configs). This module
turns such a class into ``argparse`` flags (``--field_name``) and parsed flags back into the
class, so that the dataclass stays the one source of every default::

    @dataclass(kw_only=True)
    class Config:
        fraction: float = 0.1
        \"\"\"Rows kept, in (0, 1].\"\"\"
        combine: str = field(default="sum", metadata={"choices": ("sum", "concat")})
        \"\"\"How the hash functions' embeddings combine.\"\"\"

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Config)
    config = config_from_args(Config, parser.parse_args(["--fraction", "0.2"]))

Flags the user does not give are left out of the parsed namespace (``argparse.SUPPRESS``),
so the dataclass fills them in: a default is never copied into the parser, only shown in
``--help``. Types: ``int``, ``float``, ``str``, ``Path``, ``bool`` (``--x`` / ``--no-x``),
``list[int | float | str]`` (comma-separated), ``dict`` (a JSON object) and ``X | None``
of these. Field ``metadata`` may hold ``choices``, ``parse`` (a ``str -> value`` function
that replaces the type's parser), ``metavar`` and ``cli=False`` (no flag).

We wrote this (about 150 lines) rather than adopt a CLI library: the flags must keep their
torchrec_dlrm-style names (``--batch_size``), mixed configs share one parser, and the
project adds no dependency for it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import math
import numbers
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FlagError",
    "add_config_flags",
    "check_fields",
    "checked_fields",
    "check_input_path",
    "check_int",
    "is_finite_number",
    "config_from_args",
    "field_docs",
    "json_object",
    "run_command",
]


class FlagError(ValueError):
    """A flag value the config refuses (the message names it and what was expected).

    A ``ValueError``, so that callers of an entry point's ``parse_args`` or ``main`` catch it
    as the configs document; :func:`run_command` reports it as ``argparse`` reports its own
    usage errors.
    """


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass and its bases (field name -> text)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined without a source file (e.g. in a REPL)
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _plain(doc: str) -> str:
    """A docstring as ``--help`` text: Sphinx roles and double backticks dropped."""
    doc = re.sub(r":\w+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "")


def json_object(text: str) -> dict[str, Any]:
    """Parse a flag's JSON object (``argparse`` type)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def comma_list(
    item: Callable[[str], Any], name: str, *, unique: bool = False
) -> Callable[[str], list[Any]]:
    """An ``argparse`` type: a comma-separated list of ``item`` values (``name`` in the
    message), items stripped; an empty string is the empty list, an empty item an error.
    With ``unique``, a value given twice is an error too (:func:`check_unique`): for lists
    whose values key their results, where a repeat would replace the first's."""

    def parse(text: str) -> list[Any]:
        if not text.strip():
            return []
        parts = [x.strip() for x in text.split(",")]
        try:
            if "" in parts:  # ("16,,4", "16,": an item left out, not dropped without a word)
                raise ValueError(text)
            values = [item(x) for x in parts]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {name}, got {text!r}"
            ) from None
        if unique:
            try:
                check_unique("the list", values)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return values

    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An ``argparse`` type: an int ``>= low`` (a benchmark's ``--iters``, ``--pooling``);
    anything else is refused by argparse with the flag, the bound and the text."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}")
        return value

    return parse


def unit_fraction(text: str) -> float:
    """An ``argparse`` type: a fraction in ``(0, 1]`` (the rows kept, ``--fraction``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:  # (NaN fails it too)
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _type_error(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse shows an ``ArgumentTypeError``'s message (a ``ValueError``'s it drops)."""

    @functools.wraps(parse)
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return wrapped


_SCALARS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}


def _parser_for(tp: Any, name: str) -> tuple[Callable[[str], Any] | None, str]:
    """``(parse, kind)`` for a field type; kind is ``"bool"``, ``"value"``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _parser_for(args[0], name)
        if set(args) == {int, float}:
            return float, "value"
        raise TypeError(f"field {name!r}: no flag for the union type {tp}")
    if tp is bool:
        return None, "bool"
    if tp in _SCALARS:
        return _SCALARS[tp], "value"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = set(a for a in typing.get_args(tp) if a is not Ellipsis) or {str}
        if item not in _SCALARS:
            raise TypeError(f"field {name!r}: no flag for a list of {item}")
        return comma_list(_SCALARS[item], item.__name__), "value"
    if origin in (dict, Mapping) or tp is dict:
        return json_object, "value"
    raise TypeError(f"field {name!r}: no flag for the type {tp}; give metadata={{'parse': fn}}")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value)) if value else "none"
    elif isinstance(value, dict):
        value = json.dumps(value)
    return f"default: {value}"


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    required: Iterable[str] = (),
) -> None:
    """Add one ``--name`` flag per field of the dataclass ``cls``.

    Args:
        parser: the parser or argument group to add to.
        cls: a dataclass whose fields carry attribute docstrings.
        exclude: fields that get no flag (set by the caller instead).
        defaults: defaults this entry point uses instead of the dataclass's (shown in
            ``--help``; :func:`config_from_args` must receive the same mapping).
        required: fields whose flag must be given although the dataclass has a default.

    Raises:
        TypeError: a field's type has no flag parser (give ``metadata={"parse": fn}``).
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    skip, defaults, required = set(exclude), dict(defaults or {}), set(required)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.metadata.get("cli", True) is False:
            continue
        parse, kind = _parser_for(hints[f.name], f.name)
        if "parse" in f.metadata:
            parse = _type_error(f.metadata["parse"])
        must = f.name in required or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        shown = f"default: {defaults[f.name]}" if f.name in defaults else _default_text(f)
        help_text = f"{_plain(docs.get(f.name, ''))} ({shown})".replace("%", "%%")
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=parse, required=must)
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        parser.add_argument(f"--{f.name}", **kwargs)


def config_from_args(
    cls: type,
    args: argparse.Namespace | Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    **fixed: Any,
) -> Any:
    """Build ``cls`` from parsed flags: given flags, else ``defaults``, else the dataclass's.

    Args:
        cls: the dataclass.
        args: the parsed namespace (keys of other configs are ignored).
        defaults: the entry point's defaults given to :func:`add_config_flags`.
        **fixed: values set by the caller (override flags).

    Raises:
        FlagError: from the dataclass's validation (its ``ValueError``), naming the bad value.
    """
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: v for k, v in (defaults or {}).items() if k in names}
    kwargs.update({k: v for k, v in values.items() if k in names})
    kwargs.update(fixed)
    try:
        return cls(**kwargs)
    except FlagError:
        raise
    except ValueError as e:
        raise FlagError(str(e)) from e


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (any real type, not a bool)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def check_fields(config: Any) -> None:
    """Raise ValueError where a field of the dataclass ``config`` is not of its annotated
    type, or not among its ``choices`` (field metadata), naming the field, what it expects
    and the value: what a flag's parser would have refused, for a config built in Python.
    Every config runs it after its own checks (:func:`checked_fields`).

    Types as for the flags (``int``, ``float``, ``str``, ``Path``, ``bool``, lists and tuples
    of these, ``dict``, ``X | None``): an ``int`` is any integral type but a bool, a
    ``float`` any real number but a bool or NaN, a list a list or tuple of its items, a
    ``Path`` a string or path; a type beyond these is not checked. A NumPy scalar (alone or
    in a list or tuple) is first made the Python number it holds (before, ``seed=np.int64(3)``
    passed and failed in ``torch.Generator.manual_seed``: "an integer is required").
    """
    cls = type(config)
    hints = _type_hints(cls)
    _native_fields(config)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value, tp = getattr(config, f.name), hints[f.name]
        if not _is_of(value, tp):
            raise ValueError(f"{f.name} must be {_type_text(tp)}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")


def _native_fields(config: Any) -> None:
    """Set each field of the dataclass ``config`` that holds NumPy scalars to the Python
    numbers they hold (frozen configs too: fields set once, at construction)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        native = _python_scalars(value)
        if native is not value:
            object.__setattr__(config, f.name, native)


def _python_scalars(value: Any) -> Any:
    """``value`` with NumPy scalars (alone, or the items of a list or tuple) as the Python
    numbers they hold; ``value`` itself where it holds none."""
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (list, tuple):
        items = [_python_scalars(v) for v in value]
        if any(a is not b for a, b in zip(items, value)):
            return type(value)(items)
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's resolved field types (once per class: every config built checks them)."""
    return typing.get_type_hints(cls)


def checked_fields(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorate a config's ``__post_init__``: its own checks (which word a bad value with
    its range), then :func:`check_fields` for what they leave; a value of the wrong type
    that breaks them with a ``TypeError`` or ``AttributeError`` (``0 < "x"``) is named by
    :func:`check_fields`' ``ValueError`` instead."""

    @functools.wraps(post_init)
    def checked(self: Any) -> None:
        _native_fields(self)  # (before the config's own checks, which test for int)
        try:
            post_init(self)
        except (TypeError, AttributeError):
            check_fields(self)  # (raises, naming the field, where a type is wrong)
            raise
        check_fields(self)

    return checked


def _is_of(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the field type ``tp`` (see :func:`check_fields`)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_of(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
        )  # (NaN is no value of any field)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, str | os.PathLike)
    if origin in (list, tuple):
        items = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and len(items) > 1:  # a fixed-length tuple
            return len(value) == len(items) and all(map(_is_of, value, items))
        return not items or all(_is_of(v, items[0]) for v in value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # (another config)
        return isinstance(value, tp)
    return True  # (Any, callables, other classes: not checked)


def _type_text(tp: Any) -> str:
    """A field type in words, for :func:`check_fields`' message."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if tp is bool:
        return "a bool"
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path"
    if origin in (list, tuple):
        items = [a for a in typing.get_args(tp) if a is not Ellipsis]
        plural = {bool: "bools", int: "ints", float: "numbers", str: "strings", Path: "paths"}
        return "a list" + (f" of {plural.get(items[0], items[0])}" if len(items) == 1 else "")
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return f"a {tp.__name__}" if isinstance(tp, type) else str(tp)


def check_int(name: str, value: Any, *, low: int) -> None:
    """Raise ValueError unless ``value`` is an int (any integral type, not a bool) ``>= low``,
    naming ``name`` and the value: the check of an int field of a config."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_unique(name: str, values: Sequence[Any] | None) -> None:
    """Raise ValueError where a list field names a value more than once (a sweep would run,
    and report, the repeat twice), naming the field, the list and the repeats."""
    values = list(values or [])
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ValueError(f"{name} must name each value once, got {values} ({repeated} repeated)")


def check_input_path(
    flag: str, path: str | os.PathLike, *, expected: str, holds: str | None = None
) -> None:
    """Check, where a command starts, that an input the flag names is there: a file, or
    (``holds``) a directory holding that file. An entry point calls it in ``main``, not in
    its config (a config may be built where the files are not, e.g. a torchx submission).

    Args:
        flag: the flag, e.g. ``"--learned_hash"``.
        path: its value.
        expected: what it should name, for the message (e.g. ``"a hash plan file"``).
        holds: the file the directory must hold; None: ``path`` is a file.

    Raises:
        FlagError: naming the flag, the path, what is wrong and ``expected``.
    """
    path = Path(path)
    if holds is None:
        if path.is_file():
            return
        what = "no such file" if not path.exists() else "not a file"
    elif path.is_dir():
        if (path / holds).is_file():
            return
        what = f"no {holds} in it"
    else:
        what = "no such directory" if not path.exists() else "not a directory"
    raise FlagError(f"{flag} {str(path)!r}: {what}; expected {expected}")


def check_output_path(flag: str, path: str | os.PathLike, *, directory: bool = False) -> None:
    """Check, where a command starts, that an output the flag names can be written there: a
    file's path is not a directory, a directory's is not a file, and no folder above it is
    a file. Otherwise the command failed where it wrote, after its work (a whole training
    run). An entry point calls it in ``main``, as :func:`check_input_path`.

    Args:
        flag: the flag, e.g. ``"--out"``.
        path: its value (made where missing, with the folders above it).
        directory: the output is a directory (else a file).

    Raises:
        FlagError: naming the flag, the path and what is in the way.
    """
    path = Path(path)
    expected = "a directory to write into" if directory else "the path of a file to write"
    if path.exists() and path.is_dir() != directory:
        what = "not a directory" if directory else "is a directory"
        raise FlagError(f"{flag} {str(path)!r}: {what}; expected {expected}")
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise FlagError(
                    f"{flag} {str(path)!r}: {str(above)!r} is a file, not a directory; "
                    f"expected {expected}"
                )
            return


def run_command(main: Callable[[], Any], prog: str | None = None) -> None:
    """Run an entry point's ``main()`` as a command: a :class:`FlagError` ends it as
    ``argparse`` ends on a bad flag, ``PROG: error: MESSAGE`` on stderr and exit status 2,
    without a traceback. Any other error propagates with its traceback. Under ``torchrun``
    the message is printed by each node's first process only (``LOCAL_RANK`` 0), since
    every process parses the same flags; every process exits with status 2.

    Args:
        main: the entry point, called without arguments (it reads ``sys.argv``).
        prog: the name in the message; default ``python -m MODULE`` for the module run as
            ``__main__`` (else the script's file name).
    """
    try:
        main()
    except FlagError as e:
        if prog is None:
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            prog = f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name
        if os.environ.get("LOCAL_RANK", "0") == "0":
            sys.stderr.write(f"{prog}: error: {e}\n")
        raise SystemExit(2) from None
