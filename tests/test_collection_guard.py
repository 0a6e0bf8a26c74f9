"""tests/_collection_guard.py: a default run fails when a test file collected nothing.

Each test builds a tiny project with ``pytester`` (``testpaths = ["tests"]``, the guard
registered from its conftest) and runs pytest in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import _collection_guard

_PASSING = "def test_ok():\n    assert True\n"
_ALL_SLOW = "import pytest\n\n@pytest.mark.slow\ndef test_long():\n    assert True\n"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    """A project with one passing test file, the guard, and a ``slow`` marker."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # 0.05 s a run, not 2 s
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\nmarkers = ["slow: long"]\n'
    )
    pytester.makepyfile(_collection_guard=Path(_collection_guard.__file__).read_text())
    pytester.makeconftest('pytest_plugins = ["_collection_guard"]\n')
    pytester.syspathinsert()
    _write(pytester, "tests/test_a.py", _PASSING)
    return pytester


def _write(pytester: pytest.Pytester, relpath: str, text: str) -> None:
    path = pytester.path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _guard_failed(result: pytest.RunResult, *files: str) -> bool:
    out = result.stdout.str()
    return (
        result.ret == pytest.ExitCode.TESTS_FAILED
        and "collection guard" in out
        and all(f"  {f}" in out for f in files)
    )


def test_passes_when_every_file_collects(project):
    _write(project, "tests/sub/test_slow.py", _ALL_SLOW)  # deselected by -m, still collected
    result = project.runpytest("-m", "not slow", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["1 passed, 1 deselected*"])
    assert "collection guard" not in result.stdout.str()


def test_fails_naming_a_file_in_a_build_folder(project):
    _write(project, "tests/build/test_x.py", _PASSING)  # norecursedirs holds "build"
    _write(project, "tests/dist/test_y.py", _PASSING)
    result = project.runpytest("-q")
    assert _guard_failed(result, "tests/build/test_x.py", "tests/dist/test_y.py"), result.outlines
    result.stdout.fnmatch_lines(["1 passed*"])  # the tests that did run still ran


@pytest.mark.parametrize("args", [(), ("tests",)], ids=["testpaths", "tests-arg"])
def test_fails_on_ignored_and_empty_files(project, args):
    _write(project, "tests/test_ignored.py", _PASSING)
    _write(project, "tests/test_helpers_only.py", "def helper():\n    return 1\n")
    result = project.runpytest(*args, "--ignore=tests/test_ignored.py")
    assert _guard_failed(result, "tests/test_ignored.py", "tests/test_helpers_only.py")


def test_module_level_skip_counts_as_collected(project):
    _write(project, "tests/test_optional.py", 'import pytest\npytest.importorskip("no_such_mod")\n')
    _write(
        project,
        "tests/test_skipped.py",
        'import pytest\npytest.skip("needs data", allow_module_level=True)\n',
    )
    result = project.runpytest("-q", "-rs")
    assert result.ret == pytest.ExitCode.OK, result.outlines
    result.stdout.fnmatch_lines(["1 passed, 2 skipped*"])


def test_import_error_is_reported_by_pytest_not_the_guard(project):
    _write(project, "tests/test_broken.py", "import no_such_mod\n")
    result = project.runpytest("-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "collection guard" not in result.stdout.str()


def test_off_when_paths_are_chosen(project):
    _write(project, "tests/build/test_x.py", _PASSING)
    assert project.runpytest("tests/test_a.py").ret == pytest.ExitCode.OK
    assert project.runpytest("tests", "tests/build").ret == pytest.ExitCode.OK  # not exactly tests
