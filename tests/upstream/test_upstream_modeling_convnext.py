"""transformers' ModelTesterMixin and ConfigTester on Mask2FormerDINOv3 with a DINOv3 ConvNeXt backbone."""

import unittest

import pytest
import upstream_harness


if not upstream_harness.prepare().available:
    pytest.skip(upstream_harness.STATE.reason, allow_module_level=True)

from tests.test_modeling_common import ModelTesterMixin  # noqa: E402
from upstream_testers import Mask2FormerDINOv3ModelTestMixin  # noqa: E402


class Mask2FormerDINOv3ConvNextModelTest(Mask2FormerDINOv3ModelTestMixin, ModelTesterMixin, unittest.TestCase):
    """Common model tests for `Mask2FormerDINOv3Model` / `...ForUniversalSegmentation` on a tiny DINOv3 ConvNeXt."""

    backbone = "convnext"
