"""Fixtures of the hash-build tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hash_build.test_job import _teacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small teacher artifact (planted groups, Zipf-like counts) on disk."""
    d = tmp_path_factory.mktemp("teacher")
    _teacher(d)
    return d
