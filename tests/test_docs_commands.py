"""Every command the README and ``docs/`` give parses with today's flags.

The results in ``docs/`` are reproduced by the commands beside them, and the README's are
what a user runs first, so each must still be accepted: the module exists, every flag and
choice is known and every value valid (method names included), as the entry point's own
parser and config checks decide, without running anything. Commands are read from fenced
code blocks:

- ``python -m MODULE ARGS`` and ``torchrun ... -m MODULE ARGS`` (lines joined at ``\\``);
- ``torchx run ... lhf.py:stage --stage STAGE ... -- ARGS`` (the module the stage runs).

In ``ARGS``, an upper-case word is a placeholder: ``S`` takes the first value its line's
comment (or the block's) gives it (``# S = 0..4; F = 0.1``), a path-like one (``OUT``,
``DIR``) a path, ``OPTS`` an empty JSON object; ``[--flag]`` is an optional flag (parsed
with it) and ``...`` stands for flags the prose gives (left out).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATHS = {"OUT", "DIR", "NPY", "PATH", "A", "B", "RAW", "TEACHER", "PLAN"}
"""Placeholders that stand for a path."""
OURS = ("apps.", "benchmarks.", "torchrec_lhf.")
"""The packages whose commands are checked (not ``python -m venv``, ``pip``)."""
_COMMAND = re.compile(
    r"(?:^|[\s/])(?:python3?|torchrun(?:\s+--?\S+(?:[ =]\S+)?)*)\s+-m\s+(\S+)(.*)"
)
_TORCHX = re.compile(r"torchx run .*?lhf\.py:stage\s.*?--stage\s+(\S+).*?\s--\s+(.*)")
_ASSIGN = re.compile(r"\b([A-Z][A-Z0-9_]*)\s*=\s*([^\s,;:)]+)")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Command:
    """A command of a code block: the module it runs and its arguments as written."""

    where: str
    """``file:line`` of the command's first line."""
    module: str
    args: str
    values: dict[str, str]
    """Placeholder values from the comments."""


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """Each fenced block's first line number (1-based) and lines."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current, start = [], number + 1
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _values(comment: str) -> dict[str, str]:
    """``X = 0..4`` -> ``{"X": "0"}``: each placeholder's first value."""
    return {name: value.split("..")[0] for name, value in _ASSIGN.findall(comment)}


def commands(path: Path, root: Path = ROOT) -> list[Command]:
    """The commands in ``path``'s code blocks, named by their place relative to ``root``."""
    found = []
    for start, lines in code_blocks(path.read_text()):
        block_values: dict[str, str] = {}
        joined: list[tuple[int, str]] = []
        for offset, line in enumerate(lines):
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
            else:
                joined.append((start + offset, line))
        for number, line in joined:
            code, _, comment = line.partition(" #")
            if line.lstrip().startswith("#"):
                code, comment = "", line
            block_values.update(_values(comment))
            match = _TORCHX.search(code)
            if match:
                from torchx_components.lhf import STAGES

                module, args = STAGES[match.group(1)], match.group(2)
            elif (match := _COMMAND.search(code)) and match.group(1).startswith(OURS):
                module, args = match.group(1), match.group(2)
            else:
                continue
            where = f"{path.relative_to(root)}:{number}"
            found.append(Command(where, module, args, {**block_values, **_values(comment)}))
    return found


ALL = [c for path in DOCS for c in commands(path)]


def argv(command: Command) -> list[str]:
    """The command's arguments with its placeholders filled in and its optional flags in."""
    out = []
    for token in shlex.split(command.args):
        if token == "...":
            continue
        if token.startswith("[") and not token.startswith("[{"):
            token = token[1:]
        if token.endswith("]") and not token.endswith("}]"):
            token = token[:-1]
        if _PLACEHOLDER.fullmatch(token):
            if token in command.values:
                token = command.values[token]
            elif token in PATHS:
                token = f"/nonexistent/{token.lower()}"
            elif token == "OPTS":
                token = "{}"
            else:
                raise AssertionError(
                    f"{command.where}: placeholder {token} has no value in its comment "
                    f"(e.g. '# {token} = ...')"
                )
        out.append(token)
    return out


class _Parsed(Exception):
    pass


def parse(module_name: str, args: list[str]) -> object:
    """What the entry point makes of ``args``: its ``parse_args`` where it has one (flags
    and config checks), else its ``main`` stopped right after argparse."""
    module = importlib.import_module(module_name)
    if hasattr(module, "parse_args"):
        return module.parse_args(args)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed) as parsed:
            module.main(args)
    return parsed.value.args[0]


def test_the_docs_give_commands() -> None:
    """The reader finds them (a change to the patterns that found none would pass)."""
    readme = [c for c in ALL if c.where.startswith("README.md")]
    assert len(readme) >= 8 and len(ALL) >= 100, (len(readme), len(ALL))
    assert {c.module for c in readme} >= {"apps.teacher", "apps.build_hash", "apps.pipeline"}


@pytest.mark.parametrize("command", ALL, ids=[c.where for c in ALL])
def test_documented_command_parses(command: Command) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse(command.module, argv(command))
    except SystemExit:
        pytest.fail(
            f"{command.where}: python -m {command.module}{command.args}\n{stderr.getvalue()}"
        )
    except ValueError as e:
        pytest.fail(f"{command.where}: python -m {command.module}{command.args}\n{e}")


def test_a_stale_flag_is_found(tmp_path: Path) -> None:
    """The check fails where a documented flag is gone or a value refused."""
    bad = [
        Command("x:1", "apps.pipeline", " --no_such_flag 1", {}),
        Command("x:2", "apps.pipeline", " --budget weird", {}),
        Command("x:3", "benchmarks.quality", " --methods lhf-nosuch --out OUT", {}),
        Command("x:4", "benchmarks.remap", " --encoding E", {"E": "sparse"}),
    ]
    for command in bad:
        with pytest.raises((SystemExit, ValueError)), contextlib.redirect_stderr(io.StringIO()):
            parse(command.module, argv(command))
    with pytest.raises(AssertionError, match="placeholder Q has no value"):
        argv(Command("x:5", "apps.pipeline", " --seed Q", {}))
    (tmp_path / "doc.md").write_text(
        "```bash\n# S = 3..5\ntorchrun --nproc_per_node 2 -m apps.pipeline --seed S \\\n"
        "    --fraction [F]   # F = 0.2\n```\nprose `python -m apps.teacher` is not read\n"
    )
    assert [(c.where, c.module, argv(c)) for c in commands(tmp_path / "doc.md", tmp_path)] == [
        ("doc.md:3", "apps.pipeline", ["--seed", "3", "--fraction", "0.2"])
    ]
