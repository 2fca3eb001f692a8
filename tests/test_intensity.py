"""Intensity normalisation of images that are not 8-bit (issue 13): the image processor's setting, its round trip
through `preprocessor_config.json`, the dataset path, fine-tuning on 16-bit COCO data and the overlays."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.intensity import to_uint8


def blob_image(height=128, width=128, seed=0, low=33_000, high=37_000):
    """A 16-bit image whose intensities all lie in [low, high]: smooth bright blobs on a noisy background, as a
    fluorescence micrograph. Returns `(image, masks)`, the masks where each blob is above half its height."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    signal = np.zeros((height, width))
    masks = []
    for cy, cx in ((0.3, 0.3), (0.7, 0.65), (0.35, 0.75)):
        radius = 0.09 * min(height, width)
        blob = np.exp(-(((yy - cy * height) ** 2 + (xx - cx * width) ** 2) / (2 * radius**2)))
        signal = np.maximum(signal, blob)
        masks.append((blob > 0.5).astype(np.uint8))
    image = low + 300 + (high - low - 600) * signal + rng.normal(0, 60, size=signal.shape)
    image = np.clip(np.round(image), low, high).astype(np.uint16)
    return image, np.stack(masks)


def _pil_16(array):
    image = Image.fromarray(array.astype(np.uint16))
    assert image.mode == "I;16"
    return image


def _pixels(processor, image, **kwargs):
    return processor(images=image, return_tensors="pt", **kwargs)["pixel_values"][0]


def test_saved_processor_spreads_a_narrow_16_bit_range(tmp_path):
    image, _ = blob_image()
    path = tmp_path / "blobs.png"
    _pil_16(image).save(path)
    Mask2FormerDINOv3ImageProcessor(size={"height": 128, "width": 128}).save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())["intensity_normalization"] == (
        "percentile"
    )
    processor = AutoImageProcessor.from_pretrained(tmp_path / "model")
    assert processor.intensity_normalization == "percentile"
    with Image.open(path) as pil:
        assert pil.mode == "I;16"
        percentile = _pixels(processor, pil)
        fixed = _pixels(processor, pil, intensity_normalization="fixed")
    assert percentile.shape == (3, 128, 128)
    # Contrast within each channel (the channels' ImageNet means differ whatever the image).
    contrast, fixed_contrast = float(percentile.std(dim=(1, 2)).mean()), float(fixed.std(dim=(1, 2)).mean())
    assert contrast >= 10 * fixed_contrast, (contrast, fixed_contrast)
    # Grayscale goes to three equal channels, ImageNet-normalised each: the channels differ only by mean/std.
    assert torch.allclose(percentile[0] * 0.229 + 0.485, percentile[2] * 0.225 + 0.406, atol=1e-5)


@pytest.mark.parametrize("method", ["percentile", "minmax", "fixed"])
def test_8_bit_images_are_never_changed(method):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    ours = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64}, intensity_normalization=method)
    upstream = Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}, size_divisor=32)
    for image in (rgb, Image.fromarray(rgb), torch.from_numpy(rgb.copy())):
        assert ours.normalize_intensity(image) is image
        assert torch.equal(_pixels(ours, image), _pixels(upstream, image))


def test_what_counts_as_8_bit():
    rng = np.random.default_rng(4)
    as_int64 = rng.integers(0, 256, size=(3, 20, 20))  # numpy's default integer type, 8-bit values
    assert to_uint8(as_int64) is as_int64
    torch_ints = torch.randint(0, 256, (3, 20, 20))
    assert to_uint8(torch_ints) is torch_ints
    dark_16_bit = rng.integers(0, 200, size=(20, 20)).astype(np.uint16)  # a dim 16-bit image is still 16-bit
    assert to_uint8(dark_16_bit).max() == 255
    assert to_uint8(as_int64 * 100).max() == 255  # beyond 255: not 8-bit
    assert to_uint8(rng.random((20, 20), dtype=np.float32)).max() == 255


def test_methods_map_their_reference_values():
    image = np.linspace(1000, 2000, 1001).reshape(7, 143)
    low, high = np.percentile(image, [1, 99.8])
    out = to_uint8(image.astype(np.uint16), "percentile")
    assert out.shape == (7, 143, 3) and out.dtype == np.uint8
    flat = out[..., 0].ravel()
    assert flat[image.ravel() <= low].max() == 0 and flat[image.ravel() >= high].min() == 255
    assert 0 < flat[500] < 255 and abs(int(flat[500]) - 127) <= 2

    minmax = to_uint8(image.astype(np.float32), "minmax")[..., 0].ravel()
    assert minmax[0] == 0 and minmax[-1] == 255 and abs(int(minmax[500]) - 128) <= 1

    fixed = to_uint8(np.array([[0, 257, 32768, 65535]], np.uint16), "fixed")[..., 0]
    assert fixed.tolist() == [[0, 1, 128, 255]]
    assert to_uint8(np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), "fixed")[..., 0].tolist() == [[0, 128, 255, 255]]
    with pytest.raises(ValueError, match="outside the 0..65535.*'percentile'"):
        to_uint8(np.array([[0, 70_000]], np.int32), "fixed")
    with pytest.raises(ValueError, match="intensity_normalization must be one of percentile, minmax, fixed"):
        to_uint8(image, "zscore")
    # A flat image does not divide by zero.
    assert to_uint8(np.full((4, 4), 500, np.uint16), "percentile").max() == 0


