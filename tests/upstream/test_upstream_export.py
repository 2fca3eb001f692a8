"""`torch.export` of Mask2FormerDINOv3 (stands in for upstream's ExportTesterMixin, which the sdist lacks).

Upstream EoMT-DINOv3 sets `test_torch_exportable = False` ("data-dependent control flow in segmentation head");
Mask2FormerDINOv3 must export, for both backbone families, and the exported program must reproduce eager outputs.
"""

import copy
import unittest

import pytest
import torch
import upstream_harness


if not upstream_harness.prepare().available:
    pytest.skip(upstream_harness.STATE.reason, allow_module_level=True)

from tests.test_modeling_common import floats_tensor  # noqa: E402
from upstream_testers import Mask2FormerDINOv3ModelTester  # noqa: E402

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3Model  # noqa: E402


OUTPUT_KEYS = (
    "class_queries_logits",
    "masks_queries_logits",
    "encoder_last_hidden_state",
    "pixel_decoder_last_hidden_state",
    "transformer_decoder_last_hidden_state",
)


class Mask2FormerDINOv3ExportTest(unittest.TestCase):
    """Export in eval mode with `torch.export.export`, then compare the exported program with eager on new inputs."""

    def _config(self, backbone, **overrides):
        config = Mask2FormerDINOv3ModelTester(self, backbone=backbone).get_config()
        for key, value in overrides.items():
            setattr(config, key, value)
        return config

    def _check_export(self, model_class, config, keys):
        torch.manual_seed(0)
        model = model_class(copy.deepcopy(config)).eval()
        example = floats_tensor([2, 3, 64, 96])
        with torch.no_grad():
            exported = torch.export.export(model, args=(example,))
        self.assertIsInstance(exported, torch.export.ExportedProgram)
        # Fresh values of the exported shape: catches inputs baked in as constants, not just a replayed trace.
        for pixel_values in (example, floats_tensor([2, 3, 64, 96])):
            with torch.no_grad():
                expected = model(pixel_values)
                actual = exported.module()(pixel_values)
            for key in keys:
                expected_value, actual_value = expected[key], actual[key]
                if isinstance(expected_value, (tuple, list)):
                    expected_value, actual_value = expected_value[-1], actual_value[-1]
                torch.testing.assert_close(actual_value, expected_value, rtol=1e-5, atol=1e-5, msg=key)
        return exported

    def test_export_universal_segmentation_vit(self):
        """ViT backbone (one tapped block, ViTDet simple pyramid)."""
        self._check_export(Mask2FormerDINOv3ForUniversalSegmentation, self._config("vit"), OUTPUT_KEYS)

    def test_export_universal_segmentation_vit_four_taps(self):
        """ViT backbone tapping four blocks (the default for released DINOv3 ViTs)."""
        tester = Mask2FormerDINOv3ModelTester(self, backbone="vit", num_hidden_layers=4)
        config = tester.get_config()
        self.assertEqual(config.tapped_layers, [0, 1, 2, 3])
        self._check_export(Mask2FormerDINOv3ForUniversalSegmentation, config, OUTPUT_KEYS)

    def test_export_universal_segmentation_convnext(self):
        """ConvNeXt backbone (its four stages feed the pixel decoder directly)."""
        self._check_export(Mask2FormerDINOv3ForUniversalSegmentation, self._config("convnext"), OUTPUT_KEYS)

    def test_export_base_model_convnext(self):
        """The base model exports too (its mask logits come per decoder layer; the last is compared)."""
        keys = ("masks_queries_logits", "encoder_last_hidden_state", "pixel_decoder_last_hidden_state")
        self._check_export(Mask2FormerDINOv3Model, self._config("convnext"), keys)
