"""Every docstring example of the package runs and prints what it says (pytest collects
no doctests by itself here: ``make test`` runs ``tests/``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import torchrec_lhf

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(torchrec_lhf.__path__, prefix="torchrec_lhf.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
