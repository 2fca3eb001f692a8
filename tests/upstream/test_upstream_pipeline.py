"""The image-segmentation pipeline on tiny Mask2FormerDINOv3 models (both backbone families).

Stands in for `PipelineTesterMixin`, which cannot run here: it loads `hf-internal-testing/tiny-random-<Architecture>`
checkpoints from the Hub and `tests/pipelines/*` test classes, neither of which exists for this out-of-tree model.
"""

import unittest

import numpy as np
import pytest
import upstream_harness


if not upstream_harness.prepare().available:
    pytest.skip(upstream_harness.STATE.reason, allow_module_level=True)

from PIL import Image  # noqa: E402
from transformers import pipeline  # noqa: E402
from upstream_testers import Mask2FormerDINOv3ModelTester  # noqa: E402

from mask2former_dinov3 import (  # noqa: E402
    Mask2FormerDINOv3ForUniversalSegmentation,
    Mask2FormerDINOv3ImageProcessor,
)


class Mask2FormerDINOv3PipelineTest(unittest.TestCase):
    """`pipeline("image-segmentation")` runs instance and semantic segmentation and maps masks to the input size."""

    def _pipeline(self, backbone):
        config = Mask2FormerDINOv3ModelTester(self, backbone=backbone).get_config()
        model = Mask2FormerDINOv3ForUniversalSegmentation(config).eval()
        processor = Mask2FormerDINOv3ImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
        return pipeline("image-segmentation", model=model, image_processor=processor), config

    def _check(self, backbone):
        segmenter, config = self._pipeline(backbone)
        # An odd size: the processor must pad it to multiples of 32 and the masks must come back at 70 x 50.
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))

        instances = segmenter(image, subtask="instance", threshold=0.0)
        self.assertEqual(len(instances), config.num_queries)
        for segment in instances:
            self.assertIn(segment["label"], config.id2label.values())
            self.assertEqual(segment["mask"].size, image.size)
            self.assertTrue(0.0 <= segment["score"] <= 1.0)

        semantic = segmenter(image, subtask="semantic")
        self.assertGreaterEqual(len(semantic), 1)
        labels = [segment["label"] for segment in semantic]
        self.assertEqual(len(labels), len(set(labels)))
        coverage = np.zeros((image.size[1], image.size[0]), dtype=int)
        for segment in semantic:
            self.assertEqual(segment["mask"].size, image.size)
            coverage += np.array(segment["mask"]) > 0
        # Semantic segmentation labels every pixel exactly once.
        self.assertTrue((coverage == 1).all())

    def test_image_segmentation_pipeline_vit(self):
        """ViT backbone."""
        self._check("vit")

    def test_image_segmentation_pipeline_convnext(self):
        """ConvNeXt backbone."""
        self._check("convnext")
