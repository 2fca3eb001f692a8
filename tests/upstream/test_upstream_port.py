"""The port's own test file (`upstream/transformers/tests/models/mask2former_dinov3/`), run against the installed
transformers with the port mounted as `transformers.models.mask2former_dinov3` (see port_mount.py).

Its test classes run transformers' `ModelTesterMixin` (and `ConfigTester`) on the port with a DINOv3 ViT and a DINOv3
ConvNeXt backbone, `test_model_outputs_equivalence` included; skips are checked against upstream_skips.py as for the
package's own upstream tests.
"""

import importlib

import pytest
import upstream_harness


if not upstream_harness.prepare().available:
    pytest.skip(upstream_harness.STATE.reason, allow_module_level=True)

import port_mount  # noqa: E402


port_mount.mount()
_port_tests = importlib.import_module(port_mount.PORT_TEST_MODULE)

Mask2FormerDinov3PortViTModelTest = _port_tests.Mask2FormerDinov3ViTModelTest
Mask2FormerDinov3PortConvNextModelTest = _port_tests.Mask2FormerDinov3ConvNextModelTest


@pytest.fixture(autouse=True)
def _port_auto_mappings():
    """The auto-mapping entries the PR adds, for the duration of each test."""
    with port_mount.port_auto_mappings():
        yield
