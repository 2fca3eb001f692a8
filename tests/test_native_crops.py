"""Native-scale training (`run_instance_seg.py --crop_to_size`): training items are random windows of the image at
its own resolution with the saved processor's normalisation, evaluation runs by tiles, and the saved folder makes
`mask2former-dinov3-predict` use the same tiles (its AP equals the script's)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import SizeDict

from mask2former_dinov3.data import (
    Sample,
    SegmentationCollator,
    SegmentationDataset,
    build_augmentation,
    crop_sample,
    random_crop_window,
)
from mask2former_dinov3.arguments import CommandLineError, crop_size, parse_args
from mask2former_dinov3.image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.tiling import Window

from coco_check import assert_predictions_score_as_reported


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _processor(height, width):
    return Mask2FormerDINOv3ImageProcessor(
        size={"height": height, "width": width}, image_mean=[0.2, 0.3, 0.4], image_std=[0.1, 0.2, 0.3]
    )


def _noise_sample(height, width, seed=0):
    """Noise pixels (every window is unique, so a crop can be located) and three boxes, one of them small."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = np.zeros((3, height, width), np.uint8)
    masks[0, 10:60, 20:120] = 1
    masks[1, height - 30 : height - 5, width - 40 : width - 10] = 1
    masks[2, 70:80, 5:15] = 1
    return Sample(image, masks, [0, 1, 2], [False] * 3, [True] * 3, image_id=0, file_name="noise.png")


def _locate(pixel_values: np.ndarray, full: np.ndarray) -> tuple[int, int]:
    """Top-left corner of `pixel_values` (3, h, w) inside `full` (3, H, W)."""
    _, h, w = pixel_values.shape
    for top, left in np.argwhere((full == pixel_values[:, :1, :1]).all(axis=0)):
        if np.array_equal(full[:, top : top + h, left : left + w], pixel_values):
            return int(top), int(left)
    raise AssertionError("the crop is not a window of the image")


def test_training_crop_is_the_processors_normalisation_of_the_native_region_and_masks_are_cut_with_it():
    sample = _noise_sample(150, 210)
    processor = _processor(64, 96)
    dataset = SegmentationDataset([sample], "instance", processor, native_crops=True, seed=0)
    # Only to find where each crop came from: the processor's pixels of the whole image, not resized.
    full = processor(images=Image.fromarray(sample.image), do_resize=False, return_tensors="pt")["pixel_values"][0]
    full = full.numpy()
    corners, counts = set(), set()
    for epoch in range(40):
        dataset.set_epoch(epoch)  # the draws of (seed, epoch, index): a new window each epoch
        item = dataset[0]
        assert item["pixel_values"].shape == (3, 64, 96)  # the crop size, at native resolution
        top, left = _locate(item["pixel_values"].numpy(), full)
        region = sample.image[top : top + 64, left : left + 96]
        expected = processor(images=Image.fromarray(region), return_tensors="pt", do_resize=False)["pixel_values"][0]
        torch.testing.assert_close(item["pixel_values"], expected, atol=1e-6, rtol=0)
        cut = sample.masks[:, top : top + 64, left : left + 96]
        visible = cut.reshape(3, -1).any(axis=1)  # instances with no pixel left in the crop are dropped
        np.testing.assert_array_equal(item["mask_labels"].numpy(), cut[visible].astype(bool))
        assert item["class_labels"].tolist() == sample.labels[visible].tolist()
        corners.add((top, left))
        counts.add(int(visible.sum()))
    assert len(corners) > 15  # random windows, not one fixed crop
    assert 0 in counts and len(counts) > 2  # some crops hold no instance, some several
    # A crop depends on (seed, epoch, index) alone: the same in a fresh dataset, whatever was drawn before.
    again = SegmentationDataset([sample], "instance", processor, native_crops=True, seed=0)
    again.set_epoch(39)
    torch.testing.assert_close(again[0]["pixel_values"], item["pixel_values"])


def test_random_augmentations_still_apply_to_native_crops():
    sample = _noise_sample(150, 210, seed=1)
    processor = _processor(64, 64)
    flip = build_augmentation(processor, min_scale=1.0, max_scale=1.0, color_jitter=0.0, hflip=True, seed=0)
    dataset = SegmentationDataset([sample], "instance", processor, flip, native_crops=True, seed=0)
    full = processor(images=Image.fromarray(sample.image), do_resize=False, return_tensors="pt")["pixel_values"][0]
    full = full.numpy()
    flipped = 0
    for epoch in range(16):
        dataset.set_epoch(epoch)
        item = dataset[0]
        pixels = item["pixel_values"].numpy()
        try:
            top, left = _locate(pixels, full)
            mirrored = False
        except AssertionError:
            top, left = _locate(pixels[:, :, ::-1].copy(), full)
            mirrored = True
        flipped += mirrored
        cut = sample.masks[:, top : top + 64, left : left + 64]
        cut = cut[cut.reshape(3, -1).any(axis=1)]
        np.testing.assert_array_equal(item["mask_labels"].numpy(), (cut[:, :, ::-1] if mirrored else cut).astype(bool))
    assert 0 < flipped < 16


