"""`eval_results.json` describes the model users run: evaluation feeds the model the saved image processor's pixels,
and the mask AP computed from the saved output folder alone (Auto classes, the processor's post-processing,
pycocotools) equals the script's `eval_map`.

Both tests run `run_instance_seg.py`'s `main` and then use only what a user has: the output folder, the data, and
public transformers / pycocotools APIs. Nothing here reuses the package's data, metric or post-processing code to
compute the expected values.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

import mask2former_dinov3  # noqa: F401  (registers the Auto classes)
from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
from mask2former_dinov3.finetune import main
from mask2former_dinov3.synthetic import SyntheticConfig, write_coco_dataset


COMMON = ["--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0", "--logging_steps", "10",
          "--save_strategy", "no", "--num_overlay_images", "0"]  # fmt: skip


def _write_noise_coco(root, sizes):
    """A Roboflow-layout COCO folder whose train and valid splits hold noise images of the given (height, width)s,
    each with one rectangle instance. Noise: any resize filter but the processor's gives visibly different pixels."""
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "valid"):
        folder = root / split
        folder.mkdir(parents=True)
        images, annotations = [], []
        for index, (height, width) in enumerate(sizes):
            name = f"{split}_{index}.png"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
            images.append({"id": index, "file_name": name, "height": height, "width": width})
            x0, y0, x1, y1 = width * 0.2, height * 0.3, width * 0.7, height * 0.9
            annotations.append({"id": index + 1, "image_id": index, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})  # fmt: skip
        coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
        (folder / "_annotations.coco.json").write_text(json.dumps(coco))
        files[split] = [folder / image["file_name"] for image in images]
    return files


def test_evaluation_feeds_the_model_the_saved_processors_pixels(tmp_path):
    # Images smaller and larger than the (non-square) training size 64 x 96, square and not, and one at that size.
    sizes = [(37, 53), (150, 210), (100, 40), (64, 96), (300, 97)]
    files = _write_noise_coco(tmp_path / "data", sizes)
    out = str(tmp_path / "out")
    fed = []

    def record_evaluation_inputs(module, args, kwargs, output):
        if isinstance(module, Mask2FormerDINOv3ForUniversalSegmentation) and not module.training:
            fed.append(kwargs["pixel_values"].detach().cpu().clone())

    # A global forward hook sees exactly what Trainer's evaluation passes to the model, without changing any code.
    handle = torch.nn.modules.module.register_module_forward_hook(record_evaluation_inputs, with_kwargs=True)
    try:
        main(["--data_dir", str(tmp_path / "data"), "--output_dir", out, "--do_train", "--do_eval", "--max_steps", "1",
              "--image_height", "64", "--image_width", "96", "--per_device_train_batch_size", "2",
              "--per_device_eval_batch_size", "2", *COMMON])  # fmt: skip
    finally:
        handle.remove()
    fed = torch.cat(fed)
    assert fed.shape == (len(sizes), 3, 64, 96)

    processor = AutoImageProcessor.from_pretrained(out)
    for index, path in enumerate(files["valid"]):
        with Image.open(path) as image:
            expected = processor(images=image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(fed[index : index + 1], expected, atol=1e-6, rtol=0, msg=f"image {sizes[index]}")

    # The comparison discriminates: a plain bilinear resize without antialiasing (what cv2 does) is far off.
    with Image.open(files["valid"][1]) as image:
        raw = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 255
    plain = torch.nn.functional.interpolate(raw, size=(64, 96), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    assert ((plain - mean) / std - fed[1:2]).abs().max() > 0.3


@pytest.mark.slow  # a training run, then a recomputation from the saved folder
def test_eval_map_equals_the_map_of_the_saved_folder(tmp_path):
    # A COCO folder whose validation split holds the training images: a model small enough to train in seconds then
    # finds most objects, so the AP compared below is far from 0 (an all-empty prediction would compare nothing).
    data = tmp_path / "data"
    write_coco_dataset(data, num_train=8, num_valid=1, config=SyntheticConfig(image_size=96, size_probabilities=(0, 0.3, 0.7)))
    shutil.rmtree(data / "valid")
    shutil.copytree(data / "train", data / "valid")
    out = str(tmp_path / "out")
    batch = 4
    # Images of 96 px trained and evaluated at 64 px, so the resize matters.
    main(["--data_dir", str(data), "--output_dir", out, "--do_train", "--do_eval", "--max_steps", "60",
          "--image_height", "64", "--image_width", "64", "--per_device_train_batch_size", "8",
          "--per_device_eval_batch_size", str(batch), "--learning_rate", "1e-3", "--warmup_steps", "0",
          "--weight_decay", "0", "--min_scale", "1", "--max_scale", "1", "--color_jitter", "0", *COMMON])  # fmt: skip
    with open(os.path.join(out, "eval_results.json")) as handle:
        reported = json.load(handle)

    # From here on: only the output folder, the validation split's files, transformers and pycocotools.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model = AutoModelForUniversalSegmentation.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    coco_gt = COCO(str(data / "valid" / "_annotations.coco.json"))
    category_of_label = {label: coco_gt.getCatIds(catNms=[name])[0] for label, name in model.config.id2label.items()}
    image_ids = coco_gt.getImgIds()
    detections = []
    # Batches of the script's evaluation batch size: the same arithmetic, so the logits agree bit for bit.
    for start in range(0, len(image_ids), batch):
        infos = coco_gt.loadImgs(image_ids[start : start + batch])
        images = [Image.open(data / "valid" / info["file_name"]).convert("RGB") for info in infos]
        with torch.no_grad():
            outputs = model(**processor(images=images, return_tensors="pt"))
        results = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[(info["height"], info["width"]) for info in infos],
            return_binary_maps=True,
        )  # fmt: skip
        for info, result in zip(infos, results):
            for k, segment in enumerate(result["segments_info"]):
                binary = result["segmentation"][k].numpy().astype(np.uint8)
                detections.append({"image_id": info["id"], "category_id": category_of_label[segment["label_id"]],
                                   "segmentation": mask_utils.encode(np.asfortranarray(binary)),
                                   "score": float(segment["score"])})  # fmt: skip
    evaluation = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    expected = dict(zip(["map", "map_50", "map_75"], evaluation.stats[:3]))
    expected["mar_100"] = evaluation.stats[8]

    assert reported["eval_num_images"] == len(image_ids)
    assert expected["map"] > 0.05, expected  # a trained model: the comparison is not between two zeros
    for name, value in expected.items():
        assert reported[f"eval_{name}"] == pytest.approx(value, abs=1e-6), (name, reported, expected)