def test_each_image_of_a_batch_is_normalised_on_its_own():
    dim, _ = blob_image(64, 64, seed=2, low=1_000, high=2_000)
    bright, _ = blob_image(64, 64, seed=3, low=40_000, high=60_000)
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    batch = processor(images=[dim, bright], return_tensors="pt")["pixel_values"]
    for i, image in enumerate((dim, bright)):
        assert torch.allclose(batch[i], _pixels(processor, image))
    stacked = np.stack([np.repeat(dim[..., None], 3, -1), np.repeat(bright[..., None], 3, -1)])
    assert np.array_equal(processor.normalize_intensity(stacked)[1], to_uint8(stacked[1]))


def test_segmentation_maps_keep_their_ids():
    image, masks = blob_image(64, 64)
    instance_map = np.zeros((64, 64), np.int32)
    for k, mask in enumerate(masks):
        instance_map[mask.astype(bool)] = 10 + k  # an int32 map: intensity scaling would turn 10..12 into 0..255
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64}, ignore_index=255)
    out = processor(
        images=image, segmentation_maps=instance_map,
        instance_id_to_semantic_id={0: 0, 10: 1, 11: 2, 12: 1}, return_tensors="pt",
    )  # fmt: skip
    assert sorted(out["class_labels"][0].tolist()) == [0, 1, 1, 2]
    areas = sorted(int(m.sum()) for m in out["mask_labels"][0])
    assert areas == sorted(int((instance_map == i).sum()) for i in (0, 10, 11, 12))


def test_pipeline_workaround_matches_the_processor(tmp_path):
    """transformers' pipeline converts every PIL image to 8-bit RGB (clipping 16-bit values) before the processor sees
    it; the documented workaround hands it the processor's own 8-bit image."""
    image, _ = blob_image(64, 64)
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    as_8_bit = Image.fromarray(processor.normalize_intensity(_pil_16(image)))
    assert as_8_bit.mode == "RGB"
    assert torch.equal(_pixels(processor, as_8_bit), _pixels(processor, _pil_16(image)))


FRESH = textwrap.dedent(
    """
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained({directory!r}, trust_remote_code=True)
    assert "mask2former_dinov3" not in __import__("sys").modules
    pixels = processor(images=Image.open({image!r}), return_tensors="pt")["pixel_values"]
    torch.save(pixels, {out!r})
    """
)


@pytest.mark.slow  # a new interpreter
def test_processor_loaded_with_trust_remote_code_normalises_alike(tmp_path):
    image, _ = blob_image(64, 64)
    _pil_16(image).save(tmp_path / "blobs.png")
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64}, intensity_normalization="minmax")
    processor.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "intensity.py").is_file()
    script = FRESH.format(directory=str(tmp_path / "model"), image=str(tmp_path / "blobs.png"),
                          out=str(tmp_path / "pixels.pt"))  # fmt: skip
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300)
    fresh = torch.load(tmp_path / "pixels.pt", weights_only=True)[0]
    assert torch.equal(fresh, _pixels(processor, _pil_16(image)))


def write_blob_coco(root, splits=(("train", 4), ("valid", 2)), size=64):
    """A Roboflow-layout COCO folder of 16-bit blob images (PIL mode "I;16", intensities 33,000-37,000), each blob
    one "cell" instance as a compressed RLE. Returns {split: [(path, raw array, masks)]}."""
    from pycocotools import mask as mask_utils

    written = {}
    for split, count in splits:
        folder = root / split
        folder.mkdir(parents=True)
        images, annotations, written[split] = [], [], []
        for index in range(count):
            raw, masks = blob_image(size, size, seed=100 * len(split) + index)
            name = f"{split}_{index}.png"
            _pil_16(raw).save(folder / name)
            images.append({"id": index, "file_name": name, "height": size, "width": size})
            for mask in masks:
                rle = mask_utils.encode(np.asfortranarray(mask))
                annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": 1, "iscrowd": 0,
                                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")}})
            written[split].append((folder / name, raw, masks))
        coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
        (folder / "_annotations.coco.json").write_text(json.dumps(coco))
    return written


