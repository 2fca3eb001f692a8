"""Makes transformers' own common test mixins importable as the package `tests`, without committing their code.

transformers ships `tests/test_modeling_common.py` (`ModelTesterMixin`), `tests/test_configuration_common.py`
(`ConfigTester`), `tests/test_image_processing_common.py` and friends in its source distribution on PyPI, but not in
the wheel. `prepare()` fetches the sdist of exactly the installed transformers version with pip, extracts only those
mixin files into a git-ignored cache folder (`<repo>/.cache/transformers-tests-<version>/tests/`), adds the stand-ins
for the modules the sdist lacks (see `STAND_INS`), and puts the cache folder first on `sys.path` so that
`import tests.test_modeling_common` finds the sdist package and never our own `tests/` folder (which is not a package).

The result is memoised in `STATE`: the conftest calls `prepare()` once per session and the test modules read
`STATE` to skip themselves, with the reason printed, when the sdist could not be had (no network, pip failure).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import transformers


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TRANSFORMERS_VERSION = transformers.__version__
# The cache's parent folder can be moved (e.g. to a CI cache) with this variable; by default <repo>/.cache.
CACHE_ENV_VAR = "MASK2FORMER_DINOV3_TEST_CACHE"
CACHE_DIR = Path(os.environ.get(CACHE_ENV_VAR) or REPO_ROOT / ".cache") / f"transformers-tests-{TRANSFORMERS_VERSION}"
# A local copy of the sdist (e.g. for offline machines) can be named here instead of downloading it.
SDIST_ENV_VAR = "MASK2FORMER_DINOV3_TRANSFORMERS_SDIST"
DOWNLOAD_TIMEOUT_S = 300

# The mixin files the issue names; nothing else from the sdist is extracted. The pipeline and training mixins are
# extracted but not used: PipelineTesterMixin needs Hub tiny checkpoints and tests/pipelines/* (see
# test_upstream_pipeline.py), and in 5.23 TrainingTesterMixin's image batch builder is an unimplemented stub.
SDIST_TEST_FILES = (
    "tests/test_modeling_common.py",
    "tests/test_configuration_common.py",
    "tests/test_image_processing_common.py",
    "tests/test_pipeline_mixin.py",
    "tests/test_training_mixin.py",
)

# Stand-ins for what the sdist mixins import but the sdist does not contain: our file -> its place in the cache.
STAND_INS = {
    "stand_ins/generation_test_utils.py": "tests/generation/test_utils.py",
    "stand_ins/exporters_test_export.py": "tests/exporters/test_export.py",
    "stand_ins/utils_test_configuration_utils.py": "tests/utils/test_configuration_utils.py",
    "stand_ins/fetch_hub_objects_for_ci.py": "utils/fetch_hub_objects_for_ci.py",
}
STAND_IN_SUMMARY = (
    "tests.generation.test_utils.GenerationTesterMixin (empty: generation does not apply to a vision model)",
    "tests.exporters.test_export.ExportTesterMixin (empty: our own torch.export test runs instead)",
    "tests.utils.test_configuration_utils.config_common_kwargs (non-default values for every PreTrainedConfig field)",
    "utils/fetch_hub_objects_for_ci.url_to_local_path (identity: no pre-fetched Hub fixtures)",
)
# Package markers: the sdist ships `tests/` without them, but the mixins use relative imports.
PACKAGE_INITS = (
    "tests/__init__.py",
    "tests/generation/__init__.py",
    "tests/exporters/__init__.py",
    "tests/utils/__init__.py",
)
COMPLETE_MARKER = ".extracted"


@dataclass
class UpstreamState:
    """Outcome of `prepare()`: whether the upstream mixins are importable, from where, or why not."""

    attempted: bool = False
    available: bool = False
    reason: str = "prepare() has not run"
    cache_dir: Path = CACHE_DIR
    source: str = ""
    stand_ins: tuple[str, ...] = field(default_factory=tuple)


STATE = UpstreamState()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    os.replace(tmp, path)


def _download_sdist(target_dir: Path) -> Path:
    """`pip download` the sdist of the installed transformers version into `target_dir`; return the archive."""
    local = os.environ.get(SDIST_ENV_VAR)
    if local:
        archive = Path(local)
        if not archive.is_file():
            raise RuntimeError(f"{SDIST_ENV_VAR}={local} is not a file")
        return archive
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
        "--quiet", f"transformers=={TRANSFORMERS_VERSION}", "-d", str(target_dir),
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"`{' '.join(cmd)}` timed out after {DOWNLOAD_TIMEOUT_S}s") from err
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {' | '.join(tail)}")
    archives = sorted(target_dir.glob(f"transformers-{TRANSFORMERS_VERSION}.tar.gz"))
    if not archives:
        raise RuntimeError(f"pip download left no transformers-{TRANSFORMERS_VERSION}.tar.gz in {target_dir}")
    return archives[0]


def _extract_mixins(archive: Path, staging: Path) -> None:
    """Extract only `SDIST_TEST_FILES` (and the licence) from the sdist into `staging`."""
    prefix = f"transformers-{TRANSFORMERS_VERSION}/"
    wanted = {prefix + name: name for name in (*SDIST_TEST_FILES, "LICENSE")}
    found = set()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            relative = wanted.get(member.name)
            if relative is None or not member.isfile():
                continue
            data = tar.extractfile(member).read()
            _write_atomic(staging / relative, data)
            found.add(relative)
    missing = sorted(set(wanted.values()) - found - {"LICENSE"})
    if missing:
        raise RuntimeError(f"the transformers {TRANSFORMERS_VERSION} sdist lacks {', '.join(missing)}")
    (staging / COMPLETE_MARKER).write_text(hashlib.sha256(archive.read_bytes()).hexdigest() + "\n")


def _ensure_extracted() -> str:
    """Fill `CACHE_DIR` with the sdist mixins unless an earlier run did; return where they came from."""
    if (CACHE_DIR / COMPLETE_MARKER).is_file():
        return f"cached in {CACHE_DIR}"
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent, prefix=".download-") as tmp:
        archive = _download_sdist(Path(tmp))
        staging = Path(tmp) / "staging"
        _extract_mixins(archive, staging)
        try:
            # Rename into place in one step, so a concurrent session sees either nothing or a complete folder.
            os.rename(staging, CACHE_DIR)
        except OSError:
            if not (CACHE_DIR / COMPLETE_MARKER).is_file():
                # A half-written folder from an interrupted run: replace it.
                shutil.rmtree(CACHE_DIR, ignore_errors=True)
                os.rename(staging, CACHE_DIR)
    return f"pip download of transformers=={TRANSFORMERS_VERSION} (sdist), extracted to {CACHE_DIR}"


def _install_stand_ins() -> None:
    """(Re)write the stand-in modules and package markers into the cache, from the files next to this module."""
    for ours, theirs in STAND_INS.items():
        _write_atomic(CACHE_DIR / theirs, (HERE / ours).read_bytes())
    for init in PACKAGE_INITS:
        _write_atomic(CACHE_DIR / init, b'"""Package marker written by mask2former-dinov3\'s test harness."""\n')


