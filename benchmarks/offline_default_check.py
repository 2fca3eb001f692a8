"""Does the offline default's `eval_results.json` describe the saved model? Recompute its mask AP from the folder alone.

    python run_instance_seg.py --output_dir out          # the offline default (about 10 min on 2 cores)
    python benchmarks/offline_default_check.py out       # recompute, compare, exit 1 on a difference > 1e-6

The validation images are the offline default's deterministic synthetic split (regenerated with the same seed, size
and shape probabilities as `arguments.DataTrainingArguments`' defaults). The model and its image processor come from
the output folder through `AutoModelForUniversalSegmentation` / `AutoImageProcessor`; predictions are
`post_process_instance_segmentation(threshold=0, return_binary_maps=True)` at each image's size; ground truth and
detections are scored by pycocotools' COCOeval directly (none of the package's metrics or training code runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation  # noqa: E402

import mask2former_dinov3  # noqa: E402, F401  (registers the Auto classes)
from mask2former_dinov3.synthetic import SyntheticSegmentationSource  # noqa: E402
from mask2former_dinov3.arguments import DataTrainingArguments  # noqa: E402


def recompute(output_dir: str, batch_size: int = 16) -> dict[str, float]:
    """COCO mask AP of the folder's model on the offline default's validation split."""
    defaults = DataTrainingArguments()
    probabilities = tuple(float(p) for p in defaults.synthetic_size_probabilities.split(","))
    source = SyntheticSegmentationSource(
        "valid", defaults.synthetic_eval_samples, defaults.synthetic_seed, defaults.synthetic_image_size, False,
        size_probabilities=probabilities,
    )  # fmt: skip
    model = AutoModelForUniversalSegmentation.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    images, annotations, detections = [], [], []
    samples = [source[i] for i in range(len(source))]
    for image_id, sample in enumerate(samples):
        height, width = sample.image.shape[:2]
        images.append({"id": image_id, "height": height, "width": width})
        for mask, label in zip(sample.binary_masks(), sample.labels):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "segmentation": rle, "area": float(mask_utils.area(rle)),
                                "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})  # fmt: skip
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        with torch.no_grad():
            outputs = model(**processor(images=[s.image for s in batch], return_tensors="pt"))
        results = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[s.image.shape[:2] for s in batch], return_binary_maps=True
        )
        for offset, result in enumerate(results):
            for k, segment in enumerate(result["segments_info"]):
                binary = np.asfortranarray(result["segmentation"][k].numpy().astype(np.uint8))
                detections.append({"image_id": start + offset, "category_id": int(segment["label_id"]),
                                   "segmentation": mask_utils.encode(binary), "score": float(segment["score"])})  # fmt: skip
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in model.config.id2label.items()],
    }
    ground_truth.createIndex()
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections) if detections else COCO(), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    stats = evaluation.stats
    return {"eval_map": stats[0], "eval_map_50": stats[1], "eval_map_75": stats[2], "eval_mar_100": stats[8]}


def main(argv: list[str] | None = None) -> int:
    """Print the reported and the recomputed metrics; exit 1 if any differs by more than `--tolerance`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--batch_size", type=int, default=16, help="the script's --per_device_eval_batch_size")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    with open(os.path.join(args.output_dir, "eval_results.json")) as handle:
        reported = json.load(handle)
    recomputed = recompute(args.output_dir, args.batch_size)
    worst = 0.0
    for key, value in recomputed.items():
        difference = abs(reported[key] - value)
        worst = max(worst, difference)
        print(f"{key:14s} eval_results.json {reported[key]:.6f}   saved folder {value:.6f}   |diff| {difference:.1e}")
    print("equal" if worst <= args.tolerance else f"DIFFERENT (largest difference {worst:.1e})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
