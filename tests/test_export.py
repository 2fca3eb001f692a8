"""ONNX export: onnxruntime matches torch (fp32) for ViT and ConvNeXt, at two batch sizes; processor post-processes."""

import numpy as np
import pytest
import torch

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.export import OnnxOutputs, export_onnx

from tiny_configs import tiny_config


ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_onnxruntime_matches_torch(backbone, tmp_path):
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(backbone)).eval()
    path = export_onnx(model, tmp_path / "model.onnx", height=64, width=96)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["class_queries_logits", "masks_queries_logits"]
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 64, 96)
        with torch.no_grad():
            expected = model(pixel_values=pixels)  # the fast units: also checks they equal the exported upstream ones
        classes, masks = session.run(None, {"pixel_values": pixels.numpy()})
        assert masks.shape == tuple(expected.masks_queries_logits.shape)
        np.testing.assert_allclose(classes, expected.class_queries_logits.numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(masks, expected.masks_queries_logits.numpy(), atol=1e-3, rtol=0)

    processor = Mask2FormerDINOv3ImageProcessor()
    ours = processor.post_process_semantic_segmentation(OnnxOutputs(classes, masks), target_sizes=[(64, 96)] * 3)
    theirs = processor.post_process_semantic_segmentation(expected, target_sizes=[(64, 96)] * 3)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
