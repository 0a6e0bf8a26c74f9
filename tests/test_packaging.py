"""The declared dependencies agree with the pinned CPU stack that the tests run on."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared(name: str) -> str:
    # NOTE: a regex, not tomllib: the package supports Python 3.10, which lacks tomllib
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert deps, "pyproject.toml declares [project] dependencies"
    specs = [d for d in re.findall(r'"([^"]+)"', deps.group(1)) if re.match(rf"{name}\b", d)]
    assert len(specs) == 1, f"{name} must be declared once in pyproject.toml, got {specs}"
    return specs[0]


def test_torchrec_is_declared_at_the_tested_minor_version() -> None:
    spec = _declared("torchrec")
    made = re.search(r"TORCHREC_VERSION := (\S+)", (ROOT / "Makefile").read_text())
    assert made, "the Makefile pins TORCHREC_VERSION"
    minor = ".".join(made.group(1).split(".")[:2])
    assert spec == f"torchrec=={minor}.*"
    assert version("torchrec").startswith(f"{minor}.")  # what the tests run on
