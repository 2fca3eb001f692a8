"""ONNX export: one file with dynamic batch, height and width; onnxruntime matches torch (fp32) for ViT and ConvNeXt
at several sizes and batch sizes; the processor post-processes its outputs."""

import numpy as np
import pytest
import torch

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.export import OnnxOutputs, _SymbolicSizes, export_onnx

from tiny_configs import tiny_config


ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# (batch, height, width): the traced example's size, the same pixel count transposed (a file with the example's
# sizes baked in gave wrong masks there), and another pixel count (where it failed to run).
RUNS = [(1, 64, 96), (3, 64, 96), (3, 96, 64), (2, 128, 64)]


@pytest.mark.slow  # ONNX export: about a minute per model
@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_onnxruntime_matches_torch(backbone, tmp_path):
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(backbone)).eval()
    path = export_onnx(model, tmp_path / "model.onnx", height=64, width=96)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["class_queries_logits", "masks_queries_logits"]
    pixel_shape = session.get_inputs()[0].shape
    assert pixel_shape[1] == 3 and all(isinstance(d, str) for d in pixel_shape[:1] + pixel_shape[2:])  # dynamic
    for batch, height, width in RUNS:
        pixels = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(pixel_values=pixels)  # the fast units: also checks they equal the exported upstream ones
        classes, masks = session.run(None, {"pixel_values": pixels.numpy()})
        assert masks.shape == tuple(expected.masks_queries_logits.shape) == (batch, 5, height // 4, width // 4)
        np.testing.assert_allclose(classes, expected.class_queries_logits.numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(masks, expected.masks_queries_logits.numpy(), atol=1e-3, rtol=0)

    processor = Mask2FormerDINOv3ImageProcessor()
    target_sizes = [(height, width)] * batch
    ours = processor.post_process_semantic_segmentation(OnnxOutputs(classes, masks), target_sizes=target_sizes)
    theirs = processor.post_process_semantic_segmentation(expected, target_sizes=target_sizes)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_export_mode_keeps_upstreams_pixel_centres_symbolic_and_equal():
    """Upstream's pixel centres `linspace(0.5, n - 0.5, n)`, exported under the export mode with a dynamic `n`, equal
    eager `linspace` at every size (a size of 1 included); without the mode `n` would be fixed at the example's."""

    class Centres(torch.nn.Module):
        def forward(self, x):
            n = x.shape[-1]
            with _SymbolicSizes():
                return torch.linspace(0.5, n - 0.5, n)

    n = torch.export.Dim("n", min=1, max=1024)
    program = torch.export.export(Centres(), (torch.zeros(8),), dynamic_shapes=({0: n},)).module()
    for size in (1, 2, 3, 16, 125, 256):
        assert torch.equal(program(torch.zeros(size)), torch.linspace(0.5, size - 0.5, size)), size


@pytest.mark.parametrize("kwargs", [dict(height=32, width=64), dict(height=64, width=80), dict(opset=17)])
def test_export_rejects_bad_arguments(kwargs, tmp_path):
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit"))
    with pytest.raises(ValueError):
        export_onnx(model, tmp_path / "model.onnx", **kwargs)
    assert not (tmp_path / "model.onnx").exists()
