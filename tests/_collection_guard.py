"""pytest plugin: fail a default run when a test file under ``testpaths`` collected nothing.

pytest skips some folders without a word (``norecursedirs`` holds ``build``, ``dist``,
``.*``, ...; ``--ignore`` and ``collect_ignore`` do the same), so a whole test file can
drop out of CI unnoticed. When pytest runs the default test paths (no path arguments, or
exactly the ``testpaths`` folders), this plugin lists every file under them that matches
``python_files`` and fails the run, naming the files, if one of them contributed no test
item. Items count before ``-m``/``-k`` deselection (a file of ``slow`` tests is fine), and
a module skipped with a reason (``pytest.importorskip``, ``pytest.skip(...,
allow_module_level=True)``) or one that failed to import counts as seen: pytest reports
both. With ``--lf`` (which leaves out files on purpose) the guard is off.

Registered from ``tests/conftest.py`` with ``pytest_plugins``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

_SEEN_KEY = pytest.StashKey[set[Path]]()
_MISSING_KEY = pytest.StashKey[list[Path]]()


def _default_test_paths(config: pytest.Config) -> list[Path] | None:
    """The ``testpaths`` folders if this run collects exactly them, else ``None``."""
    testpaths = [(config.rootpath / p).resolve() for p in config.getini("testpaths")]
    if not testpaths or config.getoption("lf", False):
        return None
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        return testpaths
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        args = {(config.invocation_params.dir / a).resolve() for a in config.args}
        if args == set(testpaths):
            return testpaths
    return None


def _test_files(config: pytest.Config, roots: list[Path]) -> list[Path]:
    """Every file under ``roots`` whose name matches the ``python_files`` patterns."""
    patterns = config.getini("python_files")
    return sorted(
        path.resolve()
        for root in roots
        for path in root.rglob("*.py")
        if any(fnmatch.fnmatch(path.name, pat) for pat in patterns)
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SEEN_KEY] = set()


def pytest_itemcollected(item: pytest.Item) -> None:
    item.config.stash[_SEEN_KEY].add(item.path.resolve())


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    # NOTE: a module-level skip or an import error yields a skipped / failed report for the
    # module (or the folder, from its conftest) and no items; pytest prints the report, so
    # the files are not silently missing.
    if report.outcome in ("skipped", "failed") and isinstance(
        collector, (pytest.Module, pytest.Directory)
    ):
        collector.config.stash[_SEEN_KEY].add(collector.path.resolve())
    return report


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    roots = _default_test_paths(config)
    if roots is None:
        return
    seen = config.stash[_SEEN_KEY]
    missing = [
        path
        for path in _test_files(config, roots)
        if path not in seen and seen.isdisjoint(path.parents)
    ]
    config.stash[_MISSING_KEY] = missing


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    missing = config.stash.get(_MISSING_KEY, [])
    if not missing:
        return
    terminalreporter.section("collection guard", sep="=", red=True, bold=True)
    terminalreporter.write_line(
        f"{len(missing)} test file(s) under testpaths contributed no test item "
        "(skipped by norecursedirs, --ignore, collect_ignore, or holding no tests):",
        red=True,
    )
    for path in missing:
        terminalreporter.write_line(f"  {path.relative_to(config.rootpath.resolve())}", red=True)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(_MISSING_KEY, []) and exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
