"""Check the upstream port against a transformers source tree with the repository tools.

    python upstream/check.py --tree /tmp/transformers-5.25.0

The tree is a release's source (`pip download --no-binary :all: transformers==X`) with transformers' repository tools
copied in, committed to git on a branch named `main` (see UPSTREAMING.md). It must be clean: the script applies
`upstream/mask2former_fixes/*.patch` and `upstream/transformers.patch`, copies the port's new files in, runs the
modular converter and compares its output with the checked-in files byte for byte, runs transformers' consistency
checks, ruff (with the tree's settings) and mlinter, and restores the tree (`git reset --hard`, `git clean -fd`)
afterwards. A check counts as failed only where its output names the new model: several checks already report
findings on an untouched tree. Exit status 0 when nothing names the new model, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
PORT = HERE / "transformers"
MODEL_FOLDER = Path("src/transformers/models/mask2former_dinov3")
GENERATED = ("configuration_mask2former_dinov3.py", "modeling_mask2former_dinov3.py")
NEW_FOLDERS = (str(MODEL_FOLDER), "tests/models/mask2former_dinov3")
NAMES_THE_MODEL = re.compile(r"mask2former_dinov3|mask2former-dinov3|Mask2FormerDinov3", re.IGNORECASE)
REPO_CHECKS = (
    ["utils/check_modular_conversion.py", "--files", str(MODEL_FOLDER / "modular_mask2former_dinov3.py")],
    ["utils/check_copies.py"],
    ["utils/check_config_attributes.py"],
    ["utils/check_config_docstrings.py"],
    ["utils/check_docstrings.py"],
    ["utils/check_dummies.py"],
    ["utils/check_doc_toc.py"],
    ["utils/add_dates.py", "--check-only"],
    ["utils/custom_init_isort.py", "--check_only"],
    ["utils/sort_auto_mappings.py", "--check_only"],
)


def _run(cmd: list[str], tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "USE_HUB_KERNELS": "NO", "PYTHONPATH": str(tree / "src")}
    return subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=env)


def _lines_naming_the_model(output: str) -> list[str]:
    return [line for line in output.splitlines() if NAMES_THE_MODEL.search(line)]


def prepare(tree: Path) -> None:
    """Apply the Mask2Former fixes and the PR's edits, and copy the port's new files into `tree`."""
    for patch in [*sorted((HERE / "mask2former_fixes").glob("*.patch")), HERE / "transformers.patch"]:
        result = _run(["git", "apply", str(patch)], tree)
        if result.returncode:
            raise RuntimeError(f"{patch.name} does not apply to {tree}: {result.stderr.strip()}")
    for source in PORT.rglob("*"):
        if source.is_file() and "__pycache__" not in source.parts:
            target = tree / source.relative_to(PORT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def check(tree: Path, python: str) -> list[str]:
    """Every finding that names the new model, as `step: line`; empty when the port passes."""
    findings = []
    converter = _run(
        [python, "utils/modular_model_converter.py", "--files", str(MODEL_FOLDER / "modular_mask2former_dinov3.py")],
        tree,
    )
    if converter.returncode:
        findings.append(f"modular_model_converter: exit {converter.returncode}: {converter.stderr.strip()[-500:]}")
    for name in GENERATED:
        if not filecmp.cmp(tree / MODEL_FOLDER / name, PORT / MODEL_FOLDER / name, shallow=False):
            findings.append(f"modular_model_converter: {name} differs from the checked-in file")
    print("converter: regenerated files compared byte for byte", flush=True)
    for cmd in REPO_CHECKS:
        result = _run([python, *cmd], tree)
        named = _lines_naming_the_model(result.stdout + result.stderr)
        print(f"{' '.join(cmd)}: exit {result.returncode}, {len(named)} line(s) naming the new model", flush=True)
        findings += [f"{cmd[0]}: {line}" for line in named]
    ruff = shutil.which("ruff", path=str(Path(python).parent)) or shutil.which("ruff")
    if ruff is None:
        findings.append("ruff: not installed (pip install ruff==<the version transformers' setup.py pins>)")
    else:
        for cmd in (["check"], ["format", "--check"]):
            result = _run([ruff, *cmd, "--config", "pyproject.toml", *NEW_FOLDERS], tree)
            print(f"ruff {' '.join(cmd)}: exit {result.returncode}", flush=True)
            if result.returncode:
                findings.append(f"ruff {' '.join(cmd)}: {(result.stdout + result.stderr).strip()[-1000:]}")
    mlinter = shutil.which("mlinter", path=str(Path(python).parent)) or shutil.which("mlinter")
    if mlinter is None:
        findings.append("mlinter: not installed (pip install transformers-mlinter)")
    else:
        result = _run([mlinter, "--no-progress", str(MODEL_FOLDER)], tree)
        print(f"mlinter {MODEL_FOLDER}: exit {result.returncode}", flush=True)
        if result.returncode:
            findings.append(f"mlinter: {(result.stdout + result.stderr).strip()[-1000:]}")
    return findings


def main(argv: list[str] | None = None) -> int:
    """Command line: `--tree DIR` (required), `--python` (the interpreter with the tree's tools installed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, type=Path, help="a clean git checkout of transformers + tools")
    parser.add_argument("--python", default=sys.executable, help="python with libcst, ruff and mlinter installed")
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], tree)
    if status.returncode or not (tree / "utils" / "modular_model_converter.py").is_file():
        print(f"error: --tree {tree} is not a git checkout of transformers with the repository tools", file=sys.stderr)
        return 2
    if status.stdout.strip():
        print(f"error: --tree {tree} has uncommitted changes; commit or stash them first", file=sys.stderr)
        return 2
    try:
        prepare(tree)
        findings = check(tree, args.python)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        _run(["git", "reset", "--hard", "-q"], tree)
        _run(["git", "clean", "-fdq", "--", "src", "tests", "docs"], tree)
    for finding in findings:
        print(f"FINDING {finding}")
    print(f"{len(findings)} finding(s) naming the new model")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
