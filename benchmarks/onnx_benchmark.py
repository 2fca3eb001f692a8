"""CPU inference cost: onnxruntime vs torch eager, and tiled vs single-pass prediction.

    OMP_NUM_THREADS=1 python benchmarks/onnx_benchmark.py --repeats 3

For each preset (random weights, `Mask2FormerDINOv3Config.from_preset`): median forward time of torch eager (the
model's fast units) and of onnxruntime on the exported file, batch 1, `--size` px and `--second_size` (the same
file: its height and width are dynamic), one thread each. Then the cost of
tiled prediction (`mask2former_dinov3.tiling.predict_tiled`, torch) of a `--tiled_image` px square image with
`--tile` px windows and `--overlap` px overlap, against one forward of the image resized to `--tile` px (the whole
single-pass prediction, pre- and post-processing included, for both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mask2former_dinov3 import (
    Mask2FormerDINOv3Config,
    Mask2FormerDINOv3ForUniversalSegmentation,
    Mask2FormerDINOv3ImageProcessor,
)
from mask2former_dinov3.export import export_onnx
from mask2former_dinov3.predict import forward_images
from mask2former_dinov3.tiling import predict_tiled, tile_windows


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    """Run the measurements and print them as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["dinov3-vits16", "dinov3-convnext-tiny"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--second_size", type=int, nargs=2, default=[384, 640], metavar=("H", "W"),
                        help="a second input size, run from the same exported file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiled_image", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    args = parser.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sizes = [(args.size, args.size), tuple(args.second_size)]
    for preset in args.presets:
        torch.manual_seed(0)
        model = Mask2FormerDINOv3ForUniversalSegmentation(Mask2FormerDINOv3Config.from_preset(preset)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = export_onnx(model, Path(tmp) / "model.onnx", args.size, args.size)
            export_s = time.perf_counter() - start
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for height, width in sizes:  # one exported file for both sizes
                pixels = torch.randn(1, 3, height, width)
                feed = {"pixel_values": pixels.numpy()}
                with torch.no_grad():
                    torch_ms = _median_ms(lambda: model(pixel_values=pixels), args.repeats)
                onnx_ms = _median_ms(lambda: session.run(None, feed), args.repeats)
                row = dict(preset=preset, size=f"{height}x{width}", torch_eager_ms=round(torch_ms),
                           onnxruntime_ms=round(onnx_ms), speedup=round(torch_ms / onnx_ms, 2),
                           export_s=round(export_s, 1))  # fmt: skip
                print(json.dumps(row), flush=True)

        processor = Mask2FormerDINOv3ImageProcessor(size={"height": args.tile, "width": args.tile})
        image = Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (args.tiled_image, args.tiled_image, 3), dtype=np.uint8)
        )
        target = [(args.tiled_image, args.tiled_image)]

        def single():
            out = forward_images(model, processor, [image], "cpu", torch.float32)[0]
            processor.post_process_instance_segmentation(out, threshold=0.5, target_sizes=target, return_binary_maps=True)

        def tiled():
            predict_tiled(model, processor, image, (args.tile, args.tile), args.overlap, threshold=0.5, batch_size=1)

        single_ms = _median_ms(single, args.repeats)
        tiled_ms = _median_ms(tiled, args.repeats)
        windows = len(tile_windows(args.tiled_image, args.tiled_image, (args.tile, args.tile), args.overlap))
        row = dict(preset=preset, image=args.tiled_image, tile=args.tile, overlap=args.overlap, windows=windows,
                   single_resize_ms=round(single_ms), tiled_ms=round(tiled_ms), ratio=round(tiled_ms / single_ms, 2))  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
