"""pytest wiring for transformers' upstream test mixins (see upstream_harness.py): fetch, import, report.

At the end of the run a section lists what was collected / passed / skipped / failed under tests/upstream/, every
skip with its reason, and the stand-ins in use for the modules transformers' sdist does not ship. A skip that
upstream_skips.py does not document fails the run (exit status 1), so that a new skip (e.g. from a new transformers
release's mixins) is reviewed rather than passing unnoticed.
"""

import sys
from pathlib import Path

import pytest


# pytest's default (prepend) import mode puts this folder on sys.path before importing this file; other modes do
# not, and the harness and the test modules import their helpers by bare module name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import upstream_harness  # noqa: E402
from upstream_skips import explain_skip  # noqa: E402


# The stand-in sources are copied into the cache as modules of the `tests` package; they are not test files here.
collect_ignore = ["stand_ins"]

UPSTREAM_DIR = Path(__file__).resolve().parent
upstream_harness.prepare()

_collected: list[str] = []
_outcomes: dict[str, str] = {}
_skip_reasons: dict[str, str] = {}
_module_skips: dict[str, str] = {}


def _is_ours(path) -> bool:
    try:
        Path(str(path)).resolve().relative_to(UPSTREAM_DIR)
    except ValueError:
        return False
    return True


def pytest_collection_finish(session):
    """Remember which collected (and selected) items are upstream-conformance tests."""
    _collected.extend(item.nodeid for item in session.items if _is_ours(item.path))


def pytest_collectreport(report):
    """Remember test modules that skipped themselves at import (upstream mixins unavailable)."""
    if report.skipped and _is_ours(report.fspath):
        _module_skips[report.nodeid] = _reason(report)


def pytest_runtest_logreport(report):
    """Fold setup / call / teardown reports into one outcome per test."""
    if not _is_ours(report.fspath):
        return
    previous = _outcomes.get(report.nodeid)
    if previous in ("failed", "error"):
        return  # a failure (of the test or of any of its subtests) is final
    if report.failed:
        _outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
    elif report.skipped:
        _outcomes[report.nodeid] = "skipped"
        _skip_reasons[report.nodeid] = _reason(report)
    elif report.when == "call" and previous is None:
        _outcomes[report.nodeid] = "passed"


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = longrepr[2]
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _undocumented_skips() -> list[str]:
    return sorted(nodeid for nodeid in _skip_reasons if not explain_skip(nodeid))


def pytest_sessionfinish(session, exitstatus):
    """Fail an otherwise successful run that has undocumented skips (the terminal summary lists them)."""
    if exitstatus == pytest.ExitCode.OK and _undocumented_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the upstream-conformance counts, the skips with reasons, and the stand-ins in use."""
    write = terminalreporter.write_line
    state = upstream_harness.STATE
    terminalreporter.section("mask2former-dinov3: transformers upstream conformance (tests/upstream)")
    if not state.attempted:
        return
    if not state.available:
        write(f"UPSTREAM TESTS SKIPPED: {state.reason}")
    else:
        write(f"transformers {upstream_harness.TRANSFORMERS_VERSION} test mixins: {state.source}")
        write("stand-ins in use for modules the sdist does not ship:")
        for line in state.stand_ins:
            write(f"  - {line}")
    counts = {name: 0 for name in ("passed", "skipped", "failed", "error")}
    for outcome in _outcomes.values():
        counts[outcome] += 1
    not_run = len([nodeid for nodeid in _collected if nodeid not in _outcomes])
    write(
        f"upstream tests: {len(_collected)} collected, {counts['passed']} passed, {counts['skipped']} skipped, "
        f"{counts['failed']} failed, {counts['error']} errors" + (f", {not_run} not run" if not_run else "")
        + " (one outcome per test; pytest's own tally also counts skipped subtests)"
    )
    for nodeid, reason in sorted(_module_skips.items()):
        write(f"  module skipped: {nodeid}" + ("" if reason == state.reason else f": {reason}"))
    documented = {nodeid: explain_skip(nodeid) for nodeid in _skip_reasons}
    if _skip_reasons:
        write("skipped upstream tests, with the skip message and why the skip is allowed (upstream_skips.py):")
        for nodeid in sorted(nodeid for nodeid, why in documented.items() if why):
            write(f"  - {nodeid}: {_skip_reasons[nodeid]}  [{documented[nodeid]}]")
    undocumented = _undocumented_skips()
    if undocumented:
        write(
            f"SKIPS NOT DOCUMENTED in tests/upstream/upstream_skips.py ({len(undocumented)}), review them "
            "(they fail the run: document a skip that cannot apply, fix the harness or the model otherwise):"
        )
        for nodeid in undocumented:
            write(f"  - {nodeid}: {_skip_reasons[nodeid]}")