def test_images_smaller_than_the_crop_are_padded_as_the_processor_pads():
    small = _noise_sample(100, 130)  # taller than 64 but narrower than 160: cut in one dimension, whole in the other
    processor = _processor(64, 160)
    dataset = SegmentationDataset([small], "instance", processor, native_crops=True, seed=0)
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 64, 130)
    tiny = Sample(small.image[:40, :50], small.masks[:, :40, :50], [0, 1, 2], [False] * 3, [True] * 3, image_id=1)
    tiny_item = SegmentationDataset([tiny], "instance", processor, native_crops=True)[0]
    expected = processor(images=Image.fromarray(tiny.image), return_tensors="pt", do_resize=False)["pixel_values"][0]
    torch.testing.assert_close(tiny_item["pixel_values"], expected, atol=1e-6, rtol=0)
    batch = SegmentationCollator()([item, tiny_item])
    # Padded at the bottom / right with zeros outside the pixel mask, as the processor pads a batch (and as a
    # tile of an image smaller than the tile is padded at inference).
    reference = processor(
        images=[Image.fromarray(np.zeros((64, 130, 3), np.uint8)), Image.fromarray(tiny.image)], return_tensors="pt",
        do_resize=False, do_pad=True, pad_size=SizeDict(height=64, width=160),
    )  # fmt: skip
    torch.testing.assert_close(batch["pixel_mask"], reference["pixel_mask"].long())
    torch.testing.assert_close(batch["pixel_values"][1], reference["pixel_values"][1], atol=1e-6, rtol=0)


def test_crop_sample_keeps_visible_parts_and_drops_the_rest():
    sample = _noise_sample(150, 210)
    out = crop_sample(sample, Window(0, 0, 75, 130))
    assert out.image.shape == (75, 130, 3) and out.labels.tolist() == [0, 2]  # box 1 lies outside
    assert out.masks[0].sum() == 50 * 100 and out.masks[1].sum() == 5 * 10  # box 2: its visible rows only
    np.testing.assert_array_equal(out.image, sample.image[:75, :130])
    empty = crop_sample(sample, Window(100, 150, 110, 160))
    assert empty.masks.shape == (0, 10, 10) and empty.labels.shape == (0,)
    rng = np.random.default_rng(0)
    assert random_crop_window((40, 300), (64, 96), rng).height == 40  # whole in the small dimension


def test_crop_to_size_values():
    args = lambda *a: parse_args(["--output_dir", "/tmp/x", *a])[1]  # noqa: E731
    assert crop_size(args("--crop_to_size", "64")) == (64, 64)
    assert crop_size(args("--crop_to_size", "64", "96")) == (64, 96)
    assert crop_size(args()) is None
    for bad in (["50"], ["64", "100"], ["0"], ["64", "64", "64"]):
        with pytest.raises(CommandLineError, match="--crop_to_size"):
            crop_size(args("--crop_to_size", *bad))
    with pytest.raises(CommandLineError, match="panoptic"):
        crop_size(args("--crop_to_size", "64", "--task", "panoptic"))
    with pytest.raises(CommandLineError, match="without --image_height"):
        parse_args(["--output_dir", "/tmp/x", "--crop_to_size", "64", "--image_height", "128"])


@pytest.mark.slow  # the script in a new interpreter
def test_bad_crop_size_is_one_line_on_stderr_and_exit_2(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_instance_seg.py"), "--crop_to_size", "100", "--output_dir",
         str(tmp_path / "out"), "--report_to", "none"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --crop_to_size"), result.stderr[-2000:]
    assert "100x100" in lines[0] and "32" in lines[0]
    assert not (tmp_path / "out").exists()  # stopped before anything was trained or written


@pytest.mark.slow  # 80 training steps, then the predict CLI in a new interpreter
def test_crop_trained_run_reports_the_ap_the_predict_cli_gives_with_the_same_tiles(tmp_path):
    """Train on 64 px native crops of 112 px images, evaluate by tiles; the predict CLI on the saved folder (tiles
    from its tiling.json, no --tile given) scored by pycocotools gives the script's eval_map."""
    from mask2former_dinov3.finetune import main as train
    from mask2former_dinov3.synthetic import SyntheticConfig, write_coco_dataset

    data = tmp_path / "data"
    write_coco_dataset(data, num_train=8, num_valid=1, config=SyntheticConfig(image_size=112, size_probabilities=(0, 0.6, 0.4)))
    shutil.rmtree(data / "valid")
    shutil.copytree(data / "train", data / "valid")  # a model that trains in seconds then finds objects: AP > 0
    out = tmp_path / "out"
    metrics = train(["--data_dir", str(data), "--output_dir", str(out), "--do_train", "--do_eval", "--max_steps", "80",
                     "--crop_to_size", "64", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
                     "--learning_rate", "1e-3", "--warmup_steps", "0", "--weight_decay", "0", "--min_scale", "1",
                     "--max_scale", "1", "--color_jitter", "0", "--report_to", "none", "--dataloader_num_workers", "0",
                     "--seed", "0", "--save_strategy", "no", "--num_overlay_images", "1"])  # fmt: skip
    reported = json.loads((out / "eval_results.json").read_text())
    assert reported["eval_map"] == pytest.approx(metrics["eval_map"])
    assert reported["eval_max_detections"] == 100  # tiled evaluation keeps the same per-image cap
    assert json.loads((out / "tiling.json").read_text()) == {"tile_size": [64, 64], "overlap": 16}
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}
    assert "tiling.json" in (out / "README.md").read_text()
    assert len(list((out / "predictions").iterdir())) == 1  # overlays drawn from the tiled prediction

    annotations = data / "valid" / "_annotations.coco.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "mask2former_dinov3.predict", str(out), str(data / "valid"), "--output_dir",
         str(tmp_path / "pred"), "--annotations", str(annotations), "--threshold", "0", "--batch_size", "4",
         "--no_overlays"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert predictions and all(p["segmentation"]["size"] == [112, 112] for p in predictions)  # native size
    assert_predictions_score_as_reported(annotations, predictions, reported)
