"""transformers' own checks on the upstream port: ruff with transformers' settings (always, from the installed
release's sdist), and, where a transformers source tree with the repository tools is at hand, `upstream/check.py`
(patches apply, the converter regenerates the checked-in files byte for byte, the consistency checks and mlinter
report nothing naming the new model). Without a tree that test skips and says how to run it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import upstream_harness


REPO_ROOT = Path(__file__).resolve().parents[2]
PORT = REPO_ROOT / "upstream" / "transformers"
TREE_ENV_VAR = "MASK2FORMER_DINOV3_TRANSFORMERS_TREE"
# Where the tree's tools (libcst, ruff, mlinter) are installed, if not in this interpreter.
TREE_PYTHON_ENV_VAR = "MASK2FORMER_DINOV3_TRANSFORMERS_TREE_PYTHON"


def _transformers_ruff_config() -> Path:
    try:
        pyproject = upstream_harness.sdist_file("pyproject.toml")
    except Exception as error:  # noqa: BLE001  (no network / pip failure: say why and skip)
        pytest.skip(f"transformers' pyproject.toml (ruff settings) is unavailable: {type(error).__name__}: {error}")
    # ruff reads `[tool.ruff]` only from a file named pyproject.toml.
    return pyproject


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_port_is_ruff_clean_with_transformers_settings(command):
    """`ruff check` / `ruff format --check` with the installed transformers release's settings on the port's files."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the `test` extra: pip install -e .[test])")
    result = subprocess.run(
        [ruff, *command, "--config", str(_transformers_ruff_config()), str(PORT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_port_passes_transformers_repository_checks():
    """`upstream/check.py --tree $MASK2FORMER_DINOV3_TRANSFORMERS_TREE` exits 0 (see UPSTREAMING.md)."""
    tree = os.environ.get(TREE_ENV_VAR)
    if not tree:
        pytest.skip(
            f"no transformers source tree with the repository tools: set {TREE_ENV_VAR} (and "
            f"{TREE_PYTHON_ENV_VAR} to a python with libcst, ruff and mlinter) to run upstream/check.py"
        )
    python = os.environ.get(TREE_PYTHON_ENV_VAR, sys.executable)
    result = subprocess.run(
        [python, str(REPO_ROOT / "upstream" / "check.py"), "--tree", tree, "--python", python],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