def test_dataset_items_equal_the_processor_on_the_16_bit_file(tmp_path):
    from mask2former_dinov3.data import CocoSegmentationSource, SegmentationDataset

    files = write_blob_coco(tmp_path, splits=(("valid", 2),))
    source = CocoSegmentationSource(str(tmp_path / "valid" / "_annotations.coco.json"))
    assert source[0].image.dtype == np.uint16  # kept as read
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    dataset = SegmentationDataset(source, "instance", processor, for_evaluation=True)
    for index, (path, _, _) in enumerate(files["valid"]):
        with Image.open(path) as image:
            expected = _pixels(processor, image)
        assert torch.equal(dataset[index]["pixel_values"], expected)
    # A processor that cannot normalise intensities is named, with the fix.
    upstream = Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}, size_divisor=32)
    from mask2former_dinov3.data import DataError

    with pytest.raises(DataError, match="uint16 image.*Mask2FormerDINOv3ImageProcessor"):
        SegmentationDataset(source, "instance", upstream)[0]


@pytest.mark.slow  # a training run (16-bit input is covered fast by the dataset and processor tests)
def test_fine_tuning_on_16_bit_coco_trains_evaluates_and_draws_the_structures(tmp_path):
    from mask2former_dinov3.finetune import main
    from mask2former_dinov3.overlays import draw_segments

    files = write_blob_coco(tmp_path / "data")
    out = tmp_path / "out"
    main(["--data_dir", str(tmp_path / "data"), "--output_dir", str(out), "--do_train", "--do_eval",
          "--max_steps", "2", "--image_height", "64", "--image_width", "64", "--per_device_train_batch_size", "2",
          "--per_device_eval_batch_size", "2", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0",
          "--save_strategy", "no", "--num_overlay_images", "1"])  # fmt: skip
    results = json.loads((out / "eval_results.json").read_text())
    assert isinstance(results["eval_map"], float)
    assert json.loads((out / "preprocessor_config.json").read_text())["intensity_normalization"] == "percentile"

    # The ground-truth panel of the first validation image, away from the cells' boxes (where labels and fills are):
    # there the overlay shows the image itself.
    (overlay,) = sorted((out / "predictions").glob("*.png"))
    panel = np.asarray(Image.open(overlay).convert("RGB")).astype(np.float64)
    width = (panel.shape[1] - 4) // 2
    truth = panel[-width:, :width]
    _, raw, masks = files["valid"][0]
    scale = width / raw.shape[1]
    background = np.ones(truth.shape[:2], bool)
    for mask in masks:
        ys, xs = np.nonzero(mask)
        background[int((ys.min() - 2) * scale) : int((ys.max() + 3) * scale),
                   int((xs.min() - 2) * scale) : int((xs.max() + 3) * scale)] = False  # fmt: skip
    assert background.mean() > 0.4
    fixed = np.asarray(draw_segments(to_uint8(raw, "fixed"), masks, [0] * len(masks), {0: "cell"})).astype(float)
    shown, flat = truth[background].std(), fixed[background].std()
    assert shown > 5 and shown > 10 * flat, (shown, flat)


@pytest.mark.parametrize("tiled", [False, True])
def test_predict_cli_normalises_16_bit_files_and_overlays_show_it(tmp_path, tiled):
    from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
    from mask2former_dinov3.overlays import draw_segments
    from mask2former_dinov3.predict import main
    from tiny_configs import tiny_config

    torch.manual_seed(0)
    Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", id2label={0: "cell"})).save_pretrained(tmp_path / "m")
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path / "m")
    raw, _ = blob_image(128, 160)
    _pil_16(raw).save(tmp_path / "cells.png")
    tile = ["--tile", "64", "64", "--overlap", "16"] if tiled else []
    # Threshold 1: no mask is drawn, so the overlay is the image the model saw (greyed, as empty panels are).
    assert main([str(tmp_path / "m"), str(tmp_path / "cells.png"), "--output_dir", str(tmp_path / "out"),
                 "--threshold", "1", *tile]) == 0  # fmt: skip
    shown = np.asarray(Image.open(tmp_path / "out" / "overlays" / "cells.png").convert("RGB"))
    expected = processor.normalize_intensity(_pil_16(raw))
    empty_text = "no prediction above threshold 1"
    assert np.array_equal(shown, np.asarray(draw_segments(expected, [], [], {0: "cell"}, [], empty_text=empty_text)))
    assert expected.std() > 40  # the cells, not a flat grey (fixed scaling) or white (PIL's clipping) image
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert (images[0]["height"], images[0]["width"]) == (128, 160)
