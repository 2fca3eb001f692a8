"""Suite-wide pytest checks: every mark on a collected test is registered in pytest.ini.

`--strict-markers` (pytest.ini) turns an unknown `@pytest.mark.<name>` into an error only when the mark is looked up
after pytest has configured itself. transformers' common test mixins (tests/upstream/) are imported while
tests/upstream/conftest.py loads, which for `pytest tests/upstream` happens before that, so their marks would pass
unchecked. This hook checks the marks of the collected tests themselves, whenever their modules were imported.
"""

import pytest


def _registered_marks(config) -> set[str]:
    """Names of the marks registered in pytest.ini and by pytest and its plugins (`name(args): help` lines)."""
    return {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}


def pytest_collection_modifyitems(config, items):
    """Fail the run, naming them, if collected tests carry marks that pytest.ini does not register."""
    registered = _registered_marks(config)
    unknown: dict[str, str] = {}
    for item in items:
        for mark in item.iter_markers():
            if mark.name not in registered:
                unknown.setdefault(mark.name, item.nodeid)
    if unknown:
        listing = "; ".join(f"{name} (e.g. on {nodeid})" for name, nodeid in sorted(unknown.items()))
        raise pytest.UsageError(
            f"unregistered pytest marks: {listing}. Register them under `markers` in pytest.ini (transformers' "
            "upstream test mixins may add marks in a new release)."
        )
