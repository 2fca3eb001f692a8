"""Suite-wide pytest hooks: transformers' common test mixins (tests/upstream/) belong to the slow tier, and every mark
on a collected test is registered in pytest.ini.

The fast tier (`python -m pytest tests -m "not slow"`, CONTRIBUTING.md) leaves out tests marked `slow`: ours that start
a new interpreter, torchrun or a long training run, and every test under tests/upstream/ (hundreds of conformance
tests from transformers' mixins, about 8 minutes on 2 cores; the package's own tests cover the same modules in the
fast tier). CI runs everything.

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
    """Mark the upstream mixin tests slow; fail the run, naming them, if collected tests carry marks that pytest.ini
    does not register."""
    for item in items:
        if item.nodeid.startswith("tests/upstream/"):
            item.add_marker(pytest.mark.slow)
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
