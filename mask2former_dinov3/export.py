"""ONNX export: `mask2former-dinov3-export --format onnx MODEL_DIR OUT.onnx [--height 512 --width 512]`.

One file for every input size: it takes `pixel_values` (batch, 3, height, width) with a dynamic batch and a dynamic
height and width (any multiples of 32), and returns `class_queries_logits` (batch, Q, L+1) and `masks_queries_logits`
(batch, Q, height/4, width/4). `--height`/`--width` only set the example input the exporter traces (multiples of 32,
at least 64: torch.export specialises a size of 1 at the coarsest level).

The exporter is torch's dynamo-based one (`torch.onnx.export(..., dynamo=True)` with `torch.export.Dim` sizes that
are multiples of 32), opset 18 or later (its conversion to opset 17 gives a graph onnxruntime rejects). Mask2Former's
pixel decoder turns feature-map sizes into Python integers; torch.export keeps them symbolic except at two calls,
which would fix the example's size into the graph:

* `Mask2FormerPixelDecoderEncoderOnly.get_reference_points` calls `torch.linspace(0.5, h - 0.5, h)`, whose `steps`
  is a plain `int` in the operator's schema: the reference points (one per feature-map pixel) became constants of the
  example's length, and onnxruntime failed on another size ("Attempting to broadcast an axis by a dimension other
  than 1", or wrong masks when the pixel count happened to match, e.g. 64x96 vs 96x64). While exporting,
  `_SymbolicSizes` runs that call as `torch.arange(h) + 0.5`, the same values (exact in float).
* `Mask2FormerPixelDecoder.forward` builds `torch.as_tensor(spatial_shapes_list)` (only for `level_start_index`,
  which the deformable attention does not read). torch.export redirects `torch.tensor` of symbolic sizes to a
  symbolic implementation but not `torch.as_tensor`, which specialises height and width (the exported program then
  asserts the example's size). `_SymbolicSizes` turns that `as_tensor` into `torch.tensor` while exporting.

The DINOv3 ViT's RoPE, the adapter and the rest of Mask2Former stay symbolic as they are.

The model is exported with its upstream Mask2Former units (`use_upstream_units` on a copy: same weights, same
outputs): upstream's deformable attention is `grid_sample` (ONNX GridSample); the fast units' `embedding_bag` gather
has no efficient ONNX form. Both changes above apply to that copy only; the model itself is not modified.

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
from torch.overrides import TorchFunctionMode

from .configuration_mask2former_dinov3 import INPUT_SIZE_MULTIPLE


__all__ = ["OUTPUT_NAMES", "OnnxOutputs", "export_onnx", "main"]

OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits")
MIN_EXAMPLE_SIZE = 2 * INPUT_SIZE_MULTIPLE
# The dynamo exporter writes opset 18 (e.g. Split's `num_outputs`); its conversion down to 17 gives an invalid graph.
MIN_OPSET = 18
# Declared upper bounds of the dynamic sizes (the graph itself checks none).
MAX_BATCH = 1024
MAX_SIZE = 8192


class _SymbolicSizes(TorchFunctionMode):
    """While tracing for export, two calls of upstream's pixel decoder run in forms torch.export keeps symbolic:

    * `torch.linspace(start, end, n)` with a symbolic `n` (`get_reference_points`' pixel centres) runs as
      `torch.arange(n) * step + start`: `linspace`'s `steps` is a plain `int` in the operator's schema, so the
      exporter fixed it at the example's size. For those centres the step is 1 and the values are exact.
    * `torch.as_tensor(list)` runs as `torch.tensor(list)` (same values: a list is always copied); torch.export
      traces `torch.tensor` of symbolic sizes symbolically but specialises `torch.as_tensor`'s.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.as_tensor and args and isinstance(args[0], (list, tuple)):
            return torch.tensor(*args, **kwargs)
        if func is torch.linspace and len(args) == 3 and not isinstance(args[2], int):  # a symbolic `steps`
            start, end, steps = args
            return torch.arange(steps, **kwargs) * ((end - start) / torch.sym_max(steps - 1, 1)) + start
        return func(*args, **kwargs)


class _Logits(torch.nn.Module):
    """The model as a function of `pixel_values` returning the two logit tensors (what the ONNX graph holds)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        with _SymbolicSizes():
            outputs = self.model(pixel_values=pixel_values)
        return outputs.class_queries_logits, outputs.masks_queries_logits


def OnnxOutputs(class_queries_logits, masks_queries_logits) -> SimpleNamespace:
    """onnxruntime's two arrays as an object the image processor's `post_process_*` methods accept."""
    return SimpleNamespace(
        class_queries_logits=torch.as_tensor(class_queries_logits),
        masks_queries_logits=torch.as_tensor(masks_queries_logits),
    )


def _check_example_size(height: int, width: int) -> None:
    if height % INPUT_SIZE_MULTIPLE or width % INPUT_SIZE_MULTIPLE or min(height, width) < MIN_EXAMPLE_SIZE:
        raise ValueError(
            f"height and width of the example input must be multiples of {INPUT_SIZE_MULTIPLE} and at least "
            f"{MIN_EXAMPLE_SIZE}, got {height}x{width} (the exported file accepts any multiple of {INPUT_SIZE_MULTIPLE})"
        )


def _export_module(model) -> torch.nn.Module:
    """The module that is exported: a copy of `model` (fp32, eval) on upstream units, returning the two logits."""
    from .fast_mask2former import use_upstream_units

    return _Logits(use_upstream_units(copy.deepcopy(model)).float().eval())


def export_onnx(model, path: str | Path, height: int = 512, width: int = 512, opset: int = MIN_OPSET) -> Path:
    """Export `model` (a Mask2FormerDINOv3ForUniversalSegmentation) to one ONNX file with a dynamic batch, height
    and width (multiples of 32); `height` x `width` (multiples of 32, at least 64) is only the example traced.

    Uses `torch.onnx.export(..., dynamo=True)` (tens of seconds even for a tiny model). The model is not modified.
    """
    _check_example_size(height, width)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
    module = _export_module(model)
    example = torch.zeros(2, 3, height, width)
    Dim = torch.export.Dim
    sizes = {"min": 1, "max": MAX_SIZE // INPUT_SIZE_MULTIPLE}
    dynamic = {
        0: Dim("batch", min=1, max=MAX_BATCH),
        2: INPUT_SIZE_MULTIPLE * Dim("height_32", **sizes),
        3: INPUT_SIZE_MULTIPLE * Dim("width_32", **sizes),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, opset_version=opset, input_names=["pixel_values"],
            output_names=list(OUTPUT_NAMES), dynamic_shapes={"pixel_values": dynamic}, external_data=False, verbose=False,
        )  # fmt: skip
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; user errors print one line on stderr and return 2."""
    parser = argparse.ArgumentParser(
        prog="mask2former-dinov3-export",
        description="Export a model to one ONNX file that accepts any batch size and any height and width that are "
        f"multiples of {INPUT_SIZE_MULTIPLE}.",
    )
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    size_help = (f"of the example input traced at export (a multiple of {INPUT_SIZE_MULTIPLE}, at least "
                 f"{MIN_EXAMPLE_SIZE}); the file accepts any multiple of {INPUT_SIZE_MULTIPLE}")  # fmt: skip
    parser.add_argument("--height", type=int, default=512, help=f"height {size_help}")
    parser.add_argument("--width", type=int, default=512, help=f"width {size_help}")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (at least {MIN_OPSET})")
    # The dynamo-based exporter is now the only one (the TorchScript one fixed height and width); kept so that
    # existing command lines still run.
    parser.add_argument("--dynamo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        _check_example_size(args.height, args.width)
    except ValueError as error:
        print(f"mask2former-dinov3-export: error: --height/--width: {error}", file=sys.stderr)
        return 2
    if args.opset < MIN_OPSET:
        print(f"mask2former-dinov3-export: error: --opset must be at least {MIN_OPSET}", file=sys.stderr)
        return 2
    import transformers

    import mask2former_dinov3  # noqa: F401  (registers the model with the Auto classes)

    try:
        model = transformers.AutoModelForUniversalSegmentation.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        print(f"mask2former-dinov3-export: error: cannot load model {args.model}: {str(error).splitlines()[0]}",
              file=sys.stderr)  # fmt: skip
        return 2
    path = export_onnx(model, args.output, args.height, args.width, args.opset)
    print(f"wrote {path} (dynamic batch, height and width: multiples of {INPUT_SIZE_MULTIPLE}; "
          f"traced at {args.height}x{args.width})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