def _put_cache_on_sys_path() -> None:
    """Make `import tests` resolve to the cached sdist package, whatever `tests` was before."""
    root = str(CACHE_DIR)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    existing = sys.modules.get("tests")
    if existing is not None and Path(getattr(existing, "__file__", "") or "").parent != CACHE_DIR / "tests":
        # e.g. our own (non-package) tests/ folder picked up earlier as a namespace package: drop it and its children.
        for name in [n for n in sys.modules if n == "tests" or n.startswith("tests.")]:
            del sys.modules[name]


def sdist_file(name: str) -> Path:
    """The sdist's file `name` (e.g. "pyproject.toml", which holds transformers' ruff settings), cached next to the
    mixins; downloads the sdist once more if an earlier run did not extract it. Raises `RuntimeError` if unavailable."""
    cached = CACHE_DIR / "sdist" / name
    if cached.is_file():
        return cached
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent, prefix=".download-") as tmp:
        archive = _download_sdist(Path(tmp))
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(f"transformers-{TRANSFORMERS_VERSION}/{name}")
            if member is None:
                raise RuntimeError(f"the transformers {TRANSFORMERS_VERSION} sdist has no {name}")
            _write_atomic(cached, member.read())
    return cached


def prepare() -> UpstreamState:
    """Fetch (or reuse) the upstream mixins and make them importable; never raises, records the outcome in `STATE`."""
    if STATE.attempted:
        return STATE
    STATE.attempted = True
    try:
        STATE.source = _ensure_extracted()
        _install_stand_ins()
        _put_cache_on_sys_path()
        import tests.test_modeling_common  # noqa: F401  (fail here, once, rather than in every test module)
    except Exception as err:  # noqa: BLE001  (any failure means: report the upstream tests as skipped, with why)
        STATE.available = False
        STATE.reason = (
            f"transformers' upstream test mixins are unavailable for transformers {TRANSFORMERS_VERSION}: "
            f"{type(err).__name__}: {err}"
        )
        return STATE
    STATE.available = True
    STATE.reason = ""
    STATE.stand_ins = STAND_IN_SUMMARY
    return STATE
