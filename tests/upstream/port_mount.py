"""Mounts the upstream port (`upstream/transformers/`) into the installed transformers, without copying any code.

`mount()` adds the port's `src/transformers/models` folder to the search path of the `transformers.models` package,
so that `import transformers.models.mask2former_dinov3` imports the port's own files (as it would in a transformers
checkout with the PR applied), and the port's `tests/models` folder to a `tests.models` package next to the sdist's
common test files (`upstream_harness`), so that its test file's relative imports (`from ...test_modeling_common`)
resolve. `port_auto_mappings()` gives, for one test, the auto-mapping entries that `upstream/transformers.patch` adds
in-tree, in place of the package's own registration of the same model type (public APIs only).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path
from unittest import mock

import transformers.models
from transformers import AutoConfig, AutoModel, AutoModelForUniversalSegmentation
from transformers import conversion_mapping
from transformers.models.auto import configuration_auto, modeling_auto


REPO_ROOT = Path(__file__).resolve().parents[2]
PORT_ROOT = REPO_ROOT / "upstream" / "transformers"
PORT_MODELS = PORT_ROOT / "src" / "transformers" / "models"
PORT_TESTS = PORT_ROOT / "tests" / "models"
MODEL_TYPE = "mask2former_dinov3"
PORT_TEST_MODULE = f"tests.models.{MODEL_TYPE}.test_modeling_{MODEL_TYPE}"

# What upstream/transformers.patch adds to transformers' auto mappings.
PORT_MAPPING_NAMES = {
    (configuration_auto, "CONFIG_MAPPING_NAMES"): {MODEL_TYPE: "Mask2FormerDinov3Config"},
    (modeling_auto, "MODEL_MAPPING_NAMES"): {MODEL_TYPE: "Mask2FormerDinov3Model"},
    (modeling_auto, "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES"): {
        MODEL_TYPE: "Mask2FormerDinov3ForUniversalSegmentation"
    },
}


def mount_model() -> None:
    """Make `import transformers.models.mask2former_dinov3` import the port's files."""
    if str(PORT_MODELS) not in transformers.models.__path__:
        transformers.models.__path__.append(str(PORT_MODELS))


def mount() -> None:
    """Make `transformers.models.mask2former_dinov3` the port, and its test package importable under `tests.models`.

    Call after `upstream_harness.prepare()` (which makes `tests` the sdist's test package).
    """
    mount_model()
    import tests

    models = sys.modules.get("tests.models")
    if models is None:
        models = types.ModuleType("tests.models")
        models.__path__ = []
        sys.modules["tests.models"] = models
        tests.models = models
    if str(PORT_TESTS) not in models.__path__:
        models.__path__.append(str(PORT_TESTS))


@contextlib.contextmanager
def port_auto_mappings():
    """The port's auto-mapping entries in place of the package's registration of the same model type, for one test.

    Public APIs only: the `*_MAPPING_NAMES` tables are patched as `upstream/transformers.patch` edits them, and the
    port's classes are registered with `AutoConfig.register` / `Auto*.register(exist_ok=True)`, which take precedence
    over those tables as the package's own registration did; the package's config is registered again afterwards.
    """
    port = importlib.import_module(f"transformers.models.{MODEL_TYPE}")
    try:
        package_config = configuration_auto.CONFIG_MAPPING[MODEL_TYPE]  # registered by `import mask2former_dinov3`
    except KeyError:
        package_config = None
    with contextlib.ExitStack() as stack:
        for (module, table), entries in PORT_MAPPING_NAMES.items():
            stack.enter_context(mock.patch.dict(getattr(module, table), entries))
        AutoConfig.register(MODEL_TYPE, port.Mask2FormerDinov3Config, exist_ok=True)
        AutoModel.register(port.Mask2FormerDinov3Config, port.Mask2FormerDinov3Model, exist_ok=True)
        AutoModelForUniversalSegmentation.register(
            port.Mask2FormerDinov3Config, port.Mask2FormerDinov3ForUniversalSegmentation, exist_ok=True
        )
        if package_config is not None and package_config is not port.Mask2FormerDinov3Config:
            stack.callback(AutoConfig.register, MODEL_TYPE, package_config, exist_ok=True)
        # The package's renamings of its 0.3.0 checkpoint keys are registered for the same model type; the PR adds none.
        package_renamings = conversion_mapping.get_checkpoint_conversion_mapping(MODEL_TYPE)
        if package_renamings is not None:
            conversion_mapping.register_checkpoint_conversion_mapping(MODEL_TYPE, [], overwrite=True)
            stack.callback(
                conversion_mapping.register_checkpoint_conversion_mapping, MODEL_TYPE, package_renamings, overwrite=True
            )
        yield
