"""Peak memory of building one training item from a dense label image (issue 24, item 1).

    python benchmarks/data_item_memory.py                 # this checkout, 50 and 2,000 cells
    python benchmarks/data_item_memory.py --cells 500     # other counts

Each case runs in its own interpreter (peak RSS is per process): it writes a 1024x1024 16-bit image and its uint16
label image (StarDist layout) with N round cells on a grid, then builds `SegmentationDataset.__getitem__` once with
the fine-tuning script's default augmentation (`--max_scale 2.0`, scale jitter, flip, colour jitter) at 1024x1024,
and prints the process's peak RSS, the RSS before the item (imports and data loaded) and the item's CPU time. Run
it with another checkout on PYTHONPATH to compare (e.g. `PYTHONPATH=/path/to/main python
benchmarks/data_item_memory.py`); the random draws of two checkouts may differ, so compare `instances_in_item` too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


SIZE = 1024


def _case(cells: int, folder: str) -> dict:
    import numpy as np
    import tifffile

    from mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
    from mask2former_dinov3.data import LabelImageSource, SegmentationDataset, build_augmentation, find_label_image_pairs

    side = int(np.ceil(np.sqrt(cells)))
    pitch = SIZE // side
    yy, xx = np.mgrid[:SIZE, :SIZE]
    row, col = yy // pitch, xx // pitch
    inside = ((yy % pitch - pitch / 2) ** 2 + (xx % pitch - pitch / 2) ** 2) < (0.45 * pitch) ** 2
    index = row * side + col
    labels = np.where(inside & (row < side) & (col < side) & (index < cells), index + 1, 0).astype(np.uint16)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(folder, "train", sub), exist_ok=True)
    image = (labels > 0).astype(np.uint16) * 3000 + 500
    tifffile.imwrite(os.path.join(folder, "train", "images", "a.tif"), image)
    tifffile.imwrite(os.path.join(folder, "train", "masks", "a.tif"), labels)
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": SIZE, "width": SIZE})
    augmentation = build_augmentation(processor, min_scale=0.5, max_scale=2.0, color_jitter=0.2, hflip=True, seed=0)
    source = LabelImageSource(find_label_image_pairs(os.path.join(folder, "train")))
    dataset = SegmentationDataset(source, "instance", processor, augmentation, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.process_time()
    item = dataset[0]
    cpu = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    masks = item["mask_labels"]
    return {"cells": cells, "instances_in_item": int(masks.shape[0]), "mask_dtype": str(masks.dtype),
            "peak_rss_mb": round(peak), "rss_before_item_mb": round(before), "item_cpu_s": round(cpu, 2)}  # fmt: skip


def main() -> None:
    """Run each case in a fresh interpreter and print one JSON line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[50, 2000])
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(_case(args.case, folder)))
        return
    for cells in args.cells:
        out = subprocess.run([sys.executable, __file__, "--case", str(cells)], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
