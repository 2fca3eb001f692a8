"""ONNX export: `mask2former-dinov3-export --format onnx MODEL_DIR OUT.onnx [--height 512 --width 512]`.

The file takes `pixel_values` (batch, 3, height, width) and returns `class_queries_logits` (batch, Q, L+1) and
`masks_queries_logits` (batch, Q, height/4, width/4). The batch is dynamic; height and width are fixed at export
(`--height`, `--width`, multiples of 32): Mask2Former's pixel decoder turns its feature-map sizes into Python
integers (spatial shapes, level offsets), which both of torch's exporters record as constants, so a file exported at
one size gives wrong results at another. Export one file per input size.

The model is exported with its upstream Mask2Former units (`use_upstream_units` on a copy: same weights, same
outputs): the faster units' `embedding_bag` gather and custom autograd function do not export.

Outputs can be post-processed by the model's image processor after wrapping them (`OnnxOutputs`).
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch


__all__ = ["OUTPUT_NAMES", "OnnxOutputs", "export_onnx", "main"]

OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits")


class _Logits(torch.nn.Module):
    """The model as a function of `pixel_values` returning the two logit tensors (what the ONNX graph holds)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        outputs = self.model(pixel_values=pixel_values)
        return outputs.class_queries_logits, outputs.masks_queries_logits


def OnnxOutputs(class_queries_logits, masks_queries_logits) -> SimpleNamespace:
    """onnxruntime's two arrays as an object the image processor's `post_process_*` methods accept."""
    return SimpleNamespace(
        class_queries_logits=torch.as_tensor(class_queries_logits),
        masks_queries_logits=torch.as_tensor(masks_queries_logits),
    )


def export_onnx(
    model, path: str | Path, height: int = 512, width: int = 512, opset: int = 17, dynamo: bool = False
) -> Path:
    """Export `model` (a Mask2FormerDINOv3ForUniversalSegmentation) to ONNX at `height` x `width`, dynamic batch.

    `dynamo=True` uses `torch.onnx.export(..., dynamo=True)` (same result, much slower to export); the default is
    the TorchScript exporter. The model itself is not modified.
    """
    from .fast_mask2former import use_upstream_units

    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of 32, got {height}x{width}")
    module = _Logits(use_upstream_units(copy.deepcopy(model)).float().eval())
    example = torch.zeros(2, 3, height, width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: the reason H/W are fixed
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                module, (example,), str(path), dynamo=True, opset_version=max(opset, 18),
                input_names=["pixel_values"], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"pixel_values": {0: batch}}, external_data=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["pixel_values"], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in ("pixel_values", *OUTPUT_NAMES)},
            )  # fmt: skip
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; user errors print one line on stderr and return 2."""
    parser = argparse.ArgumentParser(prog="mask2former-dinov3-export", description="Export a model to ONNX.")
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--dynamo", action="store_true", help="use torch's dynamo-based exporter")
    args = parser.parse_args(argv)
    if args.height % 32 or args.width % 32 or min(args.height, args.width) <= 0:
        print(f"mask2former-dinov3-export: error: --height/--width must be multiples of 32", file=sys.stderr)
        return 2
    if args.opset < 17:
        print("mask2former-dinov3-export: error: --opset must be at least 17", file=sys.stderr)
        return 2
    import transformers

    import mask2former_dinov3  # noqa: F401  (registers the model with the Auto classes)

    try:
        model = transformers.AutoModelForUniversalSegmentation.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        print(f"mask2former-dinov3-export: error: cannot load model {args.model}: {str(error).splitlines()[0]}",
              file=sys.stderr)  # fmt: skip
        return 2
    path = export_onnx(model, args.output, args.height, args.width, args.opset, args.dynamo)
    print(f"wrote {path} (input {args.height}x{args.width}, dynamic batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
